"""What flows in and out of the decision core.

*Items* come in on the service's queue: events from watchdog and the mount table, results
of the work done on workers, signals. *Actions* go out: work for the edges, lines to log.
Both are immutable values; the loop dispatches items with ``match`` and hands actions to
the executor (:mod:`watcher.edges.workers`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watcher.config import Config, Root
from watcher.core.debounce import Batch
from watcher.core.scope import RefreshRequest
from watcher.core.state import SavedState
from watcher.core.writes import WriteCheck
from watcher.errors import WatcherError

if TYPE_CHECKING:
    from watcher.core.coverage import Coverage
    from watcher.core.guard import Prediction
    from watcher.core.health import Health
    from watcher.core.protections import Archive
    from watcher.core.serverview import Comparison

# --- items: into the core -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One watchdog event under ``root`` (its configured path).

    ``kind``: ``created``, ``deleted``, ``moved`` or ``closed`` (closed after writing);
    ``dest``: the new path of a move.
    """

    root: str
    kind: str
    path: str
    dest: str = ""
    is_directory: bool = False


@dataclass(frozen=True, slots=True)
class EventsLost:
    """The kernel's event queue of ``root``'s watch overflowed (watchdog's overflow hook):
    events were lost. ``root`` None: of any root."""

    root: str | None = None


@dataclass(frozen=True, slots=True)
class MountsChanged:
    """Something was mounted, unmounted or remounted in this mount namespace.

    ``points``: the mount points whose entries in the mount table changed (appeared,
    disappeared or changed options); None when not known (then every change counts)."""

    points: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """End the loop (SIGTERM, SIGINT)."""


@dataclass(frozen=True, slots=True)
class Reload:
    """Read the configuration again (SIGHUP)."""


@dataclass(frozen=True, slots=True)
class Probed:
    """Every root was probed; ``started_at`` is the clock reading when the probe began."""

    started_at: float
    results: tuple[Health, ...]


@dataclass(frozen=True, slots=True)
class Watched:
    """A :class:`Watch` finished: ``problem`` is None when the root is watched."""

    root: str
    ticket: int
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Verified:
    """The watch verification of ``root`` (for the watch ``ticket``) ended."""

    root: str
    ticket: int
    coverage: Coverage


@dataclass(frozen=True, slots=True)
class PollResult:
    """Queue item: one polling cycle of ``root`` finished.

    ``changed``: folders whose relevant entries changed (or appeared, or vanished).
    ``first``: the cycle that built the baseline (reports nothing). ``failed``: the cycle
    did not finish in time or the root was gone — the service should probe the root.
    """

    root: str
    changed: tuple[str, ...] = ()
    first: bool = False
    failed: str = ""
    directories: int = 0


@dataclass(frozen=True, slots=True)
class WritesChecked:
    """The status of the open files (:class:`CheckWrites`); ``complete`` is False when the
    check did not finish within its deadline (nothing is known)."""

    checks: tuple[WriteCheck, ...]
    complete: bool = True


@dataclass(frozen=True, slots=True)
class RootsRead:
    """The roots to watch, read for ``purpose`` (``start``, ``reread``, ``reload``); a reload
    also carries the new configuration."""

    purpose: str
    roots: tuple[Root, ...]
    config: Config | None = None


@dataclass(frozen=True, slots=True)
class ScanChecked:
    """Whether Jellyfin's library scan task is running."""

    running: bool


@dataclass(frozen=True, slots=True)
class Predicted:
    """The loss guard's predictions, one per library in scope."""

    predictions: tuple[Prediction, ...]


@dataclass(frozen=True, slots=True)
class ViewsChecked:
    """Jellyfin's view of the roots in scope, compared with this machine's."""

    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True, slots=True)
class BackedUp:
    """A :class:`BackUp` ended: ``archive`` written; or ``unavailable`` (this server makes no
    backups: why), or ``failure`` (it failed)."""

    removals: int
    archive: Archive | None = None
    unavailable: str = ""
    failure: WatcherError | None = None


@dataclass(frozen=True, slots=True)
class SendDone:
    """A :class:`Send` ended: ``sent`` went through, then ``error`` stopped the rest (if any)."""

    batch: Batch
    requests: tuple[RefreshRequest, ...]
    sent: tuple[RefreshRequest, ...]
    error: WatcherError | None = None
    crash: str = ""
    """An unexpected exception that stopped the rest (its one-line description)."""


@dataclass(frozen=True, slots=True)
class JobFailed:
    """A job for Jellyfin or the configuration failed (``job`` names the action class)."""

    job: str
    error: WatcherError
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class JobCrashed:
    """A job raised something unexpected: a bug, or an answer nobody foresaw."""

    job: str
    error: str
    details: str = ""
    """The traceback (logged at debug)."""
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing arrived before the core's wake-up time."""


