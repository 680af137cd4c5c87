"""Integration: refresh scopes and gates, path mapping, ``doctor``, user login, URLs, Emby
mode and the library re-read, end to end against the Jellyfin emulator.

The watcher runs as a real process (``support.WatcherProcess``, ``support.run_cli``); the
emulator checks every request against Jellyfin's OpenAPI spec (the ``jellyfin`` fixture
fails a test on any violation) and deletes items whose files are missing when it scans, so
``jellyfin.removed == []`` proves nothing was lost. Scenarios with unmounted disks need root
(a tmpfs per library) and are skipped with the reason otherwise. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import (
    MKV,
    TmpfsMount,
    WatcherProcess,
    assert_nothing_lost,
    child_env,
    closed_port,
    movie,
    read_status_file,
    refresh_requests,
    run_cli,
    stop_with_nothing_pending,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import (
    DEFAULT_SCAN_INTERVAL_TICKS,
    REFRESH_LIBRARY_KEY,
    JellyfinEmulator,
    Library,
    parse_authorization,
)

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""
QUIET_PERIOD = 1.0
"""``watch.quiet_period`` of every daemon here, seconds."""
SETTLE = 0.5
"""``watch.settle`` of every daemon here, seconds: how long a returning disk must stay healthy."""
HEALTH_INTERVAL = 0.5
"""``watch.health_interval`` of every daemon here, seconds: a remounted tmpfs is empty until
the test puts its files back, so the periodic check has to notice it is healthy again."""


# --- helpers ----------------------------------------------------------------------------------


def daemon_config(path: Path, *, url: str | None, state_dir: Path, jellyfin: dict[str, Any] | None = None,
                  refresh: dict[str, str] | None = None, path_map: dict[str, str] | None = None,
                  quiet_period: float = QUIET_PERIOD) -> Path:
    """A configuration file for the daemon under test. ``path_map``: Jellyfin's path → local."""
    document: dict[str, Any] = {
        "state_dir": state_dir,
        "jellyfin": {**({} if url is None else {"url": url}), **(jellyfin or {})},
        "watch": {"quiet_period": quiet_period, "max_wait": 90, "probe_timeout": 2, "settle": SETTLE,
                  "health_interval": HEALTH_INTERVAL},
    }
    if refresh:
        document["refresh"] = refresh
    if path_map:
        document["path_map"] = [{"jellyfin": jellyfin_path, "local": local} for jellyfin_path, local in path_map.items()]
    return write_config(path, document)


