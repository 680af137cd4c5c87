"""The daemon's status file, ``<state dir>/status.json``, and ``jellyfin-watcher status``.

The daemon rewrites the file atomically whenever its state changes (a root's health, the
pending batch appearing or being sent, a refresh result), not on every event. ``status``
reads it; the daemon is taken as running only if the recorded pid is alive *and* has the
recorded start time, so a recycled pid does not pass for the daemon.

Shape (``version`` 1; times are seconds since the epoch)::

    {"version": 1, "pid": int, "started": float (process_start_time()), "updated": float, "dry_run": bool,
     "verified": bool (no watch verification is running: every folder that can be watched is),
     "roots": [{"path", "mount_point", "fstype", "state", "reason", "watched": bool,
                "watched_directories": int | null, "mode": "events" | "poll" | null,
                "poll": "mtime" | "list" | null,
                "verification": "running" | "complete" | "shortfall" | "incomplete" | null,
                "branches": [{"path", "mode", "pool", "kind", "state", "reason", "mount_point",
                              "fstype"}]}],
     "pending": {"changes": int, "roots": [str], "due": float | null, "held": str | null} | null,
     "last_refresh": {"time": float, "result": str} | null,
     "last_backup": {"archive": str, "path": str, "holds": [str], "version": str, "time": float,
                     "removals": int} | null}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

from watcher.edges.state import atomic_write_json

STATUS_FILE = "status.json"
FORMAT_VERSION = 1


def process_start_time(pid: int | None = None) -> float:
    """When process ``pid`` (default: this one) started: an identity, compared, never shown.

    Linux: seconds from boot to its start (field 22 of ``/proc/PID/stat``). psutil's
    ``create_time()`` adds the boot time from ``/proc/stat``, which systemd's
    ``ProcSubset=pid`` hides and which moves whenever the wall clock is stepped.
    Elsewhere: psutil's create_time(). Raises OSError or psutil.Error if ``pid`` is gone.
    """
    pid = os.getpid() if pid is None else pid
    if os.path.exists("/proc/self/stat"):
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
        return int(data[data.rindex(b")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")
    return psutil.Process(pid).create_time()


def write(directory: Path, status: dict[str, Any]) -> None:
    """Write ``status`` (without ``version``/``updated``, which are added). Raises OSError."""
    atomic_write_json(directory / STATUS_FILE, {**status, "version": FORMAT_VERSION, "updated": time.time()})


def read(directory: Path) -> dict[str, Any] | None:
    """The status file's content, or None if there is none or it cannot be used."""
    try:
        data = json.loads((directory / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return None
    return data


def daemon_running(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status`` is still alive."""
    pid, started = status.get("pid"), status.get("started")
    if not isinstance(pid, int) or not isinstance(started, (int, float)):
        return False
    try:
        return abs(process_start_time(pid) - started) < 1.0
    except (psutil.Error, OSError, ValueError, IndexError):
        return False


