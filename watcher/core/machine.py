"""The daemon's state and rules, as one state machine fed by the service loop.

:class:`Core` takes each queue item with the clock reading the loop took, updates what it
knows (roots, the pending batch, open files, the refresh under way), and returns the
actions to take. It never reads the clock, touches the filesystem or the network, or logs:
log lines are actions too. The loop (:mod:`watcher.service`) is the only place that reads
the clock, and the executor (:mod:`watcher.edges.workers`) the only one that acts.

The rules themselves live in small pieces: :mod:`~watcher.core.debounce` (when a batch is
due), :mod:`~watcher.core.writes` (files still being written), :mod:`~watcher.core.roots`
(one root's health and watch), :mod:`~watcher.core.gate`, :mod:`~watcher.core.decide` (the
steps before a refresh), :mod:`~watcher.core.scope` (what to send), and
:mod:`~watcher.core.backoff`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from watcher.config import Config, Root
from watcher.core import decide as steps
from watcher.core.backoff import Backoff
from watcher.core.debounce import Batch, Debouncer
from watcher.core.decide import Attempt, Decision, Situation, decide, refusals
from watcher.core.filters import IgnoreFilter
from watcher.core.gate import RootView
from watcher.core.guard import Prediction
from watcher.core.messages import (
    Action,
    AskScan,
    BackedUp,
    BackUp,
    CheckViews,
    CheckWrites,
    EventsLost,
    Exit,
    FileEvent,
    JobCrashed,
    JobFailed,
    MountsChanged,
    PollResult,
    Predict,
    Predicted,
    Probe,
    Probed,
    ReadRoots,
    Ready,
    Reload,
    RootsRead,
    Save,
    ScanChecked,
    Send,
    SendDone,
    Tick,
    Unwatch,
    Verified,
    Verify,
    ViewsChecked,
    Watched,
    WritesChecked,
    debug,
    error,
    info,
    warning,
)
from watcher.core.notices import DaemonView, Failure, PendingView, RefreshView, Refusal
from watcher.core.notices import RootView as NoticeRoot
from watcher.core.roots import RootTracker
from watcher.core.scope import RefreshRequest, plan
from watcher.core.serverview import reasons as view_reasons
from watcher.core.state import PendingChanges, SavedState
from watcher.core.writes import WriteTracker
from watcher.errors import (
    ConfigError,
    KeyRejected,
    ServerUnavailable,
    SetupError,
    WatcherError,
)
from watcher.paths import within

READY_DEADLINE = 30.0
"""Seconds after the first probe by which start-up counts as done (``READY=1``) even if a
watch is still being set up (a walk stuck on a hung mount)."""


@dataclass(slots=True)
class LastRefresh:
    """``at``: clock reading; ``result``: ``sent``, ``dry run: not sent`` or ``failed: …``."""

    at: float
    result: str


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """The last backup Jellyfin wrote for the watcher: ``at`` is a clock reading."""

    archive: str
    path: str
    holds: tuple[str, ...]
    version: str
    at: float
    removals: int


@dataclass(slots=True)
class _Probing:
    """The probe under way (its start), and whether another must follow it."""

    started_at: float | None = None
    again: bool = False
    due_at: float = 0.0
    """When the next periodic (or rechecking) probe is due."""


@dataclass(slots=True)
class _Jobs:
    """Jobs for Jellyfin (and open-file checks) under way: at most one of each kind."""

    running: set[str] = field(default_factory=set)
    sending: Batch | None = None
    """The batch of the :class:`~watcher.core.messages.Send` under way (not in the debouncer)."""
    description: str = ""
    """How the batch being sent is named in the log ("12 changes under …", or "the
    changes under …" when the gate let only part of it go)."""


class Core:
    """The daemon's rules. Feed it with :meth:`start` and :meth:`handle`; do what it returns.

    ``saved``: the state loaded at start (learned mount points, a batch pending from the
    last run). ``dry_run``: no client, Jellyfin is never contacted.
    """

    def __init__(self, config: Config, saved: SavedState, dry_run: bool = False) -> None:
        self.config = config
        self.saved = saved
        self.dry_run = dry_run
        self.roots: dict[str, RootTracker] = {}
        self.debouncer = Debouncer(config.watch.quiet_period, config.watch.max_wait)
        self.writes = WriteTracker()
        self.ignore = IgnoreFilter(config.watch.ignore)
        self.removals = 0
        """Removal events counted since start (a prediction older than the last is stale)."""
        self.attempt: Attempt | None = None
        self.retry_at = 0.0
        """No attempt before this clock reading (backoff, a refusal, a running scan)."""
        self.writes_recheck_at = 0.0
        self.backoff = Backoff(config.watch.backoff_max)
        self.held = ""
        """The gate's reasons last logged (logged again only when they change)."""
        self.held_since: float | None = None
        self.refusals: tuple[Prediction, ...] = ()
        """The predictions the loss guard refuses the pending batch for."""
        self.refused_since: float | None = None
        self.failing_since: float | None = None
        """When the refresh attempts began to fail (None: the last one did not)."""
        self.failure: WatcherError | None = None
        self.last_sent: RefreshView | None = None
        self.refused = ""
        self.views_held = ""
        """Why Jellyfin's view holds the batch, as last logged ("" when it agrees)."""
        self.backup_held = ""
        """Why a failed backup holds the batch ("" when none did)."""
        self.backed_up: int | None = None
        """Removals the last backup covered, for retries of the same batch (None: none yet)."""
        self.last_backup: BackupRecord | None = None
        self.waiting_for_scan = False
        self.last_error = ""
        self.last_refresh: LastRefresh | None = None
        self.last_sending: Batch | None = None
        self.refreshes = 0
        self._now = 0.0
        """The clock reading of the item being handled (for state-change times)."""
        self.probing = _Probing()
        self.probed_at: float | None = None
        self.jobs = _Jobs()
        self.tickets = 0
        self.started = False
        """The roots are known (start-up read them)."""
        self.ready = False
        self.ready_at = float("inf")
        self.first_watches: set[str] = set()
        self.read_roots_at: float | None = None
        """When start-up retries reading the roots (after a failure)."""
        self.read_backoff = Backoff(config.watch.backoff_max)
        self.libraries_at = float("inf")
        self.verifications_waiting: list[tuple[float, Verified]] = []
        """Verification shortfalls that wait for a probe begun after them."""
        self.polls_waiting: list[tuple[float, PollResult]] = []
        """Polling results that wait for a probe begun after them (an unmount must not
        read as a flood of deletions)."""
        self.wake_at = float("inf")
        """When the loop must call :meth:`handle` with :class:`Tick` at the latest."""
        self._last_relevance: tuple[IgnoreFilter, str, str, bool, str, bool] | None = None
        """The filter, root, path and verdict of the last event's path, its folder, and
        whether that folder is known to be clear of ignored components (:meth:`_relevant`)."""

    # --- entry points ------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: read the roots (from the configuration, or Jellyfin's libraries)."""
        self.jobs.running.add("ReadRoots")
        self.wake_at = float("inf")
        return [ReadRoots("start")]

    def feed(self, now: float, item: object) -> list[Action]:
        """:meth:`handle` then :meth:`advance`: one item, and what follows from it."""
        return [*self.handle(now, item), *self.advance(now)]

    def advance(self, now: float) -> list[Action]:
        """After the items that arrived together: start what is due, take the next step
        with the pending batch, and set :attr:`wake_at`."""
        actions: list[Action] = []
        self._advance(now, actions)
        return actions

    def handle(self, now: float, item: object) -> list[Action]:
        """Take one queue item; return the actions to execute, in order. Call
        :meth:`advance` after the items that arrived together."""
        actions: list[Action] = []
        self._now = now
        match item:
            case FileEvent():
                self._on_event(now, item, actions)
            case PollResult():
                self._on_poll_result(now, item, actions)
            case MountsChanged(points=points):
                if points is None or self._mounts_concern_roots(points):
                    self._want_probe(now)
            case EventsLost(root=None):
                actions.append(warning("the kernel's event queue overflowed: counting every root as changed"))
                self.debouncer.add_many(now, self.roots)
                self.writes.forget_all()
            case EventsLost(root=str() as root) if root in self.roots:
                actions.append(warning(f"the kernel's event queue overflowed: counting {root} as changed"))
                self.debouncer.add(now, root)
                self.writes.forget_below(root)
            case EventsLost():
                pass
            case Probed():
                self._on_probed(now, item, actions)
            case Watched():
                self._on_watched(now, item, actions)
            case Verified():
                self._on_verified(now, item, actions)
            case WritesChecked():
                self._on_writes_checked(now, item, actions)
            case RootsRead():
                self._on_roots_read(now, item, actions)
            case ScanChecked():
                self._on_scan_checked(now, item, actions)
            case Predicted():
                self._on_predicted(now, item, actions)
            case ViewsChecked():
                self._on_views_checked(now, item, actions)
            case BackedUp():
                self._on_backed_up(now, item, actions)
            case SendDone():
                self._on_sent(now, item, actions)
            case JobFailed() | JobCrashed():
                self._on_job_failed(now, item, actions)
            case Reload():
                if "ReadRoots" not in self.jobs.running:
                    self.jobs.running.add("ReadRoots")
                    actions.append(ReadRoots("reload"))
            case Tick():
                pass
            case _:
                raise TypeError(f"unexpected queue item {item!r}")
        return actions

    def stop(self, now: float, events_lost: bool = False) -> list[Action]:
        """The daemon stops: a batch being sent goes back to the pending batch (it may not
        have reached Jellyfin), which is saved. ``events_lost``: watching did not stop in
        time, so every root counts as changed."""
        actions: list[Action] = []
        if self.jobs.sending is not None:
            self.debouncer.restore(self.jobs.sending)
            self.jobs.sending = None
        if events_lost:
            actions.append(
                warning(
                    "watching did not stop within 1 s (a thread is stuck on a hung mount): "
                    "events may be lost, counting every root as changed"
                )
            )
            self.debouncer.add_many(now, self.roots)
        actions.append(self._save())
        return actions

    # --- queries -----------------------------------------------------------------------

    @property
    def pending(self) -> Batch | None:
        return self.debouncer.pending

    def due_at(self, now: float) -> float | None:
        """When the pending batch falls due: its quiet period or ``max_wait``, no earlier
        than a retry after a failure, and held while a polled root under it still changes
        (a copy arrives in slices, one per polling cycle) — up to ``max_wait``."""
        batch = self.debouncer.pending
        deadline = self.debouncer.deadline()
        if batch is None or deadline is None:
            return None
        due = max(deadline, self.retry_at, self.writes_recheck_at)
        # A root that is not healthy cannot finish its copy: the gate holds the batch (and
        # says why) instead of waiting for its next polling cycle.
        busy = [
            tracker for key in batch.roots if (tracker := self.roots.get(key)) is not None and tracker.poll_busy
            and (tracker.health is None or tracker.health.healthy)
        ]
        if busy and now - batch.first_change < self.config.watch.max_wait:
            due = max(due, batch.first_change + self.config.watch.max_wait)
        return due

    def held_reason(self) -> str:
        """Why the pending batch is held back ("" when it is not)."""
        batch = self.debouncer.pending
        for reason in (self.held, self.refused, self.views_held, self.backup_held):
            if reason:
                return reason
        return self.last_error if batch is not None else ""

    # --- events ------------------------------------------------------------------------

    def _on_event(self, now: float, event: FileEvent, actions: list[Action]) -> None:
        root = event.root
        tracker = self.roots.get(root)
        if tracker is None or tracker.watch != "events" and tracker.watch != "poll":
            return
        paths = [event.path, event.dest] if event.dest else [event.path]
        if event.is_directory and event.path == root and event.kind in ("deleted", "moved"):
            actions.append(warning(f"{root} was {event.kind}: it is watched again when it reappears"))
            self._want_probe(now)
        relevant = self._relevant(root, event.path) or bool(event.dest) and self._relevant(root, event.dest)
        self._track_writes(now, event, relevant)
        if not relevant:
            return
        removal = event.kind in ("deleted", "moved")
        if removal:
            self.removals += 1
        # Once the root counts as changed as a whole, its folders are not kept: nothing more
        # to work out than that the change counts.
        whole = self.debouncer.counts_whole(root)
        for path in paths:
            if within(path, root):
                self._count(now, root, None if whole else os.path.dirname(path) or root, removal)

    def _relevant(self, root: str, path: str) -> bool:
        """Whether a change at ``path`` under ``root`` matters (no component of it below the
        root is ignored). The verdict on the last path is kept, and whether its folder is
        known to be clear: a file's creation and its close come one after the other, and a
        copy writes many files into one folder, so most events need one pattern match (on
        the name), or none."""
        ignore = self.ignore
        last = self._last_relevance
        folder = path[: path.rfind("/")]
        if last is not None and last[0] is ignore and last[1] == root:
            if last[2] == path:
                return last[3]
            if last[4] == folder and last[5]:
                relevant = not ignore(root, path[len(folder) + 1 :])
                self._last_relevance = (ignore, root, path, relevant, folder, True)
                return relevant
        relevant = not ignore(root, path)
        if path.startswith(root + "/"):
            # A relevant path's folder is clear; an ignored one's may not be.
            self._last_relevance = (ignore, root, path, relevant, folder, relevant)
        return relevant

    def _mounts_concern_roots(self, points: frozenset[str]) -> bool:
        """Whether a change of the mount table at ``points`` (mount points) can concern a
        root, so that the roots are probed at once: a mount point at or above the root, its
        mount point (configured, learned, or the current one), the pool it lives on, one of
        the pool's branches (or their mount points, or the root's folder on them), or below
        the root (a disk inside the library). Where a root's real path is not under its
        mount point (a symlink on the way), any change below that mount point counts; a root
        not probed yet, or on a pool whose branches are not known, counts every change.
        Anything else (other programs' mounts on a busy machine) waits for the periodic
        health check."""
        if not self.roots:
            return True
        for key, tracker in self.roots.items():
            health = tracker.health
            if health is None or health.pool and health.pool_problem:
                return True
            above = {key}  # a change at or above one of these concerns the root
            below = {key}  # so does one below one of these
            if health.mount_point is not None:
                above.add(str(health.mount_point))
                if not within(key, str(health.mount_point)):
                    below.add(str(health.mount_point))
            for mount in (tracker.root.mount, self.saved.mounts.get(key), health.pool):
                if mount is not None:
                    above.add(str(mount))
            for branch in health.branches:
                above.add(branch.path)
                below.add(branch.path)
                if branch.mount_point is not None:
                    above.add(branch.mount_point)
                if branch.counterpart is not None:
                    above.add(branch.counterpart)
                    below.add(branch.counterpart)
            for point in points:
                if any(within(path, point) for path in above) or any(within(point, path) for path in below):
                    return True
        return False

    def _count(self, now: float, root: str, folder: str | None = None, removal: bool = False) -> None:
        """One change under ``root`` (in ``folder``; None: the root as a whole)."""
        self.debouncer.add(now, root, folder=folder, removal=removal)
        if self.refused:
            self.retry_at = 0.0  # files came back or went: predict again once the batch is due

    def _track_writes(self, now: float, event: FileEvent, relevant: bool) -> None:
        match event.kind:
            case "created" if not event.is_directory and relevant:
                self.writes.created(now, event.path)
            case "closed":
                self.writes.closed(event.path)
            case "deleted":
                self.writes.deleted(event.path, event.is_directory)
            case "moved":
                self.writes.moved(event.path, event.dest, event.is_directory)

    def _on_poll_result(self, now: float, result: PollResult, actions: list[Action]) -> None:
        if result.failed or result.changed:
            # Checked against the root's health first: an unmount or a hung share must not
            # read as a flood of deletions.
            self.polls_waiting.append((now, result))
            self._want_probe(now)
            return
        self._apply_poll(now, result, actions)

    def _apply_poll(self, now: float, result: PollResult, actions: list[Action]) -> None:
        tracker = self.roots.get(result.root)
        if tracker is None:
            return
        changed = tracker.on_poll(result)
        actions.extend(tracker.take_actions())
        if tracker.taken_over:
            # Saved at once: a restart must refresh what inotify missed, too.
            tracker.taken_over = False
            self._count(now, result.root)
            actions.append(self._save())
        for folder in changed or ():
            self._count(now, result.root, folder)

    # --- health and watching -----------------------------------------------------------

    def _want_probe(self, now: float, after: float | None = None) -> None:
        """A probe is needed, begun at ``after`` or later (default: now)."""
        started = self.probing.started_at
        if started is None:
            self.probing.due_at = min(self.probing.due_at, now)
        elif started < (now if after is None else after):
            self.probing.again = True

    def _probe(self, now: float) -> Probe:
        self.probing.started_at = now
        self.probing.again = False
        return Probe(now, tuple(tracker.root for tracker in self.roots.values()), copy.deepcopy(self.saved))

    def _on_probed(self, now: float, probed: Probed, actions: list[Action]) -> None:
        if self.probing.started_at == probed.started_at:
            self.probing.started_at = None
        self.probed_at = probed.started_at if self.probed_at is None else max(self.probed_at, probed.started_at)
        first = not self.ready and not self.first_watches and self.ready_at == float("inf")
        learned = False
        for health in probed.results:
            tracker = self.roots.get(str(health.root.path))
            if tracker is None or (tracker.probed_at is not None and tracker.probed_at > probed.started_at):
                continue
            if tracker.on_health(now, health, probed.started_at, self.config, self.tickets + 1):
                self.tickets += 1
                if first:
                    self.first_watches.add(tracker.key)
            if health.healthy:
                learned |= health.learn_into(self.saved)
            actions.extend(tracker.take_actions())
        for key in [key for key, tracker in self.roots.items() if not tracker.watch]:
            self.writes.forget_below(key)
        if learned:
            actions.append(self._save())
        if first:
            self.ready_at = now + READY_DEADLINE
        settling = [at for tracker in self.roots.values() if (at := tracker.settles_at(self.config)) is not None]
        self.probing.due_at = min([now + self.config.watch.health_interval, *settling])
        waiting, self.polls_waiting = self.polls_waiting, []
        for seen_at, result in waiting:
            if probed.started_at >= seen_at:
                self._apply_poll(now, result, actions)
            else:
                self.polls_waiting.append((seen_at, result))
                self._want_probe(now)
        verifications, self.verifications_waiting = self.verifications_waiting, []
        for seen_at, verified in verifications:
            tracker = self.roots.get(verified.root)
            if tracker is None:
                continue
            if probed.started_at < seen_at:
                self.verifications_waiting.append((seen_at, verified))
                self._want_probe(now)
            elif tracker.health is not None and tracker.health.healthy:
                self._apply_verified(now, verified, tracker, actions)

    def _on_watched(self, now: float, watched: Watched, actions: list[Action]) -> None:
        tracker = self.roots.get(watched.root)
        if tracker is None:
            return
        counting = tracker.count_when_watched and watched.ticket == tracker.ticket
        if tracker.on_watched(watched.ticket, watched.problem):
            fstype = tracker.health.fstype if tracker.health is not None else None
            actions.append(Verify(tracker.root, watched.ticket, bool(fstype and fstype.split(".")[0] in ("fuse", "fuseblk"))))
        if counting and watched.problem is None and tracker.watched:
            actions.append(
                info(f"watching {tracker.key} again; counting it as changed, files may have arrived while it was away")
            )
            self._count(now, tracker.key)
        actions.extend(tracker.take_actions())
        self.first_watches.discard(watched.root)

    def _on_verified(self, now: float, verified: Verified, actions: list[Action]) -> None:
        tracker = self.roots.get(verified.root)
        if tracker is None:
            return
        if verified.coverage.problem() is not None and not any(item is verified for _, item in self.verifications_waiting):
            # A shortfall is believed only once a probe begun after it finds the root still
            # there, the same: a root unmounted while it was listed shows its bare mount point.
            self.verifications_waiting.append((now, verified))
            self._want_probe(now)
            return
        self._apply_verified(now, verified, tracker, actions)

    def _apply_verified(self, now: float, verified: Verified, tracker: RootTracker, actions: list[Action]) -> None:
        if tracker.on_verified(verified.ticket, verified.coverage, self.config, self.tickets + 1):
            self.tickets += 1
        actions.extend(tracker.take_actions())

    # --- roots -------------------------------------------------------------------------

    def _on_roots_read(self, now: float, read: RootsRead, actions: list[Action]) -> None:
        self.jobs.running.discard("ReadRoots")
        if read.purpose == "start":
            self.started = True
            self.read_roots_at = None
            self.roots = {str(root.path): RootTracker(root) for root in read.roots}
            self._restore_pending(now, actions)
            self._want_probe(now)
            if not self.config.roots and not self.dry_run:
                self.libraries_at = now + self.config.jellyfin.library_interval
            return
        if read.purpose == "reload" and read.config is not None:
            self._apply_config(read.config)
            self.dry_run = read.config.dry_run
            self._set_roots(read.roots, "configuration", actions)
            actions.append(info("configuration reloaded"))
            self._want_probe(now)
            return
        if self._set_roots(read.roots, "Jellyfin's libraries", actions):
            self._want_probe(now)

    def _apply_config(self, config: Config) -> None:
        self.config = config
        self.debouncer.quiet_period = config.watch.quiet_period
        self.debouncer.max_wait = config.watch.max_wait
        self.ignore = IgnoreFilter(config.watch.ignore)
        self.backoff.maximum = config.watch.backoff_max

    def _set_roots(self, roots: Sequence[Root], source: str, actions: list[Action]) -> bool:
        """Watch the new roots and drop the removed ones, one log line each. True if the set
        changed. The pending batch is kept whole."""
        wanted = {str(root.path): root for root in roots}
        changed = False
        for key in sorted(set(self.roots) - set(wanted)):
            removed = self.roots.pop(key)
            if removed.watch:
                actions.append(Unwatch(removed.root))
            self.writes.forget_below(key)
            actions.append(info(f"no longer watching {key} (removed from {source})"))
            changed = True
        for key, root in wanted.items():
            tracker = self.roots.get(key)
            if tracker is None:
                self.roots[key] = RootTracker(root)
                library = f", library {root.library_name}" if root.library_name else ""
                actions.append(info(f"now watching {key} (added to {source}{library})"))
                changed = True
            elif tracker.root != root:
                tracker.root = root
        return changed

    def _restore_pending(self, now: float, actions: list[Action]) -> None:
        pending = self.saved.pending
        if pending is None:
            return
        roots = [root for root in pending.roots if root in self.roots] or sorted(self.roots)
        past = now - max(self.config.watch.quiet_period, self.config.watch.max_wait)
        # The state file keeps roots and a count, not the folders that changed: each root
        # counts as changed as a whole, or a path-scoped refresh would cover only the
        # folders of changes made after the restart.
        self.debouncer.restore(Batch(frozenset(roots), pending.changes, past, past, whole_roots=frozenset(roots)))
        actions.append(
            info(
                f"{pending.changes} changes under {listed(roots)} were pending when the watcher last stopped: "
                "refreshing them once every root is healthy"
            )
        )

    # --- the refresh -------------------------------------------------------------------

    def _situation(self, now: float, allowed: int = 0) -> Situation:
        views = {
            key: RootView(
                tracker.root.library_id,
                tracker.blocking_reason(now, self.config),
                not tracker.root.health_gate and tracker.health is not None and not tracker.health.healthy,
            )
            for key, tracker in self.roots.items()
        }
        probed = [tracker.probed_at for tracker in self.roots.values()]
        probed_at = None if not probed or None in probed else min(p for p in probed if p is not None)
        return Situation(
            self.debouncer.pending,
            self.due_at(now),
            views,
            probed_at,
            self.attempt,
            open_files=len(self.writes),
            dry_run=self.dry_run,
            removals=self.removals,
            allowed=allowed,
            backed_up=self.backed_up,
        )

    def _advance(self, now: float, actions: list[Action]) -> None:
        """After every item: start what is due, decide about the batch, set the wake-up."""
        self._now = now
        if not self.started:
            if self.read_roots_at is not None and now >= self.read_roots_at and "ReadRoots" not in self.jobs.running:
                self.read_roots_at = None
                self.jobs.running.add("ReadRoots")
                actions.append(ReadRoots("start"))
            self.wake_at = self.read_roots_at if self.read_roots_at is not None else float("inf")
            return
        for path, age in self.writes.expired(now, self.config.watch.max_write_wait):
            actions.append(
                warning(
                    f"{path} has been open for writing for {age:.0f} s (watch.max_write_wait): "
                    "refreshing without waiting for it any longer"
                )
            )
        if not self.ready and (self._first_watches_set() and self.ready_at < float("inf") or now >= self.ready_at):
            self._become_ready(actions)
        if now >= self.libraries_at and "ReadRoots" not in self.jobs.running:
            self.libraries_at = now + self.config.jellyfin.library_interval
            self.jobs.running.add("ReadRoots")
            actions.append(ReadRoots("reread"))
        if self.debouncer.pending is not None and self.saved.pending is None:
            actions.append(self._save())
        wake = [self.libraries_at]
        if not self.ready:
            wake.append(self.ready_at)
        if self.jobs.sending is None:
            wake.append(self._decide(now, actions))
        if self.probing.started_at is None and (now >= self.probing.due_at or self.probing.again):
            actions.append(self._probe(now))
            self.probing.due_at = float("inf")
        elif now >= self.probing.due_at:
            self.probing.again = True
            self.probing.due_at = float("inf")
        deadline = self.writes.deadline(self.config.watch.max_write_wait)
        if deadline is not None:
            wake.append(deadline)
        self.wake_at = min([*wake, self.probing.due_at])

    def _first_watches_set(self) -> bool:
        """Every first watch is set up: watchdog has walked each healthy root and watched
        every folder it could (or the root is polled). Their verification (which finds the
        folders inotify silently could not watch) runs on; the status file's ``verified``
        says when it has ended. ``READY=1`` does not wait for it: at 20,000 folders it is a
        second walk of the tree, as long as the first."""
        return not self.first_watches

    def _become_ready(self, actions: list[Action]) -> None:
        self.ready = True
        if self.first_watches:
            actions.append(
                warning(f"still setting up the watch of {listed(self.first_watches)}: a hung mount? carrying on")
            )
        watched = sorted(key for key, tracker in self.roots.items() if tracker.watch)
        actions.append(
            info(f"watching {len(watched)} of {len(self.roots)} roots: {', '.join(watched) if watched else 'none yet'}")
        )
        actions.append(Ready())

    def _decide(self, now: float, actions: list[Action]) -> float:
        """Take the next step for the pending batch; returns when to look again."""
        due = self.due_at(now)
        if due is None or now < due:
            self.attempt = None
            return due if due is not None else float("inf")
        if self.attempt is None:
            self.attempt = Attempt(started_at=now)
        if any(tracker.pending and tracker.count_when_watched for tracker in self.roots.values()):
            # A root that came back is being watched again and will count as changed: wait
            # for that (milliseconds), so that its change joins this refresh, not the next.
            return float("inf")
        decision = decide(now, self._situation(now), self.config)
        self._log_gate(decision, actions)
        match decision.step:
            case steps.Idle():
                self.attempt = None
            case steps.WaitUntil(at=at):
                return at
            case steps.CheckOpenFiles():
                if "CheckWrites" not in self.jobs.running:
                    self.jobs.running.add("CheckWrites")
                    actions.append(CheckWrites(self.writes.paths))
            case steps.ProbeRoots():
                self._want_probe(now, after=max(self.attempt.started_at, self.attempt.asked_at or 0.0))
            case steps.HoldBack(recheck_at=recheck_at):
                # The attempt stays: the probe at recheck_at (or one a change of the mount
                # table starts sooner) is fresh enough to let it go on.
                self.probing.due_at = min(self.probing.due_at, recheck_at)
                return recheck_at
            case steps.AskScanRunning():
                if "AskScan" not in self.jobs.running:
                    self.jobs.running.add("AskScan")
                    actions.append(AskScan())
            case steps.CompareViews(roots=ready):
                if "CheckViews" not in self.jobs.running:
                    self.jobs.running.add("CheckViews")
                    actions.append(self._check_views(ready))
            case steps.HoldForViews(reasons=reasons, recheck_at=recheck_at):
                self._hold_over()
                held = "; ".join(reasons)
                if held != self.views_held:
                    changes = self.debouncer.pending.changes if self.debouncer.pending else 0
                    actions.append(warning(f"refresh held: {held}; keeping {changes} changes"))
                    self.views_held = held
                self.retry_at = recheck_at
                self.attempt = None
                return recheck_at
            case steps.BackUpFirst(removals=removals):
                if "BackUp" not in self.jobs.running:
                    self.jobs.running.add("BackUp")
                    actions.append(BackUp(removals))
            case steps.PredictRemovals(library_ids=library_ids):
                if "Predict" not in self.jobs.running:
                    self.jobs.running.add("Predict")
                    self.attempt.predicted_for = library_ids
                    self.attempt.predicted_removals = self.removals
                    self.attempt.predictions = None
                    actions.append(Predict(library_ids))
            case steps.Refuse(refusal=refusal, recheck_at=recheck_at):
                if not self.held:
                    self.held_since = None
                if refusal != self.refused:
                    actions.append(error(f"refresh refused: {refusal}; keeping the changes"))
                    self.refused = refusal
                if self.refused_since is None:
                    self.refused_since = now
                self.refusals = tuple(
                    prediction for prediction in self.attempt.predictions or ()
                    if refusals((prediction,), self.config)
                )
                self.retry_at = recheck_at
                self.attempt = None
                return recheck_at
            case steps.SendRefresh(roots=roots):
                self._send(now, roots, actions)
                return now
        return float("inf")

    def _log_gate(self, decision: Decision, actions: list[Action]) -> None:
        verdict = decision.verdict
        batch = self.debouncer.pending
        if verdict is None or batch is None:
            return
        if verdict.blocked:
            held = "; ".join(verdict.reasons)
            if held != self.held:
                kept = f"{batch.changes} changes" if not verdict.ready else f"the changes under {listed(batch.roots - verdict.ready)}"
                actions.append(warning(f"refresh suppressed: {held}; keeping {kept} until every root is healthy"))
                if not self.held:
                    self.held_since = self._now
                self.held = held
        elif self.held:
            actions.append(info("every root is healthy again: sending the kept batch"))
            self.held = ""  # held_since stays until the kept batch is refreshed (or the attempt ends)
        attempt = self.attempt
        if verdict.ready and attempt is not None and not attempt.announced:
            if verdict.ready == batch.roots:
                description = f"{batch.changes} changes under {listed(batch.roots)}"
            else:
                description = f"the changes under {listed(verdict.ready)}"
            actions.append(info(f"batch due: {description}"))
            attempt.announced = True

    def _send(self, now: float, roots: frozenset[str], actions: list[Action]) -> None:
        if self.refused:
            actions.append(info("the loss guard no longer objects: refreshing"))
            self.refused = ""  # the refusals stay shown until the batch is refreshed
        whole = self.debouncer.pending
        taken = self.debouncer.take(roots)
        self.attempt = None
        if taken is None:
            return
        self.last_sending = taken
        self.jobs.description = describe(taken) if whole is None or taken.roots == whole.roots else (
            f"the changes under {listed(taken.roots)}"
        )
        requests = tuple(plan(taken, {key: t.root for key, t in self.roots.items()}, self.config.refresh.scope, self.config.jellyfin_path))
        if self.dry_run:
            for request in requests:
                actions.append(info(f"dry run: would send {request.describe()} for {self.jobs.description}"))
            self._refreshed(now, "dry run: not sent", actions)
            return
        self.jobs.sending = taken
        actions.append(Send(taken, requests))

    def _on_sent(self, now: float, done: SendDone, actions: list[Action]) -> None:
        self.jobs.sending = None
        description = self.jobs.description or describe(done.batch)
        for request in done.sent:
            actions.append(info(f"refresh sent: {request.describe()} for {description}"))
        if done.error is None and not done.crash:
            self._refreshed(now, "sent", actions)
            return
        sent_roots = frozenset().union(*(request.roots for request in done.sent)) if done.sent else frozenset()
        unsent = done.batch.roots - sent_roots
        self.debouncer.restore(part(done.batch, unsent) if done.sent else done.batch)
        if done.error is not None:
            self._failed(now, done.error, actions)
        else:
            self._crashed(now, "sending the refresh", done.crash, "", actions)

    def _on_scan_checked(self, now: float, checked: ScanChecked, actions: list[Action]) -> None:
        self.jobs.running.discard("AskScan")
        attempt = self.attempt
        if attempt is None:
            return
        attempt.asked_at = now
        if checked.running:
            if not self.waiting_for_scan:
                actions.append(info("a library scan is running in Jellyfin: waiting for it to end before refreshing"))
                self.waiting_for_scan = True
            self.retry_at = now + steps.SCAN_RUNNING_RECHECK
            self.attempt = None
            return
        self.waiting_for_scan = False
        attempt.scan_idle = True

    def _on_predicted(self, now: float, predicted: Predicted, actions: list[Action]) -> None:
        self.jobs.running.discard("Predict")
        for prediction in predicted.predictions:
            actions.append(debug(f"loss guard: {prediction.describe()} ({prediction.pages} pages)"))
        if self.attempt is None:
            return
        self.attempt.predictions = predicted.predictions
        self.attempt.asked_at = now

    def _check_views(self, ready: frozenset[str]) -> CheckViews:
        """Jellyfin's view of the roots a refresh of ``ready`` scans: its libraries' roots (every
        root for a server-wide refresh or a root of unknown library)."""
        trackers = list(self.roots.values())
        if self.config.refresh.scope != "server":
            libraries = {self.roots[key].root.library_id for key in ready if key in self.roots}
            if None not in libraries:
                trackers = [tracker for tracker in trackers if tracker.root.library_id in libraries]
        healths = tuple(tracker.health for tracker in trackers if tracker.health is not None)
        batch = self.debouncer.pending
        return CheckViews(healths, batch.folders if batch is not None else frozenset())

    def _on_views_checked(self, now: float, checked: ViewsChecked, actions: list[Action]) -> None:
        self.jobs.running.discard("CheckViews")
        for comparison in checked.comparisons:
            actions.append(debug(f"{comparison.target.local}: {comparison.describe()}"))
        if self.attempt is None:
            return
        self.attempt.views = view_reasons(checked.comparisons)
        self.attempt.asked_at = now
        if not self.attempt.views and self.views_held:
            actions.append(info("Jellyfin's view of the roots agrees with this machine's again: refreshing"))
            self.views_held = ""

    def _on_backed_up(self, now: float, done: BackedUp, actions: list[Action]) -> None:
        self.jobs.running.discard("BackUp")
        if self.attempt is not None:
            self.attempt.asked_at = now
        if done.archive is not None:
            self.backed_up = done.removals
            self.backup_held = ""
            archive = done.archive
            self.last_backup = BackupRecord(archive.name, archive.path, archive.holds, archive.version, now, done.removals)
            actions.append(info(f"backup written before removing {done.removals} items: {archive.describe()}"))
        elif done.unavailable:
            self.backed_up = done.removals
            actions.append(info(f"no backup before removing {done.removals} items: {done.unavailable}; "
                                "the loss guard alone applies"))
        else:
            message = f"the backup before removing {done.removals} items failed: {done.failure}"
            if not self.config.backup.hold_on_failure:
                self.backed_up = done.removals
                actions.append(warning(f"{message}; refreshing without one (backup.hold_on_failure = false)"))
                return
            if message != self.backup_held:
                actions.append(error(f"refresh held: {message}; keeping the changes "
                                     "(backup.hold_on_failure = false refreshes without one)"))
                self.backup_held = message
            self.retry_at = now + steps.GUARD_RECHECK
            self.attempt = None

    def _on_writes_checked(self, now: float, checked: WritesChecked, actions: list[Action]) -> None:
        self.jobs.running.discard("CheckWrites")
        attempt = self.attempt
        if not checked.complete:
            # The open files could not be checked in time (a hung mount): the health
            # check will tell; until then they hold the batch like files being written.
            self.writes_recheck_at = now + max(self.config.watch.quiet_period, 1.0)
            self.attempt = None
            return
        writing = self.writes.settle(checked.checks, self.config.watch.quiet_period)
        if writing:
            actions.append(debug(f"waiting for {len(writing)} files still being written, e.g. {writing[0]}"))
            self.writes_recheck_at = now + max(self.config.watch.quiet_period, 1.0)
            self.attempt = None
            return
        if attempt is not None:
            attempt.writes_checked = True

    def _on_job_failed(self, now: float, failed: JobFailed | JobCrashed, actions: list[Action]) -> None:
        job = failed.job
        self.jobs.running.discard(job)
        if job == "ReadRoots":
            self._roots_not_read(now, failed, actions)
            return
        if job == "CheckWrites":
            self.writes_recheck_at = now + max(self.config.watch.quiet_period, 1.0)
            self.attempt = None
        if isinstance(failed, JobFailed):
            self._failed(now, failed.error, actions)
        else:
            self._crashed(now, _doing(job), failed.error, failed.details, actions)

    def _roots_not_read(self, now: float, failed: JobFailed | JobCrashed, actions: list[Action]) -> None:
        message = str(failed.error)
        if failed.purpose == "start":
            if isinstance(failed, JobFailed) and isinstance(failed.error, ConfigError):
                actions.append(Exit(message))
                return
            delay = self.read_backoff.failed()
            self.read_roots_at = now + delay
            actions.append(warning(f"cannot read the libraries from Jellyfin: {message}; retrying in {delay:g} s"))
        elif failed.purpose == "reload":
            actions.append(error(f"configuration not reloaded, keeping the previous one: {message}"))
        else:
            actions.append(warning(f"cannot re-read the libraries from Jellyfin: {message}; keeping the current roots"))

    def _refreshed(self, now: float, result: str, actions: list[Action]) -> None:
        self.refreshes += 1
        self.backoff.succeeded()
        self.retry_at = 0.0
        self.last_error = ""
        self.failing_since, self.failure = None, None
        self.held_since = None
        self.refusals, self.refused_since = (), None
        if self.last_sending is not None:
            batch = self.last_sending
            self.last_sent = RefreshView(now, batch.changes, tuple(sorted(batch.roots)), result)
        self.backed_up = None
        self.backup_held = self.views_held = ""
        self.last_refresh = LastRefresh(now, result)
        actions.append(self._save())

    def _failed(self, now: float, failure: WatcherError, actions: list[Action]) -> None:
        self.attempt = None
        delay = self.backoff.failed()
        self.retry_at = now + delay
        message = str(failure)
        self.last_refresh = LastRefresh(now, f"failed: {message}")
        if self.failing_since is None:
            self.failing_since = now
        self.failure = failure
        self._hold_over()
        changes = self.debouncer.pending.changes if self.debouncer.pending else 0
        if isinstance(failure, SetupError):  # the key, a certificate, a redirect, a proxy: said once
            if message != self.last_error:
                actions.append(error(f"{message}; keeping {changes} changes and watching on"))
        elif isinstance(failure, ServerUnavailable):
            actions.append(warning(f"refresh failed: {message}; keeping {changes} changes, retrying in {delay:g} s"))
        else:
            actions.append(error(f"refresh failed: {message}; keeping {changes} changes, retrying in {delay:g} s"))
        self.last_error = message

    def _crashed(self, now: float, doing: str, description: str, details: str, actions: list[Action]) -> None:
        """Something unexpected went wrong in one refresh attempt: an ERROR (the traceback at
        debug), the batch kept, retried with backoff. Never the end of the daemon."""
        self.attempt = None
        delay = self.backoff.failed()
        self.retry_at = now + delay
        message = f"unexpected failure {doing}: {description}"
        self.last_refresh = LastRefresh(now, f"failed: {message}")
        if self.failing_since is None:
            self.failing_since = now
        self.failure = WatcherError(message)
        self._hold_over()
        changes = self.debouncer.pending.changes if self.debouncer.pending else 0
        actions.append(error(f"{message}; keeping {changes} changes, retrying in {delay:g} s", details))
        self.last_error = message

    def _hold_over(self) -> None:
        """The kept batch did not go after all: the health gate's hold is over (something
        else holds it now), and the loss guard's refusal too unless it refuses again."""
        if not self.held:
            self.held_since = None
        if not self.refused:
            self.refusals, self.refused_since = (), None

    def _save(self) -> Save:
        batch = self.debouncer.pending
        if self.jobs.sending is not None:
            batch = self.jobs.sending if batch is None else batch.merge(self.jobs.sending)
        self.saved.pending = None if batch is None else PendingChanges(sorted(batch.roots), batch.changes)
        return Save(replace(self.saved, mounts=dict(self.saved.mounts), below={k: list(v) for k, v in self.saved.below.items()}))


def _doing(job: str) -> str:
    return {
        "AskScan": "asking whether a library scan is running",
        "Predict": "predicting removals",
        "CheckWrites": "checking the files being written",
        "CheckViews": "comparing Jellyfin's view of the roots",
        "BackUp": "asking Jellyfin for a backup",
    }.get(job, job)


def describe(batch: Batch) -> str:
    """``"12 changes under /media/movies"``."""
    return f"{batch.changes} changes under {listed(batch.roots)}"


def listed(items: Iterable[str]) -> str:
    """At most three items, then how many more: ``"/a, /b, /c and 2 more"``."""
    ordered = sorted(items)
    if len(ordered) <= 3:
        return ", ".join(ordered)
    return f"{', '.join(ordered[:3])} and {len(ordered) - 3} more"


def part(batch: Batch, roots: frozenset[str]) -> Batch:
    """The part of ``batch`` under ``roots`` (its change count shared out by root)."""
    share = max(1, batch.changes * len(roots) // max(1, len(batch.roots)))
    folders = frozenset(folder for folder in batch.folders if any(within(folder, root) for root in roots))
    return Batch(roots, share, batch.first_change, batch.last_change, folders, batch.whole_roots & roots, batch.removals)


def requests_roots(requests: Sequence[RefreshRequest]) -> frozenset[str]:
    return frozenset().union(*(request.roots for request in requests)) if requests else frozenset()


# --- what the daemon shows -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootSnapshot:
    """One root as ``status`` shows it."""

    path: str
    mount_point: str | None
    fstype: str | None
    state: str
    reason: str
    watched: bool
    mode: str | None
    watched_directories: int | None
    verification: str | None
    poll: str | None
    branches: tuple[dict[str, object], ...] = ()
    """The pool's branches (mergerfs, overlay), each as ``status --json`` shows it."""


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    """The pending batch: ``due_at`` and ``first_change`` are clock readings."""

    changes: int
    roots: tuple[str, ...]
    due_at: float | None
    held: str
    first_change: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The daemon's state at one clock reading, for the status file, ``STATUS=`` and
    notifications. Times are clock readings (the loop's monotonic clock)."""

    roots: tuple[RootSnapshot, ...]
    pending: PendingSnapshot | None
    last_refresh: LastRefresh | None
    dry_run: bool
    last_backup: BackupRecord | None = None


def snapshot(core: Core, now: float) -> Snapshot:
    """What ``core`` shows at ``now``."""
    roots = []
    for key, tracker in core.roots.items():
        health = tracker.health
        state = "settling" if tracker.back_since is not None else (health.state.value if health else "unknown")
        directories = (
            tracker.poll_directories if tracker.watch == "poll"
            else tracker.coverage.watched if tracker.coverage is not None else None
        )
        roots.append(
            RootSnapshot(
                key,
                str(health.mount_point) if health and health.mount_point else None,
                health.fstype if health else None,
                state,
                health.reason if health else "",
                tracker.watched,
                tracker.watch if tracker.watched else None,
                directories,
                tracker.verification,
                tracker.poll_method if tracker.watch == "poll" and tracker.watched else None,
                tuple(branch.as_status() for branch in health.branches) if health else (),
            )
        )
    batch = core.debouncer.pending
    if core.jobs.sending is not None:
        batch = core.jobs.sending if batch is None else batch.merge(core.jobs.sending)
    pending = None
    if batch is not None:
        pending = PendingSnapshot(
            batch.changes, tuple(sorted(batch.roots)), core.due_at(now), core.held_reason(), batch.first_change
        )
    return Snapshot(tuple(roots), pending, core.last_refresh, core.dry_run, core.last_backup)


def daemon_view(core: Core, now: float) -> DaemonView:
    """What the notification policy (:mod:`watcher.core.notices`) needs to know of ``core``."""
    roots = []
    for key, tracker in core.roots.items():
        health = tracker.health
        settling = tracker.back_since is not None
        roots.append(
            NoticeRoot(
                path=key,
                state="settling" if settling else health.state.value if health else "unknown",
                reason=(f"watched again once it has stayed healthy for {core.config.watch.settle:g} s" if settling
                        else health.reason if health else ""),
                since=tracker.back_since if tracker.back_since is not None else tracker.since if health else now,
                gated=tracker.root.health_gate,
                watch_problem=tracker.problem,
                polled=tracker.watch == "poll",
            )
        )
    batch = core.debouncer.pending
    if core.jobs.sending is not None:
        batch = core.jobs.sending if batch is None else batch.merge(core.jobs.sending)
    pending = None
    if batch is not None:
        failure = None
        if core.failure is not None and core.failing_since is not None:
            kind = (
                "key" if isinstance(core.failure, KeyRejected)
                else "unreachable" if isinstance(core.failure, ServerUnavailable) else "rejected"
            )
            failure = Failure(kind, str(core.failure), core.failing_since)
        pending = PendingView(
            changes=batch.changes,
            roots=tuple(sorted(batch.roots)),
            since=batch.first_change,
            held_since=core.held_since,
            refusals=tuple(
                Refusal(p.library.name, p.missing, p.items, p.examples, p.unresponsive) for p in core.refusals
            ),
            refused_since=core.refused_since,
            failure=failure,
        )
    return DaemonView(tuple(roots), pending, core.last_sent)
