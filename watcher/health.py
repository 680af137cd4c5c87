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
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from watcher.config import Root
from watcher.mounts import mount_ids
from watcher.state import SavedState

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
    mounts: tuple[tuple[str, int], ...] = ()
    """The mount point the root lives on and every mount point below it, each with its
    kernel mount ID (0 where unknown): a change means the watches on it died."""

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY

    @property
    def mounts_below(self) -> list[str]:
        """The mount points below the root (``mounts`` starts with the root's own)."""
        return [point for point, _ in self.mounts[1:]]

    def learn_into(self, saved: SavedState) -> bool:
        """Record where this (healthy) root lives in ``saved``; True if anything was new."""
        mount_point = None if self.mount_point is None else str(self.mount_point)
        return saved.learn(str(self.root.path), mount_point, self.mounts_below, self.root.mount is not None)

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
    expected_below: Mapping[Path, Sequence[str]] | None = None,
) -> list[Health]:
    """Check every root; one :class:`Health` per root, in order.

    ``expected_mounts`` maps a root's path to the mount point it must live on (the
    configured ``mount``, else the one recorded when it was last healthy); a root with
    neither is checked only for existence, readability and entries. ``timeout`` (seconds)
    bounds the whole probe: a root whose answer is not in by then is ``unresponsive``.
    ``expected_below`` maps a root's path to the mount points below it that must be
    mounted (a disk mounted inside a library folder: Jellyfin would drop its items).
    ``stop``, when set, cuts the wait short (roots not answered count as unresponsive).
    Never raises for a filesystem problem; never blocks longer than ``timeout``.
    """
    if not roots:
        return []
    answers = _run_probe([str(root.path) for root in roots], timeout, stop)
    mounts = mount_table()
    ids = mount_ids()
    results = []
    for index, root in enumerate(roots):
        answer = answers.get(index)
        expected = root.mount or expected_mounts.get(root.path)
        health = _judge(root, answer, expected, mounts, timeout)
        if answer is not None and health.mount_point is not None:
            real = str(answer.get("real") or root.path)
            below = mounts_below(real, mounts)
            health = replace(health, mounts=tuple((point, ids.get(point, 0)) for point in [str(health.mount_point), *below]))
            gone = [point for point in (expected_below or {}).get(root.path, ()) if point not in mounts]
            if gone and health.state in (State.HEALTHY, State.EMPTY):
                health = replace(
                    health,
                    state=State.UNMOUNTED,
                    reason=f"{_list_paths(gone)} mounted below it {'is' if len(gone) == 1 else 'are'} not mounted: "
                    "is the disk or share there? (if it was removed on purpose: jellyfin-watcher check --relearn)",
                )
        results.append(health)
    return results


def mounts_below(real_path: str, mounts: Mapping[str, tuple[str, str]]) -> list[str]:
    """Mount points strictly inside ``real_path``, sorted."""
    prefix = real_path.rstrip("/") + "/"
    return sorted(point for point in mounts if point.startswith(prefix))


def _list_paths(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


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
    device, inode = answer.get("dev"), answer.get("ino")
    found = Health(
        root,
        State.HEALTHY,
        mount_point=Path(mount_point),
        fstype=mounts.get(mount_point, ("", ""))[1] or None,
        device=device if isinstance(device, int) else None,
        inode=inode if isinstance(inode, int) else None,
    )
    kind = answer.get("kind")
    if expected is not None and Path(mount_point) != expected:
        return replace(
            found,
            state=State.UNMOUNTED,
            reason=f"it lives on {mount_point} instead of the mount point {expected}: is the disk or share mounted?",
        )
    if kind == "absent":
        return replace(found, state=State.MISSING, reason="no such folder")
    if kind == "file":
        return replace(found, state=State.MISSING, reason="it is a file, not a folder", is_file=True)
    if kind == "denied":
        return replace(found, state=State.UNREADABLE, reason="permission denied")
    if kind == "error":
        number = answer.get("errno")
        hint = _ERRNO_HINTS.get(number) if isinstance(number, int) else None
        return replace(found, state=State.UNREADABLE, reason=hint or str(answer.get("error")))
    if answer.get("empty"):
        return replace(found, state=State.EMPTY, reason="it has no entries: a bare mount point left by a failed mount?")
    return found


def _run_probe(paths: list[str], timeout: float, stop: threading.Event | None) -> dict[int, dict[str, object]]:
    """Run the probe child; return the answers that arrived before the deadline, by index."""
    lines, _ = run_child(_PROBE_PROGRAM, paths, timeout, stop)
    return {int(line.pop("index")): line for line in lines}  # type: ignore[call-overload]


def run_child(
    program: str,
    arguments: Sequence[str],
    timeout: float,
    stop: threading.Event | None,
    stdin: str | None = None,
) -> tuple[list[dict[str, object]], bool]:
    """Run ``program`` (Python source, standard library only) in a child process.

    ``stdin`` (optional) is written to the child's standard input by a helper thread.
    The child writes one JSON object per line on stdout. Returns the objects that arrived
    within ``timeout`` seconds, and whether the child finished by then. A child still
    running at the deadline (or when ``stop`` is set) is killed with SIGKILL; one stuck in
    the kernel on a hung mount is reaped later. Never blocks longer than ``timeout`` + 0.2 s.
    """
    _reap()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", program, *arguments],
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    assert process.stdout is not None
    if stdin is not None:
        threading.Thread(target=_feed, args=(process, stdin), name="child-stdin", daemon=True).start()
    lines: list[dict[str, object]] = []
    buffer = b""
    finished = False
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                break
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if not readable:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                finished = True
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(json.loads(line) for line in complete)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            # Still in the kernel (a hung mount); reap it on a later run.
            with _unreaped_lock:
                _unreaped.append(process)
    return lines, finished


def _feed(process: subprocess.Popen[bytes], text: str) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(text.encode("utf-8", "surrogateescape"))
        process.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the child died or was killed: its result says so


def _reap() -> None:
    with _unreaped_lock:
        _unreaped[:] = [process for process in _unreaped if process.poll() is None]
