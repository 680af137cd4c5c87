"""Fault matrix: the real ``jellyfin-watcher run`` against storage and server faults.

Every scenario runs the daemon as a child process (``support.WatcherProcess``) with a TOML
configuration (quiet period 0.5 s, settle 1 s, health checks every 1 s, probe timeout 1 s)
against the Jellyfin emulator, whose scan deletes items whose files are missing, and asserts
what a user cares about:

* nothing lost: ``jellyfin.index()`` first, so the emulator holds an item per media file,
  and ``jellyfin.removed == []`` at the end;
* no hang: the watcher exits on SIGTERM within 2 s, whatever the storage is doing;
* every change made while the storage was healthy is refreshed exactly once, eventually:
  proven by SIGTERM, the last line "stopped; no changes pending" and the refresh count,
  never by sleeping.

Timing figures (umount → root marked down, remount → watching again, the window between
the last probe and the refresh request, soak numbers) are printed with the prefix
``[faults]``: run with ``pytest -s`` to see them. The soak test is named ``test_soak_…``:
deselect it with ``-k "not soak"``.

Nothing here sleeps for correctness. The few ``time.sleep`` calls pace the faults
themselves (a flapping USB disk, a file storm) and say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from shares import wait_verified
from support import (
    MKV,
    STOP_WITHIN,
    BindFS,
    LoopDisk,
    TmpfsMount,
    WatcherProcess,
    closed_port,
    finish,
    is_mounted,
    movie,
    read_status_file,
    stop,
    unmount,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import ClosingHTTPServer, JellyfinEmulator, Library
from watcher.edges.verify import watched_inodes

QUIET = 0.5
"""``watch.quiet_period``, seconds."""
SETTLE = 1.0
"""``watch.settle``, seconds."""
HEALTH_INTERVAL = 1.0
"""``watch.health_interval``, seconds."""
PROBE_TIMEOUT = 1.0
"""``watch.probe_timeout``, seconds."""
POLL_INTERVAL = 1.0
"""``watch.poll_interval``, seconds: a root inotify cannot fully watch is polled instead."""
WAIT = 10.0
"""Deadline, seconds, for what is not itself a timing assertion (a loaded 2-core machine)."""


# --- helpers ----------------------------------------------------------------------------------


def fault_config(path: Path, url: str, roots: Sequence[Path | tuple[Path, Path]], state_dir: Path, *,
                 timeout: float | None = None, quiet: float = QUIET) -> Path:
    """A TOML configuration for ``run``; a root given as ``(path, mount)`` has its mount set."""
    jellyfin: dict[str, Any] = {"url": url}
    sections: dict[str, Any] = {}
    if timeout is not None:
        jellyfin["timeout"] = timeout
        sections["server_view"] = {"timeout": timeout}
    return write_config(path, {
        "state_dir": state_dir,
        "jellyfin": jellyfin,
        **sections,
        "watch": {"quiet_period": quiet, "max_wait": 30, "settle": SETTLE, "health_interval": HEALTH_INTERVAL,
                  "probe_timeout": PROBE_TIMEOUT, "backoff_max": 4, "poll_interval": POLL_INTERVAL},
        "roots": [{"path": root[0], "mount": root[1]} if isinstance(root, tuple) else {"path": root} for root in roots],
    })


def logged_at(line: str) -> float:
    """The time (seconds since the epoch) in a log line's ``asctime`` prefix (ms resolution)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def stop_hung(watcher: WatcherProcess) -> str:
    """SIGTERM while a root is hung or away: exits 0 within 2 s, the batch saved; the last line."""
    took = stop(watcher, STOP_WITHIN, WAIT)
    assert re.search(r"stopped; \d+ changes pending under .*, saved in ", watcher.lines[-1]), watcher.output
    print(f"[faults]   exit on SIGTERM: {took * 1000:.0f} ms")
    return watcher.lines[-1]


def watcher_for(config: Path, env: dict[str, str]) -> WatcherProcess:
    return WatcherProcess(["--config", config], env)


def down_and_back(watcher: WatcherProcess, root: Path, what: str, mark: int, down_at: float, up_at: float) -> None:
    """Print umount → root marked down, and remount → watching again (minus the settle)."""
    down = watcher.wait_for_line(re.escape(f"{root} is ") + r"(unmounted|missing|empty) \(", 0, start=mark)
    again = watcher.wait_for_line(re.escape(f"watching {root} again"), 0, start=mark)
    print(f"[faults] {what}: umount → marked down {(logged_at(down) - down_at) * 1000:.0f} ms; "
          f"remount → watching again {(logged_at(again) - up_at - SETTLE) * 1000:.0f} ms beyond the "
          f"{SETTLE:g} s settle")


def run(*command: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    assert completed.returncode == 0, f"{' '.join(command)}: {completed.stderr.strip()}"


@contextlib.contextmanager
def bind_mounted(source: Path, target: Path) -> Iterator[None]:
    """``mount --bind source target``; everything on ``target`` is unmounted on the way out."""
    target.mkdir(parents=True, exist_ok=True)
    run("mount", "--bind", str(source), str(target))
    try:
        yield
    finally:
        unmount(target)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_BIND = 4096
MNT_DETACH = 2


def _mount_bind(source: bytes, target: bytes) -> None:
    if _libc.mount(source, target, None, MS_BIND, None) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), target)


