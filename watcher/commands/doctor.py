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

Then, for Jellyfin (not Emby):

6. the server version and which of Jellyfin's own protections apply to it
   (:mod:`watcher.core.protections`); a server older than 10.9 is warned about: it has no
   top-level folder guard at all;
7. backups available (10.11+, ``GET /Backup``): the watcher asks for one before a refresh that
   removes items; on older servers the loss guard works alone;
8. "Clean up collections and playlists" (``Key == "CleanCollectionsAndPlaylists"``, 10.9 to
   10.11) without a start-up trigger: at every start it drops collection and playlist entries
   whose files are missing at that moment, so a NAS mounted after Jellyfin starts empties them.

``--fix`` turns 4 and 5 off through the API (``POST /Library/VirtualFolders/LibraryOptions``,
``POST /ScheduledTasks/{taskId}/Triggers`` with ``[]``), removes the start-up trigger of 8
(keeping its other triggers) and prints exactly what it changed.

When a redirect, a proxy's refusal or a page that is not JSON stands in the way, ``doctor``
shows what answers that path, hop by hop (asked without the key, redirects followed by hand;
:meth:`~watcher.jellyfin.JellyfinClient.trace`).
Exit codes: 0 all good, 1 warnings remain, 3 unreachable or rejected.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from typing import Any

from watcher.commands.common import client_for
from watcher.config import Config, Root
from watcher.core.health import branch_lines
from watcher.core.libraries import Library
from watcher.core.protections import Protections, parse_version
from watcher.edges.jellyfin import JellyfinClient
from watcher.edges.probe import probe_roots
from watcher.edges.state import StateStore
from watcher.errors import (
    JellyfinError,
    ProxyRejected,
    Redirected,
    UnexpectedAnswer,
)

TICKS_PER_SECOND = 10_000_000
CLEANUP_TASK_KEY = "CleanCollectionsAndPlaylists"
""""Clean up collections and playlists" (``CleanupCollectionAndPlaylistPathsTask.Key``)."""


def doctor(config: Config, fix: bool) -> int:
    """``jellyfin-watcher doctor [--fix]``: run the checks against the configured server;
    returns the exit code (0, 1 or 3)."""
    return run_checks(config, client_for(config, "to check Jellyfin"), fix=fix)


def run_checks(config: Config, client: JellyfinClient, fix: bool, say: Callable[[str], None] = print) -> int:
    """Run the checks; returns the exit code (0, 1 or 3)."""
    try:
        public = client.public_info()
    except JellyfinError as error:
        say(f"✗ {error}")
        _diagnose(client, error, say)
        return 3
    name = public.get("ProductName") or ("Emby" if config.jellyfin.server == "emby" else "Jellyfin")
    say(f"✓ {name} {public.get('Version', '?')} at {config.jellyfin.url} ({public.get('ServerName', 'unnamed')})")
    try:
        client.server_info()
        libraries = client.libraries()
        task = client.library_scan_task()
    except JellyfinError as error:  # KeyRejected: the message says how to make a new key
        say(f"✗ {error}")
        _diagnose(client, error, say)
        return 3
    say("✓ the API key is accepted" if config.jellyfin.api_key is not None else f"✓ logged in as {config.jellyfin.username}")
    warnings = _check_locations(config, libraries, say)
    try:
        warnings += _check_monitors(client, libraries, fix, say)
        warnings += _check_schedule(client, task, fix, say)
        if config.jellyfin.server != "emby":
            protections = _check_version(str(public.get("Version") or ""), say)
            warnings += _check_backups(client, config, protections, say)
            warnings += _check_cleanup_task(client, fix, say)
        else:
            say("- Emby: Jellyfin's version rules, backups and its start-up clean-up task are not checked")
    except JellyfinError as error:
        say(f"✗ {error}")
        return 3
    if warnings:
        say(f"{warnings} warning{'s' if warnings != 1 else ''}" + ("" if fix else "; `jellyfin-watcher doctor --fix` turns Jellyfin's own scanning off"))
        return 1
    say("all good")
    return 0