def api(jellyfin: JellyfinEmulator, path: str) -> Any:
    """``GET path`` on the emulator with its API key, from the test itself (not the code under test)."""
    request = urllib.request.Request(
        jellyfin.url + path,
        headers={"Authorization": f'MediaBrowser Token="{jellyfin.api_key}", Client="tests", Version="0"'},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.load(response)


def under(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(f"{folder}/")


# --- 1. scope x gate with one library's disk unmounted -------------------------------------------


@pytest.mark.root_only()
@pytest.mark.parametrize(
    ("scope", "gate"),
    [("server", "all"), ("library", "all"), ("path", "all"), ("library", "library"), ("path", "library")],
)
def test_unmounted_disk_under_each_scope_and_gate(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str],
                                                   scope: str, gate: str) -> None:
    # Each library on a disk of its own. The bare mount points hold a stray file, so a missing
    # disk leaves a location that is neither missing nor empty: Jellyfin's own "skip a missing
    # location" protection does not apply, and a scan of that library would delete its items.
    a, b = tmp_path / "movies", tmp_path / "shows"
    for mount_point in (a, b):
        mount_point.mkdir()
        (mount_point / "disk-not-mounted.txt").write_text("the disk is not mounted\n")
    with TmpfsMount(a), TmpfsMount(b) as disk_b:
        movie(a, "Old Movie (1999)")
        movie(b, "Old Show (2001)")
        movies, shows = Library("Movies", [str(a)]), Library("Shows", [str(b)])
        jellyfin.libraries = [movies, shows]
        assert jellyfin.index() == 2
        config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                              refresh={"scope": scope, "gate": gate})
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)

            # A change on each disk, then disk B goes away. The watcher is frozen meanwhile, so
            # that it certainly has both changes before it learns B is gone, without racing
            # its quiet period; the kernel queues the events for it.
            watcher.send_signal(signal.SIGSTOP)
            try:
                movie(a, "New Movie (2024)")
                movie(b, "New Show (2024)")
                disk_b.unmount()
            finally:
                watcher.send_signal(signal.SIGCONT)
            watcher.wait_for_line(re.escape(f"{b} is unmounted ("), WAIT)

            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert f"{b} is unmounted" in suppressed
            if gate == "all":
                assert re.search(r"keeping \d+ changes until every root is healthy", suppressed), suppressed
                assert jellyfin.refreshes == []
            else:
                assert f"keeping the changes under {b} until every root is healthy" in suppressed
                sent = watcher.wait_for_line(r"refresh sent: ", WAIT)
                assert sent.endswith(f"for the changes under {a}"), sent
                [refresh] = jellyfin.wait_for_refreshes(1, WAIT)
                if scope == "library":
                    assert (refresh.kind, refresh.detail) == ("item", (movies.item_id,))
                    assert refresh_requests(jellyfin) == [f"POST /Items/{uuid.UUID(movies.item_id)}/Refresh"]
                else:
                    assert refresh.kind == "media-updated"
                    assert refresh.detail and all(under(path, a) for path in refresh.detail), refresh.detail
            assert jellyfin.wait_for_scans_idle(WAIT)
            assert jellyfin.removed == []
            before = len(jellyfin.refreshes)

            # B is back, with its files (a tmpfs starts empty: the test puts them back, as the
            # disk would bring them). After watch.settle its kept changes are refreshed.
            mark = watcher.mark()
            disk_b.mount()
            movie(b, "Old Show (2001)")
            movie(b, "New Show (2024)")
            watcher.wait_for_line(re.escape(f"watching {b} again"), WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            expected = {("server", "all"): 1, ("library", "all"): 2, ("path", "all"): 2}.get((scope, gate), 1)
            assert len(jellyfin.wait_for_refreshes(before + expected, WAIT)) == before + expected
            stop_with_nothing_pending(watcher)

        refreshes = jellyfin.refreshes
        kinds = sorted(refresh.kind for refresh in refreshes)
        if scope == "server":
            assert kinds == ["library"]
        elif scope == "library":
            assert sorted(refresh.detail for refresh in refreshes) == sorted([(movies.item_id,), (shows.item_id,)])
            assert kinds == ["item", "item"]
        else:
            # A's folders as paths; B came back as a whole (files may have arrived while it
            # was away), so its library is refreshed.
            assert kinds == ["item", "media-updated"]
            [item] = [refresh for refresh in refreshes if refresh.kind == "item"]
            [paths] = [refresh for refresh in refreshes if refresh.kind == "media-updated"]
            assert item.detail == (shows.item_id,)
            assert all(under(path, a) for path in paths.detail), paths.detail
        assert_nothing_lost(jellyfin)
        assert set(jellyfin.items) >= {str(b / "Old Show (2001)" / "Old Show (2001).mkv")}


def test_scope_server_with_gate_library_is_a_configuration_error(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                  env: dict[str, str]) -> None:
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": "server", "gate": "library"})
    for command in ("run", "refresh", "check"):
        completed = run_cli(command, "--config", config, str(tmp_path), env=env)
        assert completed.returncode == 2, completed
        [line] = completed.stderr.splitlines()
        assert 'refresh.gate = "library" needs refresh.scope = "library" or "path"' in line, line
    assert jellyfin.requests == []


@pytest.mark.parametrize("scope", ["library", "path"])
def test_one_shot_refresh_under_gate_library_refreshes_only_the_healthy_library(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str], scope: str) -> None:
    a, b = tmp_path / "movies", tmp_path / "shows"
    movie(a, "Old Movie (1999)")
    movies, shows = Library("Movies", [str(a)]), Library("Shows", [str(b)])  # b does not exist
    jellyfin.libraries = [movies, shows]
    jellyfin.index()
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": scope, "gate": "library"})

    completed = run_cli("refresh", "--config", config, env=env)

    assert completed.returncode == 1, completed  # something was held back
    assert f"refresh sent: POST /Items/{movies.item_id}/Refresh (library Movies)" in completed.stdout
    assert (f"refresh suppressed: POST /Items/{shows.item_id}/Refresh (library Shows): {b} is missing"
            in completed.stdout), completed.stdout
    assert [(refresh.kind, refresh.detail) for refresh in jellyfin.wait_for_refreshes(1, WAIT)] == [
        ("item", (movies.item_id,))]
    assert refresh_requests(jellyfin) == [f"POST /Items/{uuid.UUID(movies.item_id)}/Refresh"]

    # Under gate = "all", the same situation refreshes nothing.
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": scope, "gate": "all"})
    completed = run_cli("refresh", "--config", config, env=env)
    assert completed.returncode == 1, completed
    assert f"refresh suppressed: {b} is missing" in completed.stdout
    assert len(jellyfin.refreshes) == 1
    assert_nothing_lost(jellyfin)


# --- 2. path scope ---------------------------------------------------------------------------------


def docker_layout(tmp_path: Path, jellyfin: JellyfinEmulator) -> tuple[Path, Path, Library, Library]:
    """Jellyfin in a container sees /data/movies and /data/shows; here they are two folders
    under ``tmp_path/host`` (paths Jellyfin's container does not have)."""
    movies_here, shows_here = tmp_path / "host" / "movies", tmp_path / "host" / "shows"
    movie(movies_here, "Old Movie (1999)")
    movie(shows_here, "Old Show (2001)")
    movies, shows = Library("Movies", ["/data/movies"]), Library("Shows", ["/data/shows"])
    jellyfin.libraries = [movies, shows]
    jellyfin.server_paths["/data"] = str(tmp_path / "host")  # the container's volume
    return movies_here, shows_here, movies, shows


