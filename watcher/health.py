"""Root health: is every library folder really there, on the disk it belongs to?

States, in the order they are decided:

* ``unresponsive``: the filesystem probe did not answer within the probe timeout.
* ``unmounted``: the mount point the root lives on (the longest mount-point prefix of its
  real path in the mount table) is not the expected one, e.g. ``/`` instead of ``/mnt/usb``.
* ``missing``: not there, or not a folder.
* ``unreadable``: permission denied, or an I/O error such as a dead FUSE daemon (ENOTCONN).
* ``empty``: no entries — the bare mount point a failed mount leaves behind.
* ``healthy``.

Every filesystem call on a root (``realpath``, ``stat``, ``scandir``) runs in a child
process that is killed when the deadline passes: on a dead NFS/SMB/FUSE mount these calls
block in the kernel and no thread can be cancelled (FACTS.md, "psutil and mounts"). The
mount table is read in-process with ``psutil.disk_partitions(all=True)``, which never
blocks, even when a mount is dead; ``all=False`` would drop nfs, cifs, tmpfs and fuse.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from watcher.config import Root

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    HEALTHY = "healthy"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    UNMOUNTED = "unmounted"
    UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True, slots=True)
class Health:
    """What a probe found for one root.

    ``mount_point``/``fstype``: where the root's real path lives per the mount table (None
    when the probe could not resolve it). ``device``/``inode``: of the root folder (None
    unless it was stat'ed).
    """

    root: Root
    state: State
    reason: str = ""
    mount_point: Path | None = None
    fstype: str | None = None
    device: int | None = None
    inode: int | None = None
    is_file: bool = False

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY

    def describe(self) -> str:
        """``"/mnt/usb/movies is unmounted (…)"``: the line a user reads."""
        if self.healthy:
            return f"{self.root.path} is healthy"
        return f"{self.root.path} is {self.state} ({self.reason})"


# The child's program: one thread per root so that one hung root does not hide the others;
# one JSON line per root on stdout as soon as it is known. Standard library only, run with
# ``python -I -S`` so that it starts in milliseconds.
_PROBE_PROGRAM = r"""
import json, os, stat, sys, threading
lock = threading.Lock()
def emit(index, **result):
    result["index"] = index
    line = json.dumps(result) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
def probe(index, path):
    real = os.path.realpath(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return emit(index, real=real, kind="absent")
    except NotADirectoryError:
        return emit(index, real=real, kind="absent")
    except PermissionError:
        return emit(index, real=real, kind="denied")
    except OSError as error:
        return emit(index, real=real, kind="error", errno=error.errno, error=error.strerror)
    if not stat.S_ISDIR(status.st_mode):
        return emit(index, real=real, kind="file")
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except PermissionError:
        return emit(index, real=real, kind="denied", dev=status.st_dev, ino=status.st_ino)
    except OSError as error:
        return emit(index, real=real, kind="error", errno=error.errno, error=error.strerror)
    emit(index, real=real, kind="dir", empty=empty, dev=status.st_dev, ino=status.st_ino)
threads = [threading.Thread(target=probe, args=(i, p), daemon=True) for i, p in enumerate(sys.argv[1:])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""

_ERRNO_HINTS = {
    107: "transport endpoint is not connected: the FUSE daemon or network share is gone",  # ENOTCONN
    116: "stale file handle: the network share was re-exported or the server restarted",  # ESTALE
    5: "input/output error: the disk or share is failing",  # EIO
    112: "host is down",  # EHOSTDOWN
}

_unreaped: list[subprocess.Popen[bytes]] = []
_unreaped_lock = threading.Lock()


def probe_roots(
    roots: Sequence[Root],
    expected_mounts: Mapping[Path, Path],
    timeout: float,
    stop: threading.Event | None = None,
) -> list[Health]:
    """Check every root; one :class:`Health` per root, in order.

    ``expected_mounts`` maps a root's path to the mount point it must live on (the
    configured ``mount``, else the one recorded when it was last healthy); a root with
    neither is checked only for existence, readability and entries. ``timeout`` (seconds)
    bounds the whole probe: a root whose answer is not in by then is ``unresponsive``.
    ``stop``, when set, cuts the wait short (roots not answered count as unresponsive).
    Never raises for a filesystem problem; never blocks longer than ``timeout``.
    """
    if not roots:
        return []
    answers = _run_probe([str(root.path) for root in roots], timeout, stop)
    mounts = mount_table()
    results = []
    for index, root in enumerate(roots):
        answer = answers.get(index)
        expected = root.mount or expected_mounts.get(root.path)
        results.append(_judge(root, answer, expected, mounts, timeout))
    return results


def mount_table() -> dict[str, tuple[str, str]]:
    """Mount point → (device, filesystem type), from ``psutil.disk_partitions(all=True)``.

    For a mount point listed more than once (stacked mounts), the last entry is the one on
    top. Never blocks on a dead mount.
    """
    table: dict[str, tuple[str, str]] = {}
    for partition in psutil.disk_partitions(all=True):
        table[partition.mountpoint] = (partition.device, partition.fstype)
    return table


def mount_point_of(real_path: str, mounts: Mapping[str, tuple[str, str]]) -> str:
    """The longest mount point in ``mounts`` that contains ``real_path`` (``/`` at worst)."""
    best = "/"
    for mount_point in mounts:
        if len(mount_point) <= len(best):
            continue
        if real_path == mount_point or real_path.startswith(mount_point.rstrip("/") + "/"):
            best = mount_point
    return best


def _judge(
    root: Root,
    answer: dict[str, object] | None,
    expected: Path | None,
    mounts: Mapping[str, tuple[str, str]],
    timeout: float,
) -> Health:
    if answer is None:
        return Health(
            root,
            State.UNRESPONSIVE,
            f"no answer within {timeout:g} s: a hung network share or FUSE mount?",
        )
    real = str(answer.get("real") or root.path)
    mount_point = mount_point_of(real, mounts)
    fstype = mounts.get(mount_point, ("", ""))[1] or None
    common = {"mount_point": Path(mount_point), "fstype": fstype}
    device = answer.get("dev")
    inode = answer.get("ino")
    if isinstance(device, int) and isinstance(inode, int):
        common |= {"device": device, "inode": inode}
    if expected is not None and Path(mount_point) != expected:
        return Health(
            root,
            State.UNMOUNTED,
            f"it lives on {mount_point} instead of the mount point {expected}: is the disk or share mounted?",
            **common,  # type: ignore[arg-type]
        )
    kind = answer.get("kind")
    if kind == "absent":
        return Health(root, State.MISSING, "no such folder", **common)  # type: ignore[arg-type]
    if kind == "file":
        return Health(root, State.MISSING, "it is a file, not a folder", is_file=True, **common)  # type: ignore[arg-type]
    if kind == "denied":
        return Health(root, State.UNREADABLE, "permission denied", **common)  # type: ignore[arg-type]
    if kind == "error":
        number = answer.get("errno")
        hint = _ERRNO_HINTS.get(number) if isinstance(number, int) else None
        return Health(root, State.UNREADABLE, hint or str(answer.get("error")), **common)  # type: ignore[arg-type]
    if answer.get("empty"):
        return Health(root, State.EMPTY, "it has no entries: a bare mount point left by a failed mount?", **common)  # type: ignore[arg-type]
    return Health(root, State.HEALTHY, "", **common)  # type: ignore[arg-type]


def _run_probe(paths: list[str], timeout: float, stop: threading.Event | None) -> dict[int, dict[str, object]]:
    """Run the probe child; return the answers that arrived before the deadline, by index."""
    _reap()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _PROBE_PROGRAM, *paths],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    assert process.stdout is not None
    answers: dict[int, dict[str, object]] = {}
    buffer = b""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    try:
        while len(answers) < len(paths):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                break
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                answer = json.loads(line)
                answers[int(answer.pop("index"))] = answer
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            # Still in the kernel (a hung mount); reap it on a later probe.
            with _unreaped_lock:
                _unreaped.append(process)
    return answers


def _reap() -> None:
    with _unreaped_lock:
        _unreaped[:] = [process for process in _unreaped if process.poll() is None]