def _diagnose(client: JellyfinClient, error: JellyfinError, say: Callable[[str], None]) -> None:
    """Under a redirect, a proxy's refusal or an answer that is not JSON: every answer to an
    unauthenticated ``GET`` of the same path, redirects followed by hand."""
    if not isinstance(error, (Redirected, ProxyRejected, UnexpectedAnswer)) or error.path is None:
        return
    if isinstance(error, Redirected):
        say(f"  redirect chain of GET {error.path}, asked without the API key:")
    else:
        say(f"  what answers GET {error.path}, asked without the API key:")
    for line in client.trace(error.path):
        say(f"    {line}")


def _check_locations(config: Config, libraries: Sequence[Library], say: Callable[[str], None]) -> int:
    roots = [Root(config.map_path(location), library_id=library.item_id, library_name=library.name) for library in libraries for location in library.locations]
    if not roots:
        say("! Jellyfin has no library folders")
        return 1
    warnings = 0
    # The mount points learned while the roots were healthy (as the daemon and ``check`` use
    # them): a root on the bare folder of a missing disk is unmounted here too, not healthy.
    saved = StateStore(config.state_dir).load()
    for health in probe_roots(roots, saved.expected_mounts(), config.watch.probe_timeout, expected_below=saved.expected_below(),
                              expected_branches=saved.expected_branches()):
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


def _check_version(version: str, say: Callable[[str], None]) -> Protections | None:
    """Say what this Jellyfin version protects and what it leaves exposed; warn before 10.9."""
    parsed = parse_version(version)
    if parsed is None:
        say(f"? cannot read Jellyfin's version ({version!r}): its own protections are unknown")
        return None
    protections = Protections(parsed)
    protects, exposes = protections.described()
    if not protections.top_level_guard:
        say(f"! Jellyfin {version} is older than 10.9: it has no top-level folder guard at all, so a scan "
            "while a library folder is missing or empty removes every item in it. Fix: upgrade Jellyfin "
            "(the watcher's checks are all that protects this server)")
    else:
        say(f"✓ Jellyfin {version} itself {'; '.join(protects)}")
    say(f"- on Jellyfin {version}, only the watcher guards against: {'; '.join(exposes)}")
    return protections


def _check_backups(client: JellyfinClient, config: Config, protections: Protections | None,
                   say: Callable[[str], None]) -> int:
    """Backups (10.11+): available, and what the watcher does with them. Never a warning."""
    if protections is not None and not protections.backups:
        say("- backups are unavailable on this Jellyfin (10.11 or later): the loss guard works as before, "
            "without a backup before removals")
        return 0
    archives = client.backups()
    latest = max((str(archive.get("Path") or "") for archive in archives), default="")
    held = f"{len(archives)} archive{'s' if len(archives) != 1 else ''} in Jellyfin's backup folder" + (
        f", the latest {posixpath.basename(latest)}" if latest else "")
    if not config.backup.enabled:
        say(f"- backups are available but backup.enabled = false: no backup before removals ({held})")
        return 0
    say(f"✓ backups are available: one ({', '.join(config.backup.contents)}) is made before a refresh that "
        f"removes {max(1, config.backup.min_removals)} items or more, and before refresh --allow-removals ({held})")
    return 0


def _check_cleanup_task(client: JellyfinClient, fix: bool, say: Callable[[str], None]) -> int:
    """The start-up trigger of "Clean up collections and playlists": warn, or remove it with ``fix``."""
    task = next((task for task in client.scheduled_tasks() if task.get("Key") == CLEANUP_TASK_KEY), None)
    if task is None:
        say("✓ no \"Clean up collections and playlists\" task (Jellyfin 12.0 removed it)")
        return 0
    name = task.get("Name") or "Clean up collections and playlists"
    triggers = [trigger for trigger in task.get("Triggers") or [] if isinstance(trigger, dict)]
    kept = [trigger for trigger in triggers if trigger.get("Type") != "StartupTrigger"]
    if len(kept) == len(triggers):
        say(f"✓ the \"{name}\" task does not run at start-up")
        return 0
    if fix:
        client.set_triggers(str(task["Id"]), kept)
        say(f"changed: \"{name}\" task: removed its start-up trigger")
        return 0
    say(f"! the \"{name}\" task runs at every start of Jellyfin and drops collection and playlist entries whose "
        "files are missing at that moment: a share mounted after Jellyfin starts empties them. Fix: Dashboard → "
        f"Scheduled Tasks → {name} → delete its start-up trigger (or jellyfin-watcher doctor --fix)")
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
