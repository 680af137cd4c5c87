"""Real network shares: the daemon on an rclone mount of a WebDAV server and on an sshfs
mount, each server on 127.0.0.1 started by the test (:mod:`shares`).

Jellyfin (the emulator) reads the library *through the mount*, as a Jellyfin on the same
machine does: a scan while the server is gone would find nothing there and delete the
items, so ``jellyfin.removed == []`` at the end is the proof that nothing was lost. Changes
are made on the server's side (its folder on disk): inotify never sees them, only polling
can.

* rclone: mode ``auto`` polls ``fuse.rclone`` and, since a folder's modification time
  never changes through rclone's VFS, lists every folder each cycle (``poll = "list"``).
  A change on the server is refreshed once; the server killed, or frozen (SIGSTOP), makes
  the root ``unresponsive`` within ``probe_timeout`` (the probe's listing goes to the
  server once rclone's folder cache, 1 s here, has expired); the batch is held, kept across
  a restart of the watcher, and sent once the server is back.
* sshfs: the connection dropped while the server runs is re-established by sshfs; the
  server gone makes the root ``unreadable`` (EIO); either way nothing is lost and the
  changes made meanwhile are refreshed once.

Around the shares, what the watcher needs to trust them:

* watch verification (real inotify watches, a real bindfs mount): folders the kernel never
  reported are named as such, not blamed on the watch limit; folders found unwatched are
  looked at again; past the watch limit (with the evidence: ENOSPC) the switch to polling
  counts the root as changed, saved at once, so a watcher killed right after still
  refreshes it; ``READY=1`` comes once every folder is watched, the status file's
  ``verified`` once the verification has ended;
* the polling methods: a folder whose modification time does not move when a file is added
  (as through rclone) is missed by ``mtime`` and found by ``list``.

Nothing sleeps for correctness: every wait is for a log line, a status field or a
Jellyfin request, with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest
from shares import (
    RcloneMount,
    RcloneServer,
    SSHFSMount,
    SSHServer,
    root_status,
    wait_verified,
)
from support import MKV, BindFS, WatcherProcess, movie, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher.config import DEFAULT_IGNORE, load
from watcher.core.coverage import UNREPORTED
from watcher.core.filters import IgnoreFilter
from watcher.edges.poll import RootPoller
from watcher.edges.verify import _second_look, coverage, user_watches
from watcher.edges.watch import RootWatcher
from watcher.errors import ConfigError

QUIET = 2.0
"""``watch.quiet_period``, seconds: longer than a polling cycle, so that a folder and its
file written on the server a moment apart are one batch."""
POLL = 1.0
"""``watch.poll_interval``, seconds."""
PROBE_TIMEOUT = 1.0
"""``watch.probe_timeout``, seconds."""
SETTLE = 1.0
HEALTH_INTERVAL = 1.0
STOP_WITHIN = 2.0
"""Seconds the watcher may take to exit on SIGTERM (README: "stops within 2 seconds")."""
WAIT = 20.0
"""Deadline, seconds, for what is not itself a timing assertion (a loaded 2-core machine;
rclone retries a dead server for about 5 s before it answers EIO)."""


def share_config(path: Path, url: str, root: Path, state_dir: Path, quiet: float = QUIET) -> Path:
    return write_config(path, {
        "state_dir": state_dir,
        "jellyfin": {"url": url},
        "watch": {"quiet_period": quiet, "max_wait": 120, "settle": SETTLE, "health_interval": HEALTH_INTERVAL,
                  "probe_timeout": PROBE_TIMEOUT, "backoff_max": 4, "poll_interval": POLL},
        "roots": [{"path": root}],
    })


def start_polling(watcher: WatcherProcess, state_dir: Path, root: Path, how: str) -> None:
    """Wait until the daemon polls ``root`` (the log line says why, with ``how`` in it) and
    its first cycle has taken the baseline."""
    line = watcher.wait_for_line(re.escape(f"polling {root} every {POLL:g} s"), WAIT)
    assert how in line, line
    wait_verified(state_dir, WAIT)

    def baseline() -> bool:
        entry = root_status(state_dir, root) or {}
        return entry.get("mode") == "poll" and bool(entry.get("watched_directories"))

    wait_until(baseline, WAIT, message=f"the first polling cycle did not finish:\n{watcher.output}")


def pending(state_dir: Path) -> int:
    """Changes pending in the daemon's status document (0 when none)."""
    document: dict[str, Any] = json.loads((state_dir / "status.json").read_text(encoding="utf-8"))
    return int((document.get("pending") or {}).get("changes", 0))


