"""Polling: :class:`watcher.poll.RootPoller` on real folders, and the daemon polling a FUSE
share whose changes inotify cannot see.

Unit tests call ``RootPoller.cycle()`` directly (each cycle runs a real ``python -I -S``
child, as in the daemon). The end-to-end tests run ``jellyfin-watcher run`` on a
``bindfs -f SOURCE MOUNT`` mount with ``watch.network_fstypes = ["fuse"]``: files written
into SOURCE are changes made "on the server" — like another client of an NFS share, they
reach the mount without a single inotify event on it — so only polling finds them. The
FUSE daemon can be SIGSTOPped to make the share hang (every access then blocks, as on a hung NFS server).

Nothing sleeps for correctness. Waits are on conditions with a deadline; the one negative
window (no refresh while the share is unmounted) opens when the daemon has stopped polling it
and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from queue import SimpleQueue

import pytest
from support import (
    MKV,
    STOP_WITHIN,
    BindFS,
    WatcherProcess,
    children_of,
    cmdlines,
    finish,
    hung_child,
    movie,
    read_status_file,
    stop,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher.config import DEFAULT_IGNORE
from watcher.core.filters import IgnoreFilter
from watcher.core.messages import PollResult
from watcher.edges.poll import RootPoller

TIMEOUT = 30.0
"""Deadline (seconds) of a unit test's polling cycle: generous, never reached."""
IGNORE = IgnoreFilter(DEFAULT_IGNORE).regex
"""The daemon's default ignore list, as the poller gets it."""

POLL = 1.0
"""``watch.poll_interval`` of the end-to-end daemons, seconds."""
QUIET = 2.5
"""``watch.quiet_period``, seconds. Longer than the poll interval plus a cycle: a burst that
straddles two polling cycles is still one batch."""
PROBE_TIMEOUT = 1.0
WAIT = 15.0
"""Deadline, seconds, for what is not itself a timing assertion (a loaded 2-core machine)."""


# --- unit: RootPoller.cycle on real folders -----------------------------------------------------


