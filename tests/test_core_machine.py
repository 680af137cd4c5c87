"""The daemon's rules in-process: the decision core fed with items at plain clock readings.

Each test is a sequence of (time, item) and what the core must do at each point: the
orderings a real daemon cannot be made to show on demand — storage gone between the loss
guard's answer and the send, a reload while a batch is held, a stop while a request hangs,
a file written for minutes — are written out here, step by step. The subprocess and
real-mount suites prove the edges; these prove the rules.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from watcher.config import (
    Config,
    Gate,
    RefreshSettings,
    Root,
    Scope,
    ServerViewSettings,
    WatchSettings,
)
from watcher.core.coverage import Coverage
from watcher.core.guard import Prediction
from watcher.core.health import Health, State
from watcher.core.libraries import Library
from watcher.core.machine import READY_DEADLINE, Core, snapshot
from watcher.core.messages import (
    Action,
    AskScan,
    BackedUp,
    BackUp,
    CheckViews,
    CheckWrites,
    DropEvents,
    EventsLost,
    FileEvent,
    JobCrashed,
    JobFailed,
    Log,
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
    Watch,
    Watched,
    WritesChecked,
)
from watcher.core.serverview import Comparison, Kind, Listing, Target
from watcher.core.serverview import Verdict as ViewVerdict
from watcher.core.state import PendingChanges, SavedState
from watcher.core.writes import WriteCheck
from watcher.errors import ServerUnavailable, UnexpectedAnswer

A = TypeVar("A")
MOVIES_ID = "a" * 32
MOVIES = Root(Path("/media/movies"), library_id=MOVIES_ID, library_name="Movies")
SHOWS = Root(Path("/media/shows"), library_id="b" * 32, library_name="Shows")
QUIET = 30.0
CONFIG = Config(
    refresh=RefreshSettings(Scope.LIBRARY, Gate.LIBRARY),
    watch=WatchSettings(quiet_period=QUIET, max_wait=600.0, settle=10.0, health_interval=60.0),
    server_view=ServerViewSettings(enabled=False),
)


def healthy(root: Root, mount_id: int = 7) -> Health:
    return Health(root, State.HEALTHY, mount_point=root.path.parent, fstype="ext4", device=1, inode=2,
                  mounts=((str(root.path.parent), mount_id),))


def unmounted(root: Root) -> Health:
    return Health(root, State.UNMOUNTED, f"it lives on / instead of the mount point {root.path.parent}",
                  mount_point=Path("/"), fstype="ext4", device=3, inode=4)


def of(actions: list[Action], kind: type[A]) -> list[A]:
    return [action for action in actions if isinstance(action, kind)]


def logged(actions: list[Action], level: int = logging.DEBUG) -> list[str]:
    return [action.message for action in of(actions, Log) if action.level >= level]


class Daemon:
    """The core, started with ``roots`` and their first probe answered (healthy), every
    first watch set up. :meth:`feed` returns the actions of one item and keeps all of them."""

    def __init__(self, config: Config = CONFIG, roots: tuple[Root, ...] = (MOVIES,), saved: SavedState | None = None,
                 dry_run: bool = False, watch: bool = True) -> None:
        self.core = Core(config, saved or SavedState(), dry_run=dry_run)
        self.log: list[Action] = []
        assert self.core.start(0.0) == [ReadRoots("start")]
        probe = self.one(self.feed(0.0, RootsRead("start", roots)), Probe)
        if watch:
            watches = of(self.feed(0.0, Probed(probe.started_at, tuple(healthy(root) for root in roots))), Watch)
            for action in watches:
                for verify in of(self.feed(0.0, Watched(str(action.root.path), action.ticket)), Verify):
                    self.feed(0.0, Verified(str(verify.root.path), verify.ticket, Coverage(verify.root.path, 3, 3)))
            assert of(self.log, Ready), "start-up is over"

    def feed(self, now: float, item: object) -> list[Action]:
        actions = self.core.feed(now, item)
        self.log += actions
        return actions

    @staticmethod
    def one(actions: list[Action], kind: type[A]) -> A:
        found = of(actions, kind)
        assert len(found) == 1, f"expected one {kind.__name__} in {actions}"
        return found[0]

    def change(self, now: float, name: str = "New (2024).mkv", kind: str = "closed", root: Root = MOVIES) -> list[Action]:
        return self.feed(now, FileEvent(str(root.path), kind, f"{root.path}/{name}"))

    def probe_answered(self, now: float, actions: list[Action], *results: Health) -> list[Action]:
        probe = self.one(actions, Probe)
        return self.feed(now, Probed(probe.started_at, results or tuple(healthy(root) for root in probe.roots)))

    def through_the_guard(self, now: float, actions: list[Action], missing: int = 0) -> list[Action]:
        """Answer the probe, the prediction and the second probe; returns the last actions."""
        actions = self.probe_answered(now, actions)
        predict = self.one(actions, Predict)
        library = Library("Movies", MOVIES_ID, ("/media/movies",))
        actions = self.feed(now + 0.5, Predicted((Prediction(library, 100, missing, pages=1),)))
        assert predict.library_ids == frozenset({MOVIES_ID})
        return self.probe_answered(now + 0.6, actions)


# --- start-up ------------------------------------------------------------------------------------


def test_ready_once_every_first_watch_is_set_up_while_their_verification_runs_on() -> None:
    daemon = Daemon(roots=(MOVIES, SHOWS), watch=False)
    probe = daemon.one(daemon.log, Probe)
    watches = of(daemon.feed(0.1, Probed(probe.started_at, (healthy(MOVIES), healthy(SHOWS)))), Watch)
    assert [str(watch.root.path) for watch in watches] == ["/media/movies", "/media/shows"]
    assert not of(daemon.feed(0.2, Watched("/media/movies", watches[0].ticket)), Ready)
    actions = daemon.feed(0.3, Watched("/media/shows", watches[1].ticket))
    assert of(actions, Ready) == [Ready()]
    assert "watching 2 of 2 roots: /media/movies, /media/shows" in logged(actions)
    verifies = of(daemon.log, Verify)
    assert [verify.root for verify in verifies] == [MOVIES, SHOWS]
    assert [root.verification for root in snapshot(daemon.core, 0.3).roots] == ["running", "running"]
    assert not of(daemon.feed(0.4, Verified("/media/movies", verifies[0].ticket, Coverage(MOVIES.path, 3, 3))), Ready)
    assert not of(daemon.feed(0.5, Verified("/media/shows", verifies[1].ticket, Coverage(SHOWS.path, 2, 2))), Ready)
    assert [root.verification for root in snapshot(daemon.core, 0.5).roots] == ["complete", "complete"]


def test_ready_after_its_deadline_when_a_watch_hangs_on_a_hung_mount() -> None:
    daemon = Daemon(watch=False)
    probe = daemon.one(daemon.log, Probe)
    assert of(daemon.feed(0.1, Probed(probe.started_at, (healthy(MOVIES),))), Watch)
    assert daemon.core.wake_at <= 0.1 + READY_DEADLINE
    actions = daemon.feed(0.1 + READY_DEADLINE, Tick())
    assert of(actions, Ready) == [Ready()]
    assert "still setting up the watch of /media/movies: a hung mount? carrying on" in logged(actions)


def test_an_unhealthy_root_at_start_is_not_watched_and_start_up_goes_on() -> None:
    daemon = Daemon(watch=False)
    probe = daemon.one(daemon.log, Probe)
    actions = daemon.feed(0.1, Probed(probe.started_at, (unmounted(MOVIES),)))
    assert not of(actions, Watch) and of(actions, Ready)
    assert "watching 0 of 1 roots: none yet" in logged(actions)


def test_a_configuration_error_at_start_ends_the_daemon() -> None:
    from watcher.core.messages import Exit
    from watcher.errors import ConfigError

    core = Core(CONFIG, SavedState())
    core.start(0.0)
    actions = core.feed(0.0, JobFailed("ReadRoots", ConfigError("Jellyfin has no library folders"), "start"))
    assert of(actions, Exit) == [Exit("Jellyfin has no library folders")]


def test_jellyfin_unreachable_at_start_is_retried_with_backoff() -> None:
    core = Core(CONFIG, SavedState())
    core.start(0.0)
    actions = core.feed(0.0, JobFailed("ReadRoots", ServerUnavailable("cannot connect"), "start"))
    assert logged(actions) == ["cannot read the libraries from Jellyfin: cannot connect; retrying in 1 s"]
    assert core.wake_at == 1.0 and not of(core.feed(0.5, Tick()), ReadRoots)
    assert of(core.feed(1.0, Tick()), ReadRoots) == [ReadRoots("start")]


def test_a_batch_pending_at_the_last_stop_is_due_at_once() -> None:
    saved = SavedState(pending=PendingChanges(["/media/movies"], 12))
    daemon = Daemon(saved=saved)
    assert any("12 changes under /media/movies were pending" in line for line in logged(daemon.log))
    assert of(daemon.log, Probe), "the restored batch is due: a probe for its refresh"


# --- one refresh -------------------------------------------------------------------------------


def test_a_change_becomes_one_refresh_after_the_quiet_period_through_every_step() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    daemon.change(2.0, "Other (2024).mkv")
    assert daemon.core.wake_at == 2.0 + QUIET
    assert not of(daemon.feed(31.0, Tick()), Probe), "not due before the quiet period after the last change"
    actions = daemon.feed(32.0, Tick())
    actions = daemon.through_the_guard(32.0, actions)
    send = daemon.one(actions, Send)
    assert [request.kind for request in send.requests] == ["library"]
    actions = daemon.feed(33.0, SendDone(send.batch, send.requests, send.requests))
    assert f"refresh sent: POST /Items/{MOVIES_ID}/Refresh (library Movies) for 2 changes under /media/movies" in logged(actions)
    assert daemon.core.refreshes == 1 and daemon.core.pending is None
    assert of(actions, Save)[-1].state.pending is None


def test_storage_gone_between_the_guards_answer_and_the_send_holds_the_refresh() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    library = Library("Movies", MOVIES_ID, ("/media/movies",))
    actions = daemon.feed(40.0, Predicted((Prediction(library, 100, 0, pages=1),)))
    actions = daemon.probe_answered(40.1, actions, unmounted(MOVIES))  # the second probe: the disk went away
    assert not of(daemon.log, Send)
    assert any(line.startswith("refresh suppressed: /media/movies is unmounted") for line in logged(actions))
    assert of(actions, Unwatch) == [Unwatch(MOVIES)]
    assert daemon.core.pending is not None and daemon.core.pending.changes == 1


def test_a_reload_while_a_batch_is_held_keeps_the_batch() -> None:
    daemon = Daemon(roots=(MOVIES, SHOWS))
    daemon.change(1.0)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()), healthy(MOVIES), unmounted(SHOWS))
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, MountsChanged()), unmounted(MOVIES), unmounted(SHOWS))
    assert daemon.core.held_reason().startswith(f"{MOVIES.path} is unmounted ("), daemon.core.held_reason()
    assert of(daemon.feed(32.0, Reload()), ReadRoots) == [ReadRoots("reload")]
    new_config = replace(CONFIG, watch=replace(CONFIG.watch, quiet_period=5.0))
    actions = daemon.feed(33.0, RootsRead("reload", (MOVIES, SHOWS), new_config))
    assert "configuration reloaded" in logged(actions)
    assert daemon.core.pending is not None and daemon.core.pending.changes == 1
    assert daemon.core.config.watch.quiet_period == 5.0


def test_a_stop_while_a_request_hangs_saves_the_batch_being_sent() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    send = daemon.one(daemon.through_the_guard(31.0, daemon.feed(31.0, Tick())), Send)
    assert daemon.core.pending is None, "the batch is out of the debouncer while it is sent"
    daemon.change(32.0, "Later (2024).mkv")
    [save] = of(daemon.core.stop(35.0), Save)
    assert save.state.pending == PendingChanges(["/media/movies"], send.batch.changes + 1)


def test_a_failed_send_keeps_the_batch_and_backs_off_doubling() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    send = daemon.one(daemon.through_the_guard(31.0, daemon.feed(31.0, Tick())), Send)
    actions = daemon.feed(32.0, SendDone(send.batch, send.requests, (), error=ServerUnavailable("Jellyfin answered HTTP 503")))
    assert logged(actions, logging.WARNING) == [
        "refresh failed: Jellyfin answered HTTP 503; keeping 1 changes, retrying in 1 s"
    ]
    assert daemon.core.pending is not None and daemon.core.due_at(32.0) == 33.0
    retries = []
    now = 33.0
    for _ in range(3):
        send = daemon.one(daemon.through_the_guard(now, daemon.feed(now, Tick())), Send)
        daemon.feed(now + 1, SendDone(send.batch, send.requests, (), error=ServerUnavailable("down")))
        retries.append(daemon.core.due_at(now + 1) - (now + 1))
        now = daemon.core.due_at(now + 1) or 0.0
    assert retries == [2.0, 4.0, 8.0]


def test_html_answers_are_one_error_the_batch_kept_and_a_normal_answer_sends_it() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    now = 31.0
    html = UnexpectedAnswer("Jellyfin at http://jf answered GET /Items with an HTML page, not JSON: "
                            "is a login proxy in front of Jellyfin?")
    errors = 0
    for _ in range(5):
        actions = daemon.probe_answered(now, daemon.feed(now, Tick()))
        actions = daemon.feed(now + 0.1, JobFailed("Predict", html))
        errors += len(logged(actions, logging.ERROR))
        now = daemon.core.due_at(now) or 0.0
    assert errors == 1, "one ERROR, not one per retry"
    assert daemon.core.pending is not None
    send = daemon.one(daemon.through_the_guard(now, daemon.feed(now, Tick())), Send)
    daemon.feed(now + 1, SendDone(send.batch, send.requests, send.requests))
    assert daemon.core.refreshes == 1


def test_anything_unexpected_in_a_job_is_an_error_and_the_batch_is_retried() -> None:
    daemon = Daemon()
    daemon.change(1.0)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    actions = daemon.feed(31.5, JobCrashed("Predict", "KeyError: 'Items'", "Traceback ..."))
    [line] = of(actions, Log)
    assert line.level == logging.ERROR and line.details == "Traceback ..."
    assert line.message == "unexpected failure predicting removals: KeyError: 'Items'; keeping 1 changes, retrying in 1 s"
    assert daemon.core.pending is not None and daemon.core.due_at(31.5) == 32.5


def test_a_running_scan_is_waited_for_and_said_once() -> None:
    daemon = Daemon(config=replace(CONFIG, refresh=RefreshSettings()))
    daemon.change(1.0)
    library = Library("Movies", MOVIES_ID, ("/media/movies",))

    def until_asked(now: float) -> list[Action]:
        actions = daemon.probe_answered(now, daemon.feed(now, Tick()))
        assert daemon.one(actions, Predict).library_ids is None  # server-wide: every library
        return daemon.feed(now + 0.1, Predicted((Prediction(library, 100, 0, pages=1),)))

    said = []
    now = 31.0
    for _ in range(3):
        assert of(until_asked(now), AskScan), "the scan is asked about last, right before the send"
        said += logged(daemon.feed(now + 0.25, ScanChecked(True)))
        assert daemon.core.due_at(now + 0.25) == now + 5.25
        now += 5.25
    assert said.count("a library scan is running in Jellyfin: waiting for it to end before refreshing") == 1
    assert of(until_asked(now), AskScan)
    actions = daemon.probe_answered(now + 0.5, daemon.feed(now + 0.25, ScanChecked(False)))
    assert of(actions, Send), "the scan ended: probed again, then sent"


def test_a_refusal_holds_the_batch_and_new_changes_predict_again() -> None:
    daemon = Daemon()
    daemon.change(1.0, kind="deleted")
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    library = Library("Movies", MOVIES_ID, ("/media/movies",))
    actions = daemon.feed(31.5, Predicted((Prediction(library, 100, 60, ("/media/movies/a.mkv",), pages=1),)))
    [refusal] = logged(actions, logging.ERROR)
    assert refusal.startswith("refresh refused: library Movies: 60 of 100 items (60%) would be removed")
    assert daemon.core.due_at(31.5) == 31.5 + 60.0
    daemon.change(40.0, "Back.mkv", kind="created")  # files came back: predict again once due
    assert daemon.core.due_at(40.0) == 40.0 + QUIET


def test_a_partial_hold_under_gate_library_sends_the_healthy_library_and_keeps_the_rest() -> None:
    daemon = Daemon(roots=(MOVIES, SHOWS))
    daemon.change(1.0)
    daemon.change(1.0, root=SHOWS)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()), healthy(MOVIES), unmounted(SHOWS))
    assert any(line.startswith("refresh suppressed: /media/shows is unmounted") and
               line.endswith("keeping the changes under /media/shows until every root is healthy")
               for line in logged(actions))
    assert "batch due: the changes under /media/movies" in logged(actions)
    assert daemon.one(actions, Predict).library_ids == frozenset({MOVIES_ID}), "only the library being refreshed"
    library = Library("Movies", MOVIES_ID, ("/media/movies",))
    actions = daemon.feed(31.5, Predicted((Prediction(library, 100, 0, pages=1),)))
    actions = daemon.probe_answered(31.6, actions, healthy(MOVIES), unmounted(SHOWS))
    send = daemon.one(actions, Send)
    assert send.batch.roots == frozenset({"/media/movies"})
    assert daemon.core.pending is not None and daemon.core.pending.roots == frozenset({"/media/shows"})
    actions = daemon.feed(32.0, SendDone(send.batch, send.requests, send.requests))
    assert any(line.endswith("for the changes under /media/movies") for line in logged(actions))


# --- files still being written -----------------------------------------------------------------


def test_a_file_written_for_three_minutes_is_refreshed_once_after_it_is_closed() -> None:
    daemon = Daemon()
    daemon.change(0.0, "Film (2024).mkv", kind="created")
    writing = WriteCheck("/media/movies/Film (2024).mkv", age=0.5)
    checks = 0
    while daemon.core.wake_at < 180.0:
        now = daemon.core.wake_at
        actions = daemon.feed(now, Tick())
        if of(actions, Probe):  # the periodic health check
            actions += daemon.probe_answered(now, actions)
        if of(actions, CheckWrites):
            checks += 1
            assert daemon.one(actions, CheckWrites).paths == ("/media/movies/Film (2024).mkv",)
            daemon.feed(now + 0.1, WritesChecked((writing,)))
    assert checks == 5, "checked once per quiet period while it is written"
    assert not of(daemon.log, Send) and not of(daemon.log, Predict), "nothing is sent while the file is written"
    actions = daemon.change(180.0, "Film (2024).mkv", kind="closed")
    if of(actions, Probe):  # the periodic health check
        daemon.probe_answered(180.0, actions)
    assert daemon.core.due_at(180.0) == 180.0 + QUIET
    actions = daemon.feed(210.0, Tick())
    assert not of(actions, CheckWrites), "closed: nothing open any more"
    send = daemon.one(daemon.through_the_guard(210.0, actions), Send)
    assert send.batch.changes == 2 and len(of(daemon.log, Send)) == 1


@pytest.mark.parametrize(("case", "check"), [
    ("a hard link (Sonarr's and Radarr's import)", WriteCheck("/media/movies/Film (2024).mkv", links=2)),
    ("a symlink", WriteCheck("/media/movies/Film (2024).mkv", regular=False)),
    ("moved in: its modification time is old", WriteCheck("/media/movies/Film (2024).mkv", age=86400.0)),
    ("gone", WriteCheck("/media/movies/Film (2024).mkv", exists=False)),
])
def test_a_creation_without_a_writer_does_not_hold(case: str, check: WriteCheck) -> None:
    daemon = Daemon()
    daemon.change(0.0, "Film (2024).mkv", kind="created")
    daemon.one(daemon.feed(30.0, Tick()), CheckWrites)
    actions = daemon.feed(30.1, WritesChecked((check,)))
    assert of(actions, Probe), case
    assert len(daemon.core.writes) == 0


def test_a_file_open_longer_than_max_write_wait_stops_holding_with_a_warning() -> None:
    daemon = Daemon(config=replace(CONFIG, watch=replace(CONFIG.watch, max_write_wait=100.0, health_interval=1000.0)))
    daemon.change(0.0, "Stuck.mkv", kind="created")
    while daemon.core.wake_at < 100.0:
        now = daemon.core.wake_at
        daemon.one(daemon.feed(now, Tick()), CheckWrites)
        daemon.feed(now + 0.1, WritesChecked((WriteCheck("/media/movies/Stuck.mkv", age=0.1),)))
    assert daemon.core.wake_at == 100.0
    actions = daemon.feed(100.0, Tick())
    assert ("/media/movies/Stuck.mkv has been open for writing for 100 s (watch.max_write_wait): "
            "refreshing without waiting for it any longer") in logged(actions, logging.WARNING)
    assert of(daemon.feed(daemon.core.wake_at, Tick()), Probe)


def test_open_files_follow_a_rename_and_are_forgotten_when_events_are_lost() -> None:
    daemon = Daemon()
    daemon.change(0.0, "a.mkv", kind="created")
    daemon.feed(1.0, FileEvent("/media/movies", "moved", "/media/movies/a.mkv", "/media/movies/b.mkv"))
    assert daemon.core.writes.paths == ("/media/movies/b.mkv",)
    actions = daemon.feed(2.0, EventsLost("/media/movies"))
    assert "the kernel's event queue overflowed: counting /media/movies as changed" in logged(actions)
    assert len(daemon.core.writes) == 0
    assert daemon.core.pending is not None and "/media/movies" in daemon.core.pending.whole_roots


def test_ignored_files_are_neither_changes_nor_open_files() -> None:
    daemon = Daemon()
    daemon.change(0.0, "Film.mkv.partial~", kind="created")
    daemon.change(0.0, "Film.mkv.part", kind="created")
    assert daemon.core.pending is None and len(daemon.core.writes) == 0


# --- roots coming and going ----------------------------------------------------------------------


def test_a_root_that_comes_back_is_watched_again_after_settling_and_counted_as_changed() -> None:
    daemon = Daemon()
    actions = daemon.probe_answered(5.0, daemon.feed(5.0, MountsChanged()), unmounted(MOVIES))
    assert of(actions, Unwatch) == [Unwatch(MOVIES)]
    actions = daemon.probe_answered(6.0, daemon.feed(6.0, MountsChanged()), healthy(MOVIES, mount_id=8))
    assert "/media/movies is back: watching it again once it has stayed healthy for 10 s" in logged(actions)
    assert not of(actions, Watch) and daemon.core.wake_at == 16.0
    actions = daemon.probe_answered(16.0, daemon.feed(16.0, Tick()), healthy(MOVIES, mount_id=8))
    watch = daemon.one(actions, Watch)
    actions = daemon.feed(16.5, Watched("/media/movies", watch.ticket))
    assert ("watching /media/movies again; counting it as changed, files may have arrived while it was away"
            in logged(actions))
    assert daemon.core.pending is not None and "/media/movies" in daemon.core.pending.whole_roots


def test_a_verification_shortfall_is_believed_only_after_a_probe_finds_the_root_unchanged() -> None:
    daemon = Daemon()
    verify = daemon.one(daemon.log, Verify)
    short = Coverage(Path("/media/movies"), folders=10, watched=4, unwatched=("/media/movies/x",), limit=100,
                     limit_failures=6)  # inotify refused 6 watches: the watch limit
    actions = daemon.feed(1.0, Verified("/media/movies", verify.ticket, short))
    assert not logged(actions, logging.ERROR) and of(actions, Probe)
    actions = daemon.probe_answered(1.1, actions)
    assert any("6 of 10 folders under /media/movies are not watched" in line for line in logged(actions, logging.ERROR))
    poll = daemon.one(actions, Watch)
    assert poll.mode == "poll" and poll.keep_events
    assert daemon.core.pending is None, "counted as changed once polling has its baseline, not before"
    actions = daemon.feed(2.0, PollResult("/media/movies", first=True, directories=10))
    assert of(actions, DropEvents) == [DropEvents(MOVIES, ())]
    assert "polling has taken over /media/movies: counting it as changed, inotify missed part of it" in logged(actions)
    assert daemon.core.pending is not None and of(actions, Save)[-1].state.pending is not None  # saved for a restart


def test_a_verification_of_a_root_that_went_away_meanwhile_is_dropped() -> None:
    daemon = Daemon()
    verify = daemon.one(daemon.log, Verify)
    short = Coverage(Path("/media/movies"), folders=1, watched=0)
    actions = daemon.feed(1.0, Verified("/media/movies", verify.ticket, short))
    actions = daemon.probe_answered(1.1, actions, unmounted(MOVIES))
    assert not [line for line in logged(actions, logging.ERROR) if "not watched" in line]
    assert not [watch for watch in of(actions, Watch) if watch.mode == "poll"]


def test_a_polling_cycle_with_changes_waits_for_a_probe_and_an_unmount_drops_them() -> None:
    root = replace(MOVIES, mode="poll")
    daemon = Daemon(roots=(root,))
    daemon.feed(1.0, PollResult("/media/movies", first=True, directories=3))
    actions = daemon.feed(60.0, PollResult("/media/movies", changed=("/media/movies",), directories=3))
    assert daemon.core.pending is None and of(actions, Probe)
    daemon.probe_answered(60.1, actions, unmounted(root))
    assert daemon.core.pending is None, "an unmount read as deletions would be a removal storm"


def test_a_polled_root_still_changing_holds_its_batch_until_a_quiet_cycle() -> None:
    root = replace(MOVIES, mode="poll")
    daemon = Daemon(roots=(root,))
    daemon.feed(1.0, PollResult("/media/movies", first=True, directories=3))
    for now in (60.0, 120.0):
        daemon.probe_answered(now, daemon.feed(now, PollResult("/media/movies", changed=("/media/movies",))))
    assert daemon.core.pending is not None
    assert not of(daemon.feed(150.1, Tick()), Probe), "the copy is still arriving: no refresh"
    actions = daemon.feed(180.0, PollResult("/media/movies", changed=()))
    assert of(actions, Probe), "a cycle found nothing new: the batch may go"


def test_snapshot_shows_what_status_prints() -> None:
    daemon = Daemon(roots=(MOVIES, SHOWS))
    daemon.change(1.0)
    daemon.probe_answered(31.0, daemon.feed(31.0, Tick()), healthy(MOVIES), unmounted(SHOWS))
    shown = snapshot(daemon.core, 31.0)
    states: dict[str, Any] = {root.path: root.state for root in shown.roots}
    assert states == {"/media/movies": "healthy", "/media/shows": "unmounted"}
    assert shown.pending is not None and shown.pending.changes == 1


# --- Jellyfin's view and backups ---------------------------------------------------------------


def _comparison(hold: bool) -> Comparison:
    target = Target("/media/movies", "/data/movies", "/media/movies", mount_point=True)
    here = Listing(Kind.LISTED, frozenset({"A (2001)", "B (2002)"}))
    if not hold:
        return Comparison(target, here, here, ViewVerdict.AGREE)
    return Comparison(target, Listing(Kind.LISTED), here, ViewVerdict.HOLD,
                      "Jellyfin sees /data/movies empty where this machine has 2 entries: a container volume without rslave?")


def test_jellyfins_view_disagreeing_holds_once_and_agreeing_again_lets_it_go() -> None:
    daemon = Daemon(config=replace(CONFIG, server_view=ServerViewSettings()))
    daemon.change(1.0)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    check = daemon.one(actions, CheckViews)
    assert [str(health.root.path) for health in check.healths] == ["/media/movies"]
    held = []
    for now in (31.5, 37.0, 43.0):
        actions = daemon.feed(now, ViewsChecked((_comparison(hold=True),)))
        held += logged(actions, logging.WARNING)
        assert daemon.core.due_at(now) == now + 5.0
        actions = daemon.probe_answered(now + 5, daemon.feed(now + 5, Tick()))
        assert of(actions, CheckViews), "compared again 5 s later"
    assert held == ["refresh held: Jellyfin sees /data/movies empty where this machine has 2 entries: a container "
                    "volume without rslave?; keeping 1 changes"]
    assert "Jellyfin sees /data/movies empty" in daemon.core.held_reason()
    actions = daemon.feed(49.0, ViewsChecked((_comparison(hold=False),)))
    assert "Jellyfin's view of the roots agrees with this machine's again: refreshing" in logged(actions)
    assert of(actions, Predict)


def test_a_backup_comes_before_a_removal_and_a_failed_one_holds_the_refresh() -> None:
    from watcher.core.protections import Archive

    daemon = Daemon()
    daemon.change(1.0, kind="deleted")
    library = Library("Movies", MOVIES_ID, ("/media/movies",))
    missing = Prediction(library, 1000, 12, ("/media/movies/a.mkv",), pages=1)
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    actions = daemon.feed(31.5, Predicted((missing,)))
    assert daemon.one(actions, BackUp).removals == 12
    actions = daemon.feed(40.0, BackedUp(12, failure=ServerUnavailable("POST /Backup/Create: no answer within 600 s")))
    assert logged(actions, logging.ERROR) == [
        "refresh held: the backup before removing 12 items failed: POST /Backup/Create: no answer within 600 s; "
        "keeping the changes (backup.hold_on_failure = false refreshes without one)"
    ]
    assert not of(daemon.log, Send) and daemon.core.due_at(40.0) == 100.0
    actions = daemon.probe_answered(100.0, daemon.feed(100.0, Tick()))
    actions = daemon.feed(100.5, Predicted((missing,)))
    archive = Archive("jellyfin-backup-20261130020000.zip", "/config/backups/jellyfin-backup-20261130020000.zip",
                      ("database",), "10.11.11")
    actions = daemon.feed(101.0, BackedUp(12, archive=archive))
    assert ("backup written before removing 12 items: jellyfin-backup-20261130020000.zip (database; Jellyfin 10.11.11)"
            in logged(actions))
    send = daemon.one(daemon.probe_answered(101.1, actions), Send)
    daemon.feed(102.0, SendDone(send.batch, send.requests, send.requests))
    shown = snapshot(daemon.core, 102.0).last_backup
    assert shown is not None and shown.archive == archive.name and shown.removals == 12


def test_a_server_without_backups_refreshes_with_the_guard_alone() -> None:
    daemon = Daemon()
    daemon.change(1.0, kind="deleted")
    library = Library("Movies", MOVIES_ID, ("/media/movies",))
    actions = daemon.probe_answered(31.0, daemon.feed(31.0, Tick()))
    actions = daemon.feed(31.5, Predicted((Prediction(library, 1000, 12, pages=1),)))
    actions = daemon.feed(32.0, BackedUp(12, unavailable="Jellyfin 10.10.7 has no backups (10.11 or later)"))
    assert ("no backup before removing 12 items: Jellyfin 10.10.7 has no backups (10.11 or later); "
            "the loss guard alone applies") in logged(actions)
    assert of(daemon.probe_answered(32.1, actions), Send)