def finish(watcher: WatcherProcess, jellyfin: JellyfinEmulator, refreshes: int) -> None:
    """SIGTERM: exits 0 within 2 s with nothing pending; ``refreshes`` refreshes; nothing lost."""
    started = time.monotonic()
    code = watcher.terminate(WAIT)
    took = time.monotonic() - started
    assert code == 0, watcher.output
    assert took <= STOP_WITHIN, f"the watcher took {took:.2f} s to exit on SIGTERM"
    assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert "Traceback" not in watcher.output, watcher.output
    assert jellyfin.wait_for_scans_idle(WAIT), "Jellyfin's scans did not finish"
    assert len(jellyfin.refreshes) == refreshes, f"{len(jellyfin.refreshes)} refreshes:\n{watcher.output}"
    assert jellyfin.removed == [], "a scan deleted items whose files were only unreachable"
    print(f"\n[shares] {len(jellyfin.refreshes)} refreshes; items lost: {len(jellyfin.removed)} of "
          f"{len(jellyfin.items) + len(jellyfin.removed)}")


# --- rclone -------------------------------------------------------------------------------------


class Remote:
    """An rclone WebDAV server over ``tmp_path/server`` and its mount on ``tmp_path/rclone``;
    ``folder``: the library on the server's disk, ``root``: the same folder through the mount."""

    def __init__(self, server: RcloneServer, mount: RcloneMount) -> None:
        self.server = server
        self.mount = mount
        self.folder = server.directory / "movies"
        self.root = mount.mount_point / "movies"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    (tmp_path / "server" / "movies").mkdir(parents=True)
    movie(tmp_path / "server" / "movies", "Seed One (2000)")
    movie(tmp_path / "server" / "movies", "Seed Two (2001)")
    with RcloneServer(tmp_path / "server", tmp_path / "serve.log") as server, \
            RcloneMount(server.url, tmp_path / "rclone", tmp_path / "mount.log") as mount:
        yield Remote(server, mount)


def rclone_library(jellyfin: JellyfinEmulator, remote: Remote) -> None:
    jellyfin.libraries = [Library("Movies", [str(remote.root)])]  # Jellyfin reads through the mount
    assert jellyfin.index() == 2


@pytest.mark.root_only("rclone", "fusermount")
def test_rclone_a_change_on_the_server_is_refreshed_once(tmp_path: Path, remote: Remote, jellyfin: JellyfinEmulator,
                                                         env: dict[str, str]) -> None:
    rclone_library(jellyfin, remote)
    state_dir = tmp_path / "state"
    config = share_config(tmp_path / "config.toml", jellyfin.url, remote.root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, remote.root, "(listing every folder: folder times do not follow")
        assert (root_status(state_dir, remote.root) or {}).get("poll") == "list"
        # On the server: a new film in a new folder, and a second file in an existing folder
        # (whose modification time, seen through rclone, does not change).
        movie(remote.folder, "New On The Server (2024)")
        (remote.folder / "Seed One (2000)" / "Seed One (2000) - Extended.mkv").write_bytes(MKV)
        jellyfin.wait_for_refreshes(1, WAIT)
        finish(watcher, jellyfin, 1)
    assert str(remote.root / "New On The Server (2024)" / "New On The Server (2024).mkv") in jellyfin.items
    assert str(remote.root / "Seed One (2000)" / "Seed One (2000) - Extended.mkv") in jellyfin.items


def hold_a_batch_then(fault: str, watcher: WatcherProcess, state_dir: Path, remote: Remote,
                      jellyfin: JellyfinEmulator) -> float:
    """A change on the server is seen (a batch pending, not yet due); then ``fault``
    (``kill`` or ``stop``) hits the server. The batch must be held with the root
    ``unresponsive``: returns seconds from the fault to that WARNING."""
    movie(remote.folder, "Before The Fault (2024)")
    wait_until(lambda: pending(state_dir) > 0, WAIT, message=f"the change was not seen:\n{watcher.output}")
    mark = watcher.mark()
    faulted = time.monotonic()
    if fault == "kill":
        remote.server.kill()
    else:
        remote.server.stop()
    arrived, line = watcher.wait_for_timed_line(re.escape(f"{remote.root} is unresponsive ("), WAIT, start=mark)
    assert f"no answer within {PROBE_TIMEOUT:g} s" in line, line
    watcher.wait_for_line(r"refresh suppressed: .*" + re.escape(f"{remote.root} is unresponsive"), WAIT, start=mark)
    assert jellyfin.refreshes == [], watcher.output
    return arrived - faulted


