"""The daemon's state and rules, as one state machine fed by the service loop.

:class:`Core` takes each queue item with the clock reading the loop took, updates what it
knows (roots, the pending batch, open files, the refresh under way), and returns the
actions to take. It never reads the clock, touches the filesystem or the network, or logs:
log lines are actions too. The loop (:mod:`watcher.service`) is the only place that reads
the clock, and the executor (:mod:`watcher.edges.workers`) the only one that acts.

The core itself keeps the roots, the events and the probes; the way of a due batch to a
refresh is its :class:`~watcher.core.refresher.Refresher`'s. The rules themselves live in
small pieces: :mod:`~watcher.core.debounce` (when a batch is due),
:mod:`~watcher.core.writes` (files still being written), :mod:`~watcher.core.roots` (one
root's health and watch), :mod:`~watcher.core.gate`, :mod:`~watcher.core.decide` (the steps
before a refresh), :mod:`~watcher.core.scope` (what to send), and
:mod:`~watcher.core.backoff`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from watcher.config import Config, Root
from watcher.core.backoff import Backoff
from watcher.core.debounce import Batch, Debouncer
from watcher.core.filters import IgnoreFilter
from watcher.core.messages import (
    Action,
    BackedUp,
    EventsLost,
    Exit,
    FileEvent,
    JobCrashed,
    JobFailed,
    MountsChanged,
    PollResult,
    Predicted,
    Probe,
    Probed,
    ReadRoots,
    Ready,
    Reload,
    RootsRead,
    Save,
    ScanChecked,
    SendDone,
    Tick,
    Unwatch,
    Verified,
    Verify,
    ViewsChecked,
    Watched,
    WritesChecked,
    error,
    info,
    warning,
)
from watcher.core.notices import DaemonView, Failure, PendingView, Refusal
from watcher.core.notices import RootView as NoticeRoot
from watcher.core.refresher import BackupRecord, LastRefresh, Refresher, listed
from watcher.core.roots import RootTracker
from watcher.core.state import PendingChanges, SavedState
from watcher.core.writes import WriteTracker
from watcher.errors import (
    ConfigError,
    KeyRejected,
    ServerUnavailable,
)
from watcher.paths import within

READY_DEADLINE = 30.0
"""Seconds after the first probe by which start-up counts as done (``READY=1``) even if a
watch is still being set up (a walk stuck on a hung mount)."""


@dataclass(slots=True)
class _Probing:
    """The probe under way (its start), and whether another must follow it."""

    started_at: float | None = None
    again: bool = False
    due_at: float = 0.0
    """When the next periodic (or rechecking) probe is due."""


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
        self.probing = _Probing()
        self.probed_at: float | None = None
        self.reading_roots = False
        """A :class:`~watcher.core.messages.ReadRoots` is under way."""
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
        self.refresher = Refresher(config, self.debouncer, self.writes, self.roots, self, self._save, dry_run)
        """The pending batch's way to a refresh."""

    # --- entry points ------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: read the roots (from the configuration, or Jellyfin's libraries)."""
        self.reading_roots = True
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
        match item:
            case FileEvent():
                self._on_event(now, item, actions)
            case PollResult():
                self._on_poll_result(now, item, actions)
            case MountsChanged(points=points):
                if points is None or self._mounts_concern_roots(points):
                    self.want_probe(now)
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
            case RootsRead():
                self._on_roots_read(now, item, actions)
            case JobFailed(job="ReadRoots") | JobCrashed(job="ReadRoots"):
                self.reading_roots = False
                self._roots_not_read(now, item, actions)
            case ScanChecked() | Predicted() | ViewsChecked() | BackedUp() | SendDone() | WritesChecked() | JobFailed() | JobCrashed():
                self.refresher.answer(now, item, actions)
            case Reload():
                if not self.reading_roots:
                    self.reading_roots = True
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
        self.refresher.stop()
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

    @property
    def refreshes(self) -> int:
        """Refreshes sent (or, in a dry run, logged) since start."""
        return self.refresher.refreshes

    @property
    def sending(self) -> Batch | None:
        """The batch being sent, if a refresh request is under way."""
        return self.refresher.sending

    def due_at(self, now: float) -> float | None:
        """When the pending batch falls due (see :meth:`Refresher.due_at`)."""
        return self.refresher.due_at(now)

    def held_reason(self) -> str:
        """Why the pending batch is held back ("" when it is not)."""
        return self.refresher.held_reason()

    # --- events ------------------------------------------------------------------------

    def _on_event(self, now: float, event: FileEvent, actions: list[Action]) -> None:
        root = event.root
        tracker = self.roots.get(root)
        if tracker is None or (tracker.watch != "events" and tracker.watch != "poll"):
            return
        paths = [event.path, event.dest] if event.dest else [event.path]
        if event.is_directory and event.path == root and event.kind in ("deleted", "moved"):
            actions.append(warning(f"{root} was {event.kind}: it is watched again when it reappears"))
            self.want_probe(now)
        relevant = self._relevant(root, event.path) or (bool(event.dest) and self._relevant(root, event.dest))
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
            if health is None or (health.pool and health.pool_problem):
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
        self.refresher.changed()  # files came back or went: a refused batch is predicted again

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
            self.want_probe(now)
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

    def want_probe(self, now: float, after: float | None = None) -> None:
        """A probe is needed, begun at ``after`` or later (default: now)."""
        started = self.probing.started_at
        if started is None:
            self.probing.due_at = min(self.probing.due_at, now)
        elif started < (now if after is None else after):
            self.probing.again = True

    def probe_by(self, at: float) -> None:
        """The next periodic probe begins no later than ``at``."""
        self.probing.due_at = min(self.probing.due_at, at)

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
                self.want_probe(now)
        verifications, self.verifications_waiting = self.verifications_waiting, []
        for seen_at, verified in verifications:
            tracker = self.roots.get(verified.root)
            if tracker is None:
                continue
            if probed.started_at < seen_at:
                self.verifications_waiting.append((seen_at, verified))
                self.want_probe(now)
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
            self.want_probe(now)
            return
        self._apply_verified(now, verified, tracker, actions)

    def _apply_verified(self, now: float, verified: Verified, tracker: RootTracker, actions: list[Action]) -> None:
        if tracker.on_verified(verified.ticket, verified.coverage, self.config, self.tickets + 1):
            self.tickets += 1
        actions.extend(tracker.take_actions())

    # --- roots -------------------------------------------------------------------------

    def _on_roots_read(self, now: float, read: RootsRead, actions: list[Action]) -> None:
        self.reading_roots = False
        if read.purpose == "start":
            self.started = True
            self.read_roots_at = None
            self.roots.clear()  # the same mapping: the refresher shares it
            self.roots.update((str(root.path), RootTracker(root)) for root in read.roots)
            self._restore_pending(now, actions)
            self.want_probe(now)
            if not self.config.roots and not self.dry_run:
                self.libraries_at = now + self.config.jellyfin.library_interval
            return
        if read.purpose == "reload" and read.config is not None:
            self._apply_config(read.config)
            self.dry_run = read.config.dry_run
            self.refresher.configure(read.config, self.dry_run)
            self._set_roots(read.roots, "configuration", actions)
            actions.append(info("configuration reloaded"))
            self.want_probe(now)
            return
        if self._set_roots(read.roots, "Jellyfin's libraries", actions):
            self.want_probe(now)

    def _apply_config(self, config: Config) -> None:
        self.config = config
        self.debouncer.quiet_period = config.watch.quiet_period
        self.debouncer.max_wait = config.watch.max_wait
        self.ignore = IgnoreFilter(config.watch.ignore)

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

    def _advance(self, now: float, actions: list[Action]) -> None:
        """After every item: start what is due, decide about the batch, set the wake-up."""
        if not self.started:
            if self.read_roots_at is not None and now >= self.read_roots_at and not self.reading_roots:
                self.read_roots_at = None
                self.reading_roots = True
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
        if not self.ready and ((self._first_watches_set() and self.ready_at < float("inf")) or now >= self.ready_at):
            self._become_ready(actions)
        if now >= self.libraries_at and not self.reading_roots:
            self.libraries_at = now + self.config.jellyfin.library_interval
            self.reading_roots = True
            actions.append(ReadRoots("reread"))
        if self.debouncer.pending is not None and self.saved.pending is None:
            actions.append(self._save())
        wake = [self.libraries_at]
        if not self.ready:
            wake.append(self.ready_at)
        wake.append(self.refresher.step(now, self.removals, actions))
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

    def _save(self) -> Save:
        batch = self.refresher.unsent()
        self.saved.pending = None if batch is None else PendingChanges(sorted(batch.roots), batch.changes)
        return Save(replace(self.saved, mounts=dict(self.saved.mounts), below={k: list(v) for k, v in self.saved.below.items()}))


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
    batch = core.refresher.unsent()
    pending = None
    if batch is not None:
        pending = PendingSnapshot(
            batch.changes, tuple(sorted(batch.roots)), core.due_at(now), core.held_reason(), batch.first_change
        )
    return Snapshot(tuple(roots), pending, core.refresher.last_refresh, core.dry_run, core.refresher.last_backup)


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
    refresher = core.refresher
    batch = refresher.unsent()
    pending = None
    if batch is not None:
        failure = None
        if refresher.failure is not None and refresher.failing_since is not None:
            kind = (
                "key" if isinstance(refresher.failure, KeyRejected)
                else "unreachable" if isinstance(refresher.failure, ServerUnavailable) else "rejected"
            )
            failure = Failure(kind, str(refresher.failure), refresher.failing_since)
        pending = PendingView(
            changes=batch.changes,
            roots=tuple(sorted(batch.roots)),
            since=batch.first_change,
            held_since=refresher.held_since,
            refusals=tuple(
                Refusal(p.library.name, p.missing, p.items, p.examples, p.unresponsive) for p in refresher.refusals
            ),
            refused_since=refresher.refused_since,
            failure=failure,
        )
    return DaemonView(tuple(roots), pending, refresher.last_sent)