def age(root: Path, seconds: float = 60.0) -> None:
    """Set every folder's mtime ``seconds`` into the past: a change made now gives its
    folder a new mtime even on a filesystem with a coarse clock."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def poller(root: Path) -> RootPoller:
    results: SimpleQueue[object] = SimpleQueue()
    return RootPoller(root, interval=3600, timeout=TIMEOUT, ignore_regex=IGNORE, put=results.put)


def changed(result: PollResult) -> set[str]:
    assert not result.failed, result.failed
    assert not result.first
    return set(result.changed)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """``movies/`` with three films in folders of their own, mtimes in the past."""
    root = tmp_path / "movies"
    for title in ("Alpha (2001)", "Beta (2002)", "Gamma (2003)"):
        movie(root, title)
    age(root)
    return root


def test_first_cycle_is_the_baseline(library: Path) -> None:
    polling = poller(library)
    result = polling.cycle()
    assert result == PollResult(str(library), first=True, directories=4)
    assert polling.directories == 4
    assert changed(polling.cycle()) == set()  # nothing happened since


def test_a_new_file_changes_its_folder(library: Path) -> None:
    polling = poller(library)
    polling.cycle()
    (library / "Beta (2002)" / "Beta (2002) - extra.mkv").write_bytes(MKV)
    assert changed(polling.cycle()) == {str(library / "Beta (2002)")}
    assert changed(polling.cycle()) == set()  # reported once


def test_renamed_and_deleted_files_change_their_folder(library: Path) -> None:
    polling = poller(library)
    polling.cycle()
    (library / "Alpha (2001)" / "Alpha (2001).mkv").rename(library / "Alpha (2001)" / "Alpha.mkv")
    (library / "Gamma (2003)" / "Gamma (2003).mkv").unlink()
    assert changed(polling.cycle()) == {str(library / "Alpha (2001)"), str(library / "Gamma (2003)")}


def test_what_jellyfin_writes_is_noise(library: Path) -> None:
    folder = library / "Alpha (2001)"
    polling = poller(library)
    polling.cycle()
    before = folder.stat().st_mtime_ns
    for name in ("Alpha (2001).nfo", "poster.jpg", "fanart.jpg", "Alpha (2001)-thumb.jpg", "movie.nfo.part"):
        (folder / name).write_bytes(b"<movie/>")
    (folder / "Alpha (2001).trickplay").mkdir()
    assert folder.stat().st_mtime_ns != before  # the folder did change on disk...
    assert changed(polling.cycle()) == set()  # ...but nothing Jellyfin cares about
    assert polling.directories == 4  # the ignored .trickplay folder is not followed
    (folder / "Alpha (2001).en.srt").write_bytes(b"1\n")  # a subtitle is not noise
    assert changed(polling.cycle()) == {str(folder)}


def test_a_new_folder_is_walked(library: Path) -> None:
    polling = poller(library)
    polling.cycle()
    season = library / "New Show" / "Season 01"
    season.mkdir(parents=True)
    for episode in range(1, 4):
        (season / f"New Show S01E0{episode}.mkv").write_bytes(MKV)
    assert changed(polling.cycle()) == {str(library), str(library / "New Show"), str(season)}
    assert polling.directories == 6
    (season / "New Show S01E04.mkv").write_bytes(MKV)  # the new folders are known now
    assert changed(polling.cycle()) == {str(season)}


def test_a_deleted_folder_is_reported(library: Path) -> None:
    (library / "Beta (2002)" / "Extras").mkdir()
    age(library)
    polling = poller(library)
    polling.cycle()
    assert polling.directories == 5
    shutil.rmtree(library / "Beta (2002)")
    assert changed(polling.cycle()) == {str(library), str(library / "Beta (2002)"), str(library / "Beta (2002)" / "Extras")}
    assert polling.directories == 3
    assert changed(polling.cycle()) == set()


def test_a_gone_root_is_a_failed_cycle_not_a_flood_of_deletions(library: Path, tmp_path: Path) -> None:
    polling = poller(library)
    polling.cycle()
    library.rename(tmp_path / "elsewhere")
    result = polling.cycle()
    assert result.failed == "the root is gone"
    assert result.changed == ()
    assert polling.directories == 4  # what it knew is kept for when the root is back
    (tmp_path / "elsewhere").rename(library)
    assert changed(polling.cycle()) == set()


def _tree(root: Path, folders: int, files_per_folder: int) -> None:
    for index in range(folders):
        folder = root / f"Show {index:03d}"
        folder.mkdir(parents=True)
        for number in range(files_per_folder):
            (folder / f"Show {index:03d} E{number:04d}.mkv").write_bytes(b"")


def _retained_bytes(root: Path) -> tuple[int, int]:
    """(bytes the poller keeps after its baseline cycle, folders it knows)."""
    polling = poller(root)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        polling.cycle()
        polling.cycle()  # a steady cycle too: nothing accumulates per file
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return retained, polling.directories


def test_memory_grows_with_folders_not_files(tmp_path: Path) -> None:
    few, few_folders = _retained_bytes(_made(tmp_path / "few", 100, 1))
    many, many_folders = _retained_bytes(_made(tmp_path / "many", 100, 200))
    assert few_folders == many_folders == 101
    # 200 times the files, the same folders: the same state (allocator noise aside).
    assert many < few * 1.5 + 16_384, f"{few} bytes for 100 files, {many} bytes for 20,000 files"
    assert many < 1024 * many_folders, f"{many / many_folders:.0f} bytes per folder"


def _made(root: Path, folders: int, files_per_folder: int) -> Path:
    _tree(root, folders, files_per_folder)
    return root


# --- end to end: the daemon polls a FUSE share -----------------------------------------------


def poll_config(path: Path, url: str, root: Path, state_dir: Path, quiet: float = QUIET) -> Path:
    """The daemon's configuration: ``root`` on a FUSE mount, polled (``network_fstypes``)."""
    return write_config(path, {
        "state_dir": state_dir,
        "jellyfin": {"url": url},
        "watch": {"quiet_period": quiet, "max_wait": 60, "settle": 1, "health_interval": 1,
                  "probe_timeout": PROBE_TIMEOUT, "poll_interval": POLL, "network_fstypes": ["fuse"]},
        "roots": [{"path": root}],
    })


def polled_directories(state_dir: Path, root: Path) -> int | None:
    """``watched_directories`` of ``root`` in the daemon's status file, when it polls it."""
    for entry in (read_status_file(state_dir) or {}).get("roots", []):
        if entry.get("path") == str(root) and entry.get("mode") == "poll":
            return entry.get("watched_directories")  # type: ignore[no-any-return]
    return None


def start_polling(watcher: WatcherProcess, state_dir: Path, root: Path, folders: int) -> None:
    """Wait until the daemon polls ``root`` and its first cycle has taken the baseline (a
    change made before that would be part of the baseline, not a change)."""
    line = watcher.wait_for_line(re.escape(f"polling {root} every {POLL:g} s: "), WAIT)
    assert "fuse is a network filesystem, inotify cannot see changes made on the server" in line
    watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
    wait_until(lambda: polled_directories(state_dir, root) == folders, WAIT,
               message=f"the first polling cycle did not finish:\n{watcher.output}")


