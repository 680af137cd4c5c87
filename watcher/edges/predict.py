"""Loss guard: before a refresh, predict what Jellyfin would remove, and refuse a mass removal.

Mount checks catch storage that is gone; they cannot catch every way media vanishes for a
moment (one mergerfs branch missing, a disk below a root that was never seen mounted, a
share showing an old snapshot, a folder moved by mistake). Jellyfin's scan deletes the
metadata of every item whose file it does not find, so before refreshing a library (before
every refresh with ``guard.when = "always"``, the default) the watcher asks Jellyfin which
items it holds and checks which of their files a scan would not find:

* ``GET /Items?parentId=<library>&recursive=true&fields=Path&includeItemTypes=…`` paged
  with ``startIndex``/``limit`` (only item types that carry a media file);
* each path mapped to the local path and looked up in a child process under a deadline,
  like every probe: a hung share makes the prediction ``unresponsive``, never "missing".
  A file below a folder that cannot be listed (permission denied, an I/O error, a dead
  FUSE mount, a stale NFS handle) counts as removed: Jellyfin 10.11 drops those items too.

A prediction above the limits (by default more than 20 items *and* more than 5 % of the
library) refuses the refresh; the batch is kept. A smaller removal is an ordinary deletion.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watcher.core.guard import EXAMPLES, Prediction
from watcher.core.libraries import Library
from watcher.edges.child import run_child
from watcher.edges.jellyfin import JellyfinClient, dashed

MEDIA_ITEM_TYPES = ("Movie", "Episode", "Video", "MusicVideo", "Trailer", "Audio", "AudioBook", "Book", "Photo")
"""BaseItemKind values whose items are backed by one media file (folders are not)."""
PAGE_SIZE = 1000
"""Items per ``GET /Items`` page."""

# stdin: a JSON line with the library's locations, then one path per line. Each file is
# looked up the way a scan finds it: by listing its folder, and every folder from the
# library location down to it (each listed once). stdout: one JSON line per file that is
# gone ("missing") or sits below a folder that cannot be listed ("unreadable", with that
# folder and the error), then a summary.
_EXISTS_PROGRAM = r"""
import errno, json, os, sys
UNREADABLE = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EIO: "input/output error",
              errno.ENOTCONN: "transport endpoint is not connected", errno.ESTALE: "stale file handle"}
GONE = (errno.ENOENT, errno.ENOTDIR)
stdin = sys.stdin.buffer
locations = [os.path.normpath(path) for path in json.loads(stdin.readline())]
listings = {}
def listing(folder):
    if folder not in listings:
        try:
            listings[folder] = frozenset(os.listdir(folder))
        except OSError as error:
            listings[folder] = error
    return listings[folder]
def base_of(folder):
    best = None
    for location in locations:
        if (folder == location or folder.startswith(location.rstrip("/") + "/")) and (best is None or len(location) > len(best)):
            best = location
    return best or folder
verdicts = {}
def verdict(folder):
    # Once per folder: its entries (a frozenset); or why a scan would not reach them,
    # ("missing",) or ("unreadable", the folder that cannot be listed, the error); or None
    # after another error (its files are taken as there).
    if folder in verdicts:
        return verdicts[folder]
    names = None
    if folder == base_of(folder):
        names = listing(folder)
    else:
        parent, name = os.path.split(folder)
        above = verdict(parent)
        if isinstance(above, tuple):
            names = above
        elif isinstance(above, frozenset):
            names = listing(folder) if name in above else ("missing",)
    if isinstance(names, OSError):
        if names.errno in GONE:
            names = ("missing",)
        elif names.errno in UNREADABLE:
            names = ("unreadable", folder, UNREADABLE[names.errno])
        else:
            names = None
    verdicts[folder] = names
    return names
checked = 0
write = sys.stdout.write
by_folder = {}  # the folder as given → its verdict (normalised once)
for path in os.fsdecode(stdin.read()).split("\n"):
    if not path:
        continue
    checked += 1
    folder, _, name = path.rpartition("/")
    found = by_folder.get(folder, by_folder)
    if found is by_folder:
        found = by_folder[folder] = verdict(os.path.normpath(folder or "/"))
    if found is None or (isinstance(found, frozenset) and name in found):
        continue
    if isinstance(found, frozenset) or found[0] == "missing":
        write(json.dumps({"missing": path}) + "\n")
    else:
        write(json.dumps({"unreadable": path, "folder": found[1], "error": found[2]}) + "\n")
write(json.dumps({"done": checked}) + "\n")
sys.stdout.flush()
"""


def predict(
    client: JellyfinClient,
    library: Library,
    local_path: Callable[[str], str],
    timeout: float,
    stop: threading.Event | None = None,
) -> Prediction:
    """Predict what a scan of ``library`` would remove. Raises JellyfinError.

    Each item's file is looked up as Jellyfin's scan finds it, by listing its folder and the
    folders above it up to the library's location: a folder that cannot be listed (EACCES,
    EIO, ENOTCONN, ESTALE) loses its items in Jellyfin 10.11, which skips entries it may not
    read (``EnumerationOptions.IgnoreInaccessible``) and treats the children of a folder
    whose listing throws as removed (``Folder.ValidateChildrenInternal2``).
    """
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
    locations = [local_path(location) for location in library.locations]
    found = check_files(paths, locations, timeout, stop)
    if not found.finished:
        return Prediction(library, len(paths), 0, unresponsive=True, pages=pages)
    gone = [*found.missing, *(path for path, _, _ in found.unreadable)]
    folders = tuple(dict.fromkeys((folder, error) for _, folder, error in found.unreadable))
    return Prediction(
        library,
        len(paths),
        len(gone),
        tuple(gone[:EXAMPLES]),
        pages=pages,
        unreadable=len(found.unreadable),
        unreadable_folders=folders,
    )


def check_files(
    paths: Sequence[str], locations: Sequence[str], timeout: float, stop: threading.Event | None = None
) -> FileCheck:
    """Look ``paths`` up in a child process, listing each folder from the nearest of
    ``locations`` (the library's folders) down to the file's, once per folder; give up after
    ``timeout`` seconds (then ``finished`` is False). Paths holding a newline are skipped."""
    if not paths:
        return FileCheck((), (), True)
    text = json.dumps(list(locations)) + "\n" + "".join(path + "\n" for path in paths if "\n" not in path)
    lines, finished = run_child(_EXISTS_PROGRAM, [], timeout, stop, stdin=text)
    done = bool(lines) and "done" in lines[-1]
    missing = tuple(str(line["missing"]) for line in lines if "missing" in line)
    unreadable = tuple(
        (str(line["unreadable"]), str(line["folder"]), str(line["error"])) for line in lines if "unreadable" in line
    )
    return FileCheck(missing, unreadable, finished and done)


def missing_files(paths: Sequence[str], timeout: float, stop: threading.Event | None = None) -> tuple[list[str], bool]:
    """The paths a scan would not find (gone, or below a folder that cannot be listed),
    checked in a child process; and whether the check finished within ``timeout`` seconds
    (if not, the list means nothing)."""
    found = check_files(paths, [], timeout, stop)
    return [*found.missing, *(path for path, _, _ in found.unreadable)], found.finished


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What the existence check found: ``missing`` paths (gone), ``unreadable`` paths (below
    a folder that cannot be listed) with that folder and the error, and whether the check
    finished in time (if not, the lists mean nothing)."""

    missing: tuple[str, ...]
    unreadable: tuple[tuple[str, str, str], ...]
    """(path, folder, error) for each file below a folder that cannot be listed."""
    finished: bool
