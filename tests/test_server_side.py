"""Defence on the server's side, end to end: storage as Jellyfin sees it, a backup before removals,
and Jellyfin's start-up clean-up task.

The watcher runs as a real process (``support.WatcherProcess``, ``support.run_cli``) against the
Jellyfin emulator, whose own view of the filesystem (``server_paths``) can differ from the
watcher's and is what its scans, its ``GET /Environment/DirectoryContents`` and its clean-up task
read: so a view that lacks the disk really costs items when a scan runs. Each scenario asserts the
items lost (0) and the requests the watcher sent, in order; each harmful setup has a control that
shows the loss when the check is off. Scenarios with real mounts (a private bind mount standing
for a container's volume, tmpfs, bindfs) need root and are skipped with the reason otherwise.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support import BindFS, TmpfsMount, WatcherProcess, movie, run_cli, wait_until, write_config

from tests.jellyfin.emulator import (
    CLEANUP_TASK_KEY,
    REFRESH_LIBRARY_KEY,
    JellyfinEmulator,
    Library,
)
from watcher import config as watcher_config
from watcher.config import Config, PathMapping
from watcher.core.protections import Protections, backup_due, parse_version
from watcher.core.serverview import (
    Comparison,
    Kind,
    Listing,
    RootView,
    Target,
    Verdict,
    compare,
    targets,
)
from watcher.errors import ConfigError

WAIT = 15.0
"""Deadline, seconds, for anything that is not itself a timing assertion (a held batch is
checked again every 5 s: ``service.SUPPRESSED_RECHECK``)."""
QUIET_PERIOD = 0.5
"""``watch.quiet_period`` of every daemon here, seconds."""
VIEW_TIMEOUT = 1.0
"""``server_view.timeout`` where a test waits for Jellyfin's listing to give up, seconds."""
README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
DAY = 86400.0


# --- helpers ----------------------------------------------------------------------------------


def server_config(tmp_path: Path, jellyfin: JellyfinEmulator, *, path_map: dict[str, Path] | None = None,
                  sections: dict[str, dict[str, object]] | None = None) -> Path:
    """``tmp_path/config.toml``: the emulator's URL, a state directory of its own, short timings,
    roots from Jellyfin's libraries, ``path_map`` (Jellyfin's path → here) and extra ``sections``."""
    return write_config(tmp_path / "config.toml", {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": jellyfin.url},
        "watch": {"quiet_period": QUIET_PERIOD, "max_wait": 60, "probe_timeout": 2, "settle": 0.5,
                  "health_interval": 0.5},
        **(sections or {}),
        "path_map": [{"jellyfin": jellyfin_path, "local": local} for jellyfin_path, local in (path_map or {}).items()],
    })


def aged(*folders: Path) -> None:
    """Make everything in ``folders`` (and the folders themselves) a day old: a library's media
    has been there a while; what a test writes later is new, and counts as in flight."""
    then = time.time() - DAY
    for folder in folders:
        for path in [*folder.rglob("*"), folder]:
            os.utime(path, (then, then), follow_symlinks=False)


def sent(jellyfin: JellyfinEmulator, since: int = 0) -> list[str]:
    """Every request the emulator answered from index ``since`` on, as ``METHOD /path``, with the
    folder asked for after a ``GET /Environment/DirectoryContents``."""
    shown = []
    for request in jellyfin.requests[since:]:
        text = f"{request.method} {request.path}"
        if request.path == "/Environment/DirectoryContents":
            text += " " + request.query["path"][-1]
        shown.append(text)
    return shown


def lost(jellyfin: JellyfinEmulator) -> int:
    """Items a scan deleted, once every scan is over."""
    assert jellyfin.wait_for_scans_idle(WAIT), "Jellyfin's scans did not finish"
    return len(jellyfin.removed)


def api(jellyfin: JellyfinEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    """A request from the test itself (as a person at the Dashboard would make it)."""
    headers = {"Authorization": f'MediaBrowser Token="{jellyfin.api_key}", Client="tests", Version="0"'}
    return requests.request(method, jellyfin.url + path, headers=headers, timeout=WAIT, **kwargs)


def _mount(*arguments: str) -> None:
    completed = subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False, timeout=30)
    if completed.returncode != 0:
        raise RuntimeError(f"mount {' '.join(arguments)} failed: {completed.stderr.strip()}")


