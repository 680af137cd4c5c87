"""The daemon: events → batch → health gate → refresh.

One loop on the calling thread reads the clock and decides; watchdog, the mount monitor and
signal handlers only put items on its queue. The loop sleeps until the next thing it has to
do (a batch falling due, a retry, a health check, a keep-alive) or until an item arrives:
no polling while idle.

Before every refresh every root is probed (:mod:`watcher.health`). If any root is not
healthy — or came back less than ``settle`` seconds ago — the refresh is suppressed and the
batch kept, never dropped, until every root is ready again; the WARNING is logged when a
root's state changes, not on every retry.

Roots come and go: a mount-table change (``/proc/self/mountinfo``) triggers a health check
at once, and a periodic one catches what the mount table cannot show (a hung server). A
root that went away (unmounted, deleted, replaced, a disk below it remounted) has lost its
inotify watches without a word from watchdog (FACTS.md), so once it has been healthy for
``settle`` seconds it is watched again (``unschedule`` then ``schedule``) and counted as
changed: files may have arrived while it was away.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from watcher import status as status_file
from watcher.config import Config, Root
from watcher.debounce import Batch, Debouncer
from watcher.errors import ConfigError, JellyfinError, KeyRejected, ServerUnavailable
from watcher.filters import IgnoreFilter
from watcher.guard import Limits, predict
from watcher.health import Health, State, probe_roots
from watcher.jellyfin import JellyfinClient
from watcher.notify import Notifier
from watcher.poll import PollResult, RootPoller
from watcher.scope import RefreshRequest, plan
from watcher.state import PendingChanges, SavedState, StateStore
from watcher.verify import UNREPORTED, Coverage, coverage
from watcher.watch import Change, EventsLost, MountMonitor, MountsChanged, RootWatcher

logger = logging.getLogger(__name__)

SUPPRESSED_RECHECK = 5.0
"""Seconds between health checks while a due batch is held back by an unhealthy root (a
change of the mount table triggers one at once)."""
SCAN_RUNNING_RECHECK = 5.0
"""Seconds between looks at Jellyfin's scan task while waiting for a running scan to end."""
BACKOFF_START = 1.0
"""Seconds before the first retry of a failed refresh; doubles up to ``backoff_max``."""
VERIFY_TIMEOUT = 60.0
"""Seconds the listing of a root's folders (watch verification) may take."""
POLL_TIMEOUT_INTERVALS = 10
"""A polling cycle may take this many poll intervals (at least ``VERIFY_TIMEOUT``)."""
STATUS_COUNT_INTERVAL = 5.0
"""Seconds between status-file updates that only change the pending change count."""
GUARD_RECHECK = 60.0
"""Seconds before a batch the loss guard refused is predicted again (new changes: sooner)."""

_T = TypeVar("_T")

Reloader = Callable[[], tuple[Config, "JellyfinClient | None"]]


class Stop:
    """Queue item: end the loop."""


class Reload:
    """Queue item: read the configuration again (SIGHUP)."""


@dataclass(frozen=True, slots=True)
class _Verified:
    """Queue item: the watch verification of ``roots`` ((key, identity when watched)) ended."""

    roots: tuple[tuple[str, tuple[Any, ...]], ...]
    results: tuple[Coverage, ...]


class Interrupted(Exception):
    """A stop was requested while waiting on Jellyfin."""


@dataclass(slots=True)
class _RootRecord:
    """What the loop knows about one root."""

    root: Root
    health: Health | None = None
    watched: bool = False
    watched_as: tuple[Any, ...] = ()
    """Identity when the watch was set up: (device, inode, mounts)."""
    back_since: float | None = None
    """Clock reading since which a returning root has been healthy (settling)."""
    coverage: Coverage | None = None
    poller: RootPoller | None = None
    """Set while the root is watched by polling instead of inotify."""
    poll_busy: bool = False
    """The last polling cycle found changes: a copy may still be under way, so a batch
    holding this root waits for a cycle that finds nothing new (or ``max_wait``)."""
    problem: str = ""
    """The last watch ERROR logged for this root (logged again only when it changes)."""
    verification: str | None = None
    """Watch verification of the inotify watch: ``running``, ``complete`` (every folder
    watched), ``shortfall`` (some not: see the log), ``incomplete`` (the listing ran out
    of time), or None (not watched by inotify)."""
    switched: bool = False
    """Verification switched this root to polling: once polling has its baseline, the root
    counts as changed (what inotify missed before the switch is refreshed)."""

    @property
    def key(self) -> str:
        return str(self.root.path)

    def identity(self, health: Health) -> tuple[Any, ...]:
        return (health.device, health.inode, health.mounts)


@dataclass(slots=True)
class _LastRefresh:
    time: float
    result: str


