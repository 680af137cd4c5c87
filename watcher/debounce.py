"""Debouncing: many changes become one batch, and one batch becomes one refresh.

Pure logic: the clock is an argument (seconds, any monotonic origin); only the service loop
reads it. A batch is due when no relevant change arrived for ``quiet_period`` seconds, or
``max_wait`` seconds after its first change, whichever comes first (the upper bound keeps a
never-ending download from postponing the refresh forever, unlike Jellyfin's own monitor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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

    def merge(self, other: Batch) -> Batch:
        """One batch holding the changes of both."""
        return Batch(
            roots=self.roots | other.roots,
            changes=self.changes + other.changes,
            first_change=min(self.first_change, other.first_change),
            last_change=max(self.last_change, other.last_change),
        )


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
        self._roots: set[str] = set()
        self._changes = 0
        self._first = 0.0
        self._last = 0.0

    @property
    def pending(self) -> Batch | None:
        """The batch being collected, or None."""
        if not self._changes:
            return None
        return Batch(frozenset(self._roots), self._changes, self._first, self._last)

    def add(self, now: float, root: str, changes: int = 1) -> None:
        """Count ``changes`` relevant changes under ``root`` at clock reading ``now``."""
        if changes <= 0:
            return
        if not self._changes:
            self._first = now
        self._last = max(self._last, now) if self._changes else now
        self._changes += changes
        self._roots.add(root)

    def add_many(self, now: float, roots: Iterable[str]) -> None:
        """Count one change under each of ``roots`` (e.g. all roots after lost events)."""
        for root in roots:
            self.add(now, root)

    def deadline(self) -> float | None:
        """Clock reading at which the pending batch is due, or None when nothing is pending."""
        if not self._changes:
            return None
        return min(self._last + self.quiet_period, self._first + self.max_wait)

    def due(self, now: float) -> bool:
        """Whether a batch is pending and due at ``now``."""
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> Batch | None:
        """Remove and return the pending batch (None if there is none)."""
        batch = self.pending
        self._roots = set()
        self._changes = 0
        self._first = self._last = 0.0
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose refresh did not happen, merged with anything newer.

        Its age is kept, so a restored batch stays due; it is never dropped.
        """
        pending = self.pending
        merged = batch if pending is None else batch.merge(pending)
        self._roots = set(merged.roots)
        self._changes = merged.changes
        self._first = merged.first_change
        self._last = merged.last_change
