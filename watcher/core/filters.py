"""Which filesystem changes matter to Jellyfin.

A change is ignored when, for every path it names (a move names two), some component of the
path below its root matches an ignore pattern: partial downloads (``*.part``), hidden files,
NAS litter (``@eaDir``) and the files Jellyfin writes next to the media itself (``*.nfo``,
artwork, ``*.trickplay``) — reacting to those would make every scan trigger the next.
Patterns are shell-style (``fnmatch``) and case-insensitive.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable


class IgnoreFilter:
    """Callable: ``filter(root, path) -> True`` when the change at ``path`` is to be ignored.

    ``root`` and ``path`` are ``str`` (watchdog delivers ``str``; undecodable bytes arrive as
    surrogate escapes and are matched like any other character).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.regex = "|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in self.patterns)
        """The combined pattern, matched case-insensitively against one path component
        ("" when nothing is ignored); the polling child compiles it too."""
        self._regex = re.compile(self.regex, re.IGNORECASE | re.DOTALL) if self.patterns else None

    def __call__(self, root: str, path: str) -> bool:
        if self._regex is None:
            return False
        relative = path[len(root) :] if path.startswith(root) else path
        match = self._regex.match
        return any(match(part) for part in relative.split(os.sep) if part)

    def ignores_all(self, root: str, paths: Iterable[str]) -> bool:
        """True when every one of ``paths`` is ignored (a move into the library counts)."""
        return all(self(root, path) for path in paths if path)
