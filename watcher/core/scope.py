"""Refresh scopes: which requests one batch becomes. Pure functions.

* ``server``: one ``POST /Library/Refresh`` (every library is scanned).
* ``library``: one ``POST /Items/{ItemId}/Refresh`` per library whose roots changed.
* ``path``: one ``POST /Library/Media/Updated`` with the changed folders as Jellyfin sees
  them, folded (a folder whose ancestor is listed is dropped) and capped at
  :data:`MAX_PATHS`; beyond the cap, or where a root changed as a whole (it came back
  from an unmount, events were lost), its library is refreshed instead. Jellyfin ignores
  ``UpdateType`` and waits its own ``LibraryMonitorDelay`` (60 s by default) before
  scanning the nearest folder it knows (Jellyfin's ``LibraryController.PostUpdatedMedia``
  → ``LibraryMonitor.ReportFileSystemChanged``).

A root whose library is unknown (roots configured by hand that match no library) can only
be covered by a server-wide refresh.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from watcher.config import Root
from watcher.core.debounce import Batch
from watcher.paths import within

MAX_PATHS = 100
"""Folders sent in one ``POST /Library/Media/Updated``; more means a library refresh."""


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """One request to Jellyfin, and the roots whose changes it covers."""

    kind: str  # "server" | "library" | "path"
    roots: frozenset[str]
    library_id: str | None = None
    library_name: str | None = None
    paths: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "server":
            return "POST /Library/Refresh"
        if self.kind == "library":
            return f"POST /Items/{self.library_id}/Refresh (library {self.library_name or self.library_id})"
        return f"POST /Library/Media/Updated ({len(self.paths)} folder{'s' if len(self.paths) != 1 else ''})"


def fold(folders: Iterable[str]) -> list[str]:
    """Drop every folder that has an ancestor in the set; sorted.

    >>> fold(["/m/a/b", "/m/a", "/m/c", "/m/a b"])
    ['/m/a', '/m/a b', '/m/c']
    """
    unique = {posixpath.normpath(folder) for folder in folders}
    kept = []
    for folder in sorted(unique):
        parent = posixpath.dirname(folder)
        covered = False
        while parent and parent != folder:
            if parent in unique:
                covered = True
                break
            folder_above = posixpath.dirname(parent)
            if folder_above == parent:
                break
            parent = folder_above
        if not covered:
            kept.append(folder)
    return kept


def plan(
    batch: Batch,
    roots: Mapping[str, Root],
    scope: str,
    jellyfin_path: Callable[[str], str],
) -> list[RefreshRequest]:
    """The requests that refresh everything in ``batch`` under ``scope``.

    ``roots`` maps a root's path to its :class:`Root` (for the library); ``jellyfin_path``
    translates a local path to Jellyfin's view (path mapping).
    """
    unknown = [key for key in batch.roots if key not in roots or roots[key].library_id is None]
    if scope == "server" or unknown:
        return [RefreshRequest("server", batch.roots)]
    by_library: dict[str, list[Root]] = {}
    for key in sorted(batch.roots):
        root = roots[key]
        assert root.library_id is not None
        by_library.setdefault(root.library_id, []).append(root)
    requests: list[RefreshRequest] = []
    folders: list[str] = []
    folder_roots: set[str] = set()
    for library_id, library_roots in by_library.items():
        keys = frozenset(str(root.path) for root in library_roots)
        library = RefreshRequest("library", keys, library_id, library_roots[0].library_name)
        if scope == "library" or keys & batch.whole_roots:
            requests.append(library)
            continue
        mine = [folder for folder in batch.folders if any(within(folder, key) for key in keys)]
        if not mine:
            requests.append(library)
            continue
        folders.extend(mine)
        folder_roots |= keys
    if folders:
        folded = fold(folders)
        if len(folded) <= MAX_PATHS:
            requests.append(RefreshRequest("path", frozenset(folder_roots), paths=tuple(jellyfin_path(f) for f in folded)))
        else:
            for library_id in sorted({roots[key].library_id or "" for key in folder_roots}):
                keys = frozenset(key for key in folder_roots if roots[key].library_id == library_id)
                requests.append(RefreshRequest("library", keys, library_id, roots[next(iter(keys))].library_name))
    return requests
