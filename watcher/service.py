"""The daemon: events → batch → health gate → refresh.

One loop on the calling thread reads the clock and decides; watchdog, the mount monitor and
signal handlers only put items on its queue. The loop sleeps until the next thing it has to
do (a batch falling due, a retry, the periodic health check) or until an item arrives: no
polling while idle.

Before every refresh every root is probed (:mod:`watcher.health`). If any root is not
healthy the refresh is suppressed and the batch kept — never dropped — until every root is
healthy again; the WARNING is logged when a root's state changes, not on every retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from watcher.config import Config, Root
from watcher.debounce import Batch, Debouncer
from watcher.errors import JellyfinError, KeyRejected, ServerUnavailable
from watcher.filters import IgnoreFilter
from watcher.health import Health, State, probe_roots
from watcher.jellyfin import JellyfinClient
from watcher.state import PendingChanges, SavedState, StateStore
from watcher.watch import Change, EventsLost, MountMonitor, MountsChanged, RootWatcher

logger = logging.getLogger(__name__)

SUPPRESSED_RECHECK = 5.0
"""Seconds between health checks while a due batch is held back by an unhealthy root (a
change of the mount table triggers one at once)."""
SCAN_RUNNING_RECHECK = 5.0
"""Seconds between looks at Jellyfin's scan task while waiting for a running scan to end."""
HEALTH_INTERVAL = 60.0
"""Seconds between periodic health checks, for what the mount table cannot show."""
BACKOFF_START = 1.0
"""Seconds before the first retry of a failed refresh; doubles up to ``backoff_max``."""

_T = TypeVar("_T")


class Stop:
    """Queue item: end the loop."""


class Interrupted(Exception):
    """A stop was requested while waiting on Jellyfin."""