@pytest.fixture
def share(tmp_path: Path) -> Iterator[BindFS]:
    """``source/`` (the server's side, two films) FUSE-mounted on ``share/``."""
    source = tmp_path / "source"
    movie(source, "Seed One (2000)")
    movie(source, "Seed Two (2001)")
    with BindFS(source, tmp_path / "share") as fuse:
        yield fuse


@pytest.mark.root_only("bindfs", "fusermount")
def test_inotify_does_not_see_writes_behind_a_fuse_mount(share: BindFS) -> None:
    """The premise: like another client's writes to an NFS share, a file written into the
    source reaches the mount without an inotify event on the mount."""
    from watcher.core.messages import FileEvent
    from watcher.edges.watch import RootWatcher

    events: SimpleQueue[object] = SimpleQueue()
    with RootWatcher(events.put) as watcher:
        assert watcher.watch(share.mount_point) is None
        movie(share.source, "Behind The Mount (2024)")
        assert (share.mount_point / "Behind The Mount (2024)" / "Behind The Mount (2024).mkv").exists()
        # A negative whose window closes on a condition, not a clock: inotify delivers events
        # in order, so an event of the write behind the mount would come before any event of
        # the control written through the mount after it.
        movie(share.mount_point, "Through The Mount (2024)")  # control: this one is seen
        item = events.get(timeout=WAIT)
        assert isinstance(item, FileEvent) and "Through The Mount" in item.path, \
            f"an event before the control's: {item!r}"


@pytest.mark.root_only("bindfs", "fusermount")
def test_a_file_written_behind_the_mount_is_refreshed_within_a_poll_interval(
        tmp_path: Path, share: BindFS, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = share.mount_point
    jellyfin.libraries = [Library("Movies", [str(share.source)])]  # Jellyfin reads the server's side
    assert jellyfin.index() == 2
    state_dir = tmp_path / "state"
    config = poll_config(tmp_path / "config.toml", jellyfin.url, root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, root, folders=3)
        made = movie(share.source, "New On The Server (2024)")
        written = time.monotonic()
        refreshes = jellyfin.wait_for_refreshes(1, WAIT)
        assert refreshes, f"no refresh:\n{watcher.output}"
        took = refreshes[0].time - written
        print(f"\n[poll] file written behind the mount → refresh request {took:.2f} s "
              f"(poll interval {POLL:g} s + quiet period {QUIET:g} s)")
        assert took <= POLL + QUIET + 2.0, f"{took:.2f} s:\n{watcher.output}"  # + probes and requests, on a busy machine
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1, WAIT)
    assert str(made) in jellyfin.items


@pytest.mark.root_only("bindfs", "fusermount")
def test_a_burst_behind_the_mount_is_one_refresh(tmp_path: Path, share: BindFS, jellyfin: JellyfinEmulator,
                                                 env: dict[str, str]) -> None:
    root = share.mount_point
    jellyfin.libraries = [Library("Movies", [str(share.source)])]
    assert jellyfin.index() == 2
    state_dir = tmp_path / "state"
    config = poll_config(tmp_path / "config.toml", jellyfin.url, root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, root, folders=3)
        for index in range(40):  # 40 films, each in a folder of its own, and 60 episodes
            movie(share.source, f"Burst {index:02d} (2024)")
        season = share.source / "Burst Show" / "Season 01"
        season.mkdir(parents=True)
        for episode in range(60):
            (season / f"Burst Show S01E{episode:02d}.mkv").write_bytes(MKV)
        watcher.wait_for_line(r"refresh sent: ", WAIT + QUIET)
        finish(watcher, jellyfin, 1, WAIT)  # the last line proves nothing more was pending
    assert len(jellyfin.items) == 2 + 40 + 60