@contextlib.contextmanager
def bind(source: Path, target: Path, private: bool = False) -> Iterator[None]:
    """``mount --bind SOURCE TARGET``, and with ``private`` no propagation from the source: a
    Docker volume without ``rslave``, which never sees what the host mounts below it later."""
    _mount("--bind", str(source), str(target))
    try:
        if private:
            _mount("--make-private", str(target))
        yield
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False, timeout=30)


# --- 1. Jellyfin's container sees an empty folder where the host has the disk ------------------


def container_without_the_disk(tmp_path: Path, jellyfin: JellyfinEmulator,
                               stack: contextlib.ExitStack) -> tuple[Path, Path, Path]:
    """The host's media folder with a disk mounted below it (``disk``) after Jellyfin's container
    started with a private volume of the media folder: the container sees ``disk`` empty.

    Jellyfin's library is ``/data``; its items were indexed in an earlier boot, when the container
    saw the disk. Returns (the host's media folder, the disk, the container's view)."""
    host, container = tmp_path / "host" / "media", tmp_path / "container" / "data"
    movie(host / "other", "Old Show (2001)")
    (host / "disk").mkdir()
    container.mkdir(parents=True)
    stack.enter_context(bind(host, container, private=True))  # docker run -v /media:/data (no rslave)
    disk = stack.enter_context(TmpfsMount(host / "disk")).mount_point  # the host mounts the disk later
    for number in range(3):
        movie(disk, f"Film {number}")
    aged(host)
    jellyfin.libraries = [Library("Media", ["/data"])]
    jellyfin.server_paths["/data"] = str(host)  # the earlier boot: the container saw the disk
    assert jellyfin.index() == 4
    jellyfin.server_paths["/data"] = str(container)  # this boot: it does not
    assert list((container / "disk").iterdir()) == []
    return host, disk, container