def test_path_scope_sends_the_changed_folders_as_jellyfin_sees_them(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                   env: dict[str, str]) -> None:
    movies_here, shows_here, _, _ = docker_layout(tmp_path, jellyfin)
    (movies_here / "New Movie (2024)").mkdir()  # made by the media manager before the file arrives
    (movies_here / "Old Movie (1999)" / "extras").mkdir()
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": "path"},
                          path_map={"/data/movies/": f"{movies_here}/", "/data/shows": str(shows_here)})
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 2 of 2 roots: " + re.escape(f"{movies_here}, {shows_here}"), WAIT)

        (movies_here / "New Movie (2024)" / "New Movie (2024).mkv").write_bytes(MKV)
        (movies_here / "Old Movie (1999)" / "Old Movie (1999).en.srt").write_text("1\n")
        (movies_here / "Old Movie (1999)" / "extras" / "Making Of.mkv").write_bytes(MKV)

        sent = watcher.wait_for_line(r"refresh sent: ", WAIT)
        assert "POST /Library/Media/Updated (2 folders)" in sent, sent
        [refresh] = jellyfin.wait_for_refreshes(1, WAIT)
        stop_with_nothing_pending(watcher)
    assert refresh.kind == "media-updated"
    assert refresh.detail == ("/data/movies/New Movie (2024)", "/data/movies/Old Movie (1999)")
    [request] = [request for request in jellyfin.requests if request.path == "/Library/Media/Updated"]
    assert request.json == {"Updates": [{"Path": "/data/movies/New Movie (2024)", "UpdateType": "Modified"},
                                        {"Path": "/data/movies/Old Movie (1999)", "UpdateType": "Modified"}]}
    assert request.status == 204
    assert_nothing_lost(jellyfin)


@pytest.mark.parametrize("folders", [100, 101])
def test_path_scope_beyond_100_folders_refreshes_the_library(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                            env: dict[str, str], folders: int) -> None:
    root = tmp_path / "shows"
    for index in range(folders):
        (root / f"Show {index:03d}").mkdir(parents=True)
    shows = Library("Shows", [str(root)], collection_type="tvshows")
    jellyfin.libraries = [shows]
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": "path"})
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        for index in range(folders):
            (root / f"Show {index:03d}" / f"Episode {index:03d}.mkv").write_bytes(MKV)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        [refresh] = jellyfin.wait_for_refreshes(1, WAIT)
        stop_with_nothing_pending(watcher)
    if folders <= 100:
        assert refresh.kind == "media-updated"
        assert refresh.detail == tuple(str(root / f"Show {index:03d}") for index in range(folders))
    else:
        assert (refresh.kind, refresh.detail) == ("item", (shows.item_id,))
        assert refresh_requests(jellyfin) == [f"POST /Items/{uuid.UUID(shows.item_id)}/Refresh"]
    assert_nothing_lost(jellyfin)
    assert len(jellyfin.items) == folders


def test_path_scope_after_a_restart_refreshes_what_was_pending_before_it(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    # Changes pending at a stop are saved as roots and a count, without their folders. If the
    # restored batch cannot be sent at once (here: another root is missing) and a new change
    # arrives, the refresh must still cover the changes from before the restart.
    movies_root, shows_root = tmp_path / "movies", tmp_path / "shows"
    movie(movies_root, "Old Movie (1999)")
    movie(movies_root, "Other Movie (2000)")
    movie(shows_root, "Old Show (2001)")
    movies, shows = Library("Movies", [str(movies_root)]), Library("Shows", [str(shows_root)])
    jellyfin.libraries = [movies, shows]
    jellyfin.index()
    state_dir = tmp_path / "state"
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=state_dir, refresh={"scope": "path"})
    slow = daemon_config(tmp_path / "slow.toml", url=jellyfin.url, state_dir=state_dir, refresh={"scope": "path"},
                        quiet_period=60)  # the first run stops before its batch is due

    with WatcherProcess(["--config", slow], env) as watcher:
        watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
        (movies_root / "Old Movie (1999)" / "Old Movie (1999).en.srt").write_text("1\n")
        wait_until(lambda: ((read_status_file(state_dir) or {}).get("pending") or {}).get("roots") == [str(movies_root)], WAIT)
        assert watcher.terminate(WAIT) == 0
        assert re.search(r"stopped; \d+ changes pending under " + re.escape(str(movies_root)), watcher.lines[-1])

    away = shows_root.rename(tmp_path / "shows.away")
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"changes under " + re.escape(str(movies_root)) + " were pending", WAIT)
        watcher.wait_for_line(r"refresh suppressed: " + re.escape(f"{shows_root} is missing"), WAIT)
        (movies_root / "Other Movie (2000)" / "Other Movie (2000).en.srt").write_text("1\n")
        mark = watcher.mark()
        away.rename(shows_root)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        refreshes = jellyfin.wait_for_refreshes(2, WAIT)
        stop_with_nothing_pending(watcher)

    covered = [refresh for refresh in refreshes
               if (refresh.kind, refresh.detail) == ("item", (movies.item_id,))
               or (refresh.kind == "media-updated"
                   and any(under(str(movies_root / "Old Movie (1999)"), Path(path)) for path in refresh.detail))]
    assert covered, f"the change made before the restart was never refreshed: {refreshes}"
    assert_nothing_lost(jellyfin)


