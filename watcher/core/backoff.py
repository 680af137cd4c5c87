"""Exponential backoff between retries of something that failed. Pure."""

from __future__ import annotations

from dataclasses import dataclass

START = 1.0
"""Seconds before the first retry; doubles with every further failure."""


@dataclass(slots=True)
class Backoff:
    """Counts consecutive failures; :meth:`failed` returns the delay before the next try.

    >>> backoff = Backoff(maximum=5.0)
    >>> [backoff.failed() for _ in range(5)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    """

    maximum: float
    failures: int = 0

    def failed(self) -> float:
        """Record a failure; seconds to wait before trying again (1, 2, 4, … up to ``maximum``)."""
        self.failures += 1
        return float(min(self.maximum, START * 2 ** min(self.failures - 1, 62)))

    def succeeded(self) -> None:
        self.failures = 0