def _umount(target: bytes, flags: int = 0) -> None:
    """umount2(2) itself: the time it returns is the time the mount left the table."""
    if _libc.umount2(target, flags) != 0:
        number = ctypes.get_errno()
        if number == errno.EBUSY:
            _libc.umount2(target, MNT_DETACH)
            return
        raise OSError(number, os.strerror(number), target)



class Gate:
    """A small HTTP proxy in front of the emulator, to make the server slow or silent.

    ``hold(method, path)``: requests it says True for wait until :attr:`release` is set
    (:attr:`held` is set when one arrives), then pass. ``hang``: every request is read and
    never answered (the client's timeout fires) until ``hang`` is cleared. Everything else is
    passed through unchanged. Threads are joined in :meth:`close`.
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        split = urlsplit(upstream)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self.hold: Callable[[str, str], bool] | None = None
        self.hang = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.closing = threading.Event()
        self.passed: list[tuple[str, str, float, float]] = []
        """(method, path, received, answered) of every request passed on, ``time.monotonic()``."""
        self.server = _GateServer(self, port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fault-gate", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Gate:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closing.set()
        self.release.set()
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()
        self.thread.join()


class _GateServer(ClosingHTTPServer):
    def __init__(self, gate: Gate, port: int) -> None:
        self.gate = gate
        super().__init__(("127.0.0.1", port), _GateHandler)


_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "host",
                "date", "server"}


class _GateHandler(BaseHTTPRequestHandler):
    server: _GateServer
    protocol_version = "HTTP/1.1"
    timeout = 10

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle delay

    def _serve(self) -> None:
        gate = self.server.gate
        received = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if gate.hang:
            while gate.hang and not gate.closing.wait(0.02):
                pass
            self.close_connection = True  # never answered: the client has given up
            return
        if gate.hold is not None and gate.hold(self.command, self.path):
            gate.held.set()
            gate.release.wait()
            if gate.closing.is_set():
                self.close_connection = True
                return
        upstream = http.client.HTTPConnection(*gate.upstream, timeout=10)
        try:
            headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            status, reason, response_headers = response.status, response.reason, response.getheaders()
        finally:
            upstream.close()
        self.send_response(status, reason)
        for name, value in response_headers:
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.wfile.flush()
        gate.passed.append((self.command, self.path, received, time.monotonic()))

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


def pending_in_state(state_dir: Path) -> dict[str, Any] | None:
    """The pending batch saved in ``state.json`` (None if none or no file yet)."""
    try:
        return json.loads((state_dir / "state.json").read_text(encoding="utf-8")).get("pending")
    except (OSError, ValueError):
        return None


# --- storage disappears around a refresh ------------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_disk_unmounted_during_the_quiet_period(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                env: dict[str, str]) -> None:
    # The disk is mounted below the library folder, which also holds a local film: with the
    # disk gone the folder is neither missing nor empty, so a scan would delete the disk's items.
    media = tmp_path / "media"
    movie(media / "local", "Local (1990)")
    with LoopDisk(tmp_path / "usb.img", media / "usb") as disk:
        usb = disk.mount_point
        movie(usb, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [usb], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)

            movie(usb, "New (2024)")  # made while the disk is there ...
            mark = watcher.mark()
            _umount(os.fsencode(usb))  # ... and the disk goes before the quiet period is over
            down_at = time.time()
            watcher.wait_for_line(re.escape(f"{usb} is unmounted ("), WAIT, start=mark)
            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT, start=mark)
            assert f"{usb} is unmounted" in suppressed
            assert jellyfin.refreshes == []

            disk.mount()
            up_at = time.time()
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            down_and_back(watcher, usb, "loop ext4 unmounted in the quiet period", mark, down_at, up_at)
            finish(watcher, jellyfin, 1)
        assert str(usb / "New (2024)" / "New (2024).mkv") in jellyfin.items


@pytest.mark.root_only("mkfs.ext4")
def test_disk_unmounted_between_the_health_check_and_the_request(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                  env: dict[str, str]) -> None:
    # GET /ScheduledTasks (is a scan running?) comes between the health check and the POST.
    # The gate holds it while the disk goes away: the watcher must not refresh on the strength
    # of a probe made before it.
    media = tmp_path / "media"
    movie(media / "local", "Local (1990)")
    with LoopDisk(tmp_path / "usb.img", media / "usb") as disk, Gate(jellyfin.url) as gate:
        usb = disk.mount_point
        movie(usb, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", gate.url, [usb], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            gate.hold = lambda method, path: method == "GET" and path.startswith("/ScheduledTasks")

            movie(usb, "New (2024)")
            assert gate.held.wait(WAIT), f"no GET /ScheduledTasks:\n{watcher.output}"
            mark = watcher.mark()
            disk.unmount()  # after the health check passed, before the refresh request
            gate.release.set()
            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT, start=mark)
            assert f"{usb} is unmounted" in suppressed
            assert jellyfin.refreshes == []

            gate.hold = None
            disk.mount()
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            finish(watcher, jellyfin, 1)

            # The window that remains: from the last probe of the roots to the refresh request.
            # The watcher probes right after its last other request to Jellyfin (the scan task,
            # the loss guard's look at the items), so from outside the window is bounded by the
            # time from that answer leaving the gate to the POST arriving at it.
            post = next(entry for entry in gate.passed if entry[1] == "/Library/Refresh")
            before = max((entry for entry in gate.passed if entry[3] < post[2]), key=lambda entry: entry[3])
            print(f"[faults] window: last answer before the refresh ({before[0]} {before[1].split('?')[0]}) sent → "
                  f"POST /Library/Refresh received {(post[2] - before[3]) * 1000:.0f} ms (the last probe of the "
                  "roots runs in it)")
        assert str(usb / "New (2024)" / "New (2024).mkv") in jellyfin.items


@pytest.mark.root_only("mkfs.ext4")
def test_lazy_umount_with_a_file_still_open(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    media = tmp_path / "media"
    movie(media / "local", "Local (1990)")
    with LoopDisk(tmp_path / "usb.img", media / "usb") as disk:
        usb = disk.mount_point
        playing = movie(usb, "Playing (2001)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [usb], tmp_path / "state")
        with watcher_for(config, env) as watcher, open(playing, "rb") as still_open:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(usb, "New (2024)")
            mark = watcher.mark()
            _umount(os.fsencode(usb), MNT_DETACH)  # umount -l: gone from the table, busy in the kernel
            down_at = time.time()
            assert still_open.read(4) == MKV
            watcher.wait_for_line(re.escape(f"{usb} is unmounted ("), WAIT, start=mark)
            watcher.wait_for_line(r"refresh suppressed: ", WAIT, start=mark)
            assert jellyfin.refreshes == []

            disk.mount()  # the same disk again, while the old mount is still busy
            up_at = time.time()
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            down_and_back(watcher, usb, "lazy umount with a file open", mark, down_at, up_at)
            finish(watcher, jellyfin, 1)
        assert str(usb / "New (2024)" / "New (2024).mkv") in jellyfin.items


@pytest.mark.root_only("mkfs.ext4")
@pytest.mark.parametrize("leftover", ["empty mount point", "stray file"])
def test_failed_mount(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str], leftover: str) -> None:
    # The disk did not mount at boot. Either its mount point is bare ("empty"), or something
    # wrote to it meanwhile: then only the mount point learned while the disk was there tells.
    other = tmp_path / "other"
    movie(other, "Elsewhere (1990)")
    state_dir = tmp_path / "state"
    with LoopDisk(tmp_path / "usb.img", tmp_path / "usb") as disk:
        usb = disk.mount_point
        movie(usb, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(usb), str(other)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [usb, other], state_dir)
        if leftover == "stray file":
            with watcher_for(config, env) as watcher:  # learns where the disk lives
                watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
                finish(watcher, jellyfin, 0)
        disk.unmount()
        if leftover == "stray file":
            (usb / "stray.mkv").write_bytes(MKV)
        state = "empty" if leftover == "empty mount point" else "unmounted"

        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(re.escape(f"{usb} is {state} ("), WAIT)
            # A bare (empty) mount point is watched all the same, so a folder that is merely
            # empty sees its first files; a root on the wrong mount is not watched.
            watched = "2 of 2" if state == "empty" else "1 of 2"
            watcher.wait_for_line(rf"watching {watched} roots: " + re.escape(str(other)), WAIT)
            movie(other, "New Elsewhere (2024)")
            suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert f"{usb} is {state}" in suppressed
            assert jellyfin.refreshes == []

            mark = watcher.mark()
            disk.mount()  # the mount finally works (over the stray file, which it hides)
            watcher.wait_for_line(re.escape(f"watching {usb} again"), WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            finish(watcher, jellyfin, 1)
        assert str(other / "New Elsewhere (2024)" / "New Elsewhere (2024).mkv") in jellyfin.items


@pytest.mark.root_only()
def test_mount_stacked_over_the_root(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    # The same share mounted twice on one mount point (an automount plus a manual mount): the
    # watches live on the lower mount, which the new one hides.
    with TmpfsMount(tmp_path / "share") as share, bind_mounted(share.mount_point, tmp_path / "media"):
        media = tmp_path / "media"
        movie(media, "Seed (2000)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 1
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [media], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            mark = watcher.mark()
            run("mount", "--bind", str(share.mount_point), str(media))  # stacked on top
            stacked_at = time.time()
            back = watcher.wait_for_line(re.escape(f"{media} is back"), WAIT, start=mark)
            again = watcher.wait_for_line(re.escape(f"watching {media} again"), WAIT, start=mark)
            print(f"[faults] stacked mount: noticed {(logged_at(back) - stacked_at) * 1000:.0f} ms after the mount, "
                  f"watched again {(logged_at(again) - stacked_at - SETTLE) * 1000:.0f} ms beyond the settle")
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)  # counted as changed
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1

            mark = watcher.mark()
            movie(media, "On Top (2024)")  # through the top mount
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            finish(watcher, jellyfin, 2)
        assert str(media / "On Top (2024)" / "On Top (2024).mkv") in jellyfin.items


@pytest.mark.root_only("mkfs.ext4")
def test_disk_mounted_below_the_root_goes_away(tmp_path: Path, jellyfin: JellyfinEmulator,
                                               env: dict[str, str]) -> None:
    media = tmp_path / "media"
    movie(media / "local", "Local (1990)")
    with LoopDisk(tmp_path / "usb.img", media / "usb") as disk:
        movie(disk.mount_point, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [media], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(media / "local", "New Local (2024)")  # made while everything is there
            mark = watcher.mark()
            _umount(os.fsencode(disk.mount_point))
            down_at = time.time()
            line = watcher.wait_for_line(re.escape(f"{media} is unmounted ("), WAIT, start=mark)
            assert f"{disk.mount_point} mounted below it is not mounted" in line
            watcher.wait_for_line(r"refresh suppressed: ", WAIT, start=mark)
            assert jellyfin.refreshes == []

            disk.mount()
            up_at = time.time()
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            down_and_back(watcher, media, "disk below the root unmounted", mark, down_at, up_at)
            finish(watcher, jellyfin, 1)
        assert str(media / "local" / "New Local (2024)" / "New Local (2024).mkv") in jellyfin.items


@pytest.mark.parametrize("how", ["deleted and recreated", "renamed and renamed back"])
def test_root_goes_missing_and_comes_back(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str],
                                          how: str) -> None:
    # The library folder also exists in a second library location that stays: the kept batch
    # must wait for the missing one all the same.
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    aside = tmp_path / "aside"
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
    with watcher_for(config, env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2024)")  # made while the root is there
        mark = watcher.mark()
        if how == "deleted and recreated":
            shutil.copytree(root, aside)
            shutil.rmtree(root)
        else:
            root.rename(aside)
        watcher.wait_for_line(re.escape(f"{root} is missing ("), WAIT, start=mark)
        watcher.wait_for_line(r"refresh suppressed: .*" + re.escape(f"{root} is missing"), WAIT, start=mark)
        assert jellyfin.refreshes == []

        if how == "deleted and recreated":
            shutil.copytree(aside, root)
            shutil.rmtree(aside)
        else:
            aside.rename(root)
        watcher.wait_for_line(re.escape(f"watching {root} again"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1

        mark = watcher.mark()
        movie(root, "After (2025)")  # watched again: a new file is seen
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 2)
    assert {str(root / title / f"{title}.mkv") for title in ("Seed (2000)", "New (2024)", "After (2025)")} \
        == set(jellyfin.items)


# --- permissions and the inotify limit ------------------------------------------------------


def without_permission_bypass(watcher: WatcherProcess) -> WatcherProcess:
    """Run ``watcher`` without root's permission bypass.

    The interpreter lives under ``/root`` (mode 0700), out of reach of ``nobody``; so the
    watcher keeps uid 0 but loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv
    --bounding-set``): the kernel then checks file mode bits for it like for any user, and
    folders owned by ``nobody`` with mode 0700 are closed to it.
    """
    watcher.argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *watcher.argv]
    return watcher


def private_to_nobody(folder: Path) -> None:
    os.chown(folder, 65534, 65534)
    folder.chmod(0o700)


@pytest.mark.root_only("setpriv")
def test_permission_denied_on_the_root(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root, other = tmp_path / "movies", tmp_path / "other"
    movie(root, "Seed (2000)")
    movie(other, "Elsewhere (1990)")
    private_to_nobody(root)
    jellyfin.libraries = [Library("Movies", [str(root), str(other)])]
    assert jellyfin.index() == 2
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root, other], tmp_path / "state")
    with without_permission_bypass(watcher_for(config, env)) as watcher:
        line = watcher.wait_for_line(re.escape(f"{root} is unreadable ("), WAIT)
        assert "permission denied" in line
        watcher.wait_for_line(r"watching 1 of 2 roots: " + re.escape(str(other)), WAIT)
        movie(other, "New Elsewhere (2024)")
        watcher.wait_for_line(r"refresh suppressed: .*" + re.escape(f"{root} is unreadable"), WAIT)
        assert jellyfin.refreshes == []

        mark = watcher.mark()
        root.chmod(0o755)  # the user fixes the permissions
        watcher.wait_for_line(re.escape(f"watching {root} again"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    assert str(other / "New Elsewhere (2024)" / "New Elsewhere (2024).mkv") in jellyfin.items


@pytest.mark.root_only("setpriv")
def test_permission_denied_on_a_subfolder(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    private = movie(root, "Private (2001)").parent
    private_to_nobody(private)
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 2
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
    with without_permission_bypass(watcher_for(config, env)) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        error = watcher.wait_for_line(r" ERROR .*not watched", WAIT)
        assert f"permission denied on {private}" in error, error
        assert "give the watcher's user read and execute access" in error
        movie(root, "New (2024)")  # in a folder that is watched
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)
    assert watcher.count(r" ERROR ") == 1  # said once
    assert str(root / "New (2024)" / "New (2024).mkv") in jellyfin.items


MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


def watches_of_user(uid: int) -> int:
    """inotify watches held by the processes of ``uid`` (what ``max_user_watches`` limits)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for descriptor in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{descriptor}") as file:
                    total += sum(1 for line in file if line.startswith("inotify wd:"))
    return total