# --- 3. path mapping, Docker-style ----------------------------------------------------------------


def test_docker_layout_needs_a_path_map(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    movies_here, shows_here, _, _ = docker_layout(tmp_path, jellyfin)
    state_dir = tmp_path / "state"

    unmapped = daemon_config(tmp_path / "unmapped.toml", url=jellyfin.url, state_dir=state_dir)
    check = run_cli("check", "--config", unmapped, env=env)
    assert check.returncode == 1, check
    for location in ("/data/movies", "/data/shows"):
        assert (f'{location}: missing (no such folder here; if Jellyfin runs in a container, map its path to this '
                f'machine\'s: [[path_map]] jellyfin = "{location}" local = "/the/same/folder/here")') in check.stdout
    doctor = run_cli("doctor", "--config", unmapped, env=env)
    assert doctor.returncode == 1, doctor
    assert '! library Movies: /data/movies is missing (no such folder); if Jellyfin sees it under another path ' \
           '(Docker), add [[path_map]] jellyfin = "/data/movies"' in doctor.stdout, doctor.stdout

    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=state_dir,
                          path_map={"/data/movies": str(movies_here), "/data/shows": str(shows_here)})
    check = run_cli("check", "--config", config, env=env)
    assert check.returncode == 0, check
    lines = check.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(movies_here), str(shows_here)], check.stdout
    assert all(line.split(": ", 1)[1].startswith("healthy") for line in lines), check.stdout

    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 2 of 2 roots: " + re.escape(f"{movies_here}, {shows_here}"), WAIT)
        movie(shows_here, "New Show (2024)")
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes under " + re.escape(str(shows_here)),
                              WAIT)
        assert [refresh.kind for refresh in jellyfin.wait_for_refreshes(1, WAIT)] == ["library"]
        stop_with_nothing_pending(watcher)
    assert_nothing_lost(jellyfin)


# --- 4. doctor ---------------------------------------------------------------------------------------


def test_doctor_warns_then_fixes_jellyfins_own_scanning(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str]) -> None:
    movies_root, shows_root = tmp_path / "movies", tmp_path / "shows"
    movie(movies_root, "Old Movie (1999)")
    movie(shows_root, "Old Show (2001)")
    jellyfin.libraries = [Library("Movies", [str(movies_root)]), Library("Shows", [str(shows_root)])]
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state")

    def options() -> dict[str, dict[str, Any]]:
        return {folder["Name"]: folder["LibraryOptions"] for folder in api(jellyfin, "/Library/VirtualFolders")}

    def triggers() -> dict[str, list[dict[str, Any]]]:
        return {task["Key"]: task["Triggers"] for task in api(jellyfin, "/ScheduledTasks")}

    options_before, triggers_before = options(), triggers()
    assert triggers_before[REFRESH_LIBRARY_KEY] == [
        {"Type": "IntervalTrigger", "IntervalTicks": DEFAULT_SCAN_INTERVAL_TICKS}]

    before = run_cli("doctor", "--config", config, env=env)
    assert before.returncode == 1, before
    for name in ("Movies", "Shows"):
        assert (f"! library {name}: real-time monitoring is on: Jellyfin refreshes on its own, without the watcher's "
                f"checks. Fix: Dashboard → Libraries → {name} → Manage library → uncheck \"Enable real-time "
                "monitoring\"") in before.stdout
    assert ('! the "Scan Media Library" task runs every 12 h, without the watcher\'s checks. Fix: Dashboard → '
            "Scheduled Tasks → Scan Media Library → delete its triggers") in before.stdout
    assert before.stdout.splitlines()[-1] == "3 warnings; `jellyfin-watcher doctor --fix` turns Jellyfin's own scanning off"
    assert (options(), triggers()) == (options_before, triggers_before)  # only looked
    assert [request.method for request in jellyfin.requests if request.method != "GET"] == []

    fixed = run_cli("doctor", "--fix", "--config", config, env=env)
    assert fixed.returncode == 0, fixed
    assert [line for line in fixed.stdout.splitlines() if line.startswith("changed: ")] == [
        "changed: library Movies: EnableRealtimeMonitor true → false",
        "changed: library Shows: EnableRealtimeMonitor true → false",
        'changed: "Scan Media Library" task: removed its triggers (every 12 h)',
    ]
    assert fixed.stdout.splitlines()[-1] == "all good"
    after = options()
    for name in ("Movies", "Shows"):
        assert after[name]["EnableRealtimeMonitor"] is False
        # Nothing else of the library's options changed (Jellyfin replaces them wholesale).
        assert {**after[name], "EnableRealtimeMonitor": True} == options_before[name]
    assert triggers() == {**triggers_before, REFRESH_LIBRARY_KEY: []}

    again = run_cli("doctor", "--config", config, env=env)
    assert again.returncode == 0, again
    assert "changed: " not in again.stdout and "! " not in again.stdout
    assert "✓ library Movies: real-time monitoring is off" in again.stdout
    assert '✓ the "Scan Media Library" task has no schedule' in again.stdout
    assert again.stdout.splitlines()[-1] == "all good"
    assert jellyfin.refreshes == []  # doctor never scans