@pytest.mark.root_only("rclone", "fusermount")
def test_rclone_server_killed_holds_the_batch_and_loses_nothing(tmp_path: Path, remote: Remote,
                                                                jellyfin: JellyfinEmulator,
                                                                env: dict[str, str]) -> None:
    rclone_library(jellyfin, remote)
    state_dir = tmp_path / "state"
    config = share_config(tmp_path / "config.toml", jellyfin.url, remote.root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, remote.root, "listing every folder")
        took = hold_a_batch_then("kill", watcher, state_dir, remote, jellyfin)
        print(f"\n[shares] rclone server killed → {remote.root} unresponsive after {took:.1f} s "
              f"(folder cache 1 s + health interval {HEALTH_INTERVAL:g} s + probe timeout {PROBE_TIMEOUT:g} s)")
        movie(remote.folder, "While The Server Was Down (2024)")  # on the server's disk
        mark = watcher.mark()
        remote.server.start()  # the same port: the mount finds it again
        watcher.wait_for_line(re.escape(f"{remote.root} is healthy again"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    for title in ("Before The Fault (2024)", "While The Server Was Down (2024)"):
        assert str(remote.root / title / f"{title}.mkv") in jellyfin.items
    assert len(jellyfin.items) == 4


@pytest.mark.root_only("rclone", "fusermount")
def test_rclone_server_frozen_holds_the_batch_across_a_restart(tmp_path: Path, remote: Remote,
                                                               jellyfin: JellyfinEmulator,
                                                               env: dict[str, str]) -> None:
    rclone_library(jellyfin, remote)
    state_dir = tmp_path / "state"
    config = share_config(tmp_path / "config.toml", jellyfin.url, remote.root, state_dir)
    with WatcherProcess(["--config", config], env) as watcher:
        start_polling(watcher, state_dir, remote.root, "listing every folder")
        took = hold_a_batch_then("stop", watcher, state_dir, remote, jellyfin)
        print(f"\n[shares] rclone server frozen → {remote.root} unresponsive after {took:.1f} s")
        # Stopped while the share hangs (its probes and polls are stuck in the kernel until the
        # server answers): within 2 s, the batch saved.
        started = time.monotonic()
        watcher.send_signal(signal.SIGTERM)
        wait_until(lambda: not watcher.alive(), WAIT, message="the watcher did not exit while the share hung")
        took = time.monotonic() - started
        assert watcher.returncode == 0, watcher.output
        assert took <= STOP_WITHIN, f"the watcher took {took:.2f} s to exit on SIGTERM while the share hung"
        watcher.wait_for_line(r"stopped; \d+ changes pending under .*, saved in ", WAIT)
    assert jellyfin.refreshes == []

    remote.server.resume()
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"were pending when the watcher last stopped", WAIT)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)
    assert str(remote.root / "Before The Fault (2024)" / "Before The Fault (2024).mkv") in jellyfin.items
    assert len(jellyfin.items) == 3


# --- sshfs --------------------------------------------------------------------------------------