@pytest.mark.root_only()
def test_inotify_watch_limit_too_low_for_the_tree(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                  env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    for index in range(600):
        movie(root, f"Film {index:03d}")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 600
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
    old = MAX_USER_WATCHES.read_text().strip()
    # Room for 200 more watches of root's processes than they hold now: the watcher's 601 do
    # not fit. Other processes of root (other tests?) could not add many more watches either:
    # kept brief, from the watcher's start to its ERROR line.
    low = watches_of_user(0) + 200
    with contextlib.ExitStack() as stack:
        try:
            MAX_USER_WATCHES.write_text(f"{low}\n")
            watcher = watcher_for(config, env).start()
            stack.callback(watcher.close)
            error = watcher.wait_for_line(r" ERROR .*not watched", WAIT)
        finally:
            MAX_USER_WATCHES.write_text(f"{old}\n")
        print(f"[faults] inotify limit {low} (restored to {old}): {error.split(' ERROR ', 1)[1][:160]}…")
        assert re.search(r"\d+ of 601 folders under " + re.escape(str(root)) + " are not watched", error), error
        assert f"the inotify watch limit (now {low}) is reached" in error
        assert re.search(r"raise it with sysctl fs\.inotify\.max_user_watches=\d+", error)
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        (root / "New (2024).mkv").write_bytes(MKV)  # the root itself is watched
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)


