"""The pending batch's way to a refresh: one attempt at a time, step by step. Pure.

:class:`Refresher` takes the steps :func:`~watcher.core.decide.decide` names for a due batch
(check the open files, probe, compare Jellyfin's view, predict, back up, ask about a running
scan, send), takes Jellyfin's answers, and keeps what a failure, a refusal or a hold leaves
behind: the backoff, the retry time, the reason shown in ``status`` and in notifications.
It shares the debouncer, the open files and the roots with :class:`~watcher.core.machine.Core`,
which owns them, and asks the core for a probe through a callback; it never reads the clock,
touches anything, or logs: log lines are actions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from watcher.config import Config
from watcher.core import decide as steps
from watcher.core.backoff import Backoff
from watcher.core.debounce import Batch, Debouncer
from watcher.core.decide import Attempt, Decision, Situation, decide, refusals
from watcher.core.gate import RootView
from watcher.core.guard import Prediction
from watcher.core.messages import (
    Action,
    AskScan,
    BackedUp,
    BackUp,
    CheckViews,
    CheckWrites,
    JobCrashed,
    JobFailed,
    Predict,
    Predicted,
    Save,
    ScanChecked,
    Send,
    SendDone,
    ViewsChecked,
    WritesChecked,
    debug,
    error,
    info,
    warning,
)
from watcher.core.notices import RefreshView
from watcher.core.roots import RootTracker
from watcher.core.scope import plan
from watcher.core.serverview import reasons as view_reasons
from watcher.core.writes import WriteTracker
from watcher.errors import ServerUnavailable, SetupError, WatcherError
from watcher.paths import within

JOBS = ("AskScan", "Predict", "CheckWrites", "CheckViews", "BackUp")
"""The jobs a refresh attempt runs (at most one of each at a time)."""


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


class Probes(Protocol):
    """What the refresher asks of the core's probing."""

    def want_probe(self, now: float, after: float | None = None) -> None:
        """A probe of every root is needed, begun at ``after`` or later (default: now)."""

    def probe_by(self, at: float) -> None:
        """The next periodic probe begins no later than ``at``."""