class Service:
    """The watcher daemon.

    ``resolve_roots`` returns the roots to watch (from the configuration or Jellyfin's
    libraries) and may raise :class:`~watcher.errors.JellyfinError`; the service then
    retries with backoff. ``client`` is None in dry-run mode. ``clock`` returns seconds.
    """

    def __init__(
        self,
        config: Config,
        resolve_roots: Callable[[], Sequence[Root]],
        client: JellyfinClient | None,
        store: StateStore,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[Service], None] | None = None,
    ) -> None:
        self.config = config
        self._resolve_roots = resolve_roots
        self._client = client
        self._store = store
        self._clock = clock
        self._on_ready = on_ready
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._stop = threading.Event()
        self._debouncer = Debouncer(config.quiet_period, config.max_wait)
        self._ignore = IgnoreFilter(config.ignore)
        self._roots: tuple[Root, ...] = ()
        self._health: dict[str, Health] = {}
        self._saved = SavedState()
        self._retry_at = 0.0
        self._failures = 0
        self._next_health = 0.0
        self._suppressed_by: tuple[str, ...] = ()
        self._waiting_for_scan = False
        self._last_error = ""
        self.refreshes = 0

    # --- control, safe from signal handlers and other threads ------------------------

    def request_stop(self) -> None:
        """Ask the loop to end; returns at once. Safe in a signal handler."""
        self._stop.set()
        self._queue.put(Stop())

    @property
    def roots(self) -> tuple[Root, ...]:
        return self._roots

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
        self._roots = tuple(roots)
        self._restore_pending()
        watcher = RootWatcher(self._queue)
        monitor = MountMonitor(self._queue)
        watcher.start()
        monitor.start()
        self._watcher = watcher
        try:
            self._check_health(self._clock())
            watched = sorted(watcher.watched)
            logger.info(
                "watching %d of %d roots: %s",
                len(watched),
                len(self._roots),
                ", ".join(watched) if watched else "none yet",
            )
            if self._on_ready is not None:
                self._on_ready(self)
            self._loop()
        finally:
            monitor.stop()
            watcher.stop()
            self._save()
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
            wake_at = min(self._next_health, self._next_attempt() or float("inf"))
            try:
                item = self._queue.get(timeout=max(0.0, wake_at - now))
            except Empty:
                item = None
            now = self._clock()
            mounts_changed = False
            pending_before = self._debouncer.pending is not None
            while item is not None:
                if isinstance(item, Stop):
                    return
                if isinstance(item, Change):
                    self._on_change(item, now)
                elif isinstance(item, MountsChanged):
                    mounts_changed = True
                elif isinstance(item, EventsLost):
                    logger.warning("the kernel's event queue overflowed: counting every root as changed")
                    self._debouncer.add_many(now, (str(root.path) for root in self._roots))
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    item = None
            if not pending_before and self._debouncer.pending is not None:
                self._save()
            if mounts_changed or now >= self._next_health:
                self._check_health(now)
            attempt_at = self._next_attempt()
            if attempt_at is not None and now >= attempt_at:
                try:
                    self._attempt_refresh(now)
                except Interrupted:
                    return

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
        if self._ignore.ignores_all(change.root, paths):
            return
        if event.is_directory and str(event.src_path) == change.root and event.event_type == "deleted":
            logger.warning("%s was deleted: it is watched again when it reappears", change.root)
            self._next_health = now
        self._debouncer.add(now, change.root)

    # --- health ------------------------------------------------------------------------

    def _check_health(self, now: float) -> list[Health]:
        """Probe every root, log state changes, (re)watch roots that are back."""
        expected = {Path(path): Path(mount) for path, mount in self._saved.mounts.items()}
        results = probe_roots(self._roots, expected, self.config.probe_timeout, self._stop)
        learned = False
        for health in results:
            key = str(health.root.path)
            previous = self._health.get(key)
            self._health[key] = health
            changed_state = previous is None or previous.state is not health.state
            if not health.healthy:
                if changed_state:
                    logger.warning("%s", health.describe())
                if health.state in (State.MISSING, State.UNMOUNTED, State.EMPTY):
                    self._watcher.unwatch(health.root.path)
                continue
            if previous is not None and changed_state:
                logger.info("%s is healthy again", key)
            if health.root.mount is None and key not in self._saved.mounts and health.mount_point is not None:
                self._saved.mounts[key] = str(health.mount_point)
                learned = True
            replaced = previous is not None and previous.inode is not None and (
                (previous.device, previous.inode) != (health.device, health.inode)
            )
            if key not in self._watcher.watched or replaced or (previous is not None and changed_state):
                self._rewatch(health, now, first=previous is None)
        if learned:
            self._save()
        self._next_health = now + HEALTH_INTERVAL
        return results

    def _rewatch(self, health: Health, now: float, first: bool) -> None:
        problem = self._watcher.watch(health.root.path)
        key = str(health.root.path)
        if problem is not None:
            logger.error("cannot watch %s: %s", key, problem)
            return
        if not first:
            logger.info("watching %s again; counting it as changed, files may have arrived while it was away", key)
            self._debouncer.add(now, key)

    # --- refresh -----------------------------------------------------------------------

    def _attempt_refresh(self, now: float) -> None:
        batch = self._debouncer.pending
        assert batch is not None
        results = self._check_health(now)
        unhealthy = tuple(health.describe() for health in results if not health.healthy)
        if unhealthy:
            if unhealthy != self._suppressed_by:
                logger.warning(
                    "refresh suppressed: %s; keeping %d changes until every root is healthy",
                    "; ".join(unhealthy),
                    batch.changes,
                )
                self._suppressed_by = unhealthy
            self._retry_at = now + SUPPRESSED_RECHECK
            return
        if self._suppressed_by:
            logger.info("every root is healthy again: sending the kept batch")
            self._suppressed_by = ()
        # Re-read: the health check may have added roots that came back.
        batch = self._debouncer.pending
        assert batch is not None
        description = f"{batch.changes} changes under {_list(batch.roots)}"
        logger.info("batch due: %s", description)
        if self._client is None:
            self._debouncer.take()
            self._save()
            self.refreshes += 1
            logger.info("dry run: would send POST /Library/Refresh for %s", description)
            return
        client = self._client
        try:
            if self._call(client.library_scan_running):
                if not self._waiting_for_scan:
                    logger.info("a library scan is running in Jellyfin: waiting for it to end before refreshing")
                    self._waiting_for_scan = True
                self._retry_at = self._clock() + SCAN_RUNNING_RECHECK
                return
            self._waiting_for_scan = False
            taken = self._debouncer.take()
            assert taken is not None
            try:
                self._call(client.refresh_library)
            except BaseException:
                self._debouncer.restore(taken)
                raise
        except JellyfinError as error:
            self._failed(error, batch)
            return
        self.refreshes += 1
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._save()
        logger.info("refresh sent: POST /Library/Refresh for %s", description)

    def _failed(self, error: JellyfinError, batch: Batch) -> None:
        self._failures += 1
        delay = min(self.config.backoff_max, BACKOFF_START * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + delay
        message = str(error)
        if isinstance(error, KeyRejected):
            if message != self._last_error:
                logger.error("%s; keeping %d changes and watching on", message, batch.changes)
        elif isinstance(error, ServerUnavailable):
            logger.warning("refresh failed: %s; keeping %d changes, retrying in %g s", message, batch.changes, delay)
        else:
            logger.error("refresh failed: %s; keeping %d changes, retrying in %g s", message, batch.changes, delay)
        self._last_error = message

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
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    # --- start-up and state --------------------------------------------------------------

    def _wait_for_roots(self) -> Sequence[Root] | None:
        failures = 0
        while not self._stop.is_set():
            try:
                return self._call(self._resolve_roots)
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
        known = {str(root.path) for root in self._roots}
        roots = [root for root in pending.roots if root in known] or sorted(known)
        now = self._clock()
        past = now - max(self.config.quiet_period, self.config.max_wait)
        self._debouncer.restore(Batch(frozenset(roots), pending.changes, past, past))
        logger.info(
            "%d changes under %s were pending when the watcher last stopped: refreshing them once every root is healthy",
            pending.changes,
            _list(roots),
        )

    def _save(self) -> None:
        batch = self._debouncer.pending
        self._saved.pending = None if batch is None else PendingChanges(sorted(batch.roots), batch.changes)
        self._store.save(self._saved)


def _list(roots: Any) -> str:
    items = sorted(roots)
    if len(items) <= 3:
        return ", ".join(items)
    return f"{', '.join(items[:3])} and {len(items) - 3} more"