# --- a hung FUSE mount ---------------------------------------------------------------------------


@pytest.mark.root_only("bindfs", "fusermount")
def test_fuse_mount_hung_at_start_up(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    source, other = tmp_path / "source", tmp_path / "other"
    movie(source, "Seed (2000)")
    movie(other, "Elsewhere (1990)")
    # Jellyfin reads through the source folder: nothing here touches the mount while it hangs.
    jellyfin.libraries = [Library("Movies", [str(source), str(other)])]
    assert jellyfin.index() == 2
    state_dir = tmp_path / "state"
    with BindFS(source, tmp_path / "fuse") as fuse:
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [fuse.mount_point, other], state_dir)
        fuse.stop()
        started = time.monotonic()
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(re.escape(f"{fuse.mount_point} is unresponsive (no answer within"), WAIT)
            watcher.wait_for_line(r"watching 1 of 2 roots: " + re.escape(str(other)), WAIT)
            print(f"[faults] hung FUSE at start-up: watching the other root {time.monotonic() - started:.2f} s "
                  "after the start")
            movie(other, "New Elsewhere (2024)")
            watcher.wait_for_line(r"refresh suppressed: .*" + re.escape(f"{fuse.mount_point} is unresponsive"), WAIT)
            stop_hung(watcher)  # SIGTERM with the mount still hung
        assert jellyfin.refreshes == []

        fuse.resume()
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"were pending when the watcher last stopped", WAIT)
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            finish(watcher, jellyfin, 1)
    assert str(other / "New Elsewhere (2024)" / "New Elsewhere (2024).mkv") in jellyfin.items