@pytest.mark.root_only("sshfs", "fusermount", "ssh-keygen", "unshare", "/usr/sbin/sshd")
def test_sshfs_connection_dropped_loses_nothing(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                env: dict[str, str]) -> None:
    folder = tmp_path / "server" / "movies"  # the library on the server's disk
    movie(folder, "Seed One (2000)")
    movie(folder, "Seed Two (2001)")
    state_dir = tmp_path / "state"
    with SSHServer(tmp_path / "sshd") as server, \
            SSHFSMount(server, tmp_path / "server", tmp_path / "sshfs", tmp_path / "sshfs.log") as mount:
        root = mount.mount_point / "movies"
        jellyfin.libraries = [Library("Movies", [str(root)])]  # Jellyfin reads through the mount
        assert jellyfin.index() == 2
        config = share_config(tmp_path / "config.toml", jellyfin.url, root, state_dir)
        with WatcherProcess(["--config", config], env) as watcher:
            start_polling(watcher, state_dir, root, "fuse.sshfs is a network filesystem")
            assert (root_status(state_dir, root) or {}).get("poll") == "mtime"

            # The connection cut while the server runs: sshfs connects again on the next access.
            assert server.drop_connections() >= 1
            movie(folder, "After The Cut (2024)")
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            assert jellyfin.wait_for_scans_idle(WAIT)
            assert wait_until(lambda: server.sessions(), WAIT, message="sshfs did not connect again")
            wait_until(lambda: pending(state_dir) == 0, WAIT, message="the status file still shows the sent batch")

            # The connection cut and the server gone: the root is unreadable, the batch held.
            movie(folder, "Before The Outage (2024)")
            wait_until(lambda: pending(state_dir) > 0, WAIT, message=f"the change was not seen:\n{watcher.output}")
            mark = watcher.mark()
            server.kill()
            line = watcher.wait_for_line(re.escape(f"{root} is unreadable ("), WAIT, start=mark)
            assert "input/output error" in line, line
            watcher.wait_for_line(r"refresh suppressed: .*" + re.escape(f"{root} is unreadable"), WAIT, start=mark)
            assert len(jellyfin.refreshes) == 1
            movie(folder, "During The Outage (2024)")

            mark = watcher.mark()
            server.start()  # the same port and keys: sshfs connects again
            watcher.wait_for_line(re.escape(f"{root} is healthy again"), WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            finish(watcher, jellyfin, 2)
    for title in ("After The Cut (2024)", "Before The Outage (2024)", "During The Outage (2024)"):
        assert str(root / title / f"{title}.mkv") in jellyfin.items
    assert len(jellyfin.items) == 5


# --- watch verification -------------------------------------------------------------------------


@pytest.mark.root_only("bindfs", "fusermount")
def test_verification_names_folders_made_behind_a_fuse_mount(tmp_path: Path) -> None:
    """Folders made in the folder a FUSE mount serves, not through the mount, reach it without
    an event: verification says so, and does not blame the watch limit."""
    source = tmp_path / "source"
    movie(source, "Seed (2000)")
    events: SimpleQueue[object] = SimpleQueue()
    with BindFS(source, tmp_path / "fuse") as fuse, RootWatcher(events.put) as watcher:
        root = fuse.mount_point
        assert watcher.watch(root) is None
        [clean] = coverage([root], WAIT, fuse=[True])
        assert clean.problem() is None and clean.folders == 2, clean
        for index in range(5):
            (source / f"Behind {index}").mkdir()
        [result] = coverage([root], WAIT, fuse=[True], limit_failures=[watcher.limit_failures(root)])
    assert result.cause == UNREPORTED and result.may_have_missed_changes, result
    assert result.missing == 5 and result.limit_failures == 0 and not result.limit_reached, result
    problem = result.problem() or ""
    assert re.search(r"^5 of 7 folders under .* are not watched \(e\.g\. .*/Behind 0\): the kernel never reported them; "
                     r"they were made behind the FUSE mount's back", problem), problem
    assert "watch limit" not in problem


def test_verification_looks_again_at_folders_found_unwatched(tmp_path: Path) -> None:
    """The second look: a folder gone meanwhile is no problem, one watched meanwhile neither;
    one still there and unwatched stays."""
    root = tmp_path / "media"
    movie(root, "Seed (2000)")
    events: SimpleQueue[object] = SimpleQueue()
    with RootWatcher(events.put) as watcher:
        assert watcher.watch(root) is None
        watched = movie(root, "Made Through The Watch (2024)").parent  # watched once watchdog sees it
        outside = tmp_path / "never watched"
        outside.mkdir()
        gone = tmp_path / "gone"
        gone.mkdir()
        gone_key = (gone.stat().st_dev, gone.stat().st_ino)
        gone.rmdir()  # after the others are made: its inode number cannot be theirs
        found = {
            (watched.stat().st_dev, watched.stat().st_ino): str(watched),
            gone_key: str(gone),
            (outside.stat().st_dev, outside.stat().st_ino): str(outside),
        }
        assert len(found) == 3
        remaining, vanished = _second_look(found, WAIT, None)
    assert vanished == 1
    assert list(remaining.values()) == [str(outside)]


MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


@pytest.mark.root_only()
def test_switch_to_polling_counts_the_root_as_changed_also_across_a_restart(
        tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    """Past the watch limit the root is polled; what inotify missed until polling took over is
    covered by counting the root as changed, saved at once: a watcher killed right after still
    refreshes it after its restart."""
    root = tmp_path / "movies"
    for index in range(300):
        movie(root, f"Film {index:03d}")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 300
    state_dir = tmp_path / "state"
    config = share_config(tmp_path / "config.toml", jellyfin.url, root, state_dir, quiet=60)
    old = MAX_USER_WATCHES.read_text().strip()
    in_use = user_watches()
    assert in_use is not None
    low = in_use + 100  # the watcher's 301 watches do not fit; kept brief: until its ERROR line
    watcher = WatcherProcess(["--config", config], env)
    with contextlib.ExitStack() as stack:
        try:
            MAX_USER_WATCHES.write_text(f"{low}\n")
            stack.enter_context(watcher)
            error = watcher.wait_for_line(r" ERROR .*not watched", WAIT)
        finally:
            MAX_USER_WATCHES.write_text(f"{old}\n")
        assert f"the inotify watch limit (now {low}) is reached (inotify refused " in error, error
        watcher.wait_for_line(re.escape(f"polling has taken over {root}: counting it as changed"), WAIT)
        wait_until(lambda: pending(state_dir) > 0, WAIT, message="the change is not in the status document")
        watcher.send_signal(signal.SIGKILL)
        wait_until(lambda: not watcher.alive(), WAIT)
    assert jellyfin.refreshes == []
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"were pending when the watcher last stopped", WAIT)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)
    assert len(jellyfin.items) == 300


