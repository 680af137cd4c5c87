"""What the user is told, and when: notices for a phone or a chat.

The daemon's most important moments happen while nobody is looking: a refresh held back
for days by a share that failed to mount, the loss guard refusing a refresh, the API key
deleted. :class:`Notices` turns snapshots of the daemon's state (:class:`DaemonView`) into
:class:`Notice` values; an edge (:mod:`watcher.edges.notifications`) delivers them.

Problems and when each is told:

============  =====================================================  ===============
kind          present while                                          told
============  =====================================================  ===============
``held``      the health gate holds the pending batch                after ``after``
``refused``   the loss guard refuses the pending batch               at once
``key``       Jellyfin rejects the API key                           at once
``jellyfin``  Jellyfin does not answer (or rejects the refresh)      after ``after``
``watch``     a root cannot be fully watched (and is polled)         at once
============  =====================================================  ===============

Each problem is told once per change of state (a *signature*: which roots are down and
how, which libraries are refused, ...; counts that merely grow are not a change) and again,
with a resolution notice, when it is over. A problem notice of one kind is sent at most
once per ``rate_limit`` seconds: a change that happens meanwhile is told once the interval
has passed, if it still holds, so a flapping disk sends at most one notice per interval
and nothing at all for a flap that is over before then. A resolution is sent at once, and
only for a problem that was told: resolutions cannot outnumber problem notices.

Pure: no clock (``now`` is an argument, any monotonic seconds), no I/O, no logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_AFTER = 900.0
"""Seconds a held refresh or an unreachable Jellyfin must last before it is told."""
DEFAULT_RATE_LIMIT = 3600.0
"""Seconds between two problem notices of the same kind."""
TITLE_LIMIT = 80
"""Characters of a title; longer titles are cut with an ellipsis."""
BODY_LIMIT = 700
"""Characters of a body; longer bodies are cut with an ellipsis."""
PATH_LIMIT = 120
"""Characters of one path in a body; a longer path is cut in the middle."""
EXAMPLES = 3
"""Missing paths named in a refusal notice."""
LISTED_ROOTS = 3
"""Roots named in a held notice; more are counted."""

KINDS = ("held", "refused", "key", "jellyfin", "watch")
"""Problem kinds; each has its own rate limit."""


# --- what the policy sees ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootView:
    """One root as the daemon sees it.

    ``state``: ``healthy``, ``missing``, ``unreadable``, ``empty``, ``unmounted``,
    ``unresponsive``, ``settling`` (back, waiting to be watched again) or ``unknown``
    (not probed yet). ``since``: clock reading (seconds) when it entered that state.
    ``gated``: an unhealthy state holds refreshes back (``health_gate``).
    ``watch_problem``: why it cannot be fully watched ("" when it can, or is polled by
    design); ``polled``: it is watched by polling.
    """

    path: str
    state: str
    reason: str = ""
    since: float = 0.0
    gated: bool = True
    watch_problem: str = ""
    polled: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """The loss guard's verdict on one library: ``missing`` of ``items`` media files are
    gone (``examples``: the first few paths), or ``unresponsive``: the check did not finish."""

    library: str
    missing: int
    items: int
    examples: tuple[str, ...] = ()
    unresponsive: bool = False

    @property
    def share(self) -> float:
        return self.missing / self.items if self.items else 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """The last refresh attempt failed. ``kind``: ``key`` (401/403), ``unreachable``
    (connection refused, timeout, 5xx) or ``rejected`` (another 4xx). ``message``: the
    user-facing error line (never holds the key). ``since``: clock reading of the first
    failure in a row."""

    kind: str
    message: str
    since: float


@dataclass(frozen=True, slots=True)
class PendingView:
    """The pending batch: ``changes`` under ``roots``, the first one at ``since``.

    Why it is not sent, each independently: ``held_since`` the health gate holds it (clock
    reading, None: it does not); ``refusals`` the loss guard refuses it (since
    ``refused_since``); ``failure`` the last attempt failed.
    """

    changes: int
    roots: tuple[str, ...]
    since: float
    held_since: float | None = None
    refusals: tuple[Refusal, ...] = ()
    refused_since: float | None = None
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class RefreshView:
    """The last refresh: at clock reading ``at``, ``changes`` under ``roots``; ``result``:
    ``sent``, or ``dry run: not sent``."""

    at: float
    changes: int
    roots: tuple[str, ...] = ()
    result: str = "sent"


@dataclass(frozen=True, slots=True)
class DaemonView:
    """A snapshot of what the notification policy needs to know about the daemon."""

    roots: tuple[RootView, ...] = ()
    pending: PendingView | None = None
    last_refresh: RefreshView | None = None


# --- what it decides --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """One message. ``level``: ``info``, ``success``, ``warning`` or ``failure`` (apprise's
    ``NotifyType`` values). ``resolved``: it tells that the problem of ``kind`` is over."""

    kind: str
    level: str
    title: str
    body: str
    resolved: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """``after``: seconds a held refresh or an unreachable Jellyfin must last before it is
    told; ``rate_limit``: seconds between two problem notices of the same kind."""

    after: float = DEFAULT_AFTER
    rate_limit: float = DEFAULT_RATE_LIMIT


@dataclass(frozen=True, slots=True)
class _Problem:
    kind: str
    subject: str
    signature: object
    since: float
    delay: float
    notice: Callable[[float], Notice] = field(compare=False)
    resolution: Callable[[float, DaemonView], Notice] = field(compare=False)


class Notices:
    """The notification policy: feed it every loop iteration, deliver what it returns.

    ``host``: the machine's name, put in every title (passed in, never looked up here).
    """

    def __init__(self, policy: Policy, host: str) -> None:
        self.policy = policy
        self.host = host
        self.wake_at = float("inf")
        """The earliest clock reading at which :meth:`update` may have something new to
        send without the view changing (a problem reaching ``after``, a rate limit
        ending); infinity when nothing waits."""
        self._told: dict[tuple[str, str], tuple[object, _Problem]] = {}
        self._last_sent: dict[str, float] = {}

    def update(self, now: float, view: DaemonView) -> list[Notice]:
        """The notices to send now, given the daemon's state ``view`` at clock reading ``now``."""
        problems = {(problem.kind, problem.subject): problem for problem in self._problems(view)}
        notices = []
        for key in [key for key in self._told if key not in problems]:
            _, told = self._told.pop(key)
            notices.append(told.resolution(now, view))
        wake_at = float("inf")
        for key, problem in problems.items():
            told_signature = self._told[key][0] if key in self._told else None
            if told_signature == problem.signature:
                continue
            ready_at = max(problem.since + problem.delay, self._last_sent.get(problem.kind, -float("inf")) + self.policy.rate_limit)
            if now < ready_at:
                wake_at = min(wake_at, ready_at)
                continue
            notices.append(problem.notice(now))
            self._told[key] = (problem.signature, problem)
            self._last_sent[problem.kind] = now
        self.wake_at = wake_at
        return notices

    # --- the problems a view shows ---------------------------------------------------------

    def _problems(self, view: DaemonView) -> list[_Problem]:
        problems = []
        pending = view.pending
        if pending is not None and pending.held_since is not None:
            problems.append(self._held(view, pending, pending.held_since))
        if pending is not None and pending.refusals:
            since = pending.refused_since if pending.refused_since is not None else pending.since
            problems.append(self._refused(pending, since))
        if pending is not None and pending.failure is not None:
            problems.append(self._failing(pending, pending.failure))
        for root in view.roots:
            if root.watch_problem:
                problems.append(self._watch(root))
        return problems

    def _held(self, view: DaemonView, pending: PendingView, since: float) -> _Problem:
        blocking = [root for root in view.roots if root.gated and root.state != "healthy"]
        signature = frozenset((root.path, root.state) for root in blocking)

        def notice(now: float) -> Notice:
            lines = [_root_line(root, now) for root in blocking[:LISTED_ROOTS]]
            if len(blocking) > LISTED_ROOTS:
                lines.append(f"and {len(blocking) - LISTED_ROOTS} more roots")
            if not blocking:
                lines.append("Waiting for the storage to be ready.")
            lines.append(
                f"{_changes(pending.changes)} kept, held for {_duration(now - since)}; "
                "sent once every root is healthy."
            )
            return self._notice("held", "warning", "refresh held back", lines)

        def resolution(now: float, view: DaemonView) -> Notice:
            title = "storage back"
            sent = _sent_since(view, since)
            if sent is not None:
                title = "storage back, refresh sent" if sent.result == "sent" else "storage back"
            return self._notice("held", "success", title, ["Every root is healthy again.", _batch_outcome(view, since)],
                                resolved=True)

        return _Problem("held", "", signature, since, self.policy.after, notice, resolution)

    def _refused(self, pending: PendingView, since: float) -> _Problem:
        refusals = pending.refusals
        signature = tuple(sorted((refusal.library, refusal.unresponsive) for refusal in refusals))

        def notice(now: float) -> Notice:
            lines = []
            for refusal in refusals:
                if refusal.unresponsive:
                    lines.append(
                        f"Library {refusal.library}: the check of its files did not finish in time "
                        "(unresponsive storage)."
                    )
                    continue
                lines.append(
                    f"Library {refusal.library}: a scan would remove {refusal.missing} of {refusal.items} "
                    f"items ({refusal.share:.0%}). Missing:"
                )
                lines.extend(_cut_path(path) for path in refusal.examples[:EXAMPLES])
                shown = min(len(refusal.examples), EXAMPLES)
                if refusal.missing > shown:
                    lines.append(f"and {refusal.missing - shown} more")
            lines.append(f"{_changes(pending.changes)} kept.")
            confirm = max((refusal.missing for refusal in refusals if not refusal.unresponsive), default=0)
            if confirm and all(not refusal.unresponsive for refusal in refusals):
                lines.append(f"If this clean-up is deliberate: jellyfin-watcher refresh --allow-removals {confirm}")
            return self._notice("refused", "failure", "refresh refused by the loss guard", lines)

        def resolution(now: float, view: DaemonView) -> Notice:
            sent = _sent_since(view, since)
            title = "loss guard satisfied, refresh sent" if sent is not None and sent.result == "sent" else "loss guard satisfied"
            return self._notice("refused", "success", title, ["The loss guard no longer objects.", _batch_outcome(view, since)],
                                resolved=True)

        return _Problem("refused", "", signature, since, 0.0, notice, resolution)

    def _failing(self, pending: PendingView, failure: Failure) -> _Problem:
        kind = "key" if failure.kind == "key" else "jellyfin"
        since = failure.since

        def notice(now: float) -> Notice:
            if kind == "key":
                title = "Jellyfin rejected the API key"
                lines = [_cut(failure.message, 300), f"{_changes(pending.changes)} kept; watching goes on."]
                return self._notice(kind, "failure", title, lines)
            title = "Jellyfin unreachable" if failure.kind == "unreachable" else "Jellyfin rejects the refresh"
            lines = [
                f"No refresh for {_duration(now - since)}: {_cut(failure.message, 300)}",
                f"{_changes(pending.changes)} kept; retrying.",
            ]
            return self._notice(kind, "warning", title, lines)

        def resolution(now: float, view: DaemonView) -> Notice:
            if kind == "key":
                title, first = "Jellyfin accepts the API key again", "Jellyfin accepts the API key again."
            else:
                title, first = "Jellyfin reachable again", f"Jellyfin answers again after {_duration(now - since)}."
            return self._notice(kind, "success", title, [first, _batch_outcome(view, since)], resolved=True)

        delay = 0.0 if kind == "key" else self.policy.after
        return _Problem(kind, "", failure.kind, since, delay, notice, resolution)

    def _watch(self, root: RootView) -> _Problem:
        def notice(now: float) -> Notice:
            lines = [_cut(root.watch_problem, 400)]
            if root.polled:
                lines.append(f"{_cut_path(root.path)} is polled instead: changes show up within a polling interval.")
            else:
                lines.append("Changes in those folders are not seen.")
            return self._notice("watch", "warning", "library folder not fully watched", lines)

        def resolution(now: float, view: DaemonView) -> Notice:
            return self._notice("watch", "success", "library folder watched again",
                                [f"{_cut_path(root.path)} is fully watched again."], resolved=True)

        # The subject is the root: its problem is told and resolved on its own.
        return _Problem("watch", root.path, root.polled, root.since, 0.0, notice, resolution)

    def _notice(self, kind: str, level: str, title: str, lines: list[str], resolved: bool = False) -> Notice:
        body = "\n".join(line for line in lines if line)
        return Notice(kind, level, _cut(f"{self.host}: {title}", TITLE_LIMIT), _cut(body, BODY_LIMIT), resolved)