@pytest.mark.root_only("bindfs", "fusermount")
def test_fuse_mount_hangs_while_running(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    source = tmp_path / "source"
    movie(source, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(source)])]
    assert jellyfin.index() == 1
    with BindFS(source, tmp_path / "fuse") as fuse:
        root = fuse.mount_point
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            # A new file, made through the mount while it answers. (A new folder is another
            # story: watchdog walks it in-process, see the next test.)
            (root / "Seed (2000)" / "New (2024).mkv").write_bytes(MKV)
            fuse.stop()
            hung_at = time.time()
            line = watcher.wait_for_line(re.escape(f"{root} is unresponsive (no answer within"), WAIT)
            print(f"[faults] FUSE daemon stopped → root marked unresponsive {(logged_at(line) - hung_at) * 1000:.0f} ms "
                  f"(the batch fell due {QUIET:g} s after the change; probe timeout {PROBE_TIMEOUT:g} s)")
            watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            assert jellyfin.refreshes == []
            assert watcher.alive()

            mark = watcher.mark()
            fuse.resume()
            resumed_at = time.time()
            healthy = watcher.wait_for_line(re.escape(f"{root} is healthy again"), WAIT, start=mark)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            print(f"[faults] FUSE daemon resumed → healthy again {(logged_at(healthy) - resumed_at) * 1000:.0f} ms "
                  f"(health checks every {HEALTH_INTERVAL:g} s)")
            finish(watcher, jellyfin, 1)
    assert str(source / "Seed (2000)" / "New (2024).mkv") in jellyfin.items