@dataclass(slots=True)
class _Published:
    signature: tuple[Any, ...] = ()
    changes: int | None = None
    written_at: float = 0.0
    status_line: str = ""


class Service:
    """The watcher daemon.

    ``resolve_roots`` returns the roots to watch (from the configuration or Jellyfin's
    libraries) and may raise :class:`~watcher.errors.JellyfinError`; the service then
    retries with backoff. ``client`` is None in dry-run mode. ``reload`` (for SIGHUP)
    returns a new configuration and client, or raises ConfigError. ``clock`` returns
    seconds. ``notifier`` talks to systemd (READY, STATUS, WATCHDOG).
    """

    def __init__(
        self,
        config: Config,
        resolve_roots: Callable[[Config], Sequence[Root]],
        client: JellyfinClient | None,
        store: StateStore,
        clock: Callable[[], float] = time.monotonic,
        reload: Reloader | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._resolve_roots = resolve_roots
        self._client = client
        self._store = store
        self._clock = clock
        self._reload = reload
        self._notifier = notifier or Notifier({})
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._stop = threading.Event()
        self._debouncer = Debouncer(config.quiet_period, config.max_wait)
        self._ignore = IgnoreFilter(config.ignore)
        self._records: dict[str, _RootRecord] = {}
        self._saved = SavedState()
        self._retry_at = 0.0
        self._failures = 0
        self._next_health = 0.0
        self._next_keepalive = float("inf")
        self._next_libraries = float("inf")
        self._held: str = ""
        self._refused: str = ""
        self._waiting_for_poll = False
        self._waiting_for_scan = False
        self._last_error = ""
        self._last_refresh: _LastRefresh | None = None
        self._published = _Published()
        self._started = status_file.process_start_time()
        self._watcher = RootWatcher(self._queue)
        self._ready_sent = False
        self.refreshes = 0

    # --- control, safe from signal handlers and other threads ------------------------

    def request_stop(self) -> None:
        """Ask the loop to end; returns at once. Safe in a signal handler."""
        self._stop.set()
        self._queue.put(Stop())

    def request_reload(self) -> None:
        """Ask the loop to read the configuration again. Safe in a signal handler."""
        self._queue.put(Reload())

    @property
    def roots(self) -> tuple[Root, ...]:
        return tuple(record.root for record in self._records.values())

    @property
    def pending(self) -> Batch | None:
        return self._debouncer.pending

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Watch until :meth:`request_stop`; the pending batch is saved on the way out."""
        self._saved = self._store.load()
        roots = self._wait_for_roots()
        if roots is None:
            return
        self._records = {str(root.path): _RootRecord(root) for root in roots}
        self._restore_pending()
        monitor = MountMonitor(self._queue)
        self._watcher.start()
        monitor.start()
        try:
            self._check_health(self._clock())  # watches the roots; their verification runs on its own thread
            watched = sorted(record.key for record in self._records.values() if record.watched)
            logger.info(
                "watching %d of %d roots: %s",
                len(watched),
                len(self._records),
                ", ".join(watched) if watched else "none yet",
            )
            if self._notifier.watchdog_interval:
                self._next_keepalive = self._clock()
            if not self.config.roots and self._client is not None:
                self._next_libraries = self._clock() + self.config.library_interval
            self._publish(self._clock(), force=True)
            self._ready_if_verified()
            self._loop()
        finally:
            self._notifier.notify(STOPPING="1")
            monitor.stop()
            for record in self._records.values():
                if record.poller is not None:
                    record.poller.stop()
            if not self._watcher.stop():
                # Like a queue overflow: events were lost, so whatever was being handled
                # is refreshed after the restart instead of being forgotten.
                logger.warning(
                    "watching did not stop within 1 s (a thread is stuck on a hung mount): "
                    "events may be lost, counting every root as changed"
                )
                self._debouncer.add_many(self._clock(), self._records)
            self._save()
            self._publish(self._clock(), force=True)
            batch = self._debouncer.pending
            if batch is None:
                logger.info("stopped; no changes pending")
            else:
                logger.info(
                    "stopped; %d changes pending under %s, saved in %s and refreshed after restart",
                    batch.changes,
                    _list(batch.roots),
                    self._store.path,
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            wake_at = min(
                self._next_health, self._next_attempt() or float("inf"), self._next_keepalive, self._next_libraries
            )
            try:
                item = self._queue.get(timeout=max(0.0, wake_at - now))
            except Empty:
                item = None
            now = self._clock()
            mounts_changed = reload = False
            polled: list[PollResult] = []
            pending_before = self._debouncer.pending is not None
            while item is not None:
                if isinstance(item, Stop):
                    return
                if isinstance(item, Change):
                    self._on_change(item, now)
                elif isinstance(item, MountsChanged):
                    mounts_changed = True
                elif isinstance(item, Reload):
                    reload = True
                elif isinstance(item, PollResult):
                    polled.append(item)
                elif isinstance(item, _Verified):
                    self._on_verified(item)
                elif isinstance(item, EventsLost):
                    logger.warning("the kernel's event queue overflowed: counting every root as changed")
                    self._debouncer.add_many(now, self._records)
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    item = None
            self._keepalive()
            if reload:
                self._apply_reload(now)
            elif now >= self._next_libraries:
                self._reread_libraries(now)
            if not pending_before and self._debouncer.pending is not None:
                self._save()
            if mounts_changed or now >= self._next_health or self._poll_needs_check(polled):
                self._check_health(now)
            for result in polled:
                self._on_poll(result, now)
            attempt_at = self._next_attempt()
            if attempt_at is not None and now >= attempt_at:
                try:
                    self._attempt_refresh(now)
                except Interrupted:
                    return
            self._publish(self._clock())
            self._ready_if_verified()

    def _ready_if_verified(self) -> None:
        """``READY=1`` once the first watch verification of every watched root has ended:
        from then on every folder that can be watched is (or its root is polled)."""
        if self._ready_sent or any(record.verification == "running" for record in self._records.values()):
            return
        self._ready_sent = True
        self._notifier.notify(READY="1", STATUS=self._published.status_line)

    def _next_attempt(self) -> float | None:
        deadline = self._debouncer.deadline()
        if deadline is None:
            return None
        return max(deadline, self._retry_at)

    def _on_change(self, change: Change, now: float) -> None:
        event = change.event
        paths = [str(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(str(event.dest_path))
        if event.is_directory and str(event.src_path) == change.root and event.event_type in ("deleted", "moved"):
            logger.warning("%s was %s: it is watched again when it reappears", change.root, event.event_type)
            self._next_health = now
        if self._ignore.ignores_all(change.root, paths):
            return
        removal = event.event_type in ("deleted", "moved")
        for path in paths:
            if path == change.root or path.startswith(change.root.rstrip("/") + "/"):
                self._debouncer.add(now, change.root, folder=os.path.dirname(path) or change.root, removal=removal)
        if self._refused:
            self._retry_at = 0.0  # files came back or went: predict again once the batch is due

    @staticmethod
    def _poll_needs_check(results: Sequence[PollResult]) -> bool:
        """A polling cycle that failed or found changes is checked against the root's health
        first: an unmount or a hung share must not read as a flood of deletions."""
        return any(result.failed or result.changed for result in results)

    def _on_poll(self, result: PollResult, now: float) -> None:
        record = self._records.get(result.root)
        if record is None or record.poller is None:
            return
        if result.first:
            self._watcher.unwatch(record.root.path)  # the baseline is taken: polling alone from now on
            if record.switched:
                # Whatever inotify could not see before polling took over (in the folders it
                # did not watch) is in no batch: the root counts as changed, saved at once so
                # that a restart refreshes it too.
                record.switched = False
                logger.info("polling has taken over %s: counting it as changed, inotify missed part of it", record.key)
                self._debouncer.add(now, record.key)
                self._save()
        if result.failed:
            logger.debug("polling %s: %s", result.root, result.failed)
            return
        if record.health is not None and not record.health.healthy:
            return  # the health gate holds it; the root is counted as changed when it is back
        for folder in result.changed:
            self._debouncer.add(now, result.root, folder=folder)
        busy = bool(result.changed) and not result.first
        if record.poll_busy and not busy and self._waiting_for_poll:
            self._retry_at = now  # the copy is over: the held batch may go
            self._waiting_for_poll = False
        record.poll_busy = busy

    # --- health ------------------------------------------------------------------------

    def _check_health(self, now: float) -> list[Health]:
        """Probe every root, log state changes, (re)watch roots that are back and settled."""
        records = list(self._records.values())
        results = probe_roots(
            [record.root for record in records],
            self._saved.expected_mounts(),
            self.config.probe_timeout,
            self._stop,
            self._saved.expected_below(),
        )
        if self._stop.is_set():
            return results
        learned = False
        rewatched = []
        for record, health in zip(records, results):
            previous = record.health
            record.health = health
            if previous is None or previous.state is not health.state:
                if not health.healthy:
                    logger.warning("%s", health.describe())
                elif previous is not None:
                    logger.info("%s is healthy again", record.key)
            if not health.healthy:
                record.back_since = None
                if health.state in (State.MISSING, State.UNMOUNTED) and record.watched:
                    self._unwatch(record)
                elif health.state is State.EMPTY and not record.watched:
                    # An empty folder is watched all the same, so that its first files are
                    # seen; a disk mounted over it later changes its identity (mount ID) and
                    # the root is watched again then.
                    if self._watch(record, health):
                        rewatched.append(record)
                continue
            learned |= health.learn_into(self._saved)
            if previous is None and not record.watched:
                if self._watch(record, health):
                    rewatched.append(record)
                continue
            if record.watched and record.watched_as == record.identity(health):
                record.back_since = None
                continue
            if record.back_since is None:
                record.back_since = now
                if self.config.settle > 0:
                    logger.info(
                        "%s is back: watching it again once it has stayed healthy for %g s",
                        record.key,
                        self.config.settle,
                    )
            if now - record.back_since >= self.config.settle:
                record.back_since = None
                if self._watch(record, health):
                    rewatched.append(record)
                    logger.info("watching %s again; counting it as changed, files may have arrived while it was away", record.key)
                    self._debouncer.add(now, record.key)
        if learned:
            self._save()
        self._verify(rewatched)
        if self._held and not any(self._reason(record, now) for record in records):
            self._retry_at = min(self._retry_at, now)  # the kept batch need not wait for the next recheck
        settling = [record.back_since + self.config.settle for record in records if record.back_since is not None]
        self._next_health = min([now + self.config.health_interval, *settling])
        return results

    def _mode(self, record: _RootRecord, health: Health) -> str:
        """``poll`` or ``events`` for this root: its ``mode``, or for ``auto`` polling on
        network filesystems (inotify does not see changes made on the server)."""
        if record.root.mode != "auto":
            return record.root.mode
        polled = (*self.config.network_fstypes, *self.config.list_fstypes)
        return "poll" if health.fstype in polled else "events"

    def _poll_method(self, record: _RootRecord) -> str:
        """``list`` or ``mtime``: the root's ``poll``, else ``list`` on the filesystem types
        whose folder times do not follow their contents (``watch.list_fstypes``)."""
        if record.root.poll is not None:
            return record.root.poll
        fstype = record.health.fstype if record.health is not None else None
        return "list" if fstype in self.config.list_fstypes else "mtime"

    def _unwatch(self, record: _RootRecord) -> None:
        if record.poller is not None:
            record.poller.stop()
            record.poller = None
        self._watcher.unwatch(record.root.path)
        record.watched = False
        record.verification = None
        record.switched = False

    def _poll(self, record: _RootRecord, why: str, events_meanwhile: bool = False) -> None:
        """Watch ``record`` by polling from now on. ``events_meanwhile``: keep its inotify
        watch until the first polling cycle has taken its baseline; a change made between
        the two would be seen by neither."""
        if events_meanwhile:
            if record.poller is not None:
                record.poller.stop()
                record.poller = None
        else:
            self._unwatch(record)
        interval = record.root.poll_interval or self.config.poll_interval
        # A cycle lists a share folder by folder (on rclone with its cache expired, one request
        # to the server each): it may take minutes on a large library. A hung share is the
        # health probe's to report; the cycle's deadline only ends a child that is stuck.
        timeout = max(self.config.probe_timeout, VERIFY_TIMEOUT, POLL_TIMEOUT_INTERVALS * interval)
        method = self._poll_method(record)
        record.poller = RootPoller(record.root.path, interval, timeout, self._ignore.regex, self._queue.put, method)
        record.poller.start()
        record.watched = True
        record.verification = None
        record.switched = False
        listing = " (listing every folder: folder times do not follow their contents here)" if method == "list" else ""
        logger.info("polling %s every %g s%s: %s", record.key, interval, listing, why)

    def _watch(self, record: _RootRecord, health: Health) -> bool:
        if self._mode(record, health) == "poll":
            why = "configured mode = \"poll\""
            if record.root.mode == "auto":
                why = f"{health.fstype} is a network filesystem, inotify cannot see changes made on the server"
            self._poll(record, why)
            record.watched_as = record.identity(health)
            record.problem = ""
            return True
        self._unwatch(record)
        problem = self._watcher.watch(record.root.path)
        if problem is not None:
            record.watched = False
            message = f"cannot watch {record.key}: {problem}"
            if message != record.problem:
                logger.error("%s", message)
                record.problem = message
            return False
        record.watched = True
        record.watched_as = record.identity(health)
        record.problem = ""
        return True

    def _verify(self, records: Sequence[_RootRecord]) -> None:
        """Compare each root's folders with the kernel's watches, on a thread of its own:
        the listing walks every tree (seconds on a large share; up to ``VERIFY_TIMEOUT`` on
        a hung one) and the loop must not wait for it. The result comes back as a
        :class:`_Verified` queue item."""
        records = [record for record in records if record.poller is None and record.watched]
        if not records:
            return
        timeout = max(self.config.probe_timeout, VERIFY_TIMEOUT)
        identities = [(record.key, record.watched_as) for record in records]
        paths = [record.root.path for record in records]
        fuse = [bool(record.health and record.health.fstype and record.health.fstype.split(".")[0] in ("fuse", "fuseblk"))
                for record in records]
        refused = [self._watcher.limit_failures(record.root.path) for record in records]
        for record in records:
            record.verification = "running"

        def run() -> None:
            try:
                results = tuple(coverage(paths, timeout, self._stop, fuse, refused))
            except Exception:  # a bug must not leave the verification running forever (READY waits for it)
                logger.exception("watch verification failed")
                results = tuple(Coverage(path, 0, 0, complete=False) for path in paths)
            self._queue.put(_Verified(tuple(identities), results))

        threading.Thread(target=run, name="verify-watches", daemon=True).start()

    def _on_verified(self, verified: _Verified) -> None:
        """ERROR on a shortfall, and poll the root instead where its ``fallback`` says so.
        A root watched again (or dropped) since the listing began is left to the next one."""
        for (key, watched_as), result in zip(verified.roots, verified.results):
            record = self._records.get(key)
            if record is None or not record.watched or record.poller is not None or record.watched_as != watched_as:
                continue
            record.coverage = result
            problem = result.problem()
            if problem is None:
                record.verification = "complete" if result.complete else "incomplete"
                if result.complete:
                    logger.debug("%s: all %d folders watched (%d vanished meanwhile)", record.key, result.folders,
                                 result.vanished)
                else:
                    logger.debug("%s: watch verification did not finish in time", record.key)
                continue
            record.verification = "shortfall"
            if problem != record.problem:
                # Folders the kernel never reported are a fact of the storage, handled by
                # polling; a watch limit or a permission is the user's to fix.
                level = logging.WARNING if result.cause == UNREPORTED and record.root.fallback == "poll" else logging.ERROR
                logger.log(level, "%s", problem)
                record.problem = problem
            if record.root.fallback == "poll":
                self._poll(record, "inotify cannot watch all of it (fallback = \"poll\")", events_meanwhile=True)
                # What inotify missed in the folders it did not watch is in no batch: once
                # polling has its baseline the root counts as changed (see _on_poll).
                record.switched = result.may_have_missed_changes

    def _reason(self, record: _RootRecord, now: float) -> str:
        """Why ``record`` blocks a refresh ("" when it is ready, or its health gate is off)."""
        if not record.root.health_gate:
            return ""
        if record.health is not None and not record.health.healthy:
            return record.health.describe()
        if record.back_since is not None:
            return f"{record.key} is back but settling ({now - record.back_since:.0f} s of {self.config.settle:g} s)"
        return ""

    # --- refresh -----------------------------------------------------------------------

    def _attempt_refresh(self, now: float) -> None:
        batch = self._debouncer.pending
        assert batch is not None
        # A root that is not healthy cannot finish its copy: the gate below holds the batch
        # (and says why) instead of waiting for its next polling cycle.
        busy = [
            record for key in batch.roots if (record := self._records.get(key)) is not None and record.poll_busy
            and (record.health is None or record.health.healthy)
        ]
        if busy and now - batch.first_change < self.config.max_wait:
            # Polling sees a copy in slices, one per cycle: wait for a cycle that finds
            # nothing new, or the copy becomes two refreshes and a half-copied file is scanned.
            self._waiting_for_poll = True
            interval = min(record.root.poll_interval or self.config.poll_interval for record in busy)
            self._retry_at = min(now + interval, batch.first_change + self.config.max_wait)
            return
        self._check_health(now)
        if self._stop.is_set():
            raise Interrupted
        batch = self._debouncer.pending
        assert batch is not None
        ready_roots, blocked = self._gate(batch, now)
        if blocked:
            self._hold(batch, ready_roots, blocked, now)
            if not ready_roots:
                return
        elif self._held:
            logger.info("every root is healthy again: sending the kept batch")
            self._held = ""
        if ready_roots == batch.roots:
            description = f"{batch.changes} changes under {_list(batch.roots)}"
        else:
            description = f"the changes under {_list(ready_roots)}"
        logger.info("batch due: %s", description)
        client = self._client
        asked = False
        if client is not None and self.config.scope == "server":
            asked = True
            try:
                if self._call(client.library_scan_running):
                    if not self._waiting_for_scan:
                        logger.info("a library scan is running in Jellyfin: waiting for it to end before refreshing")
                        self._waiting_for_scan = True
                    self._retry_at = self._clock() + SCAN_RUNNING_RECHECK
                    return
            except JellyfinError as error:
                self._failed(error, batch)
                return
            self._waiting_for_scan = False
        # A root whose health gate is off may be refreshed while unhealthy (a disk below it
        # gone): a scan can then remove items whatever the batch holds.
        ungated = any(not r.root.health_gate and r.health is not None and not r.health.healthy for r in self._records.values())
        if client is not None and self.config.guard and (batch.removals or ungated):
            asked = True
            try:
                refusal = self._call(lambda: self._predict(client, ready_roots))
            except JellyfinError as error:
                self._failed(error, batch)
                return
            if refusal:
                if refusal != self._refused:
                    logger.error("refresh refused: %s; keeping the changes", refusal)
                    self._refused = refusal
                self._retry_at = now + GUARD_RECHECK
                return
            if self._refused:
                logger.info("the loss guard no longer objects: refreshing")
                self._refused = ""
        if asked:
            # Jellyfin's answers above may each take up to jellyfin.timeout: probe again right
            # before the refresh, so that storage gone in the meantime still holds it back.
            now = self._clock()
            self._check_health(now)
            if self._stop.is_set():
                raise Interrupted
            still_ready, blocked = self._gate(batch, now)
            if blocked:
                self._hold(batch, still_ready, blocked, now)
                ready_roots &= still_ready
                if not ready_roots:
                    return
        taken = self._debouncer.take(ready_roots)
        if taken is None:
            return
        roots = {key: record.root for key, record in self._records.items()}
        requests = plan(taken, roots, self.config.scope, self.config.jellyfin_path)
        if client is None:
            for request in requests:
                logger.info("dry run: would send %s for %s", request.describe(), description)
            self._refreshed(now, "dry run: not sent")
            return
        sent: set[str] = set()
        try:
            for request in requests:
                self._call(lambda request=request: send(client, request))
                sent |= request.roots
                logger.info("refresh sent: %s for %s", request.describe(), description)
        except BaseException as error:
            unsent = taken.roots - sent
            self._debouncer.restore(_part(taken, unsent) if sent else taken)
            if isinstance(error, JellyfinError):
                self._failed(error, taken)
                return
            raise
        self._refreshed(now, "sent")

    def _hold(self, batch: Batch, ready_roots: frozenset[str], blocked: Sequence[str], now: float) -> None:
        """The health gate holds (part of) ``batch`` back: say why, once per reason; recheck later."""
        held = "; ".join(blocked)
        if held != self._held:
            kept = f"{batch.changes} changes" if not ready_roots else f"the changes under {_list(batch.roots - ready_roots)}"
            logger.warning("refresh suppressed: %s; keeping %s until every root is healthy", held, kept)
            self._held = held
        self._retry_at = now + SUPPRESSED_RECHECK

    def _predict(self, client: JellyfinClient, roots: frozenset[str]) -> str:
        """Run the loss guard for the libraries a refresh of ``roots`` would scan; returns
        the refusal ("" when the refresh may go ahead)."""
        libraries = client.libraries()
        wanted = {self._records[key].root.library_id for key in roots if key in self._records}
        if self.config.scope != "server" and None not in wanted:
            libraries = [library for library in libraries if library.item_id in wanted]
        refusals = []
        timeout = self.config.guard_timeout
        for library in libraries:
            prediction = predict(client, library, lambda path: str(self.config.map_path(path)), timeout, self._stop)
            logger.debug("loss guard: %s (%d pages)", prediction.describe(), prediction.pages)
            count, share = self.config.limits_for(library.name)
            if prediction.refused(Limits(count, share)):
                hint = "" if prediction.unresponsive else (
                    f" (if this clean-up is deliberate: jellyfin-watcher refresh --allow-removals {prediction.missing})"
                )
                refusals.append(prediction.describe() + hint)
        return "; ".join(refusals)

    def _gate(self, batch: Batch, now: float) -> tuple[frozenset[str], list[str]]:
        """Which of the batch's roots may be refreshed now, and why the others may not.

        ``gate = "all"`` (or a server-wide scope): every root must be ready, else nothing
        goes. ``gate = "library"``: a library may be refreshed when all of *its* roots are
        ready; a root with no known library needs every root ready.
        """
        blocked = {record.key: reason for record in self._records.values() if (reason := self._reason(record, now))}
        if not blocked:
            return batch.roots, []
        if self.config.gate == "all" or self.config.scope == "server":
            return frozenset(), list(blocked.values())
        library_of = {key: record.root.library_id for key, record in self._records.items()}
        blocked_libraries = {library_of[key] for key in blocked}
        wanted = {library_of.get(key) for key in batch.roots}
        ready = frozenset(
            key for key in batch.roots if library_of.get(key) is not None and library_of[key] not in blocked_libraries
        )
        relevant = [reason for key, reason in blocked.items() if None in wanted or library_of[key] in wanted]
        return ready, relevant

    def _refreshed(self, now: float, result: str) -> None:
        self.refreshes += 1
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._last_refresh = _LastRefresh(time.time(), result)
        self._save()

    def _failed(self, error: JellyfinError, batch: Batch) -> None:
        self._failures += 1
        delay = min(self.config.backoff_max, BACKOFF_START * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + delay
        message = str(error)
        self._last_refresh = _LastRefresh(time.time(), f"failed: {message}")
        if isinstance(error, KeyRejected):
            if message != self._last_error:
                logger.error("%s; keeping %d changes and watching on", message, batch.changes)
        elif isinstance(error, ServerUnavailable):
            logger.warning("refresh failed: %s; keeping %d changes, retrying in %g s", message, batch.changes, delay)
        else:
            logger.error("refresh failed: %s; keeping %d changes, retrying in %g s", message, batch.changes, delay)
        self._last_error = message

    def _keepalive(self) -> None:
        """Send WATCHDOG=1 if one is due."""
        now = self._clock()
        if now >= self._next_keepalive:
            self._notifier.notify(WATCHDOG="1")
            self._next_keepalive = now + (self._notifier.watchdog_interval or float("inf"))

    def _call(self, function: Callable[[], _T]) -> _T:
        """Run a blocking Jellyfin request on a daemon thread; give up waiting on stop."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                outcome["value"] = function()
            except BaseException as error:  # handed to the loop's thread
                outcome["error"] = error
            finally:
                done.set()

        threading.Thread(target=target, name="jellyfin-request", daemon=True).start()
        while not done.wait(0.1):
            if self._stop.is_set():
                raise Interrupted
            self._keepalive()  # alive, waiting with a deadline: keep systemd's watchdog fed
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    # --- configuration ---------------------------------------------------------------

    def _apply_reload(self, now: float) -> None:
        """SIGHUP: read the configuration again; keep the old one if the new one is bad.
        The pending batch is kept either way."""
        if self._reload is None:
            return
        try:
            config, client = self._reload()
            roots = self._call(lambda: self._resolve_roots(config))
        except (ConfigError, JellyfinError) as error:
            logger.error("configuration not reloaded, keeping the previous one: %s", error)
            return
        except Interrupted:
            return
        if self._client is not None and self._client is not client:
            self._client.close()
        self.config, self._client = config, client
        self._debouncer.quiet_period = config.quiet_period
        self._debouncer.max_wait = config.max_wait
        self._ignore = IgnoreFilter(config.ignore)
        self._set_roots(roots, "configuration")
        logger.info("configuration reloaded")
        self._check_health(now)

    def _reread_libraries(self, now: float) -> None:
        """Every ``library_interval``: pick up libraries added or removed in Jellyfin."""
        self._next_libraries = now + self.config.library_interval
        try:
            roots = self._call(lambda: self._resolve_roots(self.config))
        except (ConfigError, JellyfinError) as error:
            logger.warning("cannot re-read the libraries from Jellyfin: %s; keeping the current roots", error)
            return
        if self._set_roots(roots, "Jellyfin's libraries"):
            self._check_health(now)

    def _set_roots(self, roots: Sequence[Root], source: str) -> bool:
        """Watch the new roots and drop the removed ones, one log line each. True if the
        set changed. The pending batch is kept whole."""
        wanted = {str(root.path): root for root in roots}
        changed = False
        for key in sorted(set(self._records) - set(wanted)):
            self._unwatch(self._records.pop(key))
            logger.info("no longer watching %s (removed from %s)", key, source)
            changed = True
        for key, root in wanted.items():
            record = self._records.get(key)
            if record is None:
                self._records[key] = _RootRecord(root)
                library = f", library {root.library_name}" if root.library_name else ""
                logger.info("now watching %s (added to %s%s)", key, source, library)
                changed = True
            elif record.root != root:
                record.root = root
        return changed

    # --- start-up, state and status --------------------------------------------------

    def _wait_for_roots(self) -> Sequence[Root] | None:
        failures = 0
        while not self._stop.is_set():
            try:
                return self._call(lambda: self._resolve_roots(self.config))
            except Interrupted:
                return None
            except JellyfinError as error:
                failures += 1
                delay = min(self.config.backoff_max, BACKOFF_START * 2 ** (failures - 1))
                logger.warning("cannot read the libraries from Jellyfin: %s; retrying in %g s", error, delay)
                if self._stop.wait(delay):
                    return None
        return None

    def _restore_pending(self) -> None:
        pending = self._saved.pending
        if pending is None:
            return
        roots = [root for root in pending.roots if root in self._records] or sorted(self._records)
        past = self._clock() - max(self.config.quiet_period, self.config.max_wait)
        # The state file keeps roots and a count, not the folders that changed: each root
        # counts as changed as a whole, or a path-scoped refresh would cover only the
        # folders of changes made after the restart.
        self._debouncer.restore(Batch(frozenset(roots), pending.changes, past, past, whole_roots=frozenset(roots)))
        logger.info(
            "%d changes under %s were pending when the watcher last stopped: refreshing them once every root is healthy",
            pending.changes,
            _list(roots),
        )

    def _save(self) -> None:
        batch = self._debouncer.pending
        self._saved.pending = None if batch is None else PendingChanges(sorted(batch.roots), batch.changes)
        self._store.save(self._saved)

    def _publish(self, now: float, force: bool = False) -> None:
        """Write the status file and send STATUS= when the state changed (a change of the
        pending count alone is written at most every few seconds)."""
        batch = self._debouncer.pending
        held = self._held or self._refused or (self._last_error if batch is not None and self._last_error else "")
        roots = []
        for record in self._records.values():
            health = record.health
            roots.append(
                {
                    "path": record.key,
                    "mount_point": str(health.mount_point) if health and health.mount_point else None,
                    "fstype": health.fstype if health else None,
                    "state": "settling" if record.back_since is not None else (health.state.value if health else "unknown"),
                    "reason": health.reason if health else "",
                    "watched": record.watched,
                    "watched_directories": (
                        record.poller.directories
                        if record.poller is not None
                        else record.coverage.watched if record.coverage else None
                    ),
                    "mode": "poll" if record.poller is not None else "events" if record.watched else None,
                    "poll": record.poller.method if record.poller is not None else None,
                    "verification": record.verification,
                }
            )
        pending = None
        if batch is not None:
            due = self._next_attempt()
            pending = {
                "changes": batch.changes,
                "roots": sorted(batch.roots),
                "due": None if due is None else time.time() + (due - now),
                "held": held or None,
            }
        last = None if self._last_refresh is None else {"time": self._last_refresh.time, "result": self._last_refresh.result}
        signature = (
            tuple((root["path"], root["state"], root["reason"], root["watched"], root["watched_directories"],
                   root["mode"], root["verification"]) for root in roots),
            None if batch is None else (batch.roots, held, batch.first_change),
            None if last is None else (last["time"], last["result"]),
            self._stop.is_set(),
        )
        changes = None if batch is None else batch.changes
        count_due = changes != self._published.changes and now - self._published.written_at >= STATUS_COUNT_INTERVAL
        if not force and signature == self._published.signature and not count_due:
            return
        self._published.signature = signature
        self._published.changes = changes
        self._published.written_at = now
        document = {
            "pid": os.getpid(),
            "started": self._started,
            "dry_run": self._client is None,
            "verified": not any(root["verification"] == "running" for root in roots),
            "roots": roots,
            "pending": pending,
            "last_refresh": last,
        }
        try:
            status_file.write(self.config.state_dir, document)
        except OSError as error:
            logger.debug("cannot write the status file: %s", error)
        line = _status_line(document)
        if line != self._published.status_line:
            self._published.status_line = line
            self._notifier.notify(STATUS=line)


def _status_line(document: dict[str, Any]) -> str:
    """``watching 4 roots · 1 unhealthy: /mnt/usb (unmounted) · 37 changes pending · last refresh 12:03``"""
    roots = document["roots"]
    parts = [f"watching {sum(1 for root in roots if root['watched'])} of {len(roots)} roots"]
    unhealthy = [root for root in roots if root["state"] != "healthy"]
    if unhealthy:
        parts.append(f"{len(unhealthy)} unhealthy: " + ", ".join(f"{root['path']} ({root['state']})" for root in unhealthy))
    pending = document["pending"]
    if pending:
        parts.append(f"{pending['changes']} changes pending" + (" (held back)" if pending.get("held") else ""))
    last = document["last_refresh"]
    if last:
        parts.append(f"last refresh {time.strftime('%H:%M', time.localtime(last['time']))} ({last['result'].split(':')[0]})")
    return " · ".join(parts)


def send(client: JellyfinClient, request: RefreshRequest) -> None:
    """Send one planned refresh request. Raises JellyfinError."""
    if request.kind == "server":
        client.refresh_library()
    elif request.kind == "library":
        assert request.library_id is not None
        client.refresh_item(request.library_id)
    else:
        client.media_updated(request.paths)


def _part(batch: Batch, roots: frozenset[str]) -> Batch:
    """The part of ``batch`` under ``roots`` (its change count shared out by root)."""
    share = max(1, batch.changes * len(roots) // max(1, len(batch.roots)))
    folders = frozenset(f for f in batch.folders if any(f == r or f.startswith(r.rstrip("/") + "/") for r in roots))
    return Batch(roots, share, batch.first_change, batch.last_change, folders, batch.whole_roots & roots)


def _list(roots: Any) -> str:
    items = sorted(roots)
    if len(items) <= 3:
        return ", ".join(items)
    return f"{', '.join(items[:3])} and {len(items) - 3} more"
