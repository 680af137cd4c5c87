"""Rules of the daemon as a whole, end to end: one daemon per state directory, and nothing
Jellyfin (or what stands in front of it) answers can end the daemon.
"""

from __future__ import annotations

import re
from pathlib import Path

from support import (
    WatcherProcess,
    assert_nothing_lost,
    child_env,
    movie,
    run_cli,
    toml_string,
    wait_until,
)

from tests.jellyfin.emulator import JellyfinEmulator, Library
from tests.jellyfin.proxies import SignInProxy

WAIT = 15.0


def config_file(tmp_path: Path, url: str, root: Path, state: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"state_dir = {toml_string(state)}\n\n[jellyfin]\nurl = {toml_string(url)}\n\n"
        "[watch]\nquiet_period = 0.5\nmax_wait = 30\nprobe_timeout = 2\nbackoff_max = 1\nsettle = 0.5\n\n"
        f"[[roots]]\npath = {toml_string(root)}\n",
        encoding="utf-8",
    )
    return path


def test_a_second_daemon_on_the_same_state_directory_exits_2_naming_the_first(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    state = tmp_path / "state"
    config = config_file(tmp_path, jellyfin.url, root, state)
    with WatcherProcess(["--config", config], env) as first:
        first.wait_for_line(r"watching 1 of 1 roots", WAIT)
        second = run_cli("run", "--config", config, env=env, timeout=WAIT)
        assert second.returncode == 2, second
        assert second.stderr == (
            f"jellyfin-watcher: error: another jellyfin-watcher daemon (pid {first.pid}) is running with the state "
            f"directory {state}: stop it first, or give this one its own --state-dir\n"), second.stderr
        # The one-shot commands work beside the running daemon.
        assert run_cli("check", "--config", config, env=env).returncode == 0
        status = wait_until(lambda: (done := run_cli("status", "--config", config, env=env)).returncode == 0 and done,
                            WAIT, interval=0.2)
        assert f"daemon: pid {first.pid}" in status.stdout
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 0 and "refresh sent" in refresh.stdout, refresh
        assert first.alive()
        assert first.terminate(WAIT) == 0
    # The lock went with the first daemon: a new one starts.
    with WatcherProcess(["--config", config], env) as third:
        third.wait_for_line(r"watching 1 of 1 roots", WAIT)
        assert third.terminate(WAIT) == 0
    assert_nothing_lost(jellyfin)


def test_a_lock_left_by_a_killed_daemon_does_not_stop_the_next_one(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.index()
    config = config_file(tmp_path, jellyfin.url, root, tmp_path / "state")
    with WatcherProcess(["--config", config], env) as first:
        first.wait_for_line(r"watching 1 of 1 roots", WAIT)
        first.close()  # SIGKILL: no clean-up at all; the kernel drops the lock with the process
    assert (tmp_path / "state" / "daemon.lock").exists()
    with WatcherProcess(["--config", config], env) as second:
        second.wait_for_line(r"watching 1 of 1 roots", WAIT)
        assert second.terminate(WAIT) == 0


def test_html_pages_instead_of_answers_are_one_error_then_the_kept_batch_goes(tmp_path: Path) -> None:
    """A sign-in proxy answers every request with its HTML login page (200): the daemon says
    so once, keeps the batch, retries, and refreshes once the proxy lets it through."""
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    key = "f" * 32
    with JellyfinEmulator(api_key=key, libraries=[Library("Movies", [str(root)])]) as jellyfin, \
            SignInProxy(jellyfin.url, mode="page") as proxy:
        jellyfin.index()
        config = config_file(tmp_path, proxy.url, root, tmp_path / "state")
        env = child_env(api_key=key, home=tmp_path / "home")
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(root, "New (2024)")
            error = watcher.wait_for_line(r" ERROR ", WAIT)
            assert "HTML page" in error and "login" in error and re.search(r"keeping \d+ changes", error), error
            asked = len(proxy.requests)
            wait_until(lambda: len(proxy.requests) >= asked + 3, WAIT, message="the daemon did not retry")
            assert jellyfin.refreshes == [] and watcher.alive()
            proxy.exempt = True
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            assert watcher.terminate(WAIT) == 0
        assert watcher.count(r" ERROR ") == 1, watcher.output
        assert "Traceback" not in watcher.output
        assert jellyfin.wait_for_scans_idle(WAIT)
        assert_nothing_lost(jellyfin)
        assert str(root / "New (2024)" / "New (2024).mkv") in jellyfin.items


def _tgkill(pid: int, tid: int, number: int) -> None:
    """Send signal ``number`` to thread ``tid`` of process ``pid`` (tgkill(2))."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, number) != 0:  # SYS_tgkill on x86_64
        raise OSError(ctypes.get_errno(), "tgkill failed")


def test_sigterm_delivered_to_another_thread_than_the_main_one_stops_at_once(tmp_path: Path) -> None:
    """The kernel hands a signal to any thread that does not block it (signal(7)); Python
    runs the handler on the main thread only when that thread wakes, which for a daemon at
    rest is the next health check, a minute away. SIGTERM sent (tgkill) to the first and to
    the last of its other threads, once it is at rest, must stop it within 2 s each time."""
    import os
    import platform
    import signal
    import time

    from watcher.edges.workers import IDLE

    if platform.machine() != "x86_64":
        import pytest

        pytest.skip("uses the x86_64 number of the tgkill system call")
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    env = child_env(home=tmp_path / "home")
    for attempt in range(2):
        with WatcherProcess(["--dry-run", "--state-dir", tmp_path / f"state{attempt}", root], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)

            def others() -> list[int]:
                return sorted(int(tid) for tid in os.listdir(f"/proc/{watcher.pid}/task") if int(tid) != watcher.pid)

            busy = len(others())
            # At rest: the worker threads of the first round have ended (they end after IDLE s idle).
            wait_until(lambda busy=busy: len(others()) < busy, IDLE + WAIT, message="the daemon's worker threads never ended")
            threads = others()
            assert threads, "the daemon has threads beside the main one"
            target = threads[0] if attempt == 0 else threads[-1]
            sent = time.monotonic()
            _tgkill(watcher.pid, target, signal.SIGTERM)
            watcher.wait_for_line(r"stopped; ", 2.0)
            wait_until(lambda: not watcher.alive(), 2.0, message="the daemon did not exit after SIGTERM")
            assert watcher.returncode == 0
            assert time.monotonic() - sent < 2.0 + 0.5