@pytest.mark.root_only("bindfs", "fusermount")
def test_fuse_mount_hangs_while_watchdog_walks_a_new_folder(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                           env: dict[str, str]) -> None:
    # watchdog watches a folder moved into a root by walking it, in the watcher's own process:
    # when the mount hangs during that walk, a thread of the watcher blocks in the kernel
    # until the FUSE daemon answers, and the events it was handling are not delivered.
    source = tmp_path / "source"
    movie(source, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(source)])]
    assert jellyfin.index() == 1
    state_dir = tmp_path / "state"
    with BindFS(source, tmp_path / "fuse") as fuse:
        root = fuse.mount_point
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], state_dir)
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            # The watcher is on duty once it has checked that every folder is watched (as
            # READY=1 says): folders made behind the mount's back before then would be its
            # start-up, not this scenario.
            wait_verified(state_dir, WAIT)
            # A big folder made behind the mount's back (no events), then moved in through it.
            incoming = source / ".incoming"
            for index in range(1500):
                (incoming / f"Extras {index // 30:02d}" / f"Part {index:04d}").mkdir(parents=True)
            (incoming / "Big (2024).mkv").write_bytes(MKV)
            (root / ".incoming").rename(root / "Big (2024)")
            fuse.stop()  # while watchdog walks the 1,500 folders through the mount
            watcher.wait_for_line(re.escape(f"{root} is unresponsive ("), WAIT)

            mark = watcher.mark()
            sent = time.monotonic()
            watcher.send_signal(signal.SIGTERM)
            arrived, last = watcher.wait_for_timed_line(r"stopped; ", STOP_WITHIN + 0.5, start=mark)
            stuck = watcher.count(r"watching did not stop within") > 0
            print(f"[faults] hang during watchdog's walk of a new folder: 'stopped' {(arrived - sent) * 1000:.0f} ms "
                  f"after SIGTERM; a watchdog thread {'was' if stuck else 'was not'} stuck in the kernel")
            assert arrived - sent <= STOP_WITHIN
            assert re.search(r"stopped; \d+ changes pending under .*, saved in ", last), watcher.output
            fuse.resume()  # the stuck thread returns: only now can the kernel end the process
            wait_until(lambda: not watcher.alive(), WAIT, message="the watcher did not end after the resume")
            assert watcher.returncode == 0
        assert jellyfin.refreshes == []

        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"were pending when the watcher last stopped", WAIT)
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            finish(watcher, jellyfin, 1)
    assert str(source / "Big (2024)" / "Big (2024).mkv") in jellyfin.items


# --- the server misbehaves while a batch is due ---------------------------------------------------


SERVER_FAULTS = {
    # fault: the log line that says the batch is kept
    "503": r"WARNING refresh failed: Jellyfin answered HTTP 503 .*; keeping \d+ changes, retrying in \d+ s",
    # Jellyfin's view of the roots is asked first: a server that does not answer reads as one
    # stuck on a hung mount, and holds the batch.
    "timeout": r"WARNING refresh held: Jellyfin did not list \S+ within 1 s while this machine lists .*; keeping \d+ changes",
    "connection refused": r"WARNING refresh failed: cannot connect to Jellyfin at \S+: .*; keeping \d+ changes",
    "401": r"ERROR Jellyfin at \S+ rejected the API key \(HTTP 401\).*; keeping \d+ changes and watching on",
}


@pytest.mark.parametrize("fault", list(SERVER_FAULTS))
def test_server_fault_while_a_batch_is_due(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str],
                                           fault: str) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    key = jellyfin.api_key
    refused_port = closed_port()
    with contextlib.ExitStack() as stack:
        if fault == "connection refused":
            url = f"http://127.0.0.1:{refused_port}"
        else:
            gate = stack.enter_context(Gate(jellyfin.url))
            url = gate.url
        config = fault_config(tmp_path / "config.toml", url, [root], tmp_path / "state", timeout=1)
        watcher = stack.enter_context(watcher_for(config, env))
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        if fault == "503":
            jellyfin.set_down(True)
        elif fault == "timeout":
            gate.hang = True
        elif fault == "401":
            jellyfin.api_key = "another-key-the-server-has-now"

        movie(root, "New (2024)")
        watcher.wait_for_line(SERVER_FAULTS[fault], WAIT)
        assert jellyfin.refreshes == []
        assert watcher.alive()

        mark = watcher.mark()
        if fault == "503":
            jellyfin.set_down(False)
        elif fault == "timeout":
            gate.hang = False
        elif fault == "401":
            jellyfin.api_key = key
        else:  # the server starts listening on that port
            stack.enter_context(Gate(jellyfin.url, port=refused_port))
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    assert str(root / "New (2024)" / "New (2024).mkv") in jellyfin.items


# --- the watcher itself dies ----------------------------------------------------------------------


def test_sigkill_with_a_batch_pending_then_restart(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                   env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    state_dir = tmp_path / "state"
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], state_dir, quiet=5)
    with watcher_for(config, env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2024)")
        wait_until(lambda: pending_in_state(state_dir), WAIT, message="the pending batch was not saved")
        watcher.send_signal(signal.SIGKILL)
        wait_until(lambda: not watcher.alive(), WAIT)
    assert jellyfin.refreshes == []

    with watcher_for(config, env) as watcher:
        watcher.wait_for_line(r"\d+ changes under " + re.escape(str(root)) + " were pending when the watcher last stopped",
                              WAIT)
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)
    assert pending_in_state(state_dir) is None
    assert str(root / "New (2024)" / "New (2024).mkv") in jellyfin.items


# --- a flapping USB disk ------------------------------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_usb_flap_gives_one_refresh_after_it_settles(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                     env: dict[str, str]) -> None:
    media = tmp_path / "media"
    movie(media / "local", "Local (1990)")
    with LoopDisk(tmp_path / "usb.img", media / "usb") as disk:
        usb = disk.mount_point
        movie(usb, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(media)])]
        assert jellyfin.index() == 2
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [usb], tmp_path / "state")
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(usb, "New (2024)")  # just before the connector starts to wobble
            mark = watcher.mark()
            start = time.monotonic()
            for cycle in range(10):  # 10 unmount/mount cycles in 5 s
                disk.unmount()
                time.sleep(max(0.0, start + cycle * 0.5 + 0.25 - time.monotonic()))  # pacing the flap
                disk.mount()
                time.sleep(max(0.0, start + cycle * 0.5 + 0.5 - time.monotonic()))
            settled = time.monotonic()
            print(f"[faults] USB flap: 10 cycles in {settled - start:.2f} s; "
                  f"{watcher.count(r'is unmounted') } 'unmounted' warnings logged during it")
            assert jellyfin.refreshes == [], "refreshed while the disk was flapping"

            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            finish(watcher, jellyfin, 1)
        assert all(refresh.time > settled for refresh in jellyfin.refreshes)
        assert str(usb / "New (2024)" / "New (2024).mkv") in jellyfin.items


