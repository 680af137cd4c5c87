"""``jellyfin-watcher doctor``: is Jellyfin set up for the watcher? ``--fix`` makes it so.

Checks, in order (each problem printed with its fix, in the words of Jellyfin's
Dashboard):

1. reachable, and which version (``GET /System/Info/Public``, no auth);
2. the key (or login) accepted (``GET /System/Info``);
3. every library's locations mapped to this machine and healthy;
4. each library's real-time monitor off (``LibraryOptions.EnableRealtimeMonitor``):
   Jellyfin's own monitor refreshes without our checks;
5. the "Scan Media Library" task (``Key == "RefreshLibrary"``) without triggers: by default
   it scans every 12 hours, without our checks.

``--fix`` turns 4 and 5 off through the API (``POST /Library/VirtualFolders/LibraryOptions``,
``POST /ScheduledTasks/{taskId}/Triggers`` with ``[]``) and prints exactly what it changed.
Exit codes: 0 all good, 1 warnings remain, 3 unreachable or rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from watcher.config import Config, Root
from watcher.errors import JellyfinError, RequestRejected, ServerUnavailable
from watcher.health import branch_lines, probe_roots
from watcher.jellyfin import JellyfinClient, Library

TICKS_PER_SECOND = 10_000_000


def doctor(config: Config, client: JellyfinClient, fix: bool, say: Callable[[str], None] = print) -> int:
    """Run the checks; returns the exit code (0, 1 or 3)."""
    try:
        public = client.public_info()
    except (RequestRejected, ServerUnavailable) as error:
        say(f"✗ {error}")
        return 3
    name = public.get("ProductName") or ("Emby" if config.server == "emby" else "Jellyfin")
    say(f"✓ {name} {public.get('Version', '?')} at {config.url} ({public.get('ServerName', 'unnamed')})")
    try:
        client.server_info()
        libraries = client.libraries()
        task = client.library_scan_task()
    except JellyfinError as error:  # KeyRejected: the message says how to make a new key
        say(f"✗ {error}")
        return 3
    say("✓ the API key is accepted" if config.api_key is not None else f"✓ logged in as {config.username}")
    warnings = _check_locations(config, libraries, say)
    try:
        warnings += _check_monitors(client, libraries, fix, say)
        warnings += _check_schedule(client, task, fix, say)
    except JellyfinError as error:
        say(f"✗ {error}")
        return 3
    if warnings:
        say(f"{warnings} warning{'s' if warnings != 1 else ''}" + ("" if fix else "; `jellyfin-watcher doctor --fix` turns Jellyfin's own scanning off"))
        return 1
    say("all good")
    return 0


def _check_locations(config: Config, libraries: Sequence[Library], say: Callable[[str], None]) -> int:
    roots = [Root(config.map_path(location), library_id=library.item_id, library_name=library.name) for library in libraries for location in library.locations]
    if not roots:
        say("! Jellyfin has no library folders")
        return 1
    warnings = 0
    for health in probe_roots(roots, {}, config.probe_timeout):
        jellyfin_path = config.jellyfin_path(str(health.root.path))
        shown = str(health.root.path) if jellyfin_path == str(health.root.path) else f"{jellyfin_path} → {health.root.path}"
        if health.healthy:
            say(f"✓ library {health.root.library_name}: {shown} is healthy")
            for line in branch_lines(health):
                say(f"  {line}")
            continue
        warnings += 1
        fix = ""
        if health.state == "missing" and jellyfin_path == str(health.root.path):
            fix = (
                f'; if Jellyfin sees it under another path (Docker), add [[path_map]] jellyfin = "{jellyfin_path}" '
                'local = "<the same folder on this machine>"'
            )
        say(f"! library {health.root.library_name}: {shown} is {health.state} ({health.reason}){fix}")
        for line in branch_lines(health):
            say(f"  {line}")
    return warnings


def _check_monitors(client: JellyfinClient, libraries: Sequence[Library], fix: bool, say: Callable[[str], None]) -> int:
    warnings = 0
    for library in libraries:
        if not library.realtime_monitor:
            say(f"✓ library {library.name}: real-time monitoring is off")
            continue
        if fix:
            client.set_library_options(library.item_id, {**library.options, "EnableRealtimeMonitor": False})
            say(f"changed: library {library.name}: EnableRealtimeMonitor true → false")
            continue
        warnings += 1
        say(
            f"! library {library.name}: real-time monitoring is on: Jellyfin refreshes on its own, without the "
            f"watcher's checks. Fix: Dashboard → Libraries → {library.name} → Manage library → uncheck "
            "\"Enable real-time monitoring\""
        )
    return warnings


def _check_schedule(client: JellyfinClient, task: dict[str, Any] | None, fix: bool, say: Callable[[str], None]) -> int:
    if task is None:
        say("? no \"Scan Media Library\" task (Key RefreshLibrary) found")
        return 0
    triggers = [trigger for trigger in task.get("Triggers") or [] if isinstance(trigger, dict)]
    if not triggers:
        say("✓ the \"Scan Media Library\" task has no schedule")
        return 0
    described = ", ".join(_describe_trigger(trigger) for trigger in triggers)
    if fix:
        client.set_triggers(str(task["Id"]), [])
        say(f"changed: \"{task.get('Name', 'Scan Media Library')}\" task: removed its triggers ({described})")
        return 0
    say(
        f"! the \"{task.get('Name', 'Scan Media Library')}\" task runs {described}, without the watcher's checks. "
        "Fix: Dashboard → Scheduled Tasks → Scan Media Library → delete its triggers"
    )
    return 1


def _describe_trigger(trigger: dict[str, Any]) -> str:
    kind = trigger.get("Type")
    if kind == "IntervalTrigger" and isinstance(trigger.get("IntervalTicks"), int):
        hours = trigger["IntervalTicks"] / TICKS_PER_SECOND / 3600
        return f"every {hours:g} h"
    if kind == "DailyTrigger" and isinstance(trigger.get("TimeOfDayTicks"), int):
        minutes = trigger["TimeOfDayTicks"] // TICKS_PER_SECOND // 60
        return f"daily at {minutes // 60:02d}:{minutes % 60:02d}"
    if kind == "WeeklyTrigger":
        return f"weekly on {trigger.get('DayOfWeek', '?')}"
    if kind == "StartupTrigger":
        return "at start-up"
    return str(kind)