def test_doctor_with_a_wrong_key(tmp_path: Path, jellyfin: JellyfinEmulator) -> None:
    jellyfin.libraries = [Library("Movies", [str(tmp_path)])]
    env = child_env(api_key="wrong-key-0123456789abcdef", home=tmp_path / "home")
    completed = run_cli("doctor", "--url", jellyfin.url, "--state-dir", tmp_path / "state", env=env)
    assert completed.returncode == 3, completed
    assert "rejected the API key (HTTP 401): make a new key in Dashboard → API Keys" in completed.stdout
    assert jellyfin.api_key not in completed.stdout + completed.stderr


def test_doctor_with_nothing_listening(tmp_path: Path, env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    completed = run_cli("doctor", "--url", url, "--state-dir", tmp_path / "state", env=env)
    assert completed.returncode == 3, completed
    assert f"cannot connect to Jellyfin at {url}: check the URL and port" in completed.stdout


def test_doctor_without_the_reverse_proxy_base_path(tmp_path: Path, env: dict[str, str]) -> None:
    with JellyfinEmulator(api_key=env["JELLYFIN_API_KEY"], base_path="/jellyfin") as proxied:
        without = proxied.url.removesuffix("/jellyfin")
        completed = run_cli("doctor", "--url", without, "--state-dir", tmp_path / "state", env=env)
        assert completed.returncode == 3, completed
        # Jellyfin redirects a path outside its Base URL to <base URL>/web/ (BaseUrlRedirectionMiddleware).
        assert (f"answers GET /System/Info/Public with a redirect (HTTP 302) to {without}/jellyfin/web/: Jellyfin's "
                f"Base URL (Dashboard → Networking) is /jellyfin; set jellyfin.url to {proxied.url}") in completed.stdout
        with_it = run_cli("doctor", "--url", proxied.url, "--state-dir", tmp_path / "state", env=env)
        assert with_it.returncode == 1, with_it  # reachable; warns about Jellyfin's own scanning
        assert f"✓ Jellyfin Server 10.11.11 at {proxied.url}" in with_it.stdout
    assert proxied.violations == []


# --- 5. user login ------------------------------------------------------------------------------------

PASSWORD = "correct horse battery"


def login_config(tmp_path: Path, jellyfin: JellyfinEmulator, password: str = PASSWORD, mode: int = 0o600,
                 state_dir: Path | None = None) -> Path:
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(mode)
    return daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=state_dir or tmp_path / "state",
                        jellyfin={"username": "alice", "password_file": str(password_file)})


def logins(jellyfin: JellyfinEmulator) -> list[Any]:
    return [request for request in jellyfin.requests if request.path == "/Users/AuthenticateByName"]


