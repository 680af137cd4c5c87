"""What a large library on a busy machine needs, kept as behaviour (the figures themselves are
the benchmark's, ``python -m tests.benchmarks --size large``; nothing here is timed):

* mount-table changes start a probe only when they can concern a root (at or above it,
  its mount point, its pool and branches, or below it): other programs' mounts on a busy
  machine wait for the periodic health check, an unmount of a root is probed at once
  (``tests/test_faults.py`` and the benchmark's ``mount`` rows show it end to end);
* the mount monitor says which mount points changed;
* the verdicts on ignored paths kept from one event to the next agree with the filter, and
  once a root counts as changed as a whole a file still being written holds its batch;
* the fast way a creation, a close and a deletion take from inotify to the queue gives the
  events watchdog's own way gives, moves included;
* a dry-run daemon starts without importing the HTTP client.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from queue import Empty, SimpleQueue

import pytest
from support import REPO, BindFS, TmpfsMount, wait_until
from test_core_machine import CONFIG, MOVIES, QUIET, Daemon, healthy, of

from watcher.config import Root
from watcher.core.health import BranchHealth, Health, State
from watcher.core.machine import Core
from watcher.core.messages import (
    CheckWrites,
    EventsLost,
    FileEvent,
    MountsChanged,
    Probe,
    Probed,
    Send,
    Tick,
)
from watcher.core.state import SavedState
from watcher.edges.verify import watched_inodes
from watcher.edges.watch import MountMonitor, RootWatcher, _subfolders_counted

WAIT = 15.0


# --- which mount-table changes start a probe --------------------------------------------------


@pytest.mark.parametrize(
    ("points", "probed"),
    [
        ({"/srv/docker/overlay2/1f2e/merged"}, False),  # another program's mount
        ({"/media/shows"}, False),  # a sibling folder, not this root
        ({"/media/movies/Extras"}, True),  # a disk mounted inside the library
        ({"/media"}, True),  # the mount point the root lives on
        ({"/"}, True),
        ({"/srv/x", "/media/movies"}, True),  # one of several
        (None, True),  # which ones is not known
    ],
)
def test_a_mount_table_change_starts_a_probe_only_where_it_can_concern_a_root(
    points: set[str] | None, probed: bool
) -> None:
    daemon = Daemon()  # /media/movies, healthy on /media
    actions = daemon.feed(10.0, MountsChanged(None if points is None else frozenset(points)))
    assert bool(of(actions, Probe)) is probed


def test_before_the_first_answer_every_mount_table_change_counts() -> None:
    daemon = Daemon(watch=False)
    first = daemon.one(daemon.log, Probe)
    daemon.feed(0.05, MountsChanged(frozenset({"/srv/unrelated"})))
    # The root's storage is not known yet: the change may be it, so a second probe follows.
    actions = daemon.feed(0.1, Probed(first.started_at, (healthy(MOVIES),)))
    assert of(actions, Probe)


def test_a_root_reached_through_a_symlink_counts_changes_below_its_mount_point() -> None:
    # /media/movies is a symlink to /mnt/usb/movies: its real path is not known here.
    daemon = Daemon(watch=False)
    first = daemon.one(daemon.log, Probe)
    on_usb = Health(MOVIES, State.HEALTHY, mount_point=Path("/mnt/usb"), fstype="ext4", device=1, inode=2,
                    mounts=(("/mnt/usb", 9),))
    daemon.feed(0.1, Probed(first.started_at, (on_usb,)))
    actions = daemon.feed(10.0, MountsChanged(frozenset({"/mnt/usb/movies/Extras"})))
    daemon.probe_answered(10.1, actions, on_usb)
    actions = daemon.feed(11.0, MountsChanged(frozenset({"/mnt"})))  # above its mount point
    daemon.probe_answered(11.1, actions, on_usb)
    assert not of(daemon.feed(20.0, MountsChanged(frozenset({"/srv/unrelated"}))), Probe)


def test_a_pool_branch_going_away_is_probed_at_once() -> None:
    pool_root = Root(Path("/pool/movies"), library_id=MOVIES.library_id, library_name="Movies")
    daemon = Daemon(roots=(pool_root,), watch=False)
    first = daemon.one(daemon.log, Probe)
    branch = BranchHealth("/mnt/disk1", "RW", "/pool", "mergerfs", State.HEALTHY, mount_point="/mnt/disk1",
                          counterpart="/mnt/disk1/movies")
    on_pool = Health(pool_root, State.HEALTHY, mount_point=Path("/pool"), fstype="fuse.mergerfs", device=1, inode=2,
                     mounts=(("/pool", 5),), pool="/pool", branches=(branch,))
    daemon.feed(0.1, Probed(first.started_at, (on_pool,)))
    assert not of(daemon.feed(10.0, MountsChanged(frozenset({"/mnt/disk9"}))), Probe)
    assert of(daemon.feed(11.0, MountsChanged(frozenset({"/mnt/disk1"}))), Probe)


@pytest.mark.root_only()
def test_the_mount_monitor_names_the_mount_points_that_changed(tmp_path: Path) -> None:
    queue: SimpleQueue[object] = SimpleQueue()
    monitor = MountMonitor(queue)
    monitor.start()
    target = tmp_path / "disk"
    seen: set[str] = set()

    def named() -> bool:
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                return str(target) in seen
            assert isinstance(item, MountsChanged) and item.points is not None, item
            seen.update(item.points)

    try:
        with TmpfsMount(target, size="1m"):
            wait_until(named, WAIT, message=f"the mount of {target} was not named: {sorted(seen)[:10]}")
            seen.clear()
        wait_until(named, WAIT, message=f"the unmount of {target} was not named: {sorted(seen)[:10]}")
    finally:
        monitor.stop()


# --- per-event work ------------------------------------------------------------------------------


def test_the_verdicts_kept_between_events_agree_with_the_ignore_filter() -> None:
    core = Core(CONFIG, SavedState())
    root = "/media/movies"
    paths = [
        f"{root}/Film (2001)/Film (2001).mkv", f"{root}/Film (2001)/Film (2001).mkv", f"{root}/Film (2001)/Film.nfo",
        f"{root}/Film (2001)/Extra.mkv", f"{root}/Film (2001)/Extra.mkv.part", f"{root}/Film (2001)/Other.mkv",
        f"{root}/.hidden/a.mkv", f"{root}/.hidden/b.mkv", f"{root}/.hidden/b.mkv", f"{root}/@eaDir/c.mkv",
        f"{root}/Show/@eaDir/d.mkv", f"{root}/Show/e.mkv", f"{root}/f.mkv", root, "/elsewhere/g.mkv",
        f"{root}/Show", f"{root}2/h.mkv",
    ]
    for path in paths * 2:
        assert core._relevant(root, path) is (not core.ignore(root, path)), path
    for path in paths:  # another root: nothing kept for the first one applies
        assert core._relevant("/media", path) is (not core.ignore("/media", path)), path


def test_a_file_still_being_written_holds_a_batch_whose_root_counts_as_changed_as_a_whole() -> None:
    daemon = Daemon()
    daemon.feed(1.0, EventsLost(str(MOVIES.path)))
    assert daemon.core.debouncer.counts_whole(str(MOVIES.path))
    daemon.change(2.0, "Big (2024)/Big (2024).mkv", kind="created")
    daemon.change(2.5, "Big (2024)/ignored.nfo", kind="created")
    assert daemon.core.writes.paths == (f"{MOVIES.path}/Big (2024)/Big (2024).mkv",)
    actions = daemon.feed(2.5 + QUIET + 1, Tick())
    assert of(actions, CheckWrites) and not of(actions, Send), actions
    daemon.change(3.0 + QUIET + 1, "Big (2024)/Big (2024).mkv", kind="closed")
    assert not daemon.core.writes.paths
    # The lost events, the creation and the close; the ignored file neither counts nor holds.
    assert daemon.core.pending is not None and daemon.core.pending.changes == 3


# --- from inotify to the queue -------------------------------------------------------------------


def test_creations_closes_deletions_and_moves_reach_the_queue_as_watchdog_reports_them(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    events: SimpleQueue[object] = SimpleQueue()
    seen: list[tuple[str, str, str, bool]] = []

    def until(wanted: tuple[str, str, str, bool]) -> None:
        def arrived() -> bool:
            while True:
                try:
                    item = events.get_nowait()
                except Empty:
                    return wanted in seen
                assert isinstance(item, FileEvent), item
                seen.append((item.kind, item.path.removeprefix(str(root)), item.dest.removeprefix(str(root)),
                             item.is_directory))
        wait_until(arrived, WAIT, message=f"{wanted} never came; seen {seen}")

    with RootWatcher(events.put) as watcher:
        assert watcher.watch(root) is None
        (root / "Film").mkdir()
        until(("created", "/Film", "", True))
        (root / "Film" / "a.mkv").write_bytes(b"x")
        until(("closed", "/Film/a.mkv", "", False))
        os.rename(root / "Film" / "a.mkv", root / "Film" / "b.mkv")
        until(("moved", "/Film/a.mkv", "/Film/b.mkv", False))
        (root / "Film" / "b.mkv").unlink()
        until(("deleted", "/Film/b.mkv", "", False))
        (root / "Film").rmdir()
        until(("deleted", "/Film", "", True))
    assert seen == [
        ("created", "/Film", "", True),
        ("created", "/Film/a.mkv", "", False),
        ("closed", "/Film/a.mkv", "", False),
        ("moved", "/Film/a.mkv", "/Film/b.mkv", False),
        ("deleted", "/Film/b.mkv", "", False),
        ("deleted", "/Film", "", True),
    ], seen


@pytest.mark.root_only("bindfs")
def test_only_folders_with_sub_folders_are_listed_where_the_filesystem_counts_them(tmp_path: Path) -> None:
    """The walk that sets the watches up skips listing a folder whose link count says it has
    no sub-folder, only on filesystems that keep that count (tmpfs here; not FUSE), and only
    on the root's own device (a disk mounted below the root is listed). Every folder is
    watched all the same, and a folder made in such a leaf afterwards is watched too."""
    with TmpfsMount(tmp_path / "media") as disk:
        root = disk.mount_point
        (root / "Show" / "Season 1").mkdir(parents=True)
        (root / "Film").mkdir()
        (root / "usb").mkdir()
        assert os.stat(root / "Film").st_nlink == 2  # a leaf, as tmpfs counts
        assert _subfolders_counted(os.fsencode(root)) == os.stat(root).st_dev
        with BindFS(root, tmp_path / "fuse") as fuse:
            assert _subfolders_counted(os.fsencode(fuse.mount_point)) is None
        with TmpfsMount(root / "usb") as usb:
            (usb.mount_point / "Album" / "CD 1").mkdir(parents=True)
            folders = {(status.st_dev, status.st_ino) for status in
                       map(os.stat, [path for path in [root, *root.rglob("*")] if path.is_dir()])}
            assert len(folders) == 7  # the root, Show, Season 1, Film, usb (the disk), Album, CD 1
            events: SimpleQueue[object] = SimpleQueue()
            with RootWatcher(events.put) as watcher:
                assert watcher.watch(root) is None
                assert folders <= watched_inodes(), "a folder went unwatched"
                (root / "Film" / "Extras").mkdir()
                wait_until(lambda: (os.stat(root / "Film" / "Extras").st_dev,
                                    os.stat(root / "Film" / "Extras").st_ino) in watched_inodes(), WAIT,
                           message="a folder made in a leaf folder was never watched")
                (root / "Film" / "Extras" / "a.mkv").write_bytes(b"x")
                seen: list[str] = []

                def closed() -> bool:
                    while True:
                        try:
                            item = events.get_nowait()
                        except Empty:
                            return str(root / "Film" / "Extras" / "a.mkv") in seen
                        if isinstance(item, FileEvent) and item.kind == "closed":
                            seen.append(item.path)

                wait_until(closed, WAIT, message=f"no event from the new folder; closes seen: {seen}")


# --- start-up ------------------------------------------------------------------------------------


def test_a_dry_run_daemon_loads_without_the_http_client() -> None:
    """The modules ``run`` loads before its first watch: neither the HTTP client (requests,
    urllib3) nor the JSON log formatter, which only a client or ``log_format = "json"`` need."""
    code = ("import sys, watcher.cli, watcher.commands.run, watcher.service; "
            "print(sorted(name for name in ('requests', 'urllib3', 'pythonjsonlogger', 'watcher.edges.jellyfin') "
            "if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                               check=True)
    assert completed.stdout.strip() == "[]", completed.stdout