if TYPE_CHECKING:
    Item = (
        FileEvent | EventsLost | MountsChanged | Stop | Reload | Probed | Watched | Verified | PollResult
        | WritesChecked | RootsRead | ScanChecked | ViewsChecked | Predicted | BackedUp | SendDone | JobFailed
        | JobCrashed | Tick
    )

# --- actions: out of the core ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the log (``level`` from :mod:`logging`); ``details`` go to debug."""

    level: int
    message: str
    details: str = ""


def info(message: str) -> Log:
    return Log(logging.INFO, message)


def warning(message: str) -> Log:
    return Log(logging.WARNING, message)


def error(message: str, details: str = "") -> Log:
    return Log(logging.ERROR, message, details)


def debug(message: str) -> Log:
    return Log(logging.DEBUG, message)


@dataclass(frozen=True, slots=True)
class Probe:
    """Probe every root (:func:`watcher.health.probe_roots`), answering :class:`Probed`."""

    started_at: float
    roots: tuple[Root, ...]
    learned: SavedState
    """What was learned while the roots were healthy: their mount points, the disks below
    them, their pools' branches (a copy: the probe runs on a worker)."""


@dataclass(frozen=True, slots=True)
class Watch:
    """Watch ``root`` with inotify (``mode`` ``events``) or by polling every
    ``poll_interval`` seconds; answers :class:`Watched`. ``keep_events``: when switching to
    polling, keep the inotify watch until the poller's first cycle has taken its baseline."""

    root: Root
    ticket: int
    mode: str = "events"
    poll_interval: float = 60.0
    keep_events: bool = False
    why: str = ""
    counterparts: tuple[str, ...] = ()
    """On a mergerfs pool: the root's folders on the branches, watched too (a file written
    straight to a branch makes no event on the pool)."""
    automounts: tuple[str, ...] = ()
    """Automounted mount points the root needs, held open while watched (else they expire
    under the watches)."""
    poll_method: str = "mtime"
    """``mtime`` or ``list`` (:class:`watcher.config.PollMethod`)."""


@dataclass(frozen=True, slots=True)
class Unwatch:
    """Stop watching ``root`` (inotify and polling)."""

    root: Root


@dataclass(frozen=True, slots=True)
class DropEvents:
    """The poller of ``root`` has its baseline: its inotify watch can go (its ``counterparts``
    on a pool's branches stay watched)."""

    root: Root
    counterparts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verify:
    """Compare ``root``'s folders with the kernel's watches; answers :class:`Verified`.
    ``fuse``: the root is on a FUSE filesystem (folders made behind its back are never
    reported by the kernel)."""

    root: Root
    ticket: int
    fuse: bool = False


@dataclass(frozen=True, slots=True)
class CheckWrites:
    """Stat the open files; answers :class:`WritesChecked`."""

    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadRoots:
    """Read the roots (the configured ones, tagged with their libraries, or every library
    location); answers :class:`RootsRead` or :class:`JobFailed`."""

    purpose: str


@dataclass(frozen=True, slots=True)
class AskScan:
    """``GET /ScheduledTasks``: is the library scan running? Answers :class:`ScanChecked`."""


@dataclass(frozen=True, slots=True)
class Predict:
    """The loss guard for the libraries ``library_ids`` (None: every library); answers
    :class:`Predicted`."""

    library_ids: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CheckViews:
    """List the roots of ``healths`` (and the mount points below them) as Jellyfin and this
    machine see them, and compare (``changed_folders``: changes in flight); answers
    :class:`ViewsChecked`."""

    healths: tuple[Health, ...]
    changed_folders: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BackUp:
    """Ask Jellyfin for a backup before a refresh that removes ``removals`` items; answers
    :class:`BackedUp`."""

    removals: int


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``requests`` in order, for ``batch`` (taken from the debouncer); answers
    :class:`SendDone`."""

    batch: Batch
    requests: tuple[RefreshRequest, ...]


@dataclass(frozen=True, slots=True)
class Save:
    """Write the state file (pending batch, learned mount points)."""

    state: SavedState


@dataclass(frozen=True, slots=True)
class Ready:
    """Start-up is done: every root that can be watched is (``READY=1``)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """End the daemon with ``message`` (a configuration error at start)."""

    message: str


Action = (
    Log | Probe | Watch | Unwatch | DropEvents | Verify | CheckWrites | ReadRoots | AskScan | CheckViews | Predict
    | BackUp | Send | Save | Ready | Exit
)