# --- odd input ---------------------------------------------------------------------------------


def make_path(root: bytes, parts: Sequence[bytes], *, file: bytes | None = None) -> None:
    """Create folders ``parts`` below ``root`` one level at a time through directory
    descriptors (so the whole path may exceed PATH_MAX), and ``file`` in the last one."""
    current = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=current)
            following = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = following
        if file is not None:
            os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=current))
    finally:
        os.close(current)


ODD_NAMES = [
    b"new\nline (2024).mkv",
    b"invalid \xff\xfe utf-8 (2024).mkv",
    "\u00e9".encode() * 125 + b".mkv",  # 254 bytes, 129 characters
    b"y" * 251 + b".mkv",  # 255 bytes: the longest name
]


def odd_tree(root: Path) -> bytes:
    """A library folder with what trips naive code up, made before the watcher starts: a tree
    200 folders deep, symlink loops, a folder whose name is not UTF-8 (Latin-1, as an old
    Samba share holds them). Returns the root as bytes."""
    movie(root, "Seed (2000)")
    broot = os.fsencode(root)
    make_path(broot, [b"deep"] + [b"d"] * 199, file=b"deep (2000).mkv")  # depth 200
    make_path(broot, [b"Caf\xe9 (1999)"], file=b"Caf\xe9 (1999).mkv")
    os.symlink(".", root / "loop")
    os.symlink("../movies", root / "Seed (2000)" / "up")
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    return broot


def assert_odd_names_handled(watcher: WatcherProcess, jellyfin: JellyfinEmulator, folder: bytes) -> None:
    # No line is split by a newline in a name: each starts with its time stamp.
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in watcher.lines), \
        watcher.output
    paths = set(jellyfin.items)
    for name in ODD_NAMES:
        assert os.fsdecode(folder + b"/" + name) in paths, name