@pytest.mark.root_only()
def test_a_container_without_rslave_sees_the_disk_empty(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str]) -> None:
    with contextlib.ExitStack() as stack:
        host, disk, container = container_without_the_disk(tmp_path, jellyfin, stack)
        config = server_config(tmp_path, jellyfin, path_map={"/data": host})
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            start = len(jellyfin.requests)
            movie(host / "other", "New Show (2024)")

            held = watcher.wait_for_line(r"WARNING refresh held: ", WAIT)
            assert (f"Jellyfin sees /data/disk empty while this machine sees {disk} with 3 entries: {disk} is a "
                    "mount point here. If Jellyfin runs in a container, its volume lacks rslave propagation (the "
                    "disk was mounted after the container started): add :rslave to the volume and restart the "
                    "container") in held, held
            shown = wait_until(lambda: (out := run_cli("status", "--config", config, env=env)).returncode == 1
                               and "held back: Jellyfin sees /data/disk empty" in out.stdout and out,
                               WAIT, interval=0.2, message="status never showed the batch held back")
            assert shown
            assert jellyfin.refreshes == []

            # The fix: the container is restarted with rslave; it sees the disk now.
            mark = watcher.mark()
            stack.enter_context(bind(disk, container / "disk"))
            watcher.wait_for_line(r"Jellyfin's view of the roots agrees with this machine's again", WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: POST /Library/Refresh", WAIT, start=mark)
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            assert lost(jellyfin) == 0
            assert watcher.terminate(WAIT) == 0
            assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
        assert watcher.count(r"WARNING refresh held: ") == 1  # said once, rechecked quietly
        requests_sent = sent(jellyfin, start)

    check = ["GET /Environment/DirectoryContents /data", "GET /Environment/DirectoryContents /data/disk"]
    then = ["GET /Library/VirtualFolders", "GET /Items", "GET /ScheduledTasks", "POST /Library/Refresh"]
    rounds = (len(requests_sent) - len(then)) // len(check)
    assert rounds >= 2 and requests_sent == check * rounds + then, requests_sent
    assert "/data/other/New Show (2024)/New Show (2024).mkv" in jellyfin.items
    assert jellyfin.removed == []


@pytest.mark.root_only()
def test_control_without_the_check_the_container_loses_the_disk(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                env: dict[str, str]) -> None:
    with contextlib.ExitStack() as stack:
        host, _, _ = container_without_the_disk(tmp_path, jellyfin, stack)
        config = server_config(tmp_path, jellyfin, path_map={"/data": host}, sections={"server_view": {"enabled": False}})
        check = run_cli("check", "--config", config, env=env)
        assert check.returncode == 0 and f"{host}: healthy" in check.stdout, check  # every local check passes
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 0, refresh
        assert lost(jellyfin) == 3  # the three films on the disk


# --- 2. the share is missing on Jellyfin's host only -------------------------------------------


SHARE_CASES = [
    # 10.11 skips a missing library folder, but a bare mount point holding a stray file is scanned;
    # 12.0 no longer protects a library folder it cannot resolve at all.
    pytest.param("10.11.11", "/mnt/nas", id="10.11-stray-file"),
    pytest.param("12.0.0", "/mnt/nas/movies", id="12.0-unresolvable"),
]


def share_missing_on_jellyfins_host(tmp_path: Path, jellyfin: JellyfinEmulator, version: str,
                                    location: str) -> tuple[Path, Path]:
    """A NAS share mounted here at ``nas`` and on Jellyfin's host at ``/mnt/nas`` — except that on
    Jellyfin's host it did not mount this time (a bare mount point, with a marker file on 10.11).
    Returns (the share here, the bare mount point on Jellyfin's host)."""
    nas, bare = tmp_path / "nas", tmp_path / "jellyfin-host" / "nas"
    for number in range(3):
        movie(nas / "movies", f"Film {number}")
    bare.mkdir(parents=True)
    if location == "/mnt/nas":
        (bare / "NAS-NOT-MOUNTED").write_text("the share is not mounted\n")
    aged(nas)
    jellyfin.version = version
    jellyfin.libraries = [Library("Movies", [location])]
    jellyfin.server_paths["/mnt/nas"] = str(nas)  # when the share was mounted there
    assert jellyfin.index() == 3
    jellyfin.server_paths["/mnt/nas"] = str(bare)
    return nas, bare


@pytest.mark.parametrize(("version", "location"), SHARE_CASES)
def test_the_share_missing_on_jellyfins_host_only(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str],
                                                  version: str, location: str) -> None:
    nas, _ = share_missing_on_jellyfins_host(tmp_path, jellyfin, version, location)
    here = nas / "movies" if location.endswith("/movies") else nas
    config = server_config(tmp_path, jellyfin, path_map={"/mnt/nas": nas})

    check = run_cli("check", "--config", config, env=env)
    assert check.returncode == 1, check
    [line] = check.stdout.splitlines()
    assert line.startswith(f"{here}: healthy"), line
    if version == "12.0.0":
        expected = (f"Jellyfin sees no folder /mnt/nas/movies while this machine has {here} (3 entries): is the share "
                    f"mounted on Jellyfin's host, and does [[path_map]] map /mnt/nas/movies to {here}?")
    else:
        expected = (f"Jellyfin's /mnt/nas and this machine's {here} have no entry in common (Jellyfin: NAS-NOT-MOUNTED; "
                    f"here: movies): not the same folder. Is the share mounted on Jellyfin's host, and does "
                    f"[[path_map]] map /mnt/nas to {here}?")
    assert f"Jellyfin sees {location}: " in line and f"held ({expected})" in line, line

    start = len(jellyfin.requests)
    refresh = run_cli("refresh", "--config", config, env=env)
    assert refresh.returncode == 1, refresh
    assert refresh.stdout == f"refresh held: {expected}\n", refresh.stdout
    assert sent(jellyfin, start) == ["GET /Library/VirtualFolders", f"GET /Environment/DirectoryContents {location}"]
    assert jellyfin.refreshes == [] and lost(jellyfin) == 0

    # The share mounts on Jellyfin's host: the refresh goes through, nothing is lost.
    jellyfin.server_paths["/mnt/nas"] = str(nas)
    start = len(jellyfin.requests)
    refresh = run_cli("refresh", "--config", config, env=env)
    assert refresh.returncode == 0, refresh
    assert sent(jellyfin, start) == ["GET /Library/VirtualFolders", f"GET /Environment/DirectoryContents {location}",
                                     "GET /Library/VirtualFolders", "GET /Items", "GET /ScheduledTasks",
                                     "POST /Library/Refresh"]
    assert lost(jellyfin) == 0 and len(jellyfin.items) == 3


