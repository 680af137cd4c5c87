"""The loss guard's verdict: what a scan would remove, and whether that is too much. Pure.

:mod:`watcher.edges.predict` asks Jellyfin which media items the libraries in scope hold
and checks which of their files are gone; :class:`Prediction` is what it found, and
:meth:`Prediction.refused` the rule: a removal is refused when it exceeds *both* limits
(by default more than 20 items *and* more than 5 % of the library).
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.core.libraries import Library

EXAMPLES = 5
"""Missing paths named in a refusal."""


@dataclass(frozen=True, slots=True)
class Limits:
    """A removal is refused when it exceeds *both*: more than ``count`` items and more
    than ``share`` (a fraction, 0.05 = 5 %) of the library's items."""

    count: int = 20
    share: float = 0.05


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a scan of one library would remove.

    ``items``: media items Jellyfin holds; ``missing``: how many of their files a scan would
    not find — gone, or below a folder that cannot be listed (``unreadable`` of them);
    ``examples``: the first few such paths (local); ``unreadable_folders``: the folders that
    cannot be listed, each with its error (``("/mnt/movies/Private", "permission denied")``);
    ``unresponsive``: the existence check did not finish in time (nothing is known);
    ``pages``: ``GET /Items`` requests made.
    """

    library: Library
    items: int
    missing: int
    examples: tuple[str, ...] = ()
    unresponsive: bool = False
    pages: int = 0
    unreadable: int = 0
    unreadable_folders: tuple[tuple[str, str], ...] = ()

    @property
    def share(self) -> float:
        return self.missing / self.items if self.items else 0.0

    def refused(self, limits: Limits, allowed: int = 0) -> bool:
        """Whether a refresh must not go ahead (``allowed``: removals a person confirmed)."""
        if self.unresponsive:
            return True
        if self.missing <= allowed:
            return False
        return self.missing > limits.count and self.share > limits.share

    @property
    def hint(self) -> str:
        """What a person can do about a refusal ("" when nothing is known)."""
        if self.unresponsive:
            return ""
        confirm = f"if this clean-up is deliberate: jellyfin-watcher refresh --allow-removals {self.missing}"
        if self.unreadable:
            return f"let the watcher's and Jellyfin's users read the folders that cannot be read, or fix their storage; {confirm}"
        return confirm

    def describe(self) -> str:
        """``library Movies: 30 of 60 items (50%) would be removed: /a.mkv, … and 25 more;
        30 of them unreadable (permission denied on /mnt/movies/Private)``."""
        if self.unresponsive:
            return f"library {self.library.name}: the existence check did not finish in time (unresponsive storage)"
        examples = ", ".join(self.examples)
        more = f" and {self.missing - len(self.examples)} more" if self.missing > len(self.examples) else ""
        head = f"library {self.library.name}: {self.missing} of {self.items} items ({self.share:.0%}) would be removed"
        text = head + (f": {examples}{more}" if self.missing else "")
        if self.unreadable:
            folders = ", ".join(f"{error} on {folder}" for folder, error in self.unreadable_folders[:EXAMPLES])
            extra = len(self.unreadable_folders) - EXAMPLES
            folders += f" and {extra} more folders" if extra > 0 else ""
            text += f"; {self.unreadable} of them unreadable ({folders})"
        return text