def test_odd_names_deep_trees_and_symlink_loops(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    broot = odd_tree(root)
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 3
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
    with watcher_for(config, env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        for name in ODD_NAMES:  # each a separate create and close-write event
            descriptor = os.open(broot + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(descriptor, MKV)
            os.close(descriptor)
        make_path(broot, [b"deep"] + [b"d"] * 199 + [b"deeper"], file=b"deeper (2024).mkv")
        make_path(broot, [b"Caf\xe9 (1999)"], file=b"Caf\xe9 bis (1999).mkv")
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)  # one refresh, no storm
    assert " ERROR " not in watcher.output, watcher.output
    assert_odd_names_handled(watcher, jellyfin, broot)
    assert len(jellyfin.items) == 3 + len(ODD_NAMES) + 2


def test_odd_names_on_a_polled_root_with_paths_beyond_path_max(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                 env: dict[str, str]) -> None:
    # Paths longer than PATH_MAX cannot be watched (nor listed, nor scanned by Jellyfin): an
    # ERROR says so, and the root is polled instead (fallback = "poll"); the poller then
    # meets the same odd names.
    root = tmp_path / "movies"
    broot = odd_tree(root)
    make_path(broot, [b"x" * 40] * 110)  # 110 levels of 41 bytes: paths beyond PATH_MAX (4096)
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 3
    config = fault_config(tmp_path / "config.toml", jellyfin.url, [root], tmp_path / "state")
    with watcher_for(config, env) as watcher:
        error = watcher.wait_for_line(r" ERROR .*not watched", WAIT)
        print(f"[faults] paths beyond PATH_MAX: {error.split(' ERROR ', 1)[1][:120]}…{error[-190:]}")
        assert re.search(r"cannot be listed: file name too long", error), error
        assert "permission denied" not in error, error
        assert len(error) < 1000, "the line quotes the whole 4 KiB path"
        watcher.wait_for_line(r"polling " + re.escape(str(root)) + r" every 1 s: inotify cannot watch all of it", WAIT)
        # The inotify watch goes once the first polling cycle has taken its baseline: from
        # then on only the poller sees changes.
        wait_until(lambda: not watched_inodes(str(watcher.pid)), WAIT, message="the inotify watch was kept")

        staging = broot + b"/.staging"  # hidden: ignored until it is renamed
        os.mkdir(staging)
        for name in ODD_NAMES:
            make_path(staging, [], file=name)
        make_path(staging, [b"Caf\xe9 deep"] + [b"d"] * 199, file=b"bottom (2024).mkv")
        os.rename(staging, broot + b"/Odd (2024)")  # one change, seen by one polling cycle
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        finish(watcher, jellyfin, 1)
    assert_odd_names_handled(watcher, jellyfin, broot + b"/Odd (2024)")


# --- soak ---------------------------------------------------------------------------------------


def steady_figures(pid: int, seconds: float = 1.0) -> tuple[int, int, int]:
    """:func:`process_figures` of an idle process, read every 20 ms for ``seconds``: the last
    RSS, and the fewest threads and descriptors seen (a health probe running adds a pipe and
    a Jellyfin request a thread for a few milliseconds: those are not the baseline)."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(process_figures(pid))
        time.sleep(0.02)  # sampling, not waiting for a result
    return readings[-1][0], min(reading[1] for reading in readings), min(reading[2] for reading in readings)


def process_figures(pid: int) -> tuple[int, int, int]:
    """(VmRSS in KiB, threads, open file descriptors) of process ``pid``."""
    with open(f"/proc/{pid}/status") as file:
        rss = next(int(line.split()[1]) for line in file if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


SOAK_FLAPS = 1000
SOAK_EVENTS = 200_000
SOAK_BUDGET = 45.0
"""Seconds the soak's load phase may take; what did not fit is printed, not failed."""


@pytest.mark.root_only()
def test_soak_mount_flaps_and_file_events(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    disk = tmp_path / "disk"
    flapping, busy = tmp_path / "media" / "flapping", tmp_path / "media" / "busy"
    with TmpfsMount(disk, size="256m"), TmpfsMount(busy, size="256m"), bind_mounted(disk, flapping):
        movie(flapping, "Seed (2000)")
        movie(busy, "Busy Seed (2000)")
        jellyfin.libraries = [Library("Movies", [str(tmp_path / "media")])]
        assert jellyfin.index() == 2
        state_dir = tmp_path / "state"
        config = fault_config(tmp_path / "config.toml", jellyfin.url, [flapping, busy], state_dir)
        with watcher_for(config, env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            source, target = os.fsencode(disk), os.fsencode(flapping)
            storm = busy / "storm"
            storm.mkdir()

            def load(flaps: int, events: int, budget: float) -> tuple[int, int, float]:
                """Flap the mount in one thread while files are created, closed and deleted in
                another (three events each); stop at the budget. Returns what was done."""
                done = {"flaps": 0, "events": 0}
                deadline = time.monotonic() + budget
                started = time.monotonic()

                def flapper() -> None:
                    pace = 0.02
                    while done["flaps"] < flaps and time.monotonic() < deadline:
                        _umount(target)
                        time.sleep(pace / 2)  # pacing: let the watcher see the flap
                        _mount_bind(source, target)
                        time.sleep(pace / 2)
                        done["flaps"] += 1

                thread = threading.Thread(target=flapper, name="soak-flapper")
                thread.start()
                try:
                    base = os.fsencode(storm) + b"/f"
                    while done["events"] < events and time.monotonic() < deadline:
                        names = [base + str(index).encode() + b".mkv" for index in range(500)]
                        for name in names:
                            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644))
                        for name in names:
                            os.unlink(name)
                        done["events"] += 3 * len(names)
                finally:
                    thread.join()
                    if not is_mounted(flapping):
                        _mount_bind(source, target)
                return done["flaps"], done["events"], time.monotonic() - started

            def idle() -> bool:
                """Every root watched and healthy, nothing pending, the refresh scanned."""
                status = read_status_file(state_dir)
                if status is None:
                    return False
                return (status["pending"] is None and all(root["watched"] and root["state"] == "healthy"
                                                          for root in status["roots"])
                        and jellyfin.wait_for_scans_idle(0))

            warm = load(100, 20_000, 8.0)
            wait_until(idle, 30, interval=0.1, message=f"not idle after the warm-up:\n{watcher.output[-3000:]}")
            before = steady_figures(watcher.pid)
            refreshes_before = len(jellyfin.refreshes)
            mark = watcher.mark()

            flaps, events, took = load(SOAK_FLAPS, SOAK_EVENTS, SOAK_BUDGET)
            wait_until(idle, 30, interval=0.1, message=f"not idle after the soak:\n{watcher.output[-3000:]}")
            with contextlib.suppress(AssertionError):  # the assertions below say what is off
                wait_until(lambda: process_figures(watcher.pid)[1:] == before[1:], WAIT, interval=0.02)
            after = steady_figures(watcher.pid)
            later = watcher.lines[mark:]
            counted = sum(int(match.group(1)) for line in later if (match := re.search(r"batch due: (\d+) changes", line)))
            overflows = sum("event queue overflowed" in line for line in later)
            print(f"[faults] soak: warm-up {warm[0]} flaps + {warm[1]} events in {warm[2]:.1f} s; then {flaps} flaps "
                  f"+ {events} file events in {took:.1f} s (asked: {SOAK_FLAPS} + {SOAK_EVENTS}); "
                  f"{len(jellyfin.refreshes) - refreshes_before} refreshes for {counted} changes counted, "
                  f"{overflows} kernel queue overflows; "
                  f"{watcher.count('is unmounted')} 'unmounted' warnings in all; "
                  f"RSS {before[0]} → {after[0]} KiB ({after[0] - before[0]:+d}), threads {before[1]} → {after[1]}, "
                  f"fds {before[2]} → {after[2]}")
            assert after[0] - before[0] < 5 * 1024, "RSS grew by 5 MiB or more"
            # Worker threads end after a few idle seconds: fewer threads at the end is no leak.
            assert after[1] <= before[1], "threads left behind"
            assert after[2] == before[2], "file descriptors left open"
            finish(watcher, jellyfin, len(jellyfin.refreshes))
