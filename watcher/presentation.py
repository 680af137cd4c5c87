"""How the state is shown: the status file's document, the ``STATUS=`` line, ``check``'s lines.

Pure: the clock readings of a :class:`~watcher.core.machine.Snapshot` are turned into wall
clock times with the offset the caller gives (``time.time() - time.monotonic()``).
"""

from __future__ import annotations

import time
from typing import Any

from watcher.config import Config
from watcher.core.health import Health, State
from watcher.core.machine import Snapshot


def document(snapshot: Snapshot, wall_offset: float, pid: int, started: float) -> dict[str, Any]:
    """The status file's content (see :mod:`watcher.status` for its shape), without
    ``version`` and ``updated``."""
    roots = [
        {
            "path": root.path,
            "mount_point": root.mount_point,
            "fstype": root.fstype,
            "state": root.state,
            "reason": root.reason,
            "watched": root.watched,
            "watched_directories": root.watched_directories,
            "mode": root.mode,
            "poll": root.poll,
            "verification": root.verification,
            "branches": [dict(branch) for branch in root.branches],
        }
        for root in snapshot.roots
    ]
    pending = None
    if snapshot.pending is not None:
        batch = snapshot.pending
        pending = {
            "changes": batch.changes,
            "roots": list(batch.roots),
            "due": None if batch.due_at is None else batch.due_at + wall_offset,
            "held": batch.held or None,
        }
    last = snapshot.last_refresh
    backup = snapshot.last_backup
    return {
        "pid": pid,
        "started": started,
        "dry_run": snapshot.dry_run,
        "roots": roots,
        "verified": not any(root.verification == "running" for root in snapshot.roots),
        "pending": pending,
        "last_refresh": None if last is None else {"time": last.at + wall_offset, "result": last.result},
        "last_backup": None if backup is None else {
            "archive": backup.archive,
            "path": backup.path,
            "holds": list(backup.holds),
            "version": backup.version,
            "time": backup.at + wall_offset,
            "removals": backup.removals,
        },
    }


def signature(snapshot: Snapshot) -> tuple[Any, ...]:
    """What, when it changes, makes the status file worth rewriting at once (a change of the
    pending count alone is not: it is written at most every few seconds)."""
    pending = snapshot.pending
    return (
        tuple((r.path, r.state, r.reason, r.watched, r.watched_directories, r.verification, r.poll, r.branches)
              for r in snapshot.roots),
        None if pending is None else (pending.roots, pending.held, pending.first_change),
        snapshot.last_refresh and (snapshot.last_refresh.at, snapshot.last_refresh.result),
        snapshot.last_backup and snapshot.last_backup.at,
    )


def status_line(status: dict[str, Any]) -> str:
    """``watching 4 of 4 roots · 1 unhealthy: /mnt/usb (unmounted) · 37 changes pending · last refresh 12:03 (sent)``"""
    roots = status["roots"]
    parts = [f"watching {sum(1 for root in roots if root['watched'])} of {len(roots)} roots"]
    unhealthy = [root for root in roots if root["state"] != "healthy"]
    if unhealthy:
        parts.append(f"{len(unhealthy)} unhealthy: " + ", ".join(f"{root['path']} ({root['state']})" for root in unhealthy))
    pending = status["pending"]
    if pending:
        parts.append(f"{pending['changes']} changes pending" + (" (held back)" if pending.get("held") else ""))
    last = status["last_refresh"]
    if last:
        parts.append(f"last refresh {time.strftime('%H:%M', time.localtime(last['time']))} ({last['result'].split(':')[0]})")
    return " · ".join(parts)


def check_line(health: Health, config: Config) -> str:
    """One root as ``check`` prints it: ``/mnt/usb/movies: healthy (on /mnt/usb (ext4))``, or
    its state and reason — for a library location missing here, the ``[[path_map]]`` to add."""
    unmapped = config.jellyfin_path(str(health.root.path)) == str(health.root.path)
    if health.state is State.MISSING and health.root.library_id is not None and unmapped:
        return (
            f"{health.root.path}: missing (no such folder here; if Jellyfin runs in a container, map its path "
            f'to this machine\'s: [[path_map]] jellyfin = "{health.root.path}" local = "/the/same/folder/here")'
        )
    if health.healthy:
        where = f"on {health.mount_point}" if health.mount_point else ""
        if health.fstype:
            where += f" ({health.fstype})"
        return f"{health.root.path}: healthy ({where})" if where else f"{health.root.path}: healthy"
    return f"{health.root.path}: {health.state} ({health.reason})"


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
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in rows]
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
