"""One root's life: healthy or not, watched or not, and how.

A root that goes away (unmounted, deleted, replaced, a disk below it remounted) loses its
inotify watches without a word from watchdog: the kernel sends ``IN_UNMOUNT``/``IN_IGNORED``
and watchdog 7.1 drops the watches and reports nothing (``watchdog/observers/inotify_c.py``).
So its identity — device, inode and the kernel mount IDs of its mount point and every mount
below it — is remembered when the watch is set up; when a probe finds another identity the
root is *back*, and once it has stayed healthy for ``settle`` seconds it is watched again and
counted as changed (files may have arrived while it was away).

Roots on network filesystems are polled instead (inotify only sees changes made through
this machine's mount), and so is a root inotify cannot fully watch (``fallback = "poll"``).

Pure: :class:`RootTracker` takes the clock reading and the edges' results, and returns the
actions to take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from watcher.config import Config, Root
from watcher.core.coverage import UNREPORTED, Coverage
from watcher.core.health import Health, State
from watcher.core.messages import (
    Action,
    DropEvents,
    PollResult,
    Unwatch,
    Watch,
    debug,
    error,
    info,
    warning,
)

Identity = tuple[Any, ...]
"""(device, inode, mounts, branches) of a root: what its watch was set up on."""


def identity(health: Health) -> Identity:
    """What a root's watch depends on: its folder, the mounts on and below it, and on a
    mergerfs pool each branch with its mount ID (a branch remounted takes the watches of its
    counterpart with it)."""
    return (health.device, health.inode, health.mounts, health.branch_identity)


def mode_for(root: Root, health: Health | None, config: Config) -> str:
    """``poll`` or ``events`` for this root: its ``mode``, or for ``auto`` polling on network
    filesystems, whose changes made on the server inotify cannot see (inotify(7)), and on
    those whose folder times lie (``watch.list_fstypes``)."""
    if root.mode != "auto":
        return str(root.mode)
    fstype = health.fstype if health is not None else None
    polled = (*config.watch.network_fstypes, *config.watch.list_fstypes)
    return "poll" if fstype in polled else "events"


def poll_method_for(root: Root, health: Health | None, config: Config) -> str:
    """``list`` or ``mtime``: the root's ``poll``, else ``list`` on the filesystem types whose
    folder times do not follow their contents (``watch.list_fstypes``)."""
    if root.poll is not None:
        return str(root.poll)
    fstype = health.fstype if health is not None else None
    return "list" if fstype in config.watch.list_fstypes else "mtime"


@dataclass(slots=True)
class RootTracker:
    """What the loop knows about one root, and the rules for watching it."""

    root: Root
    health: Health | None = None
    probed_at: float | None = None
    """Clock reading when the probe that gave :attr:`health` began."""
    since: float = 0.0
    """Clock reading when :attr:`health` entered its state."""
    watch: str = ""
    """How it is watched: ``""`` (not), ``events`` or ``poll``; set when a watch is asked
    for, so that it is not asked for twice."""
    ticket: int = 0
    """The :class:`Watch` the current state belongs to; results of older ones are stale."""
    pending: bool = False
    """A :class:`Watch` is under way."""
    watched_as: Identity = ()
    back_since: float | None = None
    """Clock reading since which a returning root has been healthy (settling)."""
    count_when_watched: bool = False
    """The watch under way re-watches a root that was away: count it as changed."""
    coverage: Coverage | None = None
    verification: str | None = None
    """Of the current inotify watch: ``running``, ``complete`` (every folder watched),
    ``shortfall`` (some not: see the log), ``incomplete`` (the listing ran out of time); None
    when the root is not watched by inotify."""
    switched: bool = False
    """Verification switched this root to polling, and inotify may have missed changes in the
    folders it did not watch: once polling has its baseline, the root counts as changed."""
    taken_over: bool = False
    """Set by :meth:`on_poll` when polling took over after such a switch: the caller counts
    the root as changed (and clears it)."""
    poll_directories: int | None = None
    poll_busy: bool = False
    """The last polling cycle found changes: a copy may still be under way."""
    polling_since_first_cycle: bool = False
    problem: str = ""
    """The last watch ERROR logged for this root (logged again only when it changes)."""
    why_polled: str = ""
    poll_method: str = ""
    fallback: bool = False
    """Polled because inotify could not watch all of it (``fallback = "poll"``)."""
    actions: list[Action] = field(default_factory=list)

    @property
    def key(self) -> str:
        return str(self.root.path)

    @property
    def watched(self) -> bool:
        return bool(self.watch) and not self.pending

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    # --- health ------------------------------------------------------------------------

    def on_health(self, now: float, health: Health, probed_at: float, config: Config, next_ticket: int) -> bool:
        """A probe result. Returns True when it used ``next_ticket`` for a new watch.

        Logs the state changes; drops the watch of a root that went away; watches a root
        seen for the first time (or empty: its first files must be seen); watches a root
        that came back once it has stayed healthy for ``config.watch.settle`` seconds.
        """
        previous = self.health
        self.health = health
        self.probed_at = probed_at
        if previous is None or previous.state is not health.state:
            self.since = now
            if not health.healthy:
                self.actions.append(warning(health.describe()))
            elif previous is not None:
                self.actions.append(info(f"{self.key} is healthy again"))
        if not health.healthy:
            self.back_since = None
            if health.state in (State.MISSING, State.UNMOUNTED) and self.watch:
                self.unwatch()
            elif health.state is State.EMPTY and not self.watch:
                # An empty folder is watched all the same, so that its first files are
                # seen; a disk mounted over it later changes its identity (mount ID) and
                # the root is watched again then.
                self.start_watch(health, config, next_ticket)
                return True
            return False
        if previous is None and not self.watch:
            self.start_watch(health, config, next_ticket)
            return True
        if self.watch and self.watched_as == identity(health):
            self.back_since = None
            return False
        if self.pending:
            return False  # a watch under way will be compared when it is done
        if self.back_since is None:
            self.back_since = now
            if config.watch.settle > 0:
                self.actions.append(
                    info(f"{self.key} is back: watching it again once it has stayed healthy for {config.watch.settle:g} s")
                )
        if now - self.back_since >= config.watch.settle:
            self.back_since = None
            self.start_watch(health, config, next_ticket, count=True)
            return True
        return False

    def settles_at(self, config: Config) -> float | None:
        """Clock reading at which a returning root has settled (a probe is due then)."""
        return None if self.back_since is None else self.back_since + config.watch.settle

    def blocking_reason(self, now: float, config: Config) -> str:
        """Why this root holds a refresh back ("" when it is ready, or its gate is off)."""
        if not self.root.health_gate:
            return ""
        if self.health is not None and not self.health.healthy:
            return self.health.describe()
        if self.back_since is not None:
            return f"{self.key} is back but settling ({now - self.back_since:.0f} s of {config.watch.settle:g} s)"
        return ""

    # --- watching ------------------------------------------------------------------------

    def start_watch(self, health: Health, config: Config, ticket: int, count: bool = False) -> None:
        """Ask for a watch in the mode this root needs."""
        self.ticket = ticket
        self.pending = True
        self.fallback = False
        self.watched_as = identity(health)
        self.count_when_watched = count
        self.coverage = None
        self.verification = None
        self.switched = False
        self.poll_busy = False
        if mode_for(self.root, health, config) == "poll":
            why = 'configured mode = "poll"'
            if self.root.mode == "auto" and health.fstype in config.watch.list_fstypes:
                why = f"{health.fstype}: inotify cannot see changes made on the server"
            elif self.root.mode == "auto":
                why = f"{health.fstype} is a network filesystem, inotify cannot see changes made on the server"
            self.start_polling(health, config, ticket, why)
        else:
            self.watch = "events"
            self.actions.append(Watch(self.root, ticket, "events", counterparts=health.counterparts,
                                      automounts=health.automounts))

    def start_polling(self, health: Health | None, config: Config, ticket: int, why: str,
                      keep_events: bool = False) -> None:
        """Ask for polling (``keep_events``: keep the inotify watch until the first cycle has
        taken its baseline; a change made between the two would be seen by neither)."""
        self.watch = "poll"
        self.why_polled = why
        interval = self.poll_interval(config)
        method = poll_method_for(self.root, health, config)
        self.poll_method = method
        self.actions.append(Watch(self.root, ticket, "poll", interval, keep_events=keep_events, why=why,
                                  counterparts=health.counterparts if health else (),
                                  automounts=health.automounts if health else (), poll_method=method))
        listing = " (listing every folder: folder times do not follow their contents here)" if method == "list" else ""
        self.actions.append(info(f"polling {self.key} every {interval:g} s{listing}: {why}"))

    def poll_interval(self, config: Config) -> float:
        return self.root.poll_interval or config.watch.poll_interval

    def unwatch(self) -> None:
        self.watch = ""
        self.pending = False
        self.ticket += 1_000_000  # results of the watch under way, if any, are stale now
        self.poll_busy = False
        self.poll_directories = None
        self.verification = None
        self.switched = False
        self.actions.append(Unwatch(self.root))

    def on_watched(self, ticket: int, problem: str | None) -> bool:
        """The watch asked for with ``ticket`` is set up (or failed). Returns True when the
        root is to be verified (an inotify watch)."""
        if ticket != self.ticket or not self.pending:
            return False
        self.pending = False
        if problem is not None:
            self.watch = ""
            message = f"cannot watch {self.key}: {problem}"
            if message != self.problem:
                self.actions.append(error(message))
                self.problem = message
            return False
        if not self.fallback:
            self.problem = ""  # polled instead of fully watched: the problem stays (and is shown)
        if self.watch == "events":
            self.verification = "running"
            return True
        return False

    def on_verified(self, ticket: int, coverage: Coverage, config: Config, next_ticket: int) -> bool:
        """The verification of watch ``ticket`` ended: a line on a shortfall (a WARNING for
        folders the kernel never reported, which polling handles; else an ERROR: the watch
        limit or a permission is the user's to fix), and polling instead where ``fallback``
        says so. Returns True when ``next_ticket`` was used."""
        if ticket != self.ticket or self.watch != "events" or self.pending:
            return False
        self.coverage = coverage
        problem = coverage.problem()
        if problem is None:
            self.verification = "complete" if coverage.complete else "incomplete"
            if coverage.complete:
                self.actions.append(debug(f"{self.key}: all {coverage.folders} folders watched "
                                          f"({coverage.vanished} vanished meanwhile)"))
            else:
                self.actions.append(debug(f"{self.key}: watch verification did not finish in time"))
            return False
        self.verification = "shortfall"
        if problem != self.problem:
            unreported = coverage.cause == UNREPORTED and self.root.fallback == "poll"
            self.actions.append(warning(problem) if unreported else error(problem))
            self.problem = problem
        if self.root.fallback != "poll":
            return False
        self.ticket = next_ticket
        self.pending = True
        self.fallback = True
        self.start_polling(self.health, config, next_ticket, 'inotify cannot watch all of it (fallback = "poll")',
                           keep_events=True)
        # What inotify missed in the folders it did not watch is in no batch: once polling
        # has its baseline the root counts as changed (see on_poll).
        self.switched = coverage.may_have_missed_changes
        return True

    def on_poll(self, result: PollResult) -> list[str] | None:
        """A polling cycle: the folders that changed (None when nothing is to be counted).

        The first cycle takes the baseline (the inotify watch kept meanwhile can go); a
        failed cycle is the health check's business; an unhealthy root is held by the
        gate and counted as changed when it is back.
        """
        if self.watch != "poll":
            return None
        self.poll_directories = result.directories
        if result.first:
            self.actions.append(DropEvents(self.root, self.health.counterparts if self.health else ()))
            if self.switched:
                self.switched = False
                self.taken_over = True
                self.actions.append(info(f"polling has taken over {self.key}: counting it as changed, "
                                         "inotify missed part of it"))
        if result.failed:
            self.actions.append(debug(f"polling {self.key}: {result.failed}"))
            return None
        if self.health is not None and not self.health.healthy:
            return None
        self.poll_busy = bool(result.changed) and not result.first
        return list(result.changed)
