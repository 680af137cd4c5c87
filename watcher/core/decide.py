"""When a batch is refreshed, and what has to be known first. Pure.

A due batch goes through these steps, each answered by an edge before the next is taken
(the service loop feeds the answers back and asks again):

1. **Open files.** Files created but not yet closed after writing (:mod:`watcher.core.writes`)
   are checked; while one is still being written the batch waits (the core looks again
   one quiet period later).
2. **Health.** Every root is probed — a probe begun after the batch fell due — and the health
   gate (:mod:`watcher.core.gate`) holds back what is not ready.
3. **Jellyfin's view** (:mod:`watcher.core.serverview`): each root in scope as Jellyfin lists
   it (``GET /Environment/DirectoryContents``) against this machine's listing; a container
   blind to a disk, a share missing on Jellyfin's host, hold the refresh.
4. **The loss guard** (:mod:`watcher.guard`): before every refresh (``guard.when =
   "always"``) or only after deletions, moves and unmounts (``"removals"``), what a scan
   would remove is predicted, and a mass removal refused.
5. **A backup** (``POST /Backup/Create``, Jellyfin 10.11+) before a refresh predicted to
   remove at least ``backup.min_removals`` items, or any confirmed clean-up.
6. **The running scan** (server-wide refreshes only), asked last, right before the send:
   ``POST /Library/Refresh`` cancels a running library scan and queues a new one (Jellyfin's
   ``LibraryController.RefreshLibrary`` → ``TaskManager.CancelIfRunningAndQueue``), so a
   running scan is waited for.
7. **Health again**, if Jellyfin was asked anything since the probe: its answers can take
   seconds, and storage gone meanwhile must still hold the refresh back.
8. **Send.**

:func:`decide` looks at what is known and names the next step; it never waits, reads the
clock or touches anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watcher.config import Config
from watcher.core.debounce import Batch
from watcher.core.gate import RootView, Verdict, gate
from watcher.core.protections import backup_due

if TYPE_CHECKING:
    from watcher.core.guard import Prediction

SUPPRESSED_RECHECK = 5.0
"""Seconds between health checks while a due batch is held back by an unhealthy root (a
change of the mount table triggers one at once)."""
SCAN_RUNNING_RECHECK = 5.0
"""Seconds between looks at Jellyfin's scan task while a running scan is waited for."""
GUARD_RECHECK = 60.0
"""Seconds before a batch the loss guard refused is predicted again (new changes: sooner)."""


@dataclass(slots=True)
class Attempt:
    """What the current attempt to refresh a due batch has established.

    Times are clock readings (seconds). An attempt begins when the batch falls due and ends
    when it is sent, refused, failed, or no longer due (new changes arrived).
    """

    started_at: float
    writes_checked: bool = False
    """The open files were checked and none is being written any more."""
    announced: bool = False
    """"batch due" was logged."""
    scan_idle: bool = False
    """Jellyfin's library scan was found idle during this attempt."""
    predictions: tuple[Prediction, ...] | None = None
    predicted_for: frozenset[str] | None = None
    """Library IDs the predictions cover (None: every library)."""
    predicted_removals: int = 0
    """The batch's removal count when the prediction was asked for: a later removal
    makes it stale."""
    asked_at: float | None = None
    """When Jellyfin last answered during this attempt (a probe must follow)."""
    views: tuple[str, ...] | None = None
    """Why Jellyfin's view holds the refresh (``()``: it agrees; None: not compared yet)."""


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything :func:`decide` looks at.

    ``due_at``: when the batch falls due (quiet period, ``max_wait``, backoff after a
    failure, a polled root still changing), None without a batch. ``open_files``: files
    open for writing. ``probed_at``: when the newest complete probe of every root began
    (None: never). ``roots``: the gate's view of every root. ``dry_run``: Jellyfin is never
    contacted. ``removals``: removals counted in the batch so far. ``allowed``: removals a
    person confirmed for this refresh (``refresh --allow-removals``).
    """

    batch: Batch | None
    due_at: float | None
    roots: Mapping[str, RootView]
    probed_at: float | None
    attempt: Attempt | None
    open_files: int = 0
    dry_run: bool = False
    removals: int = 0
    allowed: int = 0
    backed_up: int | None = None
    """Removals the last backup for this batch covered (None: no backup yet)."""


# --- steps ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    """No batch."""


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do before ``at`` (a clock reading)."""

    at: float


@dataclass(frozen=True, slots=True)
class CheckOpenFiles:
    """Find out which open files are still being written."""


@dataclass(frozen=True, slots=True)
class ProbeRoots:
    """Probe every root (a probe begun now answers the question)."""


@dataclass(frozen=True, slots=True)
class HoldBack:
    """The gate holds the whole batch back; look again at ``recheck_at``."""

    recheck_at: float


@dataclass(frozen=True, slots=True)
class AskScanRunning:
    """Ask Jellyfin whether its library scan is running."""


@dataclass(frozen=True, slots=True)
class CompareViews:
    """Compare Jellyfin's view of the roots of ``roots``' libraries with this machine's."""

    roots: frozenset[str]


@dataclass(frozen=True, slots=True)
class HoldForViews:
    """Jellyfin's view disagrees (``reasons``); look again at ``recheck_at``."""

    reasons: tuple[str, ...]
    recheck_at: float


