"""The loss guard, end to end: before a refresh that follows a deletion, a move or an unmount,
the watcher asks Jellyfin which items it holds (``GET /Items``, paged) and refuses the refresh
when a scan would remove more than ``guard.max_removals`` items *and* more than
``guard.max_share`` of a library.

The daemon runs as a real process (``support.WatcherProcess``), the one-shot commands through
``support.run_cli``; the emulator deletes items whose files are missing when it scans, so
``jellyfin.removed`` is exactly what a refresh cost. Scenarios with real mounts (tmpfs, bindfs)
need root and are skipped with the reason otherwise. Every wait is on a condition with a
deadline. The guard's existence check gives up after ``guard.timeout`` on a hung mount;
the daemon test sets it to ``GUARD_TIMEOUT``. The cost of the guard on a large
library is measured by ``tests/benchmarks/guard_cost.py`` (not part of the default run).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BindFS,
    TmpfsMount,
    WatcherProcess,
    hung_child,
    movie,
    refresh_requests,
    run_cli,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher.config import Secret
from watcher.core.guard import Limits
from watcher.edges import predict as guard
from watcher.edges import statusfile as watcher_status
from watcher.edges.jellyfin import JellyfinClient

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""
QUIET_PERIOD = 0.5
"""``watch.quiet_period`` of every daemon here, seconds."""
GUARD_TIMEOUT = 2.0
"""``guard.timeout`` where a test waits for the existence check to give up, seconds."""
PROBE_TIMEOUT = 1.0
"""``watch.probe_timeout`` of every daemon here, seconds."""


# --- helpers ----------------------------------------------------------------------------------


def guard_config(tmp_path: Path, jellyfin: JellyfinEmulator, roots: list[tuple[Path, bool]],
                 quiet_period: float = QUIET_PERIOD, guard_timeout: float = 60.0, when: str = "always") -> Path:
    """``tmp_path/config.toml`` for the daemon and the one-shot commands: the emulator's URL,
    a state directory of its own, short timings, and ``roots`` as ``(path, health_gate)``."""
    return write_config(tmp_path / "config.toml", {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": jellyfin.url},
        "watch": {"quiet_period": quiet_period, "max_wait": 90, "probe_timeout": PROBE_TIMEOUT, "settle": 0.5,
                  "health_interval": 0.5},
        "guard": {"timeout": guard_timeout, "when": when},
        "roots": [{"path": path} if health_gate else {"path": path, "health_gate": False} for path, health_gate in roots],
    })


def media_files(folder: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` movies ``folder/Movie NNN/Movie NNN.mkv``, as a media manager lays them out."""
    return [movie(folder, f"Movie {number:03d}") for number in range(start, start + count)]


def delete(paths: list[Path]) -> None:
    """Delete each movie's folder (the file and its folder)."""
    for path in paths:
        shutil.rmtree(path.parent)


def items_requests(jellyfin: JellyfinEmulator) -> list[dict[str, list[str]]]:
    """The query of every ``GET /Items`` the emulator answered (the guard's paging)."""
    return [request.query for request in jellyfin.requests if request.method == "GET" and request.path == "/Items"]


@contextlib.contextmanager
def frozen(watcher: WatcherProcess) -> Iterator[None]:
    """Stop the daemon while the test changes files, so that it sees every change in one batch
    (the kernel queues the events meanwhile) without racing its quiet period."""
    watcher.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        watcher.send_signal(signal.SIGCONT)


def removed_paths(jellyfin: JellyfinEmulator) -> set[str]:
    assert jellyfin.wait_for_scans_idle(WAIT), "Jellyfin's scans did not finish"
    return {item.path for item in jellyfin.removed}


def status(config: Path, env: dict[str, str]) -> tuple[int, str]:
    completed = run_cli("status", "--config", config, env=env)
    return completed.returncode, completed.stdout + completed.stderr