@pytest.mark.parametrize(("version", "location"), SHARE_CASES)
def test_control_without_the_check_the_missing_share_loses_its_items(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str], version: str, location: str) -> None:
    nas, _ = share_missing_on_jellyfins_host(tmp_path, jellyfin, version, location)
    config = server_config(tmp_path, jellyfin, path_map={"/mnt/nas": nas}, sections={"server_view": {"enabled": False}})
    refresh = run_cli("refresh", "--config", config, env=env)
    assert refresh.returncode == 0, refresh
    assert lost(jellyfin) == 3


@pytest.mark.root_only("bindfs")
def test_jellyfin_stuck_on_a_hung_mount_holds_as_unresponsive(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                              env: dict[str, str]) -> None:
    # Jellyfin's host reads the share through a FUSE mount that hangs; this machine's copy answers.
    nas = tmp_path / "nas"
    for number in range(3):
        movie(nas / "movies", f"Film {number}")
    jellyfin.libraries = [Library("Movies", ["/mnt/nas/movies"])]
    jellyfin.server_paths["/mnt/nas"] = str(nas)
    assert jellyfin.index() == 3
    config = server_config(tmp_path, jellyfin, path_map={"/mnt/nas": nas},
                          sections={"server_view": {"timeout": VIEW_TIMEOUT}})
    with BindFS(nas, tmp_path / "jellyfin-host" / "nas") as hung:
        jellyfin.server_paths["/mnt/nas"] = str(hung.mount_point)
        hung.stop()
        start = len(jellyfin.requests)
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 1, refresh
        assert refresh.stdout == (
            f"refresh held: Jellyfin did not list /mnt/nas/movies within {VIEW_TIMEOUT:g} s while this machine lists "
            f"{nas / 'movies'} (3 entries): is Jellyfin itself stuck on a hung mount? Check the share on Jellyfin's "
            "host\n"), refresh.stdout
        hung.resume()  # the emulator's request thread, stuck in the kernel, ends now
        assert wait_until(lambda: len(jellyfin.requests) > start + 1, WAIT)
    assert sent(jellyfin, start) == ["GET /Library/VirtualFolders", "GET /Environment/DirectoryContents /mnt/nas/movies"]
    assert jellyfin.refreshes == [] and lost(jellyfin) == 0


# --- 3. a backup before a removal ----------------------------------------------------------------


def films(folder: Path, count: int) -> list[Path]:
    return [movie(folder, f"Film {number:03d}") for number in range(count)]


def delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink()
        path.parent.rmdir()