def test_ready_once_every_folder_is_watched_then_the_verification_ends(tmp_path: Path, env: dict[str, str]) -> None:
    """``READY=1`` comes once watchdog has watched every folder (the kernel holds a watch on
    each); the verification runs on, and the status document says ``verified`` once it has
    ended, with the root's verification complete."""
    from watcher.edges.verify import watched_inodes

    root = tmp_path / "media"
    for index in range(2000):  # a listing that takes a moment
        (root / f"Show {index // 40:02d}" / f"Season {index:04d}").mkdir(parents=True)
    folders = {(status.st_dev, status.st_ino) for status in map(os.stat, [root, *root.glob("*"), *root.glob("*/*")])}
    state_dir = tmp_path / "state"
    address = f"jellyfin-watcher-test-{uuid.uuid4().hex}"
    notify_env = {**env, "NOTIFY_SOCKET": "@" + address}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        listener.bind("\0" + address)  # the abstract namespace: no path length limit
        listener.settimeout(WAIT)
        watcher = stack.enter_context(WatcherProcess([str(root), "--dry-run", "--state-dir", str(state_dir)], notify_env))
        while True:
            message = listener.recv(65536).decode()
            if "READY=1" in message.splitlines():
                break
        # Every folder existed before the start, so its watch was set before READY=1.
        held = watched_inodes(str(watcher.pid))
        # Closed before the watcher is stopped: a listener that no longer reads fills up and
        # blocks the watcher's next notification (systemd always reads).
        listener.close()
        document = wait_verified(state_dir, WAIT)
        assert watcher.terminate(WAIT) == 0
    assert folders <= held, f"READY=1 came before every folder was watched: {len(folders - held)} unwatched"
    [entry] = document["roots"]
    assert entry["verification"] == "complete" and entry["mode"] == "events", entry
    assert entry["watched_directories"] == len(folders), entry


# --- polling methods ---------------------------------------------------------------------------


def test_list_polling_finds_what_a_lying_folder_time_hides(tmp_path: Path) -> None:
    """A file added to a folder whose modification time stays as it was (as seen through an
    rclone mount): ``mtime`` polling misses it, ``list`` polling finds it."""
    root = tmp_path / "media"
    folder = movie(root, "Seed (2000)").parent
    past = time.time() - 60  # older than the poller's window for just-changed folders
    for path in (root, folder):
        os.utime(path, (past, past))
    ignore = IgnoreFilter(DEFAULT_IGNORE).regex
    pollers = {method: RootPoller(root, 3600, WAIT, ignore, lambda item: None, method=method) for method in ("mtime", "list")}
    for poller in pollers.values():
        assert poller.cycle().first
    before = folder.stat()
    (folder / "Seed (2000) - Extended.mkv").write_bytes(MKV)
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))  # the folder's time lies
    missed, found = pollers["mtime"].cycle(), pollers["list"].cycle()
    assert not missed.failed and missed.changed == (), missed
    assert not found.failed and found.changed == (str(folder),), found


def test_the_poll_key_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[roots]]\npath = "/srv/media"\npoll = "stat"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load(config, {}, {})
    assert str(raised.value).startswith(f"{config}: roots[1].poll: expected one of mtime, list"), raised.value
    config.write_text('[[roots]]\npath = "/srv/media"\npoll = "list"\n', encoding="utf-8")
    assert load(config, {}, {}).roots[0].poll == "list"