@pytest.mark.root_only("bindfs", "fusermount")
def test_a_hung_share_is_unresponsive_and_does_not_hang_the_watcher(
        tmp_path: Path, share: BindFS, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = share.mount_point
    # Jellyfin reads the server's side: nothing in this process touches the mount while it hangs.
    jellyfin.libraries = [Library("Movies", [str(share.source)])]
    assert jellyfin.index() == 2
    state_dir = tmp_path / "state"
    config = poll_config(tmp_path / "config.toml", jellyfin.url, root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, root, folders=3)
        share.stop()  # SIGSTOP the FUSE daemon: every access to the mount now hangs
        hung_at = time.monotonic()
        arrived, line = watcher.wait_for_timed_line(re.escape(f"{root} is unresponsive (no answer within"), WAIT)
        print(f"\n[poll] share hung → root marked unresponsive {arrived - hung_at:.2f} s "
              f"(health checks every 1 s, probe timeout {PROBE_TIMEOUT:g} s)")
        assert "WARNING" in line
        movie(share.source, "Written While Hung (2024)")  # the server's side still works
        # A polling cycle runs into the hung mount: its child waits on the stopped FUSE daemon.
        wait_until(lambda: hung_child(watcher.pid, "root_gone"), WAIT,
                   message=f"no polling cycle ran into the hung share:\n{watcher.output}")
        assert watcher.alive()
        took = stop(watcher, STOP_WITHIN, WAIT)
        print(f"[poll] exit on SIGTERM with the share hung: {took:.2f} s")
        assert re.search(r"stopped; (no changes pending|\d+ changes pending under .*)$", watcher.lines[-1]), watcher.output
    assert jellyfin.refreshes == []
    assert jellyfin.removed == []


def polled(watcher: WatcherProcess, state_dir: Path, root: Path) -> bool:
    """Whether the daemon polls ``root``: by its status file, or a polling cycle still running."""
    entries = [entry for entry in (read_status_file(state_dir) or {}).get("roots", []) if entry["path"] == str(root)]
    polling = any(entry["mode"] == "poll" for entry in entries) or not entries
    return polling or any("root_gone" in argv for argv in cmdlines(children_of(watcher.pid)).values())



@pytest.mark.root_only("bindfs", "fusermount")
def test_an_unmounted_share_is_no_refresh_and_no_deletion_storm(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    # Jellyfin's library folder holds the share's mount point and a folder of local films:
    # with the share unmounted it is not empty, so a scan would delete the share's items.
    media = tmp_path / "media"
    movie(media / "local", "Local (1999)")
    source = tmp_path / "source"
    for title in ("Shared One (2000)", "Shared Two (2001)", "Shared Three (2002)"):
        movie(source, title)
    with BindFS(source, media / "share") as fuse:
        root = fuse.mount_point
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 4
        state_dir = tmp_path / "state"
        config = poll_config(tmp_path / "config.toml", jellyfin.url, root, state_dir)
        with WatcherProcess(["--config", config], env) as watcher:
            start_polling(watcher, state_dir, root, folders=4)
            mark = watcher.mark()
            daemon = fuse.process
            fuse.unmount()
            assert daemon is not None
            daemon.wait(WAIT)  # the FUSE daemon ends with its mount; mount() below starts another
            watcher.wait_for_line(re.escape(f"{root} is unmounted ("), WAIT, start=mark)
            # The decision: the daemon stops polling the unmounted root (its status file says
            # so) and no polling cycle of it is left running.
            wait_until(lambda: not polled(watcher, state_dir, root), WAIT,
                       message=f"the daemon still polls the unmounted share:\n{watcher.output}")
            # A deliberate negative window, opened by that decision: for a quiet period plus a
            # poll interval nothing may fall due or be refreshed. A change counted by a cycle
            # that listed the bare mount point (every folder gone) would fall due within it.
            time.sleep(QUIET + POLL)
            assert jellyfin.refreshes == [], watcher.output
            assert watcher.count(r"batch due") == 0, watcher.output
            assert jellyfin.removed == []

            fuse.mount()  # back: watched again after settling, counted as changed, one refresh
            watcher.wait_for_line(re.escape(f"watching {root} again"), WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: ", WAIT + QUIET, start=mark)
            finish(watcher, jellyfin, 1, WAIT)
    assert len(jellyfin.items) == 4


def pending_changes(state_dir: Path) -> int:
    """The pending change count in the daemon's status file (0 when nothing is pending)."""
    return int(((read_status_file(state_dir) or {}).get("pending") or {}).get("changes", 0))


@pytest.mark.root_only("bindfs", "fusermount")
def test_a_copy_spanning_polling_cycles_is_one_refresh(tmp_path: Path, share: BindFS, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str]) -> None:
    # A quiet period shorter than the poll interval: without waiting for a polling cycle that
    # finds nothing new, the first slice of the copy would be refreshed on its own.
    root = share.mount_point
    jellyfin.libraries = [Library("Movies", [str(share.source)])]
    assert jellyfin.index() == 2
    state_dir = tmp_path / "state"
    config = poll_config(tmp_path / "config.toml", jellyfin.url, root, state_dir, quiet=0.2)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, root, folders=3)
        movie(share.source, "Slice One (2024)")
        wait_until(lambda: pending_changes(state_dir) > 0, WAIT, interval=0.02,
                   message=f"no polling cycle saw the first slice:\n{watcher.output}")
        movie(share.source, "Slice Two (2024)")  # the copy goes on into the next cycle
        sent = watcher.wait_for_line(r"refresh sent: ", WAIT)
        # Each slice is one cycle's changes: the root and the new folder. One refresh for both.
        assert re.search(r" for 4 changes under ", sent), f"the refresh did not wait for the copy:\n{watcher.output}"
        finish(watcher, jellyfin, 1, WAIT)
    assert str(share.source / "Slice Two (2024)" / "Slice Two (2024).mkv") in jellyfin.items
