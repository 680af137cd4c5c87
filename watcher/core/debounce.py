"""Debouncing: many changes become one batch, and one batch becomes one refresh.

Pure logic: the clock is an argument (seconds, any monotonic origin); only the service loop
reads it. A batch is due when no relevant change arrived for ``quiet_period`` seconds, or
``max_wait`` seconds after its first change, whichever comes first (the upper bound keeps a
never-ending download from postponing the refresh forever, unlike Jellyfin's own monitor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from watcher.paths import within


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes owed one refresh.

    ``roots``: the roots that changed (their configured paths, as strings).
    ``changes``: how many relevant changes were counted (a lower bound after a kernel queue
    overflow). ``first_change``/``last_change``: clock readings, seconds.
    """

    roots: frozenset[str]
    changes: int
    first_change: float
    last_change: float
    folders: frozenset[str] = field(default=frozenset(), compare=False)
    """Folders whose entries changed (for path-scoped refreshes); at most
    ``MAX_FOLDERS`` per root — a root with more is listed in ``whole_roots``."""
    whole_roots: frozenset[str] = field(default=frozenset(), compare=False)
    """Roots changed in too many places (or wholesale) to list folders."""
    removals: bool = field(default=False, compare=False)
    """Something may have disappeared (a deletion, a move, a root changed wholesale): the
    only batches whose refresh can remove items from Jellyfin."""

    def merge(self, other: Batch) -> Batch:
        """One batch holding the changes of both."""
        return Batch(
            roots=self.roots | other.roots,
            changes=self.changes + other.changes,
            first_change=min(self.first_change, other.first_change),
            last_change=max(self.last_change, other.last_change),
            folders=self.folders | other.folders,
            whole_roots=self.whole_roots | other.whole_roots,
            removals=self.removals or other.removals,
        )


MAX_FOLDERS = 1000
"""Changed folders remembered per root and batch; beyond that the whole root counts."""


class Debouncer:
    """Collects changes into at most one pending batch.

    >>> debouncer = Debouncer(quiet_period=30, max_wait=600)
    >>> debouncer.add(now=0.0, root="/media/movies")
    >>> debouncer.due(now=29.0), debouncer.due(now=30.0)
    (False, True)
    """

    def __init__(self, quiet_period: float, max_wait: float) -> None:
        if not (quiet_period >= 0 and max_wait >= 0):
            raise ValueError("quiet_period and max_wait must be ≥ 0 seconds")
        self.quiet_period = quiet_period
        self.max_wait = max_wait
        self._counts: dict[str, int] = {}
        self._folders: dict[str, set[str]] = {}
        self._whole: set[str] = set()
        self._removals = False
        self._first = 0.0
        self._last = 0.0

    @property
    def pending(self) -> Batch | None:
        """The batch being collected, or None."""
        if not self._counts:
            return None
        return Batch(
            frozenset(self._counts),
            sum(self._counts.values()),
            self._first,
            self._last,
            frozenset().union(*self._folders.values()),
            frozenset(self._whole),
            self._removals or bool(self._whole),
        )

    def add(self, now: float, root: str, changes: int = 1, folder: str | None = None, removal: bool = False) -> None:
        """Count ``changes`` relevant changes under ``root`` at clock reading ``now``.

        ``folder``: the folder whose entries changed; None means the root as a whole
        (e.g. it came back from an unmount, or events were lost). ``removal``: something
        was deleted or moved away.
        """
        if changes <= 0:
            return
        self._removals = self._removals or removal
        if not self._counts:
            self._first = now
            self._last = now
        else:
            self._last = max(self._last, now)
        self._counts[root] = self._counts.get(root, 0) + changes
        if root in self._whole:
            return
        if folder is None:
            self._whole.add(root)
            self._folders.pop(root, None)
            return
        folders = self._folders.setdefault(root, set())
        folders.add(folder)
        if len(folders) > MAX_FOLDERS:
            self._whole.add(root)
            del self._folders[root]

    def counts_whole(self, root: str) -> bool:
        """Whether ``root`` counts as changed as a whole in the pending batch (its folders
        are no longer listed: a change there needs no folder)."""
        return root in self._whole

    def add_many(self, now: float, roots: Iterable[str]) -> None:
        """Count one change under each of ``roots``, each as a whole (e.g. after lost events)."""
        for root in roots:
            self.add(now, root)

    def deadline(self) -> float | None:
        """Clock reading at which the pending batch is due, or None when nothing is pending."""
        if not self._counts:
            return None
        return min(self._last + self.quiet_period, self._first + self.max_wait)

    def due(self, now: float) -> bool:
        """Whether a batch is pending and due at ``now``."""
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self, roots: Iterable[str] | None = None) -> Batch | None:
        """Remove and return the pending batch (None if there is none).

        With ``roots``, only the changes under those roots are taken; the rest stays
        pending with its timing.
        """
        batch = self.pending
        if batch is None:
            return None
        if roots is not None:
            wanted = set(roots) & set(self._counts)
            if not wanted:
                return None
            if wanted != set(self._counts):
                taken = Batch(
                    frozenset(wanted),
                    sum(self._counts[root] for root in wanted),
                    self._first,
                    self._last,
                    frozenset().union(*(self._folders.get(root, set()) for root in wanted)),
                    frozenset(self._whole & wanted),
                    self._removals or bool(self._whole & wanted),
                )
                for root in wanted:
                    del self._counts[root]
                    self._folders.pop(root, None)
                    self._whole.discard(root)
                return taken
        self._counts, self._folders, self._whole = {}, {}, set()
        self._removals = False
        self._first = self._last = 0.0
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose refresh did not happen, merged with anything newer.

        Its age is kept, so a restored batch stays due; it is never dropped. Its change
        count is credited to its first root (per-root counts are not kept in a Batch).
        """
        first, last = batch.first_change, batch.last_change
        if self._counts:
            first, last = min(first, self._first), max(last, self._last)
        roots = sorted(batch.roots)
        for index, root in enumerate(roots):
            count = batch.changes - (len(roots) - 1) if index == 0 else 1
            self._counts[root] = self._counts.get(root, 0) + max(count, 1)
            if root in batch.whole_roots or root in self._whole:
                self._whole.add(root)
                self._folders.pop(root, None)
                continue
            folders = {folder for folder in batch.folders if within(folder, root)}
            if folders or root not in self._folders:
                self._folders.setdefault(root, set()).update(folders)
        self._removals = self._removals or batch.removals
        self._first, self._last = first, last
