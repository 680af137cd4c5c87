"""Which roots to watch, given the configuration and Jellyfin's libraries. Pure.

With no roots configured, the roots are every location of every library
(``GET /Library/VirtualFolders``), mapped to this machine's paths. Configured roots are
tagged with the library whose location holds them (or lies inside them), so that a refresh
can be scoped to that library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from watcher.config import Config, Root
from watcher.errors import ConfigError


def needs_libraries(config: Config, dry_run: bool) -> bool:
    """Whether the roots depend on Jellyfin's library list."""
    if dry_run:
        return False
    return not config.roots or config.refresh.scope != "server"


def resolve_roots(config: Config, libraries: Sequence[Library] | None) -> tuple[tuple[Root, ...], list[str]]:
    """The roots, and warnings to log (a root in no library, or in several).

    ``libraries`` is None when Jellyfin is not asked (dry run, or configured roots refreshed
    server-wide). Raises ConfigError when there is nothing to watch.
    """
    if config.roots:
        if libraries is None or config.refresh.scope == "server":
            return config.roots, []
        return tag_roots(config, config.roots, libraries)
    if libraries is None:
        raise ConfigError(
            "no roots to watch: give ROOT arguments or [[roots]] in the config "
            "(in dry-run mode the watcher does not ask Jellyfin for its libraries)"
        )
    return roots_from_libraries(config, libraries), []


def roots_from_libraries(config: Config, libraries: Sequence[Library]) -> tuple[Root, ...]:
    """Every location of every library, mapped to local paths. Raises ConfigError if none."""
    roots: dict[str, Root] = {}
    for library in libraries:
        for location in library.locations:
            path = config.map_path(location)
            roots.setdefault(str(path), Root(path, library_id=library.item_id, library_name=library.name))
    if not roots:
        raise ConfigError("Jellyfin has no library folders: add a library in Jellyfin, or give ROOT arguments")
    return tuple(roots.values())


def tag_roots(config: Config, roots: Sequence[Root], libraries: Sequence[Library]) -> tuple[tuple[Root, ...], list[str]]:
    """Configured roots, each tagged with the library whose (mapped) location holds it or
    lies inside it; a root matching no library, or the folders of several libraries (a
    refresh of one would miss the others' changes), stays untagged (server-wide refreshes)."""
    tagged = []
    warnings = []
    for root in roots:
        matches = [
            library
            for library in libraries
            if any(
                root.path == local or root.path.is_relative_to(local) or local.is_relative_to(root.path)
                for local in (config.map_path(location) for location in library.locations)
            )
        ]
        if len({library.item_id for library in matches}) == 1:
            tagged.append(replace(root, library_id=matches[0].item_id, library_name=matches[0].name))
            continue
        if matches:
            names = ", ".join(library.name for library in matches)
            warnings.append(
                f"{root.path} holds folders of several Jellyfin libraries ({names}): "
                "it can only be refreshed with a server-wide scan"
            )
        else:
            warnings.append(f"{root.path} is in no Jellyfin library: it can only be refreshed with a server-wide scan")
        tagged.append(root)
    return tuple(tagged), warnings


@dataclass(frozen=True, slots=True)
class Library:
    """A Jellyfin library ("virtual folder"): ``item_id`` is 32 hex digits, ``locations``
    the folders as Jellyfin sees them, ``options`` its ``LibraryOptions`` object."""

    name: str
    item_id: str
    locations: tuple[str, ...]
    collection_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def realtime_monitor(self) -> bool:
        return bool(self.options.get("EnableRealtimeMonitor"))
