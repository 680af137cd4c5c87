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

from watcher.state import atomic_write_json

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


def needs_attention(status: dict[str, Any]) -> bool:
    """A root is unhealthy, or a batch is held back (by the health gate or a failing server)."""
    unhealthy = any(root.get("state") != "healthy" for root in status.get("roots", []))
    pending = status.get("pending") or {}
    return unhealthy or bool(pending.get("held"))


def render(status: dict[str, Any], now: float | None = None) -> str:
    """A table a person reads: one line per root, then pending changes and the last refresh."""
    now = time.time() if now is None else now
    header = ("ROOT", "MOUNT POINT", "TYPE", "HEALTH", "WATCHED DIRS")
    rows = [header]
    for root in status.get("roots", []):
        health = root.get("state", "?")
        if root.get("reason"):
            health += f" ({root['reason']})"
        watched = root.get("watched_directories")
        shown = "-" if not root.get("watched") else str(watched) if watched is not None else "yes"
        if root.get("watched") and root.get("mode") == "poll":
            shown += f" (polled: {root.get('poll') or 'mtime'})"
        elif root.get("verification") == "running":
            shown += " (verifying)"
        rows.append(
            (
                str(root.get("path", "")),
                str(root.get("mount_point") or "-"),
                str(root.get("fstype") or "-"),
                health,
                shown,
            )
        )
        for branch in root.get("branches") or []:
            state = str(branch.get("state", "?"))
            if branch.get("reason"):
                state += f" ({branch['reason']})"
            rows.append(
                (
                    f"  branch {branch.get('path', '')} ({branch.get('mode', '?')}) of {branch.get('pool', '')}",
                    str(branch.get("mount_point") or "-"),
                    str(branch.get("fstype") or "-"),
                    state,
                    "",
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    pending = status.get("pending")
    if pending:
        line = f"pending: {pending.get('changes', 0)} changes under {', '.join(pending.get('roots', []))}"
        if pending.get("held"):
            line += f"; held back: {pending['held']}"
        elif pending.get("due") is not None:
            line += f"; refresh due {_when(pending['due'], now)}"
        lines.append(line)
    else:
        lines.append("pending: nothing")
    last = status.get("last_refresh")
    if last:
        lines.append(f"last refresh: {_clock(last.get('time'))} ({last.get('result', '?')})")
    else:
        lines.append("last refresh: none since start")
    backup = status.get("last_backup")
    if backup:
        lines.append(
            f"last backup: {backup.get('archive', '?')} ({', '.join(backup.get('holds') or []) or '?'}) at "
            f"{_clock(backup.get('time'))}, before removing {backup.get('removals', '?')} items "
            "(restore: POST /Backup/Restore, or start Jellyfin with --restore-archive)"
        )
    lines.append(f"daemon: pid {status.get('pid')}, status written {_clock(status.get('updated'))}")
    return "\n".join(lines)


def _clock(moment: Any) -> str:
    if not isinstance(moment, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _when(moment: Any, now: float) -> str:
    if not isinstance(moment, (int, float)):
        return "?"
    seconds = moment - now
    return "now" if seconds <= 0 else f"in {seconds:.0f} s ({_clock(moment)})"