class Refresher:
    """One refresh attempt at a time for the pending batch of ``debouncer``.

    ``roots``: the core's roots (the same mapping, kept up to date by the core); ``writes``:
    its open files; ``probes``: how it asks for a probe; ``save``: the core's state to save.
    """

    def __init__(self, config: Config, debouncer: Debouncer, writes: WriteTracker, roots: Mapping[str, RootTracker],
                 probes: Probes, save: Callable[[], Save], dry_run: bool = False) -> None:
        self.config = config
        self.debouncer = debouncer
        self.writes = writes
        self.roots = roots
        self.probes = probes
        self.save = save
        self.dry_run = dry_run
        self.running: set[str] = set()
        """Jobs of :data:`JOBS` under way."""
        self.sending: Batch | None = None
        """The batch of the :class:`~watcher.core.messages.Send` under way (not in the debouncer)."""
        self.description = ""
        """How the batch being sent is named in the log ("12 changes under …", or "the
        changes under …" when the gate let only part of it go)."""
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
        self.refused = ""
        self.failing_since: float | None = None
        """When the refresh attempts began to fail (None: the last one did not)."""
        self.failure: WatcherError | None = None
        self.last_error = ""
        self.views_held = ""
        """Why Jellyfin's view holds the batch, as last logged ("" when it agrees)."""
        self.backup_held = ""
        """Why a failed backup holds the batch ("" when none did)."""
        self.backed_up: int | None = None
        """Removals the last backup covered, for retries of the same batch (None: none yet)."""
        self.last_backup: BackupRecord | None = None
        self.waiting_for_scan = False
        self.last_refresh: LastRefresh | None = None
        self.last_sending: Batch | None = None
        self.last_sent: RefreshView | None = None
        self.refreshes = 0

    def configure(self, config: Config, dry_run: bool) -> None:
        """A reloaded configuration."""
        self.config = config
        self.dry_run = dry_run
        self.backoff.maximum = config.watch.backoff_max

    # --- queries -----------------------------------------------------------------------

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
        for reason in (self.held, self.refused, self.views_held, self.backup_held):
            if reason:
                return reason
        return self.last_error if self.debouncer.pending is not None else ""

    def unsent(self) -> Batch | None:
        """The pending batch with the one being sent: what is not known to be refreshed."""
        batch = self.debouncer.pending
        if self.sending is not None:
            batch = self.sending if batch is None else batch.merge(self.sending)
        return batch

    # --- events the core passes on -----------------------------------------------------

    def changed(self) -> None:
        """A change joined the batch: a refused batch is predicted again once it is due."""
        if self.refused:
            self.retry_at = 0.0

    def stop(self) -> None:
        """The daemon stops: a batch being sent goes back to the pending batch (it may not
        have reached Jellyfin)."""
        if self.sending is not None:
            self.debouncer.restore(self.sending)
            self.sending = None

    # --- the next step -----------------------------------------------------------------

    def step(self, now: float, removals: int, actions: list[Action]) -> float:
        """Take the next step for the pending batch; return when to look again (a clock
        reading). ``removals``: removal events counted since start."""
        if self.sending is not None:
            return float("inf")
        due = self.due_at(now)
        if due is None or now < due:
            self.attempt = None
            return due if due is not None else float("inf")
        attempt = self.attempt = self.attempt or Attempt(started_at=now)
        if any(tracker.pending and tracker.count_when_watched for tracker in self.roots.values()):
            # A root that came back is being watched again and will count as changed: wait
            # for that (milliseconds), so that its change joins this refresh, not the next.
            return float("inf")
        decision = decide(now, self.situation(now, removals), self.config)
        self._log_gate(now, decision, actions)
        match decision.step:
            case steps.Idle():
                self.attempt = None
            case steps.WaitUntil(at=at):
                return at
            case steps.CheckOpenFiles():
                self._start("CheckWrites", actions, lambda: CheckWrites(self.writes.paths))
            case steps.ProbeRoots():
                self.probes.want_probe(now, after=max(attempt.started_at, attempt.asked_at or 0.0))
            case steps.HoldBack(recheck_at=recheck_at):
                # The attempt stays: the probe at recheck_at (or one a change of the mount
                # table starts sooner) is fresh enough to let it go on.
                self.probes.probe_by(recheck_at)
                return recheck_at
            case steps.AskScanRunning():
                self._start("AskScan", actions, AskScan)
            case steps.CompareViews(roots=ready):
                self._start("CheckViews", actions, lambda: self._check_views(ready))
            case steps.HoldForViews(reasons=reasons, recheck_at=recheck_at):
                return self._hold_for_views(reasons, recheck_at, actions)
            case steps.BackUpFirst(removals=count):
                self._start("BackUp", actions, lambda: BackUp(count))
            case steps.PredictRemovals(library_ids=library_ids):
                self._start("Predict", actions, lambda: self._predict(attempt, library_ids, removals))
            case steps.Refuse(refusal=refusal, recheck_at=recheck_at):
                return self._refuse(now, attempt, refusal, recheck_at, actions)
            case steps.SendRefresh(roots=roots):
                self._send(now, roots, actions)
                return now
        return float("inf")

    def situation(self, now: float, removals: int, allowed: int = 0) -> Situation:
        """What :func:`~watcher.core.decide.decide` looks at, now."""
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
            removals=removals,
            allowed=allowed,
            backed_up=self.backed_up,
        )

    def _start(self, job: str, actions: list[Action], make: Callable[[], Action]) -> None:
        """Start ``job`` (made by ``make``) unless one of its kind is under way."""
        if job not in self.running:
            self.running.add(job)
            actions.append(make())

    def _predict(self, attempt: Attempt, library_ids: frozenset[str] | None, removals: int) -> Predict:
        attempt.predicted_for = library_ids
        attempt.predicted_removals = removals
        attempt.predictions = None
        return Predict(library_ids)

    def _hold_for_views(self, reasons: tuple[str, ...], recheck_at: float, actions: list[Action]) -> float:
        self._hold_over()
        held = "; ".join(reasons)
        if held != self.views_held:
            changes = self.debouncer.pending.changes if self.debouncer.pending else 0
            actions.append(warning(f"refresh held: {held}; keeping {changes} changes"))
            self.views_held = held
        self.retry_at = recheck_at
        self.attempt = None
        return recheck_at

    def _refuse(self, now: float, attempt: Attempt, refusal: str, recheck_at: float, actions: list[Action]) -> float:
        if not self.held:
            self.held_since = None
        if refusal != self.refused:
            actions.append(error(f"refresh refused: {refusal}; keeping the changes"))
            self.refused = refusal
        if self.refused_since is None:
            self.refused_since = now
        self.refusals = tuple(
            prediction for prediction in attempt.predictions or () if refusals((prediction,), self.config)
        )
        self.retry_at = recheck_at
        self.attempt = None
        return recheck_at

    def _log_gate(self, now: float, decision: Decision, actions: list[Action]) -> None:
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
                    self.held_since = now
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
        self.description = describe(taken) if whole is None or taken.roots == whole.roots else (
            f"the changes under {listed(taken.roots)}"
        )
        roots_by_key = {key: tracker.root for key, tracker in self.roots.items()}
        requests = tuple(plan(taken, roots_by_key, self.config.refresh.scope, self.config.jellyfin_path))
        if self.dry_run:
            for request in requests:
                actions.append(info(f"dry run: would send {request.describe()} for {self.description}"))
            self._refreshed(now, "dry run: not sent", actions)
            return
        self.sending = taken
        actions.append(Send(taken, requests))

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

    # --- answers -----------------------------------------------------------------------

    def answer(self, now: float, item: object, actions: list[Action]) -> None:
        """Take one answer to a job of this refresher."""
        match item:
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
            case WritesChecked():
                self._on_writes_checked(now, item, actions)
            case JobFailed() | JobCrashed():
                self._on_job_failed(now, item, actions)
            case _:
                raise TypeError(f"not an answer to a refresh job: {item!r}")

    def _on_sent(self, now: float, done: SendDone, actions: list[Action]) -> None:
        self.sending = None
        description = self.description or describe(done.batch)
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
        self.running.discard("AskScan")
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
        self.running.discard("Predict")
        for prediction in predicted.predictions:
            actions.append(debug(f"loss guard: {prediction.describe()} ({prediction.pages} pages)"))
        if self.attempt is None:
            return
        self.attempt.predictions = predicted.predictions
        self.attempt.asked_at = now

    def _on_views_checked(self, now: float, checked: ViewsChecked, actions: list[Action]) -> None:
        self.running.discard("CheckViews")
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
        self.running.discard("BackUp")
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
            self._backup_failed(now, done, actions)

    def _backup_failed(self, now: float, done: BackedUp, actions: list[Action]) -> None:
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
        self.running.discard("CheckWrites")
        attempt = self.attempt
        if not checked.complete:
            # The open files could not be checked in time (a hung mount): the health
            # check will tell; until then they hold the batch like files being written.
            self._recheck_writes(now)
            return
        writing = self.writes.settle(checked.checks, self.config.watch.quiet_period)
        if writing:
            actions.append(debug(f"waiting for {len(writing)} files still being written, e.g. {writing[0]}"))
            self._recheck_writes(now)
            return
        if attempt is not None:
            attempt.writes_checked = True

    def _recheck_writes(self, now: float) -> None:
        """The open files hold the batch: look again one quiet period (at least 1 s) later."""
        self.writes_recheck_at = now + max(self.config.watch.quiet_period, 1.0)
        self.attempt = None

    def _on_job_failed(self, now: float, failed: JobFailed | JobCrashed, actions: list[Action]) -> None:
        job = failed.job
        self.running.discard(job)
        if job == "CheckWrites":
            self._recheck_writes(now)
        if isinstance(failed, JobFailed):
            self._failed(now, failed.error, actions)
        else:
            self._crashed(now, _doing(job), failed.error, failed.details, actions)

    # --- outcomes ----------------------------------------------------------------------

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
        actions.append(self.save())

    def _failed(self, now: float, failure: WatcherError, actions: list[Action]) -> None:
        message = str(failure)
        delay = self._retry_later(now, message, failure)
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
        message = f"unexpected failure {doing}: {description}"
        delay = self._retry_later(now, message, WatcherError(message))
        changes = self.debouncer.pending.changes if self.debouncer.pending else 0
        actions.append(error(f"{message}; keeping {changes} changes, retrying in {delay:g} s", details))
        self.last_error = message

    def _retry_later(self, now: float, message: str, failure: WatcherError) -> float:
        """The attempt failed: back off; return the delay (seconds)."""
        self.attempt = None
        delay = self.backoff.failed()
        self.retry_at = now + delay
        self.last_refresh = LastRefresh(now, f"failed: {message}")
        if self.failing_since is None:
            self.failing_since = now
        self.failure = failure
        self._hold_over()
        return delay

    def _hold_over(self) -> None:
        """The kept batch did not go after all: the health gate's hold is over (something
        else holds it now), and the loss guard's refusal too unless it refuses again."""
        if not self.held:
            self.held_since = None
        if not self.refused:
            self.refusals, self.refused_since = (), None


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
