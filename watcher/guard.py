"""Loss guard: before a refresh, predict what Jellyfin would remove, and refuse a mass removal.

Mount checks catch storage that is gone; they cannot catch every way media vanishes for a
moment (one mergerfs branch missing, a share showing an old snapshot, a folder moved by
mistake). Jellyfin's scan deletes the metadata of every item whose file it does not find,
so before refreshing a library the watcher asks Jellyfin which items it holds and checks
which of their files are gone:

* ``GET /Items?parentId=<library>&recursive=true&fields=Path&includeItemTypes=…`` paged
  with ``startIndex``/``limit`` (only item types that carry a media file);
* each path mapped to the local path and checked in a child process under a deadline,
  like every probe: a hung share makes the prediction ``unresponsive``, never "missing".

A prediction above the limits (by default more than 20 items *and* more than 5 % of the
library) refuses the refresh; the batch is kept. A smaller removal is an ordinary deletion.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watcher.health import run_child
from watcher.jellyfin import JellyfinClient, Library, dashed

MEDIA_ITEM_TYPES = ("Movie", "Episode", "Video", "MusicVideo", "Trailer", "Audio", "AudioBook", "Book", "Photo")
"""BaseItemKind values whose items are backed by one media file (folders are not)."""
PAGE_SIZE = 1000
"""Items per ``GET /Items`` page."""
EXAMPLES = 5
"""Missing paths named in a refusal."""

# stdin: one path per line; stdout: missing paths, one JSON line each, then a summary.
_EXISTS_PROGRAM = r"""
import json, os, sys
checked = 0
for line in sys.stdin.buffer:
    path = os.fsdecode(line.rstrip(b"\n"))
    if not path:
        continue
    checked += 1
    try:
        os.stat(path)
    except FileNotFoundError:
        sys.stdout.write(json.dumps({"missing": path}) + "\n")
    except NotADirectoryError:
        sys.stdout.write(json.dumps({"missing": path}) + "\n")
    except OSError:
        pass
sys.stdout.write(json.dumps({"done": checked}) + "\n")
sys.stdout.flush()
"""


@dataclass(frozen=True, slots=True)
class Limits:
    """A removal is refused when it exceeds *both*: more than ``count`` items and more
    than ``share`` (a fraction, 0.05 = 5 %) of the library's items."""

    count: int = 20
    share: float = 0.05


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a scan of one library would remove.

    ``items``: media items Jellyfin holds; ``missing``: how many of their files are gone;
    ``examples``: the first few missing paths (local); ``unresponsive``: the existence
    check did not finish in time (nothing is known); ``pages``: ``GET /Items`` requests made.
    """

    library: Library
    items: int
    missing: int
    examples: tuple[str, ...] = ()
    unresponsive: bool = False
    pages: int = 0

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

    def describe(self) -> str:
        if self.unresponsive:
            return f"library {self.library.name}: the existence check did not finish in time (unresponsive storage)"
        examples = ", ".join(self.examples)
        more = f" and {self.missing - len(self.examples)} more" if self.missing > len(self.examples) else ""
        head = f"library {self.library.name}: {self.missing} of {self.items} items ({self.share:.0%}) would be removed"
        return head + (f": {examples}{more}" if self.missing else "")


def predict(
    client: JellyfinClient,
    library: Library,
    local_path: Callable[[str], str],
    timeout: float,
    stop: threading.Event | None = None,
) -> Prediction:
    """Predict what a scan of ``library`` would remove. Raises JellyfinError."""
    paths: list[str] = []
    pages = 0
    start = 0
    while True:
        page = client.items(
            parent_id=dashed(library.item_id),
            start_index=start,
            limit=PAGE_SIZE,
            include_item_types=MEDIA_ITEM_TYPES,
        )
        pages += 1
        batch = page.get("Items") or []
        paths.extend(local_path(str(item["Path"])) for item in batch if isinstance(item, dict) and item.get("Path"))
        start += len(batch)
        total = page.get("TotalRecordCount")
        if not batch or (isinstance(total, int) and start >= total):
            break
    missing, finished = missing_files(paths, timeout, stop)
    if not finished:
        return Prediction(library, len(paths), 0, unresponsive=True, pages=pages)
    return Prediction(library, len(paths), len(missing), tuple(missing[:EXAMPLES]), pages=pages)


def missing_files(paths: Sequence[str], timeout: float, stop: threading.Event | None = None) -> tuple[list[str], bool]:
    """The paths that do not exist, checked in a child process; and whether the check
    finished within ``timeout`` seconds (if not, the list means nothing)."""
    if not paths:
        return [], True
    text = "".join(path + "\n" for path in paths if "\n" not in path)
    lines, finished = run_child(_EXISTS_PROGRAM, [], timeout, stop, stdin=text)
    done = bool(lines) and "done" in lines[-1]
    return [str(line["missing"]) for line in lines if "missing" in line], finished and done
