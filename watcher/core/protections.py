"""What a Jellyfin version protects, and when a backup is due. Pure.

Sources (Jellyfin's own code at each release tag):

* 10.9.0 added the top-level guard: a library location that is inaccessible or has no entries
  is skipped and keeps its items (``MediaBrowser.Controller/Entities/Folder.cs``,
  ``IsLibraryFolderAccessible``, "Library folder … is inaccessible or empty, skipping").
  Before it, a scan removed everything it could not find.
* Up to 10.11 the children of a sub-folder whose listing fails are removed
  (``Folder.ValidateChildrenInternal2`` catches the IOException and carries on with no
  children); 12.0 keeps them. 12.0 also no longer protects a library location that cannot be
  resolved at all (a path that does not exist): its items may go.
* 10.11.0 added backups (``Jellyfin.Api/Controllers/BackupController.cs``).
* 10.9 to 10.11 run "Clean up collections and playlists" (``Key``
  ``CleanCollectionsAndPlaylists``, ``CleanupCollectionAndPlaylistPathsTask.cs``) at every
  start by default; 12.0 removed the task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOP_LEVEL_GUARD = (10, 9)
BACKUPS = (10, 11)
TWELVE = (12,)


def parse_version(version: str) -> tuple[int, ...] | None:
    """``"10.11.11"`` → ``(10, 11, 11)``; ``"12.0.0-rc3"`` → ``(12, 0, 0)``; None if it has no number."""
    numbers = re.findall(r"\d+", version.split("-", 1)[0])
    return tuple(int(number) for number in numbers[:3]) or None


@dataclass(frozen=True, slots=True)
class Protections:
    """What a Jellyfin server of one version does with missing media (see the module docstring)."""

    version: tuple[int, ...]

    @property
    def top_level_guard(self) -> bool:
        """An empty or inaccessible library location is skipped (10.9+)."""
        return self.version >= TOP_LEVEL_GUARD

    @property
    def unresolvable_location_kept(self) -> bool:
        """A library location that does not exist at all keeps its items (10.9 to 10.11)."""
        return TOP_LEVEL_GUARD <= self.version < TWELVE

    @property
    def failed_listing_kept(self) -> bool:
        """A sub-folder whose listing fails keeps its items (12.0+)."""
        return self.version >= TWELVE

    @property
    def backups(self) -> bool:
        """``POST /Backup/Create`` exists (10.11+)."""
        return self.version >= BACKUPS

    @property
    def startup_cleanup(self) -> bool:
        """"Clean up collections and playlists" exists and runs at start by default (10.9 to 10.11)."""
        return TOP_LEVEL_GUARD <= self.version < TWELVE

    def described(self) -> tuple[list[str], list[str]]:
        """(what this version protects, what it exposes), each a list of short clauses."""
        protects, exposes = [], []
        if self.top_level_guard:
            protects.append("skips an empty or inaccessible library folder")
        else:
            exposes.append("no top-level folder guard at all: a scan removes every item it cannot find")
        if self.unresolvable_location_kept:
            protects.append("keeps a library folder that does not exist")
        elif self.version >= TWELVE:
            exposes.append("a library folder that does not exist at all may lose its items")
        if self.failed_listing_kept:
            protects.append("keeps the items of a sub-folder it cannot list")
        else:
            exposes.append("a sub-folder it cannot list loses its items")
        if self.backups:
            protects.append("offers backups")
        exposes.append("nothing protects a disk or share mounted below a library folder")
        return protects, exposes


def backup_due(predicted_removals: int, allowed_removals: int, min_removals: int) -> bool:
    """Whether a refresh needs a backup first: always when a person confirmed removals
    (``allowed_removals`` > 0, ``refresh --allow-removals``), else when at least
    ``min_removals`` (and at least one) items are predicted to go."""
    return allowed_removals > 0 or predicted_removals >= max(1, min_removals)


@dataclass(frozen=True, slots=True)
class Archive:
    """A backup Jellyfin wrote: ``name`` (``jellyfin-backup-….zip``), ``path`` on Jellyfin's
    side, ``holds`` (``database``, ``metadata``, …) and Jellyfin's ``version`` that wrote it."""

    name: str
    path: str
    holds: tuple[str, ...]
    version: str

    def describe(self) -> str:
        """``jellyfin-backup-20260101120000.zip (database; Jellyfin 10.11.11)``"""
        return f"{self.name} ({', '.join(self.holds)}; Jellyfin {self.version})"
