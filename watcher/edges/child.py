"""Filesystem work in a child process, under a deadline.

``os.stat``, ``os.listdir`` and the like on a dead NFS/SMB/FUSE mount block in the kernel
indefinitely, and a thread cannot be cancelled: so every filesystem access to a root (a
probe, a listing, a polling cycle, an existence check) runs in a ``python -I -S`` child that
is killed when its deadline passes. The kernel may keep a killed child stuck on a hung
mount; it is reaped later.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_unreaped: list[subprocess.Popen[bytes]] = []


_unreaped_lock = threading.Lock()


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