def test_a_confirmed_removal_is_backed_up_before_the_refresh(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                             env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = films(library, 100)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    config = server_config(tmp_path, jellyfin)
    delete(files[:60])  # a deliberate clean-up

    refused = run_cli("refresh", "--config", config, env=env)
    assert refused.returncode == 1 and "jellyfin-watcher refresh --allow-removals 60" in refused.stdout, refused
    assert jellyfin.backups == [] and jellyfin.refreshes == []

    start = len(jellyfin.requests)
    confirmed = run_cli("refresh", "--allow-removals", "60", "--config", config, env=env)
    assert confirmed.returncode == 0, confirmed
    [backup] = jellyfin.backups
    assert re.fullmatch(r"jellyfin-backup-\d{14}\.zip", backup.file_name)
    assert confirmed.stdout.splitlines()[-2:] == [
        f"backup written before removing 60 items: {backup.file_name} (database; Jellyfin 10.11.11)",
        "refresh sent: POST /Library/Refresh"]
    requests_sent = sent(jellyfin, start)
    assert requests_sent == [
        "GET /Library/VirtualFolders", "GET /Environment/DirectoryContents " + str(library),
        "GET /Library/VirtualFolders", "GET /Items",
        "GET /System/Info/Public", "POST /Backup/Create",
        "GET /ScheduledTasks", "POST /Library/Refresh"], requests_sent
    [create] = [request for request in jellyfin.requests if request.path == "/Backup/Create"]
    assert create.json == {"Database": True, "Metadata": False, "Trickplay": False, "Subtitles": False}
    assert api(jellyfin, "GET", "/Backup").json()[0]["Path"].endswith(backup.file_name)  # listed by Jellyfin

    # The 60 items are gone from Jellyfin, as confirmed, and every one of them is in the backup.
    assert lost(jellyfin) == 60
    removed = {item.path for item in jellyfin.removed}
    assert removed == {str(path) for path in files[:60]}
    assert removed - set(backup.items) == set()  # items lost: 0
    # Restoring it (what the README says to do) brings them back.
    assert api(jellyfin, "POST", "/Backup/Restore", json={"ArchiveFileName": backup.file_name}).status_code == 204
    assert set(jellyfin.items) == set(backup.items) and len(jellyfin.items) == 100


def test_a_removal_below_the_guard_is_backed_up_and_shown_in_status(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                   env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = films(library, 100)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    config = server_config(tmp_path, jellyfin, sections={"backup": {"min_removals": 10, "metadata": True}})
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        start = len(jellyfin.requests)
        watcher.send_signal(signal.SIGSTOP)  # one batch: the daemon sees every deletion at once
        try:
            delete(files[:12])  # 12 of 100: below the guard's 20 items, at least backup.min_removals
        finally:
            watcher.send_signal(signal.SIGCONT)
        line = watcher.wait_for_line(r"backup written before removing \d+ items", WAIT)
        [backup] = jellyfin.backups
        assert line.endswith(f"backup written before removing 12 items: {backup.file_name} "
                             "(database, metadata; Jellyfin 10.11.11)"), line
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        shown = wait_until(lambda: (out := run_cli("status", "--config", config, env=env)).returncode == 0
                           and "last backup: " in out.stdout and out.stdout, WAIT, interval=0.2)
        assert f"last backup: {backup.file_name} (database, metadata) at " in shown
        assert "before removing 12 items" in shown
        assert watcher.terminate(WAIT) == 0
    assert sent(jellyfin, start) == [
        f"GET /Environment/DirectoryContents {library}", "GET /Library/VirtualFolders", "GET /Items",
        "GET /System/Info/Public", "POST /Backup/Create", "GET /ScheduledTasks", "POST /Library/Refresh"]
    assert lost(jellyfin) == 12 and {item.path for item in jellyfin.removed} <= set(backup.items)


def test_a_failed_backup_holds_the_refresh(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = films(library, 30)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 30
    jellyfin.backup_free_bytes = 2**30  # 1 GiB free: Jellyfin wants 5
    config = server_config(tmp_path, jellyfin)
    delete(files[:5])

    held = run_cli("refresh", "--allow-removals", "5", "--config", config, env=env)
    assert held.returncode == 1, held
    assert held.stdout.splitlines()[-1] == (
        "refresh held: the backup before removing 5 items failed: Jellyfin answered HTTP 500 to POST /Backup/Create "
        "(backup.hold_on_failure = false refreshes without one)")
    assert jellyfin.refreshes == [] and lost(jellyfin) == 0

    config = server_config(tmp_path, jellyfin, sections={"backup": {"hold_on_failure": False}})
    went = run_cli("refresh", "--allow-removals", "5", "--config", config, env=env)
    assert went.returncode == 0, went
    assert "backup before removing 5 items failed: Jellyfin answered HTTP 500 to POST /Backup/Create; refreshing " \
           "without one (backup.hold_on_failure = false)" in went.stdout
    assert lost(jellyfin) == 5


def test_an_older_server_refreshes_without_a_backup(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                    env: dict[str, str]) -> None:
    jellyfin.version = "10.10.7"
    library = tmp_path / "movies"
    files = films(library, 30)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 30
    config = server_config(tmp_path, jellyfin)
    delete(files[:5])
    start = len(jellyfin.requests)
    went = run_cli("refresh", "--allow-removals", "5", "--config", config, env=env)
    assert went.returncode == 0, went
    assert "no backup before removing 5 items: Jellyfin 10.10.7 has no backups (10.11 or later); the loss guard " \
           "alone applies" in went.stdout
    assert "/Backup/Create" not in " ".join(sent(jellyfin, start))
    assert lost(jellyfin) == 5


# --- 4. doctor and Jellyfin's start-up clean-up ---------------------------------------------------


def test_doctor_fix_removes_the_startup_clean_up_trigger(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                         env: dict[str, str]) -> None:
    nas = tmp_path / "nas"
    movie(nas / "movies", "Film 0")
    jellyfin.libraries = [Library("Movies", ["/mnt/nas/movies"])]
    jellyfin.server_paths["/mnt/nas"] = str(nas)
    jellyfin.index()
    jellyfin.cleanup_task = True
    collection = ["/mnt/nas/movies/Film 0/Film 0.mkv"]
    jellyfin.collections["Favourites"] = list(collection)
    jellyfin.playlists["Tonight"] = list(collection)
    for library in jellyfin.libraries:
        library.realtime_monitor = False
    scan = next(task for task in api(jellyfin, "GET", "/ScheduledTasks").json() if task["Key"] == REFRESH_LIBRARY_KEY)
    assert api(jellyfin, "POST", f"/ScheduledTasks/{scan['Id']}/Triggers", json=[]).status_code == 204
    config = server_config(tmp_path, jellyfin, path_map={"/mnt/nas": nas})

    before = run_cli("doctor", "--config", config, env=env)
    assert before.returncode == 1, before
    assert ('! the "Clean up collections and playlists" task runs at every start of Jellyfin and drops collection '
            "and playlist entries whose files are missing at that moment: a share mounted after Jellyfin starts "
            "empties them. Fix: Dashboard → Scheduled Tasks → Clean up collections and playlists → delete its "
            "start-up trigger (or jellyfin-watcher doctor --fix)") in before.stdout.splitlines(), before.stdout
    assert "✓ Jellyfin 10.11.11 itself skips an empty or inaccessible library folder" in before.stdout

    cleanup_id = next(task["Id"] for task in api(jellyfin, "GET", "/ScheduledTasks").json()
                      if task["Key"] == CLEANUP_TASK_KEY)
    start = len(jellyfin.requests)
    fixed = run_cli("doctor", "--fix", "--config", config, env=env)
    assert fixed.returncode == 0, fixed
    assert 'changed: "Clean up collections and playlists" task: removed its start-up trigger' in fixed.stdout
    assert fixed.stdout.splitlines()[-1] == "all good"
    assert sent(jellyfin, start) == [
        "GET /System/Info/Public", "GET /System/Info", "GET /Library/VirtualFolders", "GET /ScheduledTasks",
        "GET /Backup", "GET /ScheduledTasks", f"POST /ScheduledTasks/{cleanup_id}/Triggers"]
    [change] = [request for request in jellyfin.requests[start:] if request.method == "POST"]
    assert change.json == []  # its only trigger was the start-up one

    # Jellyfin restarts while the NAS is not mounted yet on its host: nothing is dropped.
    (tmp_path / "booting").mkdir()
    jellyfin.server_paths["/mnt/nas"] = str(tmp_path / "booting")
    assert jellyfin.restart() == []
    assert jellyfin.removed_links == []  # items lost: 0
    assert jellyfin.collections == {"Favourites": collection} and jellyfin.playlists == {"Tonight": collection}


@pytest.mark.parametrize(("version", "line"), [
    ("10.8.13", "! Jellyfin 10.8.13 is older than 10.9: it has no top-level folder guard at all"),
    ("10.10.7", "- backups are unavailable on this Jellyfin (10.11 or later): the loss guard works as before"),
    ("12.0.0", "✓ no \"Clean up collections and playlists\" task (Jellyfin 12.0 removed it)"),
])
def test_doctor_says_which_protections_apply(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str],
                                             version: str, line: str) -> None:
    jellyfin.version = version
    library = tmp_path / "movies"
    films(library, 1)
    jellyfin.libraries = [Library("Movies", [str(library)])]
    doctor = run_cli("doctor", "--config", server_config(tmp_path, jellyfin), env=env)
    assert any(shown.startswith(line) for shown in doctor.stdout.splitlines()), doctor.stdout
    exposed = next(shown for shown in doctor.stdout.splitlines() if shown.startswith(f"- on Jellyfin {version}"))
    assert "nothing protects a disk or share mounted below a library folder" in exposed
    if version == "12.0.0":
        assert "a library folder that does not exist at all may lose its items" in exposed
    assert ("GET /Backup" in sent(jellyfin)) == (version == "12.0.0")


# --- the rules, as tables -------------------------------------------------------------------------


def listed(*names: str, recent: tuple[str, ...] = ()) -> Listing:
    return Listing(Kind.LISTED, frozenset(names), frozenset(recent))


ROOT = Target("/mnt/media/movies", "/data/movies", "/mnt/media/movies")
UNMAPPED = Target("/srv/movies", "/srv/movies", "/srv/movies")
DISK = Target("/mnt/media/disk", "/data/disk", "/mnt/media", mount_point=True)


@pytest.mark.parametrize(("target", "server", "local", "changed", "verdict", "text"), [
    (ROOT, listed("a", "b"), listed("a", "b"), (), Verdict.AGREE, ""),
    (ROOT, listed("a"), listed("a", "b", recent=("b",)), (), Verdict.AGREE, "1 in flight"),
    (ROOT, listed("a"), listed("a", "b"), ("/mnt/media/movies/b/extras",), Verdict.AGREE, "1 in flight"),
    (ROOT, listed("a", "b", "c"), listed("a"), (), Verdict.AGREE, "Jellyfin sees 2 more"),
    (ROOT, listed(".hidden", "@eaDir"), listed("a", ".hidden"), (), Verdict.HOLD, (
     "Jellyfin sees /data/movies empty while this machine sees /mnt/media/movies with 1 entry: is the share "
     "mounted on Jellyfin's host, and does [[path_map]] map /data/movies to /mnt/media/movies?")),
    (DISK, listed(), listed("a", "b"), (), Verdict.HOLD, (
     "Jellyfin sees /data/disk empty while this machine sees /mnt/media/disk with 2 entries: /mnt/media/disk is a "
     "mount point here. If Jellyfin runs in a container, its volume lacks rslave propagation")),
    (ROOT, Listing(Kind.MISSING), listed("a"), (), Verdict.HOLD, (
     "Jellyfin sees no folder /data/movies while this machine has /mnt/media/movies (1 entry)")),
    (UNMAPPED, Listing(Kind.MISSING), listed("a"), (), Verdict.HOLD, (
     "If Jellyfin runs in a container or on another host, give it a volume for /srv, or map its path with [[path_map]]")),
    (ROOT, listed("x", "y"), listed("a", "b"), (), Verdict.HOLD, (
     "Jellyfin's /data/movies and this machine's /mnt/media/movies have no entry in common (Jellyfin: x, y; here: a, "
     "b): not the same folder")),
    (ROOT, listed("a", "b"), listed("a", "b", "c", "d", "e", "f"), (), Verdict.HOLD, (
     "Jellyfin does not see 4 of the 6 entries this machine has in /mnt/media/movies (c, d, e and 1 more)")),
    (ROOT, Listing(Kind.UNRESPONSIVE, detail="15 s"), listed("a"), (), Verdict.UNRESPONSIVE, (
     "Jellyfin did not list /data/movies within 15 s while this machine lists /mnt/media/movies (1 entry)")),
    (ROOT, Listing(Kind.FAILED, detail="HTTP 500"), listed("a"), (), Verdict.HOLD, (
     "Jellyfin cannot list /data/movies (HTTP 500) while this machine lists /mnt/media/movies (1 entry)")),
    (DISK, listed(), Listing(Kind.UNRESPONSIVE, detail="15 s"), (), Verdict.UNRESPONSIVE,
     "this machine did not list /mnt/media/disk within 15 s: a hung mount here?"),
    (ROOT, listed("a"), Listing(Kind.MISSING), (), Verdict.NOT_COMPARED, ""),
    (ROOT, Listing(Kind.NOT_ASKED), listed("a"), (), Verdict.NOT_COMPARED, ""),
])
def test_compare(target: Target, server: Listing, local: Listing, changed: tuple[str, ...], verdict: Verdict,
                 text: str) -> None:
    result = compare(target, server, local, changed, ignored=lambda name: name.startswith((".", "@")))
    assert result.verdict is verdict
    assert text in (result.reason if verdict in (Verdict.HOLD, Verdict.UNRESPONSIVE) else result.note)
    assert result.holds == (verdict in (Verdict.HOLD, Verdict.UNRESPONSIVE))


def test_an_ungated_root_is_reported_but_never_holds() -> None:
    target = Target("/srv/movies", "/srv/movies", "/srv/movies", gated=False)
    result = compare(target, listed(), listed("a"))
    assert result.verdict is Verdict.HOLD and not result.holds


def test_targets_are_each_root_then_the_mount_points_below_it() -> None:
    views = [RootView("/mnt/media", "/", ("/mnt/media/disk1", "/mnt/media/disk2")),
             RootView("/mnt/usb", "/mnt/usb", (), gated=False)]
    found = targets(views, Config(path_map=(PathMapping("/data", "/mnt/media"),)).jellyfin_path)
    assert [(target.local, target.jellyfin, target.mount_point, target.gated) for target in found] == [
        ("/mnt/media", "/data", False, True), ("/mnt/media/disk1", "/data/disk1", True, True),
        ("/mnt/media/disk2", "/data/disk2", True, True), ("/mnt/usb", "/mnt/usb", True, False)]


def test_describe_names_both_views() -> None:
    agree = compare(ROOT, listed("a", "b"), listed("a", "b"))
    assert agree.describe() == "Jellyfin sees /data/movies: 2 entries, as here"
    held = compare(DISK, listed(), listed("a"))
    assert held.describe().startswith("Jellyfin sees /data/disk: empty; here 1 entry: held (Jellyfin sees")
    assert isinstance(held, Comparison)


@pytest.mark.parametrize(("version", "parsed", "guard", "backups", "cleanup", "kept"), [
    ("10.8.13", (10, 8, 13), False, False, False, False),
    ("10.9.0", (10, 9, 0), True, False, True, False),
    ("10.11.11", (10, 11, 11), True, True, True, False),
    ("12.0.0-rc3", (12, 0, 0), True, True, False, True),
])
def test_protections_by_version(version: str, parsed: tuple[int, ...], guard: bool, backups: bool, cleanup: bool,
                                kept: bool) -> None:
    assert parse_version(version) == parsed
    protections = Protections(parsed)
    assert (protections.top_level_guard, protections.backups, protections.startup_cleanup,
            protections.failed_listing_kept) == (guard, backups, cleanup, kept)
    assert protections.unresolvable_location_kept == (guard and not kept)


@pytest.mark.parametrize(("predicted", "allowed", "minimum", "due"), [
    (0, 0, 10, False), (9, 0, 10, False), (10, 0, 10, True), (0, 5, 10, True), (0, 0, 0, False), (1, 0, 0, True)])
def test_backup_due(predicted: int, allowed: int, minimum: int, due: bool) -> None:
    assert backup_due(predicted, allowed, minimum) is due


# --- configuration and documentation -----------------------------------------------------------


def test_configuration_keys(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[server_view]\nenabled = false\ntimeout = 3\nin_flight = 0\n'
                    '[backup]\nmin_removals = 1\ntimeout = 60\nhold_on_failure = false\nmetadata = true\n')
    loaded = watcher_config.load(file, {}, {})
    assert (loaded.server_view.enabled, loaded.server_view.timeout, loaded.server_view.in_flight) == (False, 3.0, 0.0)
    assert (loaded.backup.min_removals, loaded.backup.timeout, loaded.backup.hold_on_failure) == (1, 60.0, False)
    assert loaded.backup.contents == ("database", "metadata")
    assert watcher_config.load(None, {}, {}).server_view.enabled is True
    file.write_text('[jellyfin]\nserver = "emby"\n')
    assert watcher_config.load(file, {}, {}).server_view.enabled is False  # Emby: off unless asked for
    file.write_text("[backup]\ndatabase = false\n")
    with pytest.raises(ConfigError, match=r"backup: every part is false"):
        watcher_config.load(file, {}, {})
    file.write_text("[server_view]\ntimout = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key server_view.timout \(did you mean server_view.timeout\?\)"):
        watcher_config.load(file, {}, {})


def test_readme_documents_the_keys_and_names_the_tests() -> None:
    known = watcher_config.known_keys()
    for key in [*(f"server_view.{key}" for key in known["server_view"]), *(f"backup.{key}" for key in known["backup"])]:
        assert f"| `{key}` |" in README, key
    for test in ("test_a_container_without_rslave_sees_the_disk_empty", "test_the_share_missing_on_jellyfins_host_only",
                 "test_a_confirmed_removal_is_backed_up_before_the_refresh",
                 "test_doctor_fix_removes_the_startup_clean_up_trigger",
                 "test_jellyfin_stuck_on_a_hung_mount_holds_as_unresponsive"):
        assert test in README, test