def trial_notice(host: str) -> Notice:
    """The message ``jellyfin-watcher notify --test`` sends."""
    return Notice(
        "test",
        "info",
        _cut(f"{host}: test notification", TITLE_LIMIT),
        "jellyfin-watcher can reach you here. You will be told when a refresh is held back, "
        "refused or failing, and when it is resolved.",
    )


# --- wording ----------------------------------------------------------------------------------


def _root_line(root: RootView, now: float) -> str:
    state = "back, settling" if root.state == "settling" else root.state
    line = f"{_cut_path(root.path)} is {state} for {_duration(now - root.since)}"
    if root.reason:
        line += f": {root.reason}"
    return line if line.endswith((".", "?", "!")) else line + "."


def _sent_since(view: DaemonView, since: float) -> RefreshView | None:
    """The last refresh, if it happened at or after ``since``."""
    last = view.last_refresh
    return last if last is not None and last.at >= since else None


def _batch_outcome(view: DaemonView, since: float) -> str:
    """What became of the kept batch, for a resolution notice."""
    sent = _sent_since(view, since)
    pending = view.pending
    if pending is not None:
        why = _why_held(pending)
        if why:
            return f"{_changes(pending.changes)} still kept: {why}."
    if sent is not None:
        if sent.result == "sent":
            return f"The kept batch was sent to Jellyfin ({_changes(sent.changes)})."
        return f"The kept batch was handled ({sent.result}; {_changes(sent.changes)})."
    if pending is not None:
        return f"{_changes(pending.changes)} to be sent."
    return ""


def _why_held(pending: PendingView) -> str:
    reasons = []
    if pending.held_since is not None:
        reasons.append("a root is not healthy")
    if pending.refusals:
        reasons.append("the loss guard refuses the refresh")
    if pending.failure is not None:
        reasons.append({"key": "Jellyfin rejects the API key", "unreachable": "Jellyfin is unreachable"}.get(
            pending.failure.kind, "Jellyfin rejects the refresh"))
    return "; ".join(reasons)


def _changes(count: int) -> str:
    return f"{count} change" if count == 1 else f"{count} changes"


def _duration(seconds: float) -> str:
    """``45 s``, ``16 min``, ``2 h 5 min``, ``3 days 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    unit = "day" if days == 1 else "days"
    return f"{days} {unit} {hours} h" if hours else f"{days} {unit}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cut_path(path: str, limit: int = PATH_LIMIT) -> str:
    """``path`` for one line: control characters escaped, a long one cut in the middle."""
    text = "".join(character if character.isprintable() else repr(character)[1:-1] for character in path)
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[-half:]}"
