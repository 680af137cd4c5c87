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