def test_user_login_caches_the_token_and_logs_in_again_when_it_is_refused(tmp_path: Path,
                                                                         jellyfin: JellyfinEmulator) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.users = {"alice": PASSWORD}
    jellyfin.index()
    config = login_config(tmp_path, jellyfin)
    env = child_env(home=tmp_path / "home")  # no API key anywhere
    token_file = tmp_path / "state" / "token.json"

    first = run_cli("refresh", "--config", config, root, env=env, secret=PASSWORD)
    assert first.returncode == 0, first
    assert "refresh sent: POST /Library/Refresh" in first.stdout
    assert f"logged in to {jellyfin.url} as alice" in first.stderr
    [login] = logins(jellyfin)
    assert login.status == 200
    assert login.json == {"Username": "alice", "Pw": "<redacted>"}
    scheme, fields = parse_authorization(login.headers["Authorization"])
    assert scheme == "MediaBrowser"
    assert fields["Client"] == "jellyfin-watcher" and "Token" not in fields
    assert all(fields.get(name) for name in ("Device", "DeviceId", "Version")), fields
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    cached = json.loads(token_file.read_text(encoding="utf-8"))
    assert cached["url"] == jellyfin.url and cached["username"] == "alice"
    assert cached["token"] and PASSWORD not in token_file.read_text(encoding="utf-8")

    second = run_cli("refresh", "--config", config, root, env=env, secret=PASSWORD)
    assert second.returncode == 0, second
    assert len(logins(jellyfin)) == 1, "the cached token was not used"

    # The server no longer knows the cached token (revoked, or the server was reset).
    token_file.write_text(json.dumps({**cached, "token": "0" * 32}), encoding="utf-8")
    count = len(jellyfin.requests)
    third = run_cli("refresh", "--config", config, root, env=env, secret=PASSWORD)
    assert third.returncode == 0, third
    statuses = [(request.path, request.status) for request in jellyfin.requests[count:]]
    assert statuses[0][1] == 401 and ("/Users/AuthenticateByName", 200) in statuses, statuses
    assert statuses[-1] == ("/Library/Refresh", 204)
    renewed = json.loads(token_file.read_text(encoding="utf-8"))["token"]
    assert renewed not in ("0" * 32, cached["token"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    assert [refresh.kind for refresh in jellyfin.wait_for_refreshes(3, WAIT)] == ["library"] * 3
    doctor = run_cli("doctor", "--fix", "--config", config, env=env, secret=PASSWORD)
    assert "✓ logged in as alice" in doctor.stdout, doctor
    assert_nothing_lost(jellyfin)


def test_daemon_with_user_login_refreshes(tmp_path: Path, jellyfin: JellyfinEmulator) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.users = {"alice": PASSWORD}
    jellyfin.index()
    config = login_config(tmp_path, jellyfin)
    with WatcherProcess(["--config", config], child_env(home=tmp_path / "home"), secret=PASSWORD) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots: " + re.escape(str(root)), WAIT)  # roots read as alice
        movie(root, "New Movie (2024)")
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh", WAIT)
        assert [refresh.kind for refresh in jellyfin.wait_for_refreshes(1, WAIT)] == ["library"]
        stop_with_nothing_pending(watcher)
    assert len(logins(jellyfin)) == 1
    assert_nothing_lost(jellyfin)


def test_wrong_password_is_a_clear_error(tmp_path: Path, jellyfin: JellyfinEmulator) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.users = {"alice": PASSWORD}
    config = login_config(tmp_path, jellyfin, password="wrong password")
    env = child_env(home=tmp_path / "home")

    for command in ("refresh", "check"):
        completed = run_cli(command, "--config", config, env=env, secret="wrong password")
        assert completed.returncode == 3, completed
        assert completed.stderr.splitlines()[-1] == (
            f"jellyfin-watcher: error: Jellyfin at {jellyfin.url} rejected the login of user 'alice': check "
            "jellyfin.username and the password file")
    assert not (tmp_path / "state" / "token.json").exists()
    assert jellyfin.refreshes == []


def test_password_file_readable_by_others_is_warned_about(tmp_path: Path, jellyfin: JellyfinEmulator) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    jellyfin.users = {"alice": PASSWORD}
    config = login_config(tmp_path, jellyfin, mode=0o644)
    completed = run_cli("refresh", "--config", config, root, env=child_env(home=tmp_path / "home"), secret=PASSWORD)
    assert completed.returncode == 0, completed
    password_file = tmp_path / "password"
    assert (f"the password file {password_file} is readable by every user: chmod 600 {password_file}"
            in completed.stderr), completed.stderr


# --- 6. URLs ----------------------------------------------------------------------------------------------


def test_url_with_a_trailing_slash(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    completed = run_cli("refresh", root, "--url", jellyfin.url + "/", "--state-dir", tmp_path / "state", env=env)
    assert completed.returncode == 0, completed
    assert refresh_requests(jellyfin) == ["POST /Library/Refresh"]
    assert all(not request.path.startswith("//") for request in jellyfin.requests)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_reverse_proxy_base_path(tmp_path: Path, env: dict[str, str], suffix: str) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    with JellyfinEmulator(api_key=env["JELLYFIN_API_KEY"], base_path="/jellyfin",
                          libraries=[Library("Movies", [str(root)])]) as proxied:
        proxied.index()
        assert proxied.url.endswith("/jellyfin")
        config = daemon_config(tmp_path / "config.toml", url=proxied.url + suffix, state_dir=tmp_path / "state",
                              refresh={"scope": "library"})
        check = run_cli("check", "--config", config, env=env)  # roots read from Jellyfin through the proxy
        assert check.returncode == 0, check
        assert check.stdout.startswith(f"{root}: healthy")
        completed = run_cli("refresh", "--config", config, env=env)
        assert completed.returncode == 0, completed
        [library] = proxied.libraries
        assert refresh_requests(proxied) == [f"POST /jellyfin/Items/{uuid.UUID(library.item_id)}/Refresh"]
        assert proxied.wait_for_scans_idle(WAIT)
    assert proxied.violations == [] and proxied.removed == []


@pytest.mark.parametrize("where", ["flag", "environment", "file"])
def test_ftp_url_is_a_usage_error(tmp_path: Path, env: dict[str, str], where: str) -> None:
    url = "ftp://127.0.0.1:8096"
    arguments: list[str | Path] = ["refresh", tmp_path, "--state-dir", tmp_path / "state"]
    if where == "flag":
        arguments += ["--url", url]
    elif where == "environment":
        env = {**env, "JELLYFIN_URL": url}
    else:
        arguments += ["--config", daemon_config(tmp_path / "config.toml", url=url, state_dir=tmp_path / "state")]
    completed = run_cli(*arguments, env=env)
    assert completed.returncode == 2, completed
    [line] = completed.stderr.splitlines()
    assert f"expected an http:// or https:// URL such as http://localhost:8096, got '{url}'" in line


# --- 7. Emby mode -------------------------------------------------------------------------------------
#
# The emulator is Jellyfin 12.0: it serves no /emby prefix and refuses X-Emby-Token. Emby mode
# is tested against a small stand-in instead, built from what Emby documents of its API (the same
# refresh endpoints under /emby, X-Emby-Token, 200 with an empty body where Jellyfin answers
# 204). What is tested: the prefix, the headers, that an empty 200 counts as success, the
# login through X-Emby-Authorization, numeric item ids passed through as they are. Best
# effort, not tested: whatever real Emby does beyond that (its JSON fields, its status codes
# on errors, its /Items paging, the header scheme it really expects at login).


class EmbyStandIn:
    """An HTTP server on 127.0.0.1 answering like Emby on the endpoints the watcher uses;
    records every request as ``(method, path, query, headers, body)``."""

    PREFIX = "/emby"

    def __init__(self, api_key: str, root: Path, users: dict[str, str] | None = None) -> None:
        self.api_key = api_key
        self.root = root
        self.users = dict(users or {})
        self.tokens: set[str] = {api_key}
        self.requests: list[tuple[str, str, str, dict[str, str], Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = False
        self.server.block_on_close = True  # server_close joins the request threads
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="emby-stand-in", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> EmbyStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """Status and JSON body (None: an empty body)."""
        path, _, query = target.partition("?")
        payload = json.loads(body) if body else None
        with self.lock:
            self.requests.append((method, path, query, headers, payload))
        if not path.startswith(self.PREFIX + "/"):
            return 404, None
        path = path[len(self.PREFIX):]
        if (method, path) == ("GET", "/System/Info/Public"):
            return 200, {"ServerName": "emby-stand-in", "Version": "4.8.10.0", "Id": "e" * 32}
        if (method, path) == ("POST", "/Users/AuthenticateByName"):
            _, fields = parse_authorization(headers.get("X-Emby-Authorization", ""))
            if not all(fields.get(name) for name in ("Client", "Device", "DeviceId", "Version")):
                return 400, None
            if self.users.get(payload.get("Username")) != payload.get("Pw"):
                return 401, None
            token = uuid.uuid4().hex
            with self.lock:
                self.tokens.add(token)
            return 200, {"AccessToken": token, "User": {"Name": payload["Username"]}}
        with self.lock:
            if headers.get("X-Emby-Token") not in self.tokens:
                return 401, None
        routes: dict[tuple[str, str], tuple[int, Any]] = {
            ("GET", "/System/Info"): (200, {"ServerName": "emby-stand-in", "Version": "4.8.10.0"}),
            ("GET", "/Library/VirtualFolders"): (200, [{
                "Name": "Movies", "Locations": [str(self.root)], "ItemId": "7",  # Emby's ids are numbers
                "CollectionType": "movies", "LibraryOptions": {"EnableRealtimeMonitor": False}}]),
            ("GET", "/ScheduledTasks"): (200, [{"Key": "RefreshLibrary", "Name": "Scan media library",
                                                "State": "Idle", "Id": "6330ee8fb4a957f33981f89aa78b030f",
                                                "Triggers": []}]),
            ("GET", "/Items"): (200, {  # the loss guard's question: which media items the library holds
                "Items": [{"Id": str(100 + index), "Type": "Movie", "Path": str(path)}
                          for index, path in enumerate(sorted(self.root.rglob("*.mkv")))],
                "TotalRecordCount": len(list(self.root.rglob("*.mkv"))), "StartIndex": 0}),
            ("POST", "/Library/Refresh"): (200, None),
            ("POST", "/Items/7/Refresh"): (200, None),
            ("POST", "/Library/Media/Updated"): (200, None),
        }
        return routes.get((method, path), (404, None))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = stand_in.answer(self.command, self.path, dict(self.headers.items()), body)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))  # an empty 200: Content-Length 0
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def emby_config(tmp_path: Path, emby: EmbyStandIn, **jellyfin: Any) -> Path:
    return daemon_config(tmp_path / "config.toml", url=emby.url, state_dir=tmp_path / "state",
                        jellyfin={"server": "emby", **jellyfin}, refresh={"scope": "library"})


def test_emby_mode_uses_the_emby_prefix_and_token_and_accepts_an_empty_200(tmp_path: Path) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    key = "emby-key-" + uuid.uuid4().hex
    env = child_env(api_key=key, home=tmp_path / "home")
    with EmbyStandIn(key, root) as emby:
        server_scope = daemon_config(tmp_path / "server.toml", url=emby.url, state_dir=tmp_path / "state",
                                    jellyfin={"server": "emby"})
        completed = run_cli("refresh", "--config", server_scope, root, env=env)
        assert completed.returncode == 0, completed
        assert "refresh sent: POST /Library/Refresh" in completed.stdout

        completed = run_cli("refresh", "--config", emby_config(tmp_path, emby), env=env)
        assert completed.returncode == 0, completed
        assert "refresh sent: POST /Items/7/Refresh (library Movies)" in completed.stdout

        doctor = run_cli("doctor", "--config", emby_config(tmp_path, emby), env=env)
        assert doctor.returncode == 0, doctor
        assert doctor.stdout.startswith(f"✓ Emby 4.8.10.0 at {emby.url}"), doctor.stdout
        requests = list(emby.requests)

    assert [(method, path) for method, path, *_ in requests if method == "POST"] == [
        ("POST", "/emby/Library/Refresh"), ("POST", "/emby/Items/7/Refresh")]
    assert all(path.startswith("/emby/") for _, path, *_ in requests)
    for method, path, query, headers, _ in requests:
        assert "Authorization" not in headers, f"{method} {path} carries a Jellyfin Authorization header"
        if path != "/emby/System/Info/Public":
            assert headers.get("X-Emby-Token") == key, f"{method} {path} without X-Emby-Token"
        assert key not in query
    [item_refresh] = [query for method, path, query, *_ in requests if path == "/emby/Items/7/Refresh"]
    assert "metadataRefreshMode=Default" in item_refresh


def test_emby_mode_logs_in_with_x_emby_authorization(tmp_path: Path) -> None:
    root = tmp_path / "movies"
    movie(root, "Old Movie (1999)")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD, encoding="utf-8")
    password_file.chmod(0o600)
    with EmbyStandIn("emby-key-" + uuid.uuid4().hex, root, users={"alice": PASSWORD}) as emby:
        config = emby_config(tmp_path, emby, username="alice", password_file=str(password_file))
        completed = run_cli("refresh", "--config", config, env=child_env(home=tmp_path / "home"), secret=PASSWORD)
        assert completed.returncode == 0, completed
        requests = list(emby.requests)

    [login] = [request for request in requests if request[1] == "/emby/Users/AuthenticateByName"]
    assert login[4] == {"Username": "alice", "Pw": PASSWORD}
    _, fields = parse_authorization(login[3]["X-Emby-Authorization"])
    assert fields["Client"] == "jellyfin-watcher" and all(fields.get(name) for name in ("Device", "DeviceId", "Version"))
    token = json.loads((tmp_path / "state" / "token.json").read_text(encoding="utf-8"))["token"]
    after = requests[requests.index(login) + 1:]
    assert after and all(headers.get("X-Emby-Token") == token for _, _, _, headers, _ in after)
    assert ("POST", "/emby/Items/7/Refresh") in [(method, path) for method, path, *_ in after]


# --- 8. the library list, re-read ----------------------------------------------------------------------


def test_libraries_added_and_removed_in_jellyfin_are_watched_and_dropped(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                        env: dict[str, str]) -> None:
    movies_root, shows_root = tmp_path / "movies", tmp_path / "shows"
    movie(movies_root, "Old Movie (1999)")
    movie(shows_root, "Old Show (2001)")
    movies = Library("Movies", [str(movies_root)])
    jellyfin.libraries = [movies]
    jellyfin.index()
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          jellyfin={"library_interval": 1})
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots: " + re.escape(str(movies_root)), WAIT)

        jellyfin.libraries = [movies, Library("Shows", [str(shows_root)], collection_type="tvshows")]
        jellyfin.index()
        watcher.wait_for_line(re.escape(f"now watching {shows_root} (added to Jellyfin's libraries, library Shows)"),
                              WAIT)
        # The line comes before the watch is set up: wait for the status file to show it.
        wait_until(lambda: any(root["path"] == str(shows_root) and root["watched"]
                               for root in (read_status_file(tmp_path / "state") or {}).get("roots", [])), WAIT)
        movie(shows_root, "New Show (2024)")  # really watched: its change is refreshed
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes under " + re.escape(str(shows_root))
                              + "$", WAIT)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1

        jellyfin.libraries = [movies]
        watcher.wait_for_line(re.escape(f"no longer watching {shows_root} (removed from Jellyfin's libraries)"), WAIT)
        mark = watcher.mark()
        movie(shows_root, "Ignored Show (2025)")  # no longer a library: not a change
        movie(movies_root, "New Movie (2024)")
        watcher.wait_for_line(r"refresh sent: POST /Library/Refresh for \d+ changes under "
                              + re.escape(str(movies_root)) + "$", WAIT, start=mark)
        assert len(jellyfin.wait_for_refreshes(2, WAIT)) == 2
        stop_with_nothing_pending(watcher)
    assert len(jellyfin.refreshes) == 2
    assert_nothing_lost(jellyfin)