@pytest.fixture
def library(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The library folder: a plain folder, or (parameter ``"tmpfs"``, as root) a mount of its own."""
    folder = tmp_path / "movies"
    folder.mkdir()
    if getattr(request, "param", "folder") == "tmpfs":
        with TmpfsMount(folder):
            yield folder
    else:
        yield folder


ON_A_MOUNT = pytest.param("tmpfs", marks=pytest.mark.root_only(), id="tmpfs")
IN_A_FOLDER = pytest.param("folder", id="folder")


# --- 1. a mass deletion is refused -------------------------------------------------------------


@pytest.mark.parametrize("library", [IN_A_FOLDER, ON_A_MOUNT], indirect=True)
def test_mass_deletion_is_refused_and_held(tmp_path: Path, library: Path, jellyfin: JellyfinEmulator,
                                          env: dict[str, str]) -> None:
    files = media_files(library, 100)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    config = guard_config(tmp_path, jellyfin, [(library, True)])
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        with frozen(watcher):
            delete(files[:60])

        refused = watcher.wait_for_line(r"ERROR refresh refused: ", WAIT)
        assert "library Movies: 60 of 100 items (60%) would be removed: " in refused, refused
        assert str(files[0]) in refused and "and 55 more" in refused, refused
        assert "jellyfin-watcher refresh --allow-removals 60" in refused, refused
        assert refused.endswith("keeping the changes"), refused
        assert items_requests(jellyfin), "the guard did not ask Jellyfin for its items"

        # `status` shows the batch held back, and why (exit 1: it needs attention).
        _, shown = wait_until(lambda: (result := status(config, env))[0] == 1 and "held back" in result[1] and result,
                                 WAIT, interval=0.2, message="status never showed the batch held back")
        assert "held back: library Movies: 60 of 100 items (60%) would be removed" in shown, shown

        assert watcher.terminate(WAIT) == 0
        assert re.search(r"stopped; \d+ changes pending under ", watcher.lines[-1]), watcher.output
    assert refresh_requests(jellyfin) == [] and jellyfin.refreshes == []
    assert jellyfin.removed == []
    assert len(jellyfin.items) == 100
    assert watcher.count(r"ERROR refresh refused") == 1, watcher.output
    assert "Traceback" not in watcher.output


# --- 2. an ordinary deletion goes through --------------------------------------------------------


def test_small_deletion_is_refreshed(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = media_files(library, 100)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    config = guard_config(tmp_path, jellyfin, [(library, True)])
    with WatcherProcess(["--config", config, "--log-level", "debug"], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        with frozen(watcher):
            delete(files[10:12])
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        jellyfin.wait_for_refreshes(1, WAIT)
        assert removed_paths(jellyfin) == {str(files[10]), str(files[11])}
        # The guard did run, and counted right; it let the refresh through.
        predicted = watcher.wait_for_line(r"loss guard: ", WAIT)
        assert "library Movies: 2 of 100 items (2%) would be removed" in predicted, predicted
        assert items_requests(jellyfin)
        assert watcher.count(r"refresh refused") == 0, watcher.output
        assert watcher.terminate(WAIT) == 0
        assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert len(jellyfin.items) == 98
    assert refresh_requests(jellyfin) == ["POST /Library/Refresh"]


# --- 3. a disk below a root goes away, the root's health gate is off ------------------------------


@pytest.mark.root_only()
def test_unmount_below_a_root_without_health_gate_is_refused(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                             env: dict[str, str]) -> None:
    # A mergerfs-like root: a few files of its own, most of them on a disk mounted below it
    # (like one branch of a pool). Its health gate is off, so the health check reports the
    # missing disk but holds nothing back: only the loss guard stands between the next
    # refresh and Jellyfin dropping the disk's items. That refresh is caused by a new episode
    # in another library: a batch that only added files, under a healthy root; the refresh is
    # server-wide, so it would scan the movies too.
    movies, shows = tmp_path / "movies", tmp_path / "shows"
    media_files(movies / "local", 5)
    media_files(shows, 3, start=200)
    disk_point = movies / "disk"
    with TmpfsMount(disk_point) as disk:
        on_disk = media_files(disk_point, 95, start=5)
        jellyfin.libraries = [Library("Movies", [str(movies)]), Library("Shows", [str(shows)], collection_type="tvshows")]
        assert jellyfin.index() == 103
        config = guard_config(tmp_path, jellyfin, [(movies, False), (shows, True)])
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            disk.unmount()
            assert any(movies.iterdir()), "the root must stay non-empty: Jellyfin's own check would not skip it"
            watcher.wait_for_line(re.escape(f"{movies} is unmounted") + ".*" + re.escape(f"{disk_point} mounted below it"), WAIT)
            assert not on_disk[0].exists()

            media_files(shows, 1, start=300)
            refused = watcher.wait_for_line(r"ERROR refresh refused: ", WAIT)
            assert "library Movies: 95 of 100 items (95%) would be removed" in refused, refused
            assert "library Shows" not in refused, refused
            assert watcher.count(r"refresh sent") == 0, watcher.output
            assert watcher.terminate(WAIT) == 0
    assert jellyfin.refreshes == [] and jellyfin.removed == []
    assert len(jellyfin.items) == 103


# --- 4. a deliberate clean-up, confirmed once --------------------------------------------------


def test_allow_removals_lets_a_confirmed_cleanup_through_once(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                               env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = media_files(library, 100)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    config = guard_config(tmp_path, jellyfin, [(library, True)])
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        with frozen(watcher):
            delete(files[:60])
        watcher.wait_for_line(r"ERROR refresh refused: .*--allow-removals 60", WAIT)

        # Confirming fewer removals than a scan would make changes nothing.
        short = run_cli("refresh", "--config", config, "--allow-removals", "10", env=env)
        assert short.returncode == 1, short
        assert "refresh refused: library Movies: 60 of 100 items (60%) would be removed" in short.stdout, short.stdout
        assert "jellyfin-watcher refresh --allow-removals 60" in short.stdout, short.stdout
        assert "refresh sent" not in short.stdout
        assert jellyfin.refreshes == []

        # Confirming them all refreshes, once: Jellyfin drops exactly the deleted movies.
        confirmed = run_cli("refresh", "--config", config, "--allow-removals", "60", env=env)
        assert confirmed.returncode == 0, confirmed
        assert "removals allowed: library Movies: 60 of 100 items (60%) would be removed" in confirmed.stdout
        assert "refresh sent: POST /Library/Refresh" in confirmed.stdout, confirmed.stdout
        assert removed_paths(jellyfin) == {str(path) for path in files[:60]}
        assert len(jellyfin.refreshes) == 1

        # The confirmation is not remembered: the next mass deletion is refused again. (The
        # daemon is frozen meanwhile, so that what it sees of this is one batch, below.)
        mark = watcher.mark()
        with frozen(watcher):
            again = run_cli("refresh", "--config", config, env=env)
            assert again.returncode == 0, again  # nothing is missing any more: an ordinary refresh
            assert "refresh sent" in again.stdout and "removals allowed" not in again.stdout, again.stdout
            delete(files[60:90])
            refused = run_cli("refresh", "--config", config, "--allow-removals", "20", env=env)
            assert refused.returncode == 1 and "30 of 40 items (75%)" in refused.stdout, refused
            # The daemon's held batch goes through once its prediction finds nothing missing.
            # It predicts again GUARD_RECHECK (60 s) after a refusal, or as soon as files change:
            # the 30 movies come back and a new one arrives, rather than the test waiting a minute.
            media_files(library, 30, start=60)
            media_files(library, 1, start=500)
        watcher.wait_for_line(r"the loss guard no longer objects: refreshing", WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        wait_until(lambda: (result := status(config, env))[0] == 0 and result, WAIT, interval=0.2,
                   message="status still shows the batch held back")
        assert watcher.terminate(WAIT) == 0
        assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert jellyfin.wait_for_scans_idle(WAIT)
    assert {item.path for item in jellyfin.removed} == {str(path) for path in files[:60]}
    assert len(jellyfin.items) == 40 + 1


# --- 5. a hung mount during the prediction -------------------------------------------------------


def pending(state_dir: Path) -> dict | None:
    """The daemon's pending batch, from its status file (read directly: nothing here may touch
    a hung mount, and the ``status`` command loads the configuration)."""
    document = watcher_status.read(state_dir)
    return None if document is None else document.get("pending")


@pytest.mark.root_only("bindfs", "fusermount")
def test_existence_check_on_a_hung_mount_is_unresponsive(tmp_path: Path, jellyfin: JellyfinEmulator) -> None:
    # In process, with a short deadline: what the daemon does with max(probe_timeout, 60 s).
    # Nothing looks the files up through the mount before it hangs (the emulator's walk reads
    # the folders only): a lookup the kernel has cached (attributes, for a second) would not
    # need the stopped FUSE daemon, and would not hang.
    source, mount_point = tmp_path / "source", tmp_path / "movies"
    files = media_files(source, 30)
    with BindFS(source, mount_point) as mount:
        jellyfin.libraries = [Library("Movies", [str(mount_point)])]
        assert jellyfin.index() == 30
        client = JellyfinClient(jellyfin.url, Secret(jellyfin.api_key), WAIT)
        try:
            [library] = client.libraries()
            local = [str(mount_point / path.relative_to(source)) for path in files]
            mount.stop()
            started = time.monotonic()
            missing, finished = guard.missing_files(local, 1.0)
            assert not finished, missing
            assert 1.0 <= time.monotonic() - started < 2.0
            started = time.monotonic()
            prediction = guard.predict(client, library, str, 1.0)
            assert time.monotonic() - started < 1.0 + WAIT / 2  # the deadline, plus paging the items
            assert prediction.unresponsive and prediction.missing == 0 and prediction.items == 30
            assert prediction.refused(Limits()) and prediction.refused(Limits(), allowed=1000)
            assert "did not finish in time" in prediction.describe()
        finally:
            mount.resume()
            client.close()
        # Once the mount answers again, so does the check (and nothing is missing).
        assert guard.missing_files([str(mount_point / path.relative_to(source)) for path in files], WAIT) == ([], True)
    assert jellyfin.removed == []


@pytest.mark.root_only("bindfs", "fusermount")
def test_daemon_stops_while_the_prediction_hangs(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                  env: dict[str, str]) -> None:
    # The root is a bindfs mount whose daemon is stopped after the deletions are seen: every
    # access to it hangs. Its health gate is off, so the refresh goes on to the loss guard
    # (with the gate on, the health probe would hold it first); the guard's existence check
    # hangs in its child process. SIGTERM must still end the daemon within 2 s, no refresh.
    source, mount_point = tmp_path / "source", tmp_path / "movies"
    media_files(source, 100)
    state_dir = tmp_path / "state"
    with BindFS(source, mount_point) as mount:
        files = sorted(mount_point.glob("*/*.mkv"))
        jellyfin.libraries = [Library("Movies", [str(mount_point)])]
        assert jellyfin.index() == 100
        config = guard_config(tmp_path, jellyfin, [(mount_point, False)], quiet_period=2.0)
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            delete(files[:60])
            wait_until(lambda: pending(state_dir), WAIT, interval=0.05, message="the deletions were not seen")
            mount.stop()
            watcher.wait_for_line(re.escape(f"{mount_point} is unresponsive"), WAIT)
            wait_until(lambda: items_requests(jellyfin), WAIT, message="the guard never asked for the items")
            wait_until(lambda: hung_child(watcher.pid, '"missing"'), WAIT,
                       message="the guard's existence check did not hang on the stopped mount")
            assert watcher.alive() and watcher.count(r"refresh refused") == 0
            stopped = time.monotonic()
            assert watcher.terminate(WAIT) == 0
            assert time.monotonic() - stopped < 3.0, watcher.output
            assert re.search(r"stopped; \d+ changes pending", watcher.lines[-1]), watcher.output
        assert refresh_requests(jellyfin) == [] and jellyfin.refreshes == []
        assert watcher.count(r"refresh sent") == 0
        mount.resume()
    assert jellyfin.removed == []


@pytest.mark.root_only("bindfs", "fusermount")
def test_daemon_refuses_when_the_prediction_is_unresponsive(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                             env: dict[str, str]) -> None:
    source, mount_point = tmp_path / "source", tmp_path / "movies"
    media_files(source, 100)
    state_dir = tmp_path / "state"
    with BindFS(source, mount_point) as mount:
        files = sorted(mount_point.glob("*/*.mkv"))
        jellyfin.libraries = [Library("Movies", [str(mount_point)])]
        assert jellyfin.index() == 100
        config = guard_config(tmp_path, jellyfin, [(mount_point, False)], quiet_period=2.0, guard_timeout=GUARD_TIMEOUT)
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            delete(files[:60])
            wait_until(lambda: pending(state_dir), WAIT, interval=0.05, message="the deletions were not seen")
            mount.stop()
            wait_until(lambda: items_requests(jellyfin), WAIT, message="the guard never asked for the items")
            asked = time.monotonic()
            refused = watcher.wait_for_line(r"ERROR refresh refused: ", GUARD_TIMEOUT + WAIT)
            assert time.monotonic() - asked < GUARD_TIMEOUT + 2
            assert "library Movies: the existence check did not finish in time (unresponsive storage)" in refused
            assert "--allow-removals" not in refused, refused
            assert watcher.terminate(WAIT) == 0
        assert jellyfin.refreshes == []
        mount.resume()
    assert jellyfin.removed == []


# --- 6. paging through a library -----------------------------------------------------------------


def test_predict_pages_through_every_item(tmp_path: Path, jellyfin: JellyfinEmulator,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # PAGE_SIZE 10 stands in for 1,000: the emulator checks every answer against Jellyfin's
    # spec, about 15 ms per item, so 2,500 items would take a minute.
    monkeypatch.setattr(guard, "PAGE_SIZE", 10)
    movies, shows, empty = tmp_path / "movies", tmp_path / "shows", tmp_path / "empty"
    movie_files = media_files(movies, 25)
    show_files = media_files(shows, 20, start=100)
    empty.mkdir()
    (empty / "readme.txt").write_text("no media here\n")
    jellyfin.libraries = [Library("Movies", [str(movies)]), Library("Shows", [str(shows)], collection_type="tvshows"),
                          Library("Empty", [str(empty)])]
    assert jellyfin.index() == 45
    delete(movie_files[3:10])
    delete(show_files[:1])
    client = JellyfinClient(jellyfin.url, Secret(jellyfin.api_key), WAIT)
    try:
        predictions = {library.name: guard.predict(client, library, str, WAIT) for library in client.libraries()}
    finally:
        client.close()

    movies_prediction = predictions["Movies"]
    assert (movies_prediction.items, movies_prediction.missing, movies_prediction.pages) == (25, 7, 3)
    assert movies_prediction.examples == tuple(str(path) for path in movie_files[3:8])
    assert movies_prediction.describe().startswith("library Movies: 7 of 25 items (28%) would be removed: ")
    assert movies_prediction.describe().endswith(" and 2 more")
    assert not movies_prediction.refused(Limits()) and movies_prediction.refused(Limits(count=5, share=0.25))
    shows_prediction = predictions["Shows"]
    assert (shows_prediction.items, shows_prediction.missing, shows_prediction.pages) == (20, 1, 2)  # no empty 3rd page
    assert (predictions["Empty"].items, predictions["Empty"].missing, predictions["Empty"].pages) == (0, 0, 1)
    assert not predictions["Empty"].refused(Limits(count=0, share=0.0))

    pages = items_requests(jellyfin)
    assert len(pages) == 3 + 2 + 1
    by_parent: dict[str, list[dict[str, list[str]]]] = {}
    for query in pages:
        by_parent.setdefault(query["parentId"][0].replace("-", ""), []).append(query)
    movies_pages = by_parent[jellyfin.libraries[0].item_id]
    assert [query["startIndex"] for query in movies_pages] == [["0"], ["10"], ["20"]]
    for query in pages:
        assert query["limit"] == ["10"] and query["recursive"] == ["true"] and query["fields"] == ["Path"]
        assert set(query["includeItemTypes"][0].split(",")) == set(guard.MEDIA_ITEM_TYPES)


# --- 7. check --predict ----------------------------------------------------------------------


def test_check_predict_prints_each_library_and_the_verdict(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                             env: dict[str, str]) -> None:
    movies, shows = tmp_path / "movies", tmp_path / "shows"
    movie_files = media_files(movies, 100)
    show_files = media_files(shows, 10, start=100)
    jellyfin.libraries = [Library("Movies", [str(movies)]), Library("Shows", [str(shows)], collection_type="tvshows")]
    assert jellyfin.index() == 110
    config = guard_config(tmp_path, jellyfin, [(movies, True), (shows, True)])

    clean = run_cli("check", "--predict", "--config", config, env=env)
    assert clean.returncode == 0, clean
    assert "library Movies: 100 items, 0 with missing files: ok" in clean.stdout.splitlines(), clean.stdout
    assert "library Shows: 10 items, 0 with missing files: ok" in clean.stdout.splitlines(), clean.stdout

    delete(movie_files[:60])
    delete(show_files[:1])
    refused = run_cli("check", "--predict", "--config", config, env=env)
    assert refused.returncode == 1, refused
    lines = refused.stdout.splitlines()
    assert f"{movies}: healthy" in refused.stdout and f"{shows}: healthy" in refused.stdout
    [movies_line] = [line for line in lines if line.startswith("library Movies:")]
    assert movies_line.startswith("library Movies: 100 items, 60 with missing files: refused "
                                  "(library Movies: 60 of 100 items (60%) would be removed: "), movies_line
    assert str(movie_files[0]) in movies_line
    assert "library Shows: 10 items, 1 with missing files: ok" in lines, refused.stdout
    assert jellyfin.refreshes == [] and jellyfin.removed == []

    # Per-library limits apply: a Movies limit of 60 items lets the same state pass.
    config.write_text(config.read_text() + "\n[guard.libraries.Movies]\nmax_removals = 60\n")
    allowed = run_cli("check", "--predict", "--config", config, env=env)
    assert allowed.returncode == 0, allowed
    assert "library Movies: 100 items, 60 with missing files: ok" in allowed.stdout.splitlines(), allowed.stdout


# --- 8. guard.when = "removals": a batch that only added files skips the prediction -------------


def test_additions_only_skip_the_prediction(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = media_files(library, 10)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 10
    config = guard_config(tmp_path, jellyfin, [(library, True)], when="removals")
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        with frozen(watcher):
            media_files(library, 3, start=100)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        jellyfin.wait_for_refreshes(1, WAIT)
        assert items_requests(jellyfin) == [], "a batch that only added files asked for Jellyfin's items"

        # The same daemon does predict once something is deleted (so the check above can fail).
        mark = watcher.mark()
        delete(files[:1])
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        assert len(items_requests(jellyfin)) == 1
        assert watcher.terminate(WAIT) == 0
    assert removed_paths(jellyfin) == {str(files[0])}
    assert len(jellyfin.items) == 12