@dataclass(frozen=True, slots=True)
class BackUpFirst:
    """Ask Jellyfin for a backup before removing ``removals`` items."""

    removals: int


@dataclass(frozen=True, slots=True)
class PredictRemovals:
    """Run the loss guard for ``library_ids`` (None: every library)."""

    library_ids: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Refuse:
    """The loss guard refuses: ``refusal`` says why; look again at ``recheck_at``."""

    refusal: str
    recheck_at: float


@dataclass(frozen=True, slots=True)
class SendRefresh:
    """Refresh the changes under ``roots`` now."""

    roots: frozenset[str]


Step = (
    Idle | WaitUntil | CheckOpenFiles | ProbeRoots | HoldBack | AskScanRunning | CompareViews | HoldForViews
    | PredictRemovals | Refuse | BackUpFirst | SendRefresh
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The next step, and the gate's verdict when it was consulted (its reasons are logged
    once, also when part of the batch goes ahead)."""

    step: Step
    verdict: Verdict | None = None


def decide(now: float, situation: Situation, config: Config) -> Decision:
    """The next step for the pending batch (see the module's docstring for the order)."""
    batch, attempt = situation.batch, situation.attempt
    if batch is None or situation.due_at is None:
        return Decision(Idle())
    if now < situation.due_at or attempt is None:
        return Decision(WaitUntil(situation.due_at))
    if situation.open_files and not attempt.writes_checked:
        return Decision(CheckOpenFiles())
    if situation.probed_at is None or situation.probed_at < attempt.started_at:
        return Decision(ProbeRoots())
    verdict = gate(batch.roots, situation.roots, config.refresh.gate, config.refresh.scope)
    if not verdict.ready:
        return Decision(HoldBack(now + SUPPRESSED_RECHECK), verdict)
    if situation.dry_run:
        return Decision(SendRefresh(verdict.ready), verdict)
    if config.server_view.enabled:
        if attempt.views is None:
            return Decision(CompareViews(verdict.ready), verdict)
        if attempt.views:
            return Decision(HoldForViews(attempt.views, now + SUPPRESSED_RECHECK), verdict)
    if guard_applies(batch, situation.roots, config):
        wanted = libraries_in_scope(verdict.ready, situation.roots, config.refresh.scope)
        if (
            attempt.predictions is None
            or situation.removals > attempt.predicted_removals
            or not covers(attempt.predicted_for, wanted)
        ):
            return Decision(PredictRemovals(wanted), verdict)
        refusal = refusals(attempt.predictions, config, situation.allowed)
        if refusal:
            return Decision(Refuse(refusal, now + GUARD_RECHECK), verdict)
        removals = sum(prediction.missing for prediction in attempt.predictions)
        if config.backup.enabled and backup_due(removals, situation.allowed, config.backup.min_removals) and (
            situation.backed_up is None or removals > situation.backed_up
        ):
            return Decision(BackUpFirst(removals), verdict)
    if config.refresh.scope == "server" and not attempt.scan_idle:
        return Decision(AskScanRunning(), verdict)
    if attempt.asked_at is not None and situation.probed_at < attempt.asked_at:
        return Decision(ProbeRoots(), verdict)
    return Decision(SendRefresh(verdict.ready), verdict)


def guard_applies(batch: Batch, roots: Mapping[str, RootView], config: Config) -> bool:
    """Whether the loss guard runs before this refresh.

    ``guard.when = "always"``: before every refresh — the one check that sees media vanish
    behind a healthy mount (a mergerfs branch, a disk below a root never seen mounted, a
    share showing an old snapshot). ``"removals"``: only when the batch deleted, moved or
    unmounted something, or a root whose health gate is off is unhealthy (a scan could then
    remove items whatever the batch holds).
    """
    if not config.guard.enabled:
        return False
    if config.guard.when == "always" or batch.removals:
        return True
    return any(view.unhealthy_ungated for view in roots.values())


def libraries_in_scope(ready: frozenset[str], roots: Mapping[str, RootView], scope: str) -> frozenset[str] | None:
    """The library IDs a refresh of ``ready`` scans; None: every library (a server-wide
    refresh, or a root whose library is unknown)."""
    wanted = {roots[key].library_id if key in roots else None for key in ready}
    if scope == "server" or None in wanted:
        return None
    return frozenset(library for library in wanted if library is not None)


def covers(predicted: frozenset[str] | None, wanted: frozenset[str] | None) -> bool:
    if predicted is None:
        return True
    return wanted is not None and wanted <= predicted


def refusals(predictions: Sequence[Prediction], config: Config, allowed: int = 0) -> str:
    """The loss guard's refusal ("" when the refresh may go ahead): every library whose
    predicted removals exceed its limits, with the command that confirms a deliberate
    clean-up."""
    from watcher.core.guard import Limits

    refused = []
    for prediction in predictions:
        count, share = config.guard.limits_for(prediction.library.name)
        if not prediction.refused(Limits(count, share), allowed=allowed):
            continue
        refused.append(prediction.describe() + (f" ({prediction.hint})" if prediction.hint else ""))
    return "; ".join(refused)
