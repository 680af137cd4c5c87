"""Files still being written: a batch that holds one must not fall due.

inotify reports a copy twice: ``IN_CREATE`` when the file appears and ``IN_CLOSE_WRITE``
when the writer closes it (inotify(7)); nothing in between. A film copied onto a share for
ten minutes would otherwise fall due one quiet period after its creation and be scanned
half-written. So a file whose creation was seen is *open* until its close-after-write
arrives (or it is deleted, or moved: the entry follows the move).

Not every creation is followed by a close: a hard link (how Sonarr and Radarr import by
default), a symlink, or a file moved in from an unwatched folder (watchdog reports an
unmatched ``IN_MOVED_TO`` as a creation) is complete at once. So before an open file holds a
batch, its status is checked (:class:`WriteCheck`, from the edge that stats it): only a
regular file with a single link whose modification time moved within the last quiet
period counts as being written. A stalled writer therefore stops holding after one quiet
period; and nothing holds longer than ``max_write_wait`` (then a WARNING names the file).

Pure: time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from watcher.paths import within

LIMIT = 10_000
"""Open files tracked at once; beyond this, creations are not tracked (a storm of new files
is refreshed as it comes: the quiet period still applies)."""


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """What the edge found for one open file (``watcher.edges.writes``).

    ``regular``: a regular file (not a symlink, folder, fifo); ``links``: its link count;
    ``age``: seconds since its modification time (wall clock); ``exists``: False if gone.
    """

    path: str
    exists: bool = True
    regular: bool = True
    links: int = 1
    age: float = 0.0

    def being_written(self, quiet_period: float) -> bool:
        """A single-link regular file modified within the last ``quiet_period`` seconds."""
        return self.exists and self.regular and self.links == 1 and self.age < max(quiet_period, 1.0)


class WriteTracker:
    """Open files by path (str), each with the clock reading it was first seen at."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._open: dict[str, float] = {}
        self._limit = limit
        self.overflowed = False
        """True once a creation was not tracked because :data:`LIMIT` files were open."""

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, path: object) -> bool:
        return path in self._open

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._open)

    def created(self, now: float, path: str) -> None:
        if path in self._open:
            return
        if len(self._open) >= self._limit:
            self.overflowed = True
            return
        self._open[path] = now

    def closed(self, path: str) -> None:
        self._open.pop(path, None)

    def moved(self, source: str, destination: str, is_directory: bool = False) -> None:
        """A rename: open files follow it (a folder's renamed with everything below it)."""
        if not is_directory:
            since = self._open.pop(source, None)
            if since is not None:
                self._open[destination] = since
            return
        prefix = source.rstrip("/") + "/"
        for path in [path for path in self._open if path.startswith(prefix)]:
            self._open[destination.rstrip("/") + "/" + path[len(prefix) :]] = self._open.pop(path)

    def deleted(self, path: str, is_directory: bool = False) -> None:
        if is_directory:
            self.forget_below(path)
        else:
            self._open.pop(path, None)

    def forget_below(self, folder: str) -> None:
        """Drop every open file under ``folder`` (a root unwatched, a folder deleted)."""
        for path in [path for path in self._open if within(path, folder)]:
            del self._open[path]

    def forget_all(self) -> None:
        """Events were lost: a close may be among them, so nothing is known to be open."""
        self._open.clear()

    def expired(self, now: float, max_write_wait: float) -> list[tuple[str, float]]:
        """Remove and return the files open for ``max_write_wait`` seconds or more, with
        how long each has been open."""
        gone = [(path, now - since) for path, since in self._open.items() if now - since >= max_write_wait]
        for path, _ in gone:
            del self._open[path]
        return gone

    def deadline(self, max_write_wait: float) -> float | None:
        """Clock reading at which the oldest open file stops holding, or None."""
        return min(self._open.values()) + max_write_wait if self._open else None

    def settle(self, checks: Iterable[WriteCheck], quiet_period: float) -> list[str]:
        """Apply the edge's findings: files not being written are no longer open. Returns
        the paths still being written."""
        writing = []
        for check in checks:
            if check.path not in self._open:
                continue
            if check.being_written(quiet_period):
                writing.append(check.path)
            else:
                del self._open[check.path]
        return writing

    def snapshot(self) -> Mapping[str, float]:
        return dict(self._open)