# --- configured roots and their libraries -------------------------------------------------------------


@pytest.mark.parametrize("scope", ["library", "path"])
def test_a_root_holding_several_libraries_refreshes_all_of_them(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                env: dict[str, str], scope: str) -> None:
    # One ROOT, /media, over the folders of two libraries: a refresh of its changes must
    # reach both, not just the first library found inside it.
    media = tmp_path / "media"
    movie(media / "movies", "Old Movie (1999)")
    movie(media / "shows", "Old Show (2001)")
    movies, shows = Library("Movies", [str(media / "movies")]), Library("Shows", [str(media / "shows")])
    jellyfin.libraries = [movies, shows]
    jellyfin.index()
    config = daemon_config(tmp_path / "config.toml", url=jellyfin.url, state_dir=tmp_path / "state",
                          refresh={"scope": scope})

    completed = run_cli("refresh", "--config", config, media, env=env)

    assert completed.returncode == 0, completed
    assert (f"{media} holds folders of several Jellyfin libraries (Movies, Shows): it can only be refreshed with a "
            "server-wide scan") in completed.stderr
    refreshes = jellyfin.wait_for_refreshes(1, WAIT)
    covered = {refresh.detail[0] for refresh in refreshes if refresh.kind == "item"}
    assert any(refresh.kind == "library" for refresh in refreshes) or covered == {movies.item_id, shows.item_id}, (
        f"not every library under {media} was refreshed: {refreshes}\n{completed.stdout}")
    assert_nothing_lost(jellyfin)
