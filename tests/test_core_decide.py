"""The steps before a refresh (``watcher.core.decide``), as tables: situation → next step.

Time is a plain number here; nothing is probed, asked or sent. Each row names a rule of
the README's "How it decides".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from watcher.config import (
    Config,
    Gate,
    GuardSettings,
    GuardWhen,
    LibraryLimits,
    RefreshSettings,
    Root,
    Scope,
    ServerViewSettings,
)
from watcher.core import decide as steps
from watcher.core.debounce import Batch
from watcher.core.decide import (
    Attempt,
    Situation,
    decide,
    guard_applies,
    libraries_in_scope,
    refusals,
)
from watcher.core.gate import RootView, Verdict, gate
from watcher.core.guard import Prediction
from watcher.core.libraries import Library

MOVIES, SHOWS = "a" * 32, "b" * 32
UNMOUNTED = "/media/shows is unmounted (it lives on / instead of the mount point /media/shows: is the disk mounted?)"


def batch(*roots: str, removals: bool = False, first: float = 0.0, last: float = 0.0) -> Batch:
    return Batch(frozenset(roots), 3, first, last, removals=removals)


def views(shows_blocked: str = "", ungated_unhealthy: bool = False) -> dict[str, RootView]:
    return {
        "/media/movies": RootView(MOVIES),
        "/media/shows": RootView(SHOWS, shows_blocked, ungated_unhealthy),
    }


def situation(
    *,
    pending: Batch | None = None,
    due_at: float | None = 100.0,
    roots: Mapping[str, RootView] | None = None,
    probed_at: float | None = 100.0,
    attempt: Attempt | None = None,
    open_files: int = 0,
    dry_run: bool = False,
    removals: int = 0,
    allowed: int = 0,
    backed_up: int | None = None,
) -> Situation:
    return Situation(
        pending if pending is not None else batch("/media/movies"),
        due_at,
        roots if roots is not None else views(),
        probed_at,
        attempt if attempt is not None else Attempt(started_at=100.0),
        open_files=open_files,
        dry_run=dry_run,
        removals=removals,
        allowed=allowed,
        backed_up=backed_up,
    )


def prediction(name: str, item_id: str, items: int, missing: int, unresponsive: bool = False) -> Prediction:
    examples = tuple(f"/media/{name.lower()}/{index}.mkv" for index in range(min(missing, 5)))
    return Prediction(Library(name, item_id, (f"/media/{name.lower()}",)), items, missing, examples, unresponsive, 1)


BY_LIBRARY = RefreshSettings(Scope.LIBRARY, Gate.LIBRARY)
NO_VIEW = ServerViewSettings(enabled=False)
ALWAYS = Config(refresh=BY_LIBRARY, server_view=NO_VIEW)
SERVER = Config(server_view=NO_VIEW)
REMOVALS = Config(refresh=BY_LIBRARY, guard=GuardSettings(when=GuardWhen.REMOVALS), server_view=NO_VIEW)
VIEWS = Config(refresh=BY_LIBRARY)  # Jellyfin's view compared too (the default)
ready = frozenset({"/media/movies"})


# --- the order of the steps --------------------------------------------------------------------

STEPS = [
    # rule, config, situation, now, expected step
    ("no batch: nothing to do", ALWAYS, Situation(None, None, views(), 100.0, None), 100.0, steps.Idle()),
    ("not due yet: wait for the quiet period", ALWAYS, situation(due_at=130.0), 100.0, steps.WaitUntil(130.0)),
    ("open files are checked first", ALWAYS, situation(open_files=2), 100.0, steps.CheckOpenFiles()),
    ("a probe older than the attempt is not enough", ALWAYS, situation(probed_at=99.0), 100.0, steps.ProbeRoots()),
    ("never probed", ALWAYS, situation(probed_at=None), 100.0, steps.ProbeRoots()),
    ("gate all: an unhealthy root holds everything", SERVER, situation(roots=views(UNMOUNTED)), 100.0,
     steps.HoldBack(105.0)),
    ("gate library: another library's root does not hold this one", ALWAYS,
     situation(roots=views(UNMOUNTED), attempt=Attempt(100.0, predictions=(), predicted_for=frozenset({MOVIES}))),
     100.0, steps.SendRefresh(ready)),
    ("gate library: the batch's own library is held", ALWAYS,
     situation(pending=batch("/media/shows"), roots=views(UNMOUNTED)), 100.0, steps.HoldBack(105.0)),
    ("dry run: nothing is asked, the refresh is logged", SERVER, situation(dry_run=True), 100.0,
     steps.SendRefresh(ready)),
    ("server scope: is a scan running? asked last (posting would cancel it)", SERVER,
     situation(probed_at=101.5, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 0),),
                                                predicted_for=None, asked_at=101.0)), 102.0,
     steps.AskScanRunning()),
    ("server scope: the scan idle, Jellyfin asked since the probe: probe again", SERVER,
     situation(probed_at=101.5, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 0),),
                                                predicted_for=None, asked_at=102.0, scan_idle=True)), 102.0,
     steps.ProbeRoots()),
    ("library scope: no scan question", ALWAYS, situation(), 100.0, steps.PredictRemovals(frozenset({MOVIES}))),
    ("server scope: the guard predicts every library", SERVER, situation(), 100.0, steps.PredictRemovals(None)),
    ("guard.when = removals: an add-only batch is not predicted", REMOVALS, situation(), 100.0,
     steps.SendRefresh(ready)),
    ("guard.when = removals: a deletion is predicted", REMOVALS, situation(pending=batch("/media/movies", removals=True)),
     100.0, steps.PredictRemovals(frozenset({MOVIES}))),
    ("guard.when = removals: an unhealthy root without health gate is predicted", REMOVALS,
     situation(roots=views(ungated_unhealthy=True)), 100.0, steps.PredictRemovals(frozenset({MOVIES}))),
    ("guard off: straight to the send", replace(ALWAYS, guard=replace(ALWAYS.guard, enabled=False)), situation(), 100.0, steps.SendRefresh(ready)),
    ("Jellyfin's view is compared before the guard", VIEWS, situation(), 100.0, steps.CompareViews(ready)),
    ("Jellyfin's view disagrees: held, looked at again", VIEWS, situation(attempt=Attempt(100.0, views=("empty",))),
     100.0, steps.HoldForViews(("empty",), 105.0)),
    ("Jellyfin's view agrees: on to the guard", VIEWS, situation(attempt=Attempt(100.0, views=())), 100.0,
     steps.PredictRemovals(frozenset({MOVIES}))),
    ("a removal of backup.min_removals items: a backup first", ALWAYS,
     situation(attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 1000, 12),),
                               predicted_for=frozenset({MOVIES}))), 100.0, steps.BackUpFirst(12)),
    ("fewer removals: no backup", ALWAYS,
     situation(attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 1000, 9),),
                               predicted_for=frozenset({MOVIES}))), 100.0, steps.SendRefresh(ready)),
    ("a confirmed clean-up: always a backup", ALWAYS,
     situation(allowed=60, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 60),),
                                           predicted_for=frozenset({MOVIES}))), 100.0, steps.BackUpFirst(60)),
    ("the backup covers these removals: no second one", ALWAYS,
     situation(backed_up=12, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 1000, 12),),
                                             predicted_for=frozenset({MOVIES}))), 100.0, steps.SendRefresh(ready)),
    ("backups off", replace(ALWAYS, backup=replace(ALWAYS.backup, enabled=False)),
     situation(attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 1000, 12),),
                               predicted_for=frozenset({MOVIES}))), 100.0, steps.SendRefresh(ready)),
    ("Jellyfin answered after the probe: probe again before sending", ALWAYS,
     situation(attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 0),),
                               predicted_for=frozenset({MOVIES}), asked_at=101.0)), 102.0, steps.ProbeRoots()),
    ("everything known and fresh: send", ALWAYS,
     situation(probed_at=101.5, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 0),),
                                                predicted_for=frozenset({MOVIES}), asked_at=101.0)), 102.0,
     steps.SendRefresh(ready)),
    ("a removal after the prediction makes it stale", ALWAYS,
     situation(removals=5, attempt=Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 0),),
                                           predicted_for=frozenset({MOVIES}), predicted_removals=4)), 100.0,
     steps.PredictRemovals(frozenset({MOVIES}))),
    ("a prediction for other libraries does not cover this batch", ALWAYS,
     situation(attempt=Attempt(100.0, predictions=(), predicted_for=frozenset({SHOWS}))), 100.0,
     steps.PredictRemovals(frozenset({MOVIES}))),
]


@pytest.mark.parametrize(("rule", "config", "given", "now", "expected"), STEPS, ids=[row[0] for row in STEPS])
def test_next_step(rule: str, config: Config, given: Situation, now: float, expected: steps.Step) -> None:
    assert decide(now, given, config).step == expected, rule


def test_the_gate_verdict_comes_with_the_step_so_a_partial_hold_is_logged() -> None:
    decision = decide(100.0, situation(roots=views(UNMOUNTED), attempt=Attempt(100.0, predictions=(),
                                                                              predicted_for=frozenset({MOVIES}))), ALWAYS)
    assert decision.verdict == Verdict(ready, ())  # Shows is not in this batch: no reason to give
    both = batch("/media/movies", "/media/shows")
    decision = decide(100.0, situation(pending=both, roots=views(UNMOUNTED),
                                       attempt=Attempt(100.0, predictions=(), predicted_for=frozenset({MOVIES}))), ALWAYS)
    assert decision.step == steps.SendRefresh(ready)
    assert decision.verdict == Verdict(ready, (UNMOUNTED,))


# --- the loss guard's verdict ------------------------------------------------------------------

REFUSALS = [
    # rule, predictions, allowed, refused?
    ("nothing missing", (prediction("Movies", MOVIES, 100, 0),), 0, False),
    ("a few deletions are ordinary", (prediction("Movies", MOVIES, 100, 20),), 0, False),
    ("more than 20 items but not more than 5 %", (prediction("Movies", MOVIES, 1000, 50),), 0, False),
    ("more than 20 items and more than 5 %", (prediction("Movies", MOVIES, 100, 60),), 0, True),
    ("a confirmed clean-up of at least that many passes", (prediction("Movies", MOVIES, 100, 60),), 60, False),
    ("a confirmed clean-up of fewer does not", (prediction("Movies", MOVIES, 100, 60),), 59, True),
    ("an existence check that did not finish refuses", (prediction("Movies", MOVIES, 100, 0, True),), 1000, True),
    ("one library of two refusing is enough",
     (prediction("Movies", MOVIES, 100, 0), prediction("Shows", SHOWS, 100, 90)), 0, True),
]


@pytest.mark.parametrize(("rule", "predictions", "allowed", "refused"), REFUSALS, ids=[row[0] for row in REFUSALS])
def test_loss_guard_verdict(rule: str, predictions: tuple[Prediction, ...], allowed: int, refused: bool) -> None:
    assert bool(refusals(predictions, ALWAYS, allowed)) is refused, rule


def test_a_refusal_names_the_library_the_count_and_the_command_that_confirms() -> None:
    text = refusals((prediction("Movies", MOVIES, 100, 60),), ALWAYS)
    assert text.startswith("library Movies: 60 of 100 items (60%) would be removed: /media/movies/0.mkv")
    assert text.endswith("(if this clean-up is deliberate: jellyfin-watcher refresh --allow-removals 60)")
    assert "--allow-removals" not in refusals((prediction("Movies", MOVIES, 100, 0, True),), ALWAYS)


def test_a_refusal_is_a_step_with_its_recheck() -> None:
    attempt = Attempt(100.0, predictions=(prediction("Movies", MOVIES, 100, 60),), predicted_for=frozenset({MOVIES}))
    step = decide(100.0, situation(attempt=attempt), ALWAYS).step
    assert isinstance(step, steps.Refuse) and step.recheck_at == 100.0 + steps.GUARD_RECHECK


def test_per_library_limits_apply() -> None:
    lenient = replace(ALWAYS, guard=replace(ALWAYS.guard, libraries=(LibraryLimits("Movies", 80, 0.9),)))
    assert refusals((prediction("Movies", MOVIES, 100, 60),), lenient) == ""


# --- small rules ---------------------------------------------------------------------------------


def test_libraries_in_scope() -> None:
    roots = {**views(), "/elsewhere": RootView(None)}
    assert libraries_in_scope(frozenset({"/media/movies", "/media/shows"}), roots, "library") == frozenset({MOVIES, SHOWS})
    assert libraries_in_scope(frozenset({"/media/movies"}), roots, "server") is None
    assert libraries_in_scope(frozenset({"/media/movies", "/elsewhere"}), roots, "path") is None  # untagged: every library


def test_guard_applies() -> None:
    assert guard_applies(batch("/media/movies"), views(), ALWAYS)
    assert not guard_applies(batch("/media/movies"), views(), REMOVALS)
    assert guard_applies(batch("/media/movies", removals=True), views(), REMOVALS)
    assert not guard_applies(batch("/media/movies", removals=True), views(), replace(ALWAYS, guard=replace(ALWAYS.guard, enabled=False)))


GATES = [
    # rule, batch roots, views, gate, scope, ready, reasons
    ("every root ready", {"/m", "/s"}, {"/m": RootView("L1"), "/s": RootView("L2")}, "all", "library", {"/m", "/s"}, ()),
    ("gate all holds on any root", {"/m"}, {"/m": RootView("L1"), "/s": RootView("L2", "x")}, "all", "library", set(),
     ("x",)),
    ("a server-wide refresh holds on any root", {"/m"}, {"/m": RootView("L1"), "/s": RootView("L2", "x")}, "library",
     "server", set(), ("x",)),
    ("gate library: only the blocked library waits", {"/m", "/s"},
     {"/m": RootView("L1"), "/s": RootView("L2", "x")}, "library", "library", {"/m"}, ("x",)),
    ("gate library: a root of unknown library needs every root", {"/u"},
     {"/u": RootView(None), "/s": RootView("L2", "x")}, "library", "library", set(), ("x",)),
    ("gate library: a blocked root of the same library", {"/m"},
     {"/m": RootView("L1"), "/m2": RootView("L1", "y")}, "library", "library", set(), ("y",)),
]


@pytest.mark.parametrize(("rule", "roots", "given", "gate_", "scope", "ready_", "reasons"), GATES,
                         ids=[row[0] for row in GATES])
def test_gate(rule: str, roots: set[str], given: dict[str, RootView], gate_: str, scope: str, ready_: set[str],
              reasons: tuple[str, ...]) -> None:
    assert gate(frozenset(roots), given, gate_, scope) == Verdict(frozenset(ready_), reasons), rule


def test_roots_are_strings_of_paths() -> None:
    # The core keys roots by their configured path as a string, as the debouncer does.
    assert str(Root(Path("/media/movies")).path) == "/media/movies"
