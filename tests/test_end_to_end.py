"""End-to-end: the real ``jellyfin-watcher`` processes against the Jellyfin emulator, on real
mounts (tmpfs, loop-mounted ext4, bindfs FUSE) where the scenario needs them.

Each scenario asserts what a user would care about: how many refreshes Jellyfin received,
that no item was lost (``jellyfin.removed == []``), the exit code, and the log line a user
would read. Nothing sleeps for correctness: every wait is on a condition with a deadline.
"Exactly one refresh" is proven without sleeping by stopping the watcher after the refresh
and reading its last line, "stopped; no changes pending".

Timing figures (the storm's latency, the time to notice a hung mount, the time to exit) are
printed: run with ``pytest -s`` to see them.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from support import (
    MKV,
    BindFS,
    LoopDisk,
    TmpfsMount,
    WatcherProcess,
    assert_no_secret,
    assert_nothing_lost,
    children_of,
    closed_port,
    cmdlines,
    movie,
    run_cli,
    stop_with_nothing_pending,
    toml_string,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import JellyfinEmulator, Library

QUIET_PERIOD = 1.0
"""``--quiet-period`` of every watcher here, seconds."""
PROBE_TIMEOUT = 2.0
"""``--probe-timeout`` of every watcher here, seconds."""
WAIT = 10.0
"""Deadline, seconds, for what is not itself a timing assertion (a loaded 2-core machine)."""
WRONG_KEY = "wrong-key-fedcba9876543210"


# --- helpers --------------------------------------------------------------------------------


def run_args(jellyfin: JellyfinEmulator, state_dir: Path, *roots: Path) -> list[str]:
    """Arguments of ``run``/``check``/``refresh`` as the tests configure the watcher."""
    return [
        *map(str, roots),
        "--url", jellyfin.url,
        "--quiet-period", f"{QUIET_PERIOD:g}",
        "--max-wait", "30",
        "--probe-timeout", f"{PROBE_TIMEOUT:g}",
        "--state-dir", str(state_dir),
    ]


def settle_config(tmp_path: Path, seconds: float = QUIET_PERIOD) -> list[str]:
    """``--config`` of a file setting ``watch.settle``: how long a root that came back must
    stay healthy before it is watched again (there is no flag for it)."""
    return ["--config", str(write_config(tmp_path / "settle.toml", {"watch": {"settle": seconds}}))]


def create_files(folder: Path, count: int, seconds: float, prefix: str = "New") -> float:
    """Create ``count`` media files under ``folder`` (five per sub-folder), spread evenly over
    ``seconds``; return the ``time.monotonic()`` just after the last one was closed."""
    start = time.monotonic()
    for index in range(count):
        due = start + seconds * index / count
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the storm, not waiting for a result
        subfolder = folder / f"{prefix} {index // 5:03d}"
        subfolder.mkdir(parents=True, exist_ok=True)
        (subfolder / f"{prefix} {index:04d}.mkv").write_bytes(MKV)
    return time.monotonic()


def argv_of_watcher_and_children(watcher: WatcherProcess) -> dict[int, str]:
    """The argv of the watcher and of its children, now, by pid."""
    # A zombie's cmdline reads empty: leave those out.
    return {pid: argv for pid, argv in cmdlines([watcher.pid, *children_of(watcher.pid)]).items() if argv}


def scan_now(jellyfin: JellyfinEmulator) -> None:
    """``POST /Library/Refresh`` from the test itself: what Jellyfin's own schedule or a
    careless client would do (the control that shows a scenario is really harmful)."""
    request = urllib.request.Request(
        jellyfin.url + "/Library/Refresh",
        data=b"",
        method="POST",
        headers={"Authorization": f'MediaBrowser Token="{jellyfin.api_key}", Client="tests", Version="0"'},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.status == 204


# --- a. a storm of new files ------------------------------------------------------------------


@pytest.mark.root_only()
def test_storm_of_500_files_on_a_mount_is_one_refresh(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                     env: dict[str, str]) -> None:
    with TmpfsMount(tmp_path / "disk") as disk:
        root = disk.mount_point
        movie(root, "Old Movie (1999)")
        jellyfin.libraries = [Library("Movies", [str(root)])]
        assert jellyfin.index() == 1
        with WatcherProcess(run_args(jellyfin, tmp_path / "state", root), env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)

            last_change = create_files(root, 500, seconds=2.0)

            refreshes = jellyfin.wait_for_refreshes(1, WAIT)
            assert len(refreshes) >= 1, f"no refresh:\n{watcher.output}"
            delay = refreshes[0].time - last_change
            latency = delay - QUIET_PERIOD
            print(f"\n[a] 500 files in 2 s on tmpfs: refresh received {delay:.3f} s after the last file "
                  f"was closed; latency beyond the {QUIET_PERIOD:g} s quiet period: {latency * 1000:.0f} ms")
            assert 0 < delay <= QUIET_PERIOD + 1.0, f"refresh {delay:.3f} s after the last change"
            watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes under " + re.escape(str(root)),
                                  WAIT)
            stop_with_nothing_pending(watcher)
        assert len(jellyfin.refreshes) == 1
        assert_nothing_lost(jellyfin)
        assert len(jellyfin.items) == 501


# --- b. one of two disks unmounted ------------------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_unmounted_disk_holds_the_refresh_until_it_is_back(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                           env: dict[str, str]) -> None:
    # Both disks are mounted below one library folder: Jellyfin's own "missing or empty
    # location" protection does not apply to them, so a scan while A is away deletes A's items.
    media = tmp_path / "media"
    with LoopDisk(tmp_path / "a.img", media / "a") as disk_a, TmpfsMount(media / "b") as disk_b:
        a, b = disk_a.mount_point, disk_b.mount_point
        movie(a, "On Disk A (2001)")
        movie(a, "Also On Disk A (2002)")
        movie(b, "On Disk B (2003)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 3
        with WatcherProcess([*run_args(jellyfin, tmp_path / "state", a, b), *settle_config(tmp_path)], env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)

            disk_a.unmount()
            watcher.wait_for_line(re.escape(f"{a} is unmounted ("), WAIT)
            create_files(b, 100, seconds=0.5)
            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert f"{a} is unmounted" in suppressed
            assert re.search(r"keeping .+ until every root is healthy", suppressed)
            assert jellyfin.refreshes == []
            assert jellyfin.removed == []

            mark = watcher.mark()
            disk_a.mount()
            watcher.wait_for_line(re.escape(f"{a} is healthy again"), WAIT, start=mark)
            sent = watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            assert sent.endswith(f"changes under {a}, {b}"), sent  # the kept batch, with what A missed
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            stop_with_nothing_pending(watcher)
        assert len(jellyfin.refreshes) == 1
        assert_nothing_lost(jellyfin)
        assert len(jellyfin.items) == 103

        # Control: the situation is really harmful. A scan while A is away deletes A's items.
        disk_a.unmount()
        scan_now(jellyfin)
        assert jellyfin.wait_for_scans_idle(WAIT)
        assert len(jellyfin.removed) == 2 and all(item.path.startswith(f"{a}/") for item in jellyfin.removed)


@pytest.mark.root_only("mkfs.ext4")
def test_restart_while_a_disk_is_away_keeps_the_batch_and_the_mount_point(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    other = tmp_path / "other"
    movie(other, "Elsewhere (2010)")
    state_dir = tmp_path / "state"
    with LoopDisk(tmp_path / "a.img", tmp_path / "a") as disk_a:
        a = disk_a.mount_point
        movie(a, "On Disk A (2001)")
        jellyfin.libraries = [Library("Movies", [str(a), str(other)])]
        jellyfin.index()
        with WatcherProcess(run_args(jellyfin, state_dir, a, other), env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            disk_a.unmount()
            watcher.wait_for_line(re.escape(f"{a} is unmounted ("), WAIT)
            movie(other, "New Elsewhere (2024)")
            watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert watcher.terminate(WAIT) == 0
        (a / "stray.txt").write_text("written while the disk was away\n")

        # Restarted while A is still away: it does not learn the bare folder as A's home.
        with WatcherProcess([*run_args(jellyfin, state_dir, a, other), *settle_config(tmp_path)], env) as watcher:
            watcher.wait_for_line(r"\d+ changes under .* were pending when the watcher last stopped", WAIT)
            watcher.wait_for_line(re.escape(f"{a} is unmounted ("), WAIT)
            watcher.wait_for_line(r"watching 1 of 2 roots: " + re.escape(str(other)), WAIT)
            watcher.wait_for_line(r"refresh suppressed: " + re.escape(f"{a} is unmounted"), WAIT)
            assert jellyfin.refreshes == []

            mark = watcher.mark()
            disk_a.mount()  # over the stray file, which it hides
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            stop_with_nothing_pending(watcher)
        assert len(jellyfin.refreshes) == 1
        assert_nothing_lost(jellyfin)
        assert len(jellyfin.items) == 3


# --- c. a stray file on the bare mount point ----------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_stray_file_on_a_bare_mount_point_is_unmounted_not_healthy(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                    env: dict[str, str]) -> None:
    # A is a library location of its own: with the disk away and a stray file on the bare
    # mount point, the location is neither missing nor empty, and Jellyfin deletes A's items.
    other = tmp_path / "other"
    movie(other, "Elsewhere (2010)")
    state_dir = tmp_path / "state"
    with LoopDisk(tmp_path / "a.img", tmp_path / "a") as disk_a:
        a = disk_a.mount_point
        movie(a, "On Disk A (2001)")
        jellyfin.libraries = [Library("Movies", [str(a), str(other)])]
        assert jellyfin.index() == 2
        with WatcherProcess(run_args(jellyfin, state_dir, a, other), env) as watcher:
            # The watcher learns A's mount point while A is mounted.
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)

            disk_a.unmount()
            watcher.wait_for_line(re.escape(f"{a} is unmounted ("), WAIT)
            (a / "stray.txt").write_text("written while the disk was away\n")
            movie(other, "New Elsewhere (2024)")
            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert f"{a} is unmounted" in suppressed

            check = run_cli("check", *run_args(jellyfin, state_dir, a, other), env=env)
            assert check.returncode == 1, check
            assert f"{a}: unmounted (" in check.stdout
            assert f"{other}: healthy" in check.stdout

            refresh = run_cli("refresh", *run_args(jellyfin, state_dir, a, other), env=env)
            assert refresh.returncode == 1, refresh
            assert f"refresh suppressed: {a} is unmounted" in refresh.stdout

            assert jellyfin.refreshes == []
            assert jellyfin.removed == []
            assert watcher.terminate(WAIT) == 0
            assert re.search(r"stopped; \d+ changes pending under .*saved in", watcher.lines[-1]), watcher.output

        # The same with the mount point configured instead of learned (fresh state).
        config = write_config(tmp_path / "config.toml", (
            f"[jellyfin]\nurl = {toml_string(jellyfin.url)}\n"
            f"[[roots]]\npath = {toml_string(a)}\nmount = {toml_string(a)}\n"
        ))
        check = run_cli("check", "--config", config, "--state-dir", tmp_path / "fresh-state", env=env)
        assert check.returncode == 1, check
        assert f"{a}: unmounted (" in check.stdout

        # Control: the situation is really harmful. A scan now deletes A's items.
        assert jellyfin.items.keys() >= {str(a / "On Disk A (2001)" / "On Disk A (2001).mkv")}
        scan_now(jellyfin)
        assert jellyfin.wait_for_scans_idle(WAIT)
        assert [item.path for item in jellyfin.removed] == [str(a / "On Disk A (2001)" / "On Disk A (2001).mkv")]


# --- d. a hung FUSE mount -----------------------------------------------------------------------


@pytest.mark.root_only("bindfs", "fusermount")
def test_hung_fuse_mount_is_unresponsive_and_the_watcher_still_stops(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                     env: dict[str, str]) -> None:
    source = tmp_path / "source"
    movie(source, "Seed (2000)")
    # Jellyfin reads the files through the source folder: nothing in this process may touch
    # the FUSE mount while its daemon is stopped.
    jellyfin.libraries = [Library("Movies", [str(source)])]
    assert jellyfin.index() == 1
    with BindFS(source, tmp_path / "fuse") as fuse:
        root = fuse.mount_point
        with WatcherProcess(run_args(jellyfin, tmp_path / "state", root), env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)

            (root / "New (2024).mkv").write_bytes(MKV)  # the change, made before the hang
            due = time.monotonic() + QUIET_PERIOD
            fuse.stop()

            # While waiting, read the argv of the watcher's children: the probe child hangs
            # on the mount for the probe timeout, so it is there to be seen.
            seen: dict[int, str] = {}

            def unresponsive_logged() -> bool:
                seen.update(argv_of_watcher_and_children(watcher))
                return watcher.count(r"is unresponsive") > 0

            wait_until(unresponsive_logged, WAIT, interval=0.01, message=f"no 'unresponsive':\n{watcher.output}")
            arrived, line = watcher.wait_for_timed_line(r"is unresponsive \(", 0)
            assert line.split(" WARNING ", 1)[-1].startswith(f"{root} is unresponsive (no answer within 2 s")
            to_unresponsive = arrived - due
            print(f"\n[d] hung FUSE mount: 'unresponsive' logged {to_unresponsive:.3f} s after the batch fell due "
                  f"(probe timeout {PROBE_TIMEOUT:g} s)")
            assert to_unresponsive <= PROBE_TIMEOUT + 1.0

            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert f"{root} is unresponsive" in suppressed
            probes = [argv for pid, argv in seen.items() if pid != watcher.pid and " -c " in argv and str(root) in argv]
            assert probes, f"no probe child seen; argv seen: {seen}"
            assert str(root) in seen[watcher.pid]
            assert [argv for argv in seen.values() if jellyfin.api_key in argv] == [], "the API key is in an argv"

            started = time.monotonic()
            assert watcher.terminate(WAIT) == 0
            to_exit = time.monotonic() - started
            print(f"[d] exit on SIGTERM with the mount hung: {to_exit:.3f} s")
            assert to_exit <= 2.0
            assert re.search(r"stopped; \d+ changes pending under " + re.escape(str(root)) + ", saved in ",
                             watcher.lines[-1]), watcher.output
        assert jellyfin.refreshes == []
    assert_nothing_lost(jellyfin)


# --- e. the server is down ----------------------------------------------------------------------


def test_server_down_keeps_the_batch_and_retries(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                 env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    with WatcherProcess(run_args(jellyfin, tmp_path / "state", root), env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        jellyfin.set_down(True)
        movie(root, "New (2024)")
        first = watcher.wait_for_line(r"refresh failed: ", WAIT)
        assert re.search(r"refresh failed: Jellyfin answered HTTP 503 to \S+ /\S+; keeping \d+ changes, "
                         r"retrying in 1 s", first), first
        watcher.wait_for_line(r"refresh failed: .*retrying in 2 s", WAIT)  # it retried, with backoff
        assert jellyfin.refreshes == []
        assert watcher.alive()

        jellyfin.set_down(False)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)
    assert len(jellyfin.items) == 2


def test_running_library_scan_is_not_interrupted(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                  env: dict[str, str]) -> None:
    # POST /Library/Refresh cancels a running scan: the watcher waits for it to end instead.
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    with WatcherProcess(run_args(jellyfin, tmp_path / "state", root), env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        jellyfin.set_scan_running(True)
        movie(root, "New (2024)")
        watcher.wait_for_line(r"a library scan is running in Jellyfin: waiting for it to end before refreshing", WAIT)
        assert jellyfin.refreshes == []

        jellyfin.set_scan_running(False)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        stop_with_nothing_pending(watcher)
    assert jellyfin.cancelled_scans == 0
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)


# --- f. a wrong API key -----------------------------------------------------------------------


def test_wrong_key_is_reported_and_the_batch_kept_across_a_restart(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                   env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    state_dir = tmp_path / "state"
    wrong = dict(env, JELLYFIN_API_KEY=WRONG_KEY)
    with WatcherProcess(run_args(jellyfin, state_dir, root), wrong) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2024)")
        line = watcher.wait_for_line(r"rejected the API key", WAIT)
        kept = re.search(r" ERROR .*; keeping (\d+) changes and watching on$", line)
        assert kept, line
        changes = kept.group(1)
        # Still alive, and still trying: a second rejected request arrives after the backoff.
        wait_until(lambda: sum(request.status == 401 for request in jellyfin.requests) >= 2, WAIT,
                   message="the watcher did not retry")
        assert watcher.alive()
        assert watcher.count(r"rejected the API key") == 1  # said once, not on every retry
        assert watcher.terminate(WAIT) == 0
        assert re.search(rf"stopped; {changes} changes pending under {re.escape(str(root))}, saved in ",
                         watcher.lines[-1]), watcher.output
        assert_no_secret(jellyfin.api_key, watcher.output)
    assert jellyfin.refreshes == []

    # Restarted with the right key, the watcher refreshes the saved batch once.
    with WatcherProcess(run_args(jellyfin, state_dir, root), env) as watcher:
        watcher.wait_for_line(rf"{changes} changes under {re.escape(str(root))} were pending when the watcher "
                              r"last stopped", WAIT)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)


def test_fixed_key_delivers_the_kept_batch(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    jellyfin.api_key = "the-server-has-another-key-0000"
    with WatcherProcess(run_args(jellyfin, tmp_path / "state", root), env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2024)")
        watcher.wait_for_line(r"Jellyfin at \S+ rejected the API key \(HTTP 401\)", WAIT)
        assert watcher.alive()
        assert jellyfin.refreshes == []

        jellyfin.api_key = env["JELLYFIN_API_KEY"]  # the user fixes the key in Jellyfin
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)


# --- g. exit codes of check and refresh ---------------------------------------------------------


def test_check_and_refresh_on_healthy_roots_exit_0(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                   env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    args = run_args(jellyfin, tmp_path / "state", root)

    check = run_cli("check", *args, env=env)
    assert (check.returncode, check.stderr) == (0, ""), check
    assert check.stdout.startswith(f"{root}: healthy")
    assert jellyfin.refreshes == []

    refresh = run_cli("refresh", *args, env=env)
    assert (refresh.returncode, refresh.stderr) == (0, ""), refresh
    assert refresh.stdout.startswith("refresh sent: POST ") and "/Library/Refresh" in refresh.stdout, refresh
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)


@pytest.mark.parametrize("problem", ["empty", "missing"])
def test_check_and_refresh_on_an_unhealthy_root_exit_1(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str], problem: str) -> None:
    good, bad = tmp_path / "movies", tmp_path / "shows"
    movie(good, "Seed (2000)")
    if problem == "empty":
        bad.mkdir()
    args = run_args(jellyfin, tmp_path / "state", good, bad)

    check = run_cli("check", *args, env=env)
    assert check.returncode == 1, check
    assert f"{bad}: {problem} (" in check.stdout
    assert f"{good}: healthy" in check.stdout

    refresh = run_cli("refresh", *args, env=env)
    assert refresh.returncode == 1, refresh
    assert refresh.stdout.startswith(f"refresh suppressed: {bad} is {problem} (")
    assert jellyfin.refreshes == []


@pytest.mark.root_only()
def test_check_and_refresh_on_an_unmounted_root_exit_1(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str]) -> None:
    config = write_config(tmp_path / "config.toml", (
        f"[jellyfin]\nurl = {toml_string(jellyfin.url)}\n"
        f"[[roots]]\npath = {toml_string(tmp_path / 'disk' / 'movies')}\nmount = {toml_string(tmp_path / 'disk')}\n"
    ))
    args = ["--config", str(config), "--state-dir", str(tmp_path / "state")]
    with TmpfsMount(tmp_path / "disk") as disk:
        movie(disk.mount_point / "movies", "Seed (2000)")
        assert run_cli("check", *args, env=env).returncode == 0
    # The disk is gone, and something wrote to the root's path on the bare mount point.
    (tmp_path / "disk" / "movies" / "stray").mkdir(parents=True)

    check = run_cli("check", *args, env=env)
    assert check.returncode == 1, check
    assert f"{tmp_path / 'disk' / 'movies'}: unmounted (it lives on " in check.stdout
    refresh = run_cli("refresh", *args, env=env)
    assert refresh.returncode == 1, refresh
    assert "is unmounted" in refresh.stdout
    assert jellyfin.refreshes == []


BAD_CONFIGS = {
    # case: (TOML text with {url} and {root} placeholders, a word the one error line must contain)
    "malformed TOML": ("[jellyfin\nurl = {url}\n", "not valid TOML"),
    "unknown key": ("[jellyfin]\nurl = {url}\n[watch]\nquiet_perod = 5\n[[roots]]\npath = {root}\n",
                    "did you mean watch.quiet_period?"),
    "wrong type": ("[jellyfin]\nurl = {url}\n[watch]\nquiet_period = true\n[[roots]]\npath = {root}\n",
                   "watch.quiet_period: expected seconds"),
    "URL without http(s)": ('[jellyfin]\nurl = "localhost:8096"\n[[roots]]\npath = {root}\n',
                            "expected an http:// or https:// URL"),
    "missing key file": ("[jellyfin]\nurl = {url}\napi_key_file = {missing}\n[[roots]]\npath = {root}\n",
                         "not found"),
    "root is a file": ("[jellyfin]\nurl = {url}\n[[roots]]\npath = {file}\n", "is a file, not a folder"),
}


@pytest.mark.parametrize(("case", "command"), [
    *((case, command) for case in BAD_CONFIGS for command in ("check", "refresh")),
    ("malformed TOML", "run"),
    ("root is a file", "run"),
])
def test_bad_configuration_exits_2_with_one_line(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                 env: dict[str, str], case: str, command: str) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    text, expected = BAD_CONFIGS[case]
    config = write_config(tmp_path / "config.toml", text.format(
        url=toml_string(jellyfin.url), root=toml_string(root), missing=toml_string(tmp_path / "no-such-key-file"),
        file=toml_string(root / "Seed (2000)" / "Seed (2000).mkv"),
    ))
    if case == "missing key file":
        env = {name: value for name, value in env.items() if name != "JELLYFIN_API_KEY"}
    completed = run_cli(command, "--config", config, "--state-dir", tmp_path / "state", env=env, timeout=WAIT,
                        secret=jellyfin.api_key)
    assert completed.returncode == 2, completed
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("jellyfin-watcher: error: ") and expected in lines[0], lines[0]
    assert completed.stdout == ""
    assert jellyfin.refreshes == []


def test_refresh_with_the_server_unreachable_exits_3(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    url = f"http://127.0.0.1:{closed_port()}"
    completed = run_cli("refresh", root, "--url", url, "--state-dir", tmp_path / "state", env=env, timeout=WAIT * 3)
    assert completed.returncode == 3, completed
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert lines[0] == (f"jellyfin-watcher: error: cannot connect to Jellyfin at {url}: check the URL and port, "
                        "and that Jellyfin is running")


def test_refresh_and_check_with_a_wrong_key_exit_3(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                   env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    wrong = dict(env, JELLYFIN_API_KEY=WRONG_KEY)

    refresh = run_cli("refresh", root, "--url", jellyfin.url, "--state-dir", tmp_path / "state", env=wrong)
    assert refresh.returncode == 3, refresh
    # check without ROOT reads the libraries from Jellyfin, with the key.
    check = run_cli("check", "--url", jellyfin.url, "--state-dir", tmp_path / "state", env=wrong)
    assert check.returncode == 3, check
    for completed in (refresh, check):
        lines = completed.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in completed.stderr, completed.stderr
        assert f"Jellyfin at {jellyfin.url} rejected the API key (HTTP 401)" in lines[0]
        assert_no_secret(jellyfin.api_key, completed.stdout + completed.stderr)
    assert jellyfin.refreshes == []


# --- h. the API key stays secret --------------------------------------------------------------


def test_api_key_in_no_argv_and_no_log_line(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    with WatcherProcess([*run_args(jellyfin, tmp_path / "state", root), "--log-level", "debug"], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2024)")
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        argv = argv_of_watcher_and_children(watcher)
        assert str(root) in argv[watcher.pid]
        assert [text for text in argv.values() if jellyfin.api_key in text] == []
        stop_with_nothing_pending(watcher)  # also checks the key is not in any line
    assert_no_secret(jellyfin.api_key, watcher.output)

    # A key from a key file: not in the output of check and refresh either.
    key_file = tmp_path / "api-key"
    key_file.write_text(jellyfin.api_key + "\n")
    without_env = {name: value for name, value in env.items() if name != "JELLYFIN_API_KEY"}
    for command in ("check", "refresh"):
        completed = run_cli(command, "--url", jellyfin.url, "--api-key-file", key_file, "--state-dir",
                            tmp_path / "state", env=without_env, secret=jellyfin.api_key)
        assert completed.returncode == 0, completed
    assert len(jellyfin.wait_for_refreshes(2, WAIT)) == 2

    # A key given on the command line is refused, and not echoed.
    secret = "key-on-the-command-line-12345"
    refused = run_cli("check", root, "--api-key", secret, env=env, secret=secret)
    assert refused.returncode == 2
    assert "--api-key is not accepted" in refused.stderr


# --- events lost in a kernel queue overflow ------------------------------------------------------


@pytest.mark.parametrize("log_level", ["info", "error"])
def test_events_lost_in_a_queue_overflow_count_as_a_change(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                           env: dict[str, str], log_level: str) -> None:
    # While the watcher is frozen, partial downloads (ignored) fill the kernel's inotify queue
    # until it overflows, and the one file that matters is created after that: its event is
    # lost. Only the overflow tells the watcher something changed, whatever the log level.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    files = limit // 2 + 1000  # a created and a closed-after-write event each
    if files > 60_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: too many files needed to overflow it")
    root = tmp_path / "downloads"
    movie(root, "Seed (2000)")
    partial = root / "incoming"
    partial.mkdir()
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    state_dir = tmp_path / "state"
    with WatcherProcess([*run_args(jellyfin, state_dir, root), "--log-level", log_level], env) as watcher:
        # The state file is written once every root is watched (the mount points learned).
        wait_until(lambda: (state_dir / "state.json").exists(), WAIT, message="the watcher did not start")
        watcher.send_signal(signal.SIGSTOP)
        try:
            for index in range(files):
                (partial / f"chunk{index:05d}.part").write_bytes(b"")
            (root / "Finished (2024).mkv").write_bytes(MKV)
        finally:
            watcher.send_signal(signal.SIGCONT)
        if log_level == "info":
            # Each root has its own inotify instance: the overflow counts its own root only.
            watcher.wait_for_line(rf"WARNING the kernel's event queue overflowed: counting {re.escape(str(root))} as changed", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1, watcher.output
        assert watcher.terminate(WAIT) == 0
        if log_level == "error":
            assert not [line for line in watcher.lines if " INFO " in line]
    assert json.loads((state_dir / "state.json").read_text())["pending"] is None  # nothing owed after the refresh
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)
    assert str(root / "Finished (2024).mkv") in jellyfin.items


# --- roots from Jellyfin's libraries ----------------------------------------------------------


def test_without_roots_the_libraries_locations_are_watched(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                           env: dict[str, str]) -> None:
    movies, shows, more_shows = tmp_path / "movies", tmp_path / "shows", tmp_path / "more shows"
    for folder in (movies, shows, more_shows):
        movie(folder, f"Seed in {folder.name}")
    jellyfin.libraries = [
        Library("Movies", [str(movies)]),
        Library("Shows", [str(shows), str(more_shows)], collection_type="tvshows"),
    ]
    assert jellyfin.index() == 3
    args = run_args(jellyfin, tmp_path / "state")

    check = run_cli("check", *args, env=env)
    assert check.returncode == 0, check
    assert sorted(line.split(":")[0] for line in check.stdout.splitlines()) == sorted(
        str(folder) for folder in (movies, shows, more_shows))

    with WatcherProcess(args, env) as watcher:
        line = watcher.wait_for_line(r"watching \d+ of \d+ roots", WAIT)
        assert line.endswith(f"watching 3 of 3 roots: {', '.join(sorted(map(str, (movies, shows, more_shows))))}")
        movie(more_shows, "New Show S01E01")
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes under " + re.escape(str(more_shows)),
                              WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)
    assert len(jellyfin.items) == 4
    # One GET /Library/VirtualFolders by check, one by run at start, one by the loss guard
    # before the refresh (it predicts every library a server-wide refresh scans).
    assert sum(request.path == "/Library/VirtualFolders" for request in jellyfin.requests) == 3


# --- a file still being written --------------------------------------------------------------------


def test_a_file_written_for_longer_than_the_quiet_period_is_refreshed_once_after_it_is_closed(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    """A copy writes for 6 s, far longer than the 1 s quiet period, and inotify says nothing
    between the file's creation and its close: the refresh must wait for the close (the file
    is open for writing, its modification time moving), and then come once."""
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    with WatcherProcess([*run_args(jellyfin, tmp_path / "state", root), "--log-level", "debug"], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        target = root / "Copied (2024).mkv"
        with open(target, "wb") as file:
            for _ in range(12):  # 6 s of writing, a chunk every half second
                file.write(b"\x1a\x45\xdf\xa3" * 256)
                file.flush()
                time.sleep(0.5)  # the writer's own pace (a slow copy), not a wait for the watcher
        closed_at = time.monotonic()
        refreshes = jellyfin.wait_for_refreshes(1, WAIT)
        assert [refresh.time > closed_at for refresh in refreshes] == [True], watcher.output
        assert watcher.count(r"waiting for 1 files still being written") >= 3, watcher.output
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 1
    assert str(target) in jellyfin.items
    assert_nothing_lost(jellyfin)
