"""Watch verification: does the kernel really watch every folder under each root?

watchdog fails silently: a permission-denied folder gets no watch, and past
``fs.inotify.max_user_watches`` it skips the rest of the tree without a word (watchdog
7.1, ``observers/inotify.py``: ``_add_all_callbacks`` ignores the error of each folder but
the root). So after (re)watching, the folders under each root are listed (in a
child process with a deadline, like every filesystem access to a root) and compared, in
that child, with the watches this process holds, read from the kernel:
``/proc/<pid>/fdinfo/<fd>`` of an inotify descriptor has one ``inotify wd:… ino:<hex>
sdev:<hex> …`` line per watch (proc(5)). ``sdev`` is the kernel's internal device number
(major << 20 | minor). Only the unwatched folders come back to this process.

A folder found unwatched is not yet a problem: one made a moment ago is watched once
watchdog has handled its creation event, one deleted meanwhile is gone. They are looked at
again until that stops making progress. What is left is blamed on a cause, with evidence:

* the watch limit, only if inotify refused a watch with ENOSPC (inotify_add_watch(2)), or
  the watches held by this user's processes plus the missing ones exceed
  ``max_user_watches`` (inotify(7): the limit is per user);
* folders the kernel never reported: made behind a FUSE mount's back (in the folder it
  serves, not through the mount: the FUSE kernel module sees no operation, so inotify
  reports nothing), or while events were lost;
* folders that cannot be listed (permission denied, PATH_MAX).
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher.core.coverage import Coverage
from watcher.edges.child import run_child

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"

# Lists every folder under each root without following symlinks (a symlink loop cannot
# trap it) and compares them with the inotify watches its parent (the daemon) holds, read
# from /proc/PPID/fdinfo after the walk: one line per root with the number of folders, the
# unwatched ones as (device, inode, path), and the folders that could not be listed. The
# comparison is made here so that the daemon never holds every folder's identity and path
# at once (at 100,000 folders, tens of MiB it would keep from the allocator). argv: the
# ignore regex, then the roots. Ignored folders are left out: their changes do not matter,
# and some are unreadable by design (``lost+found``, root-only on every ext2/3/4 file
# system, which Jellyfin ignores too). Where the parent's fdinfo cannot be read, every
# folder is reported unwatched and the parent's second look (its own fdinfo) decides.
_WALK_PROGRAM = r"""
import json, os, re, sys
pattern = sys.argv[1]
ignored = re.compile(pattern, re.IGNORECASE | re.DOTALL).match if pattern else (lambda name: None)
watch_line = re.compile(rb"^inotify wd:\S+ ino:([0-9a-f]+) sdev:([0-9a-f]+)", re.MULTILINE)
def watched():
    found = set()
    folder = "/proc/%d/fdinfo/" % os.getppid()
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        try:
            with open(folder + name, "rb") as file:
                text = file.read()
        except OSError:
            continue
        for inode, device in watch_line.findall(text):
            device = int(device, 16)
            found.add((os.makedev(device >> 20, device & 0xFFFFF), int(inode, 16)))
    return found
for index, root in enumerate(sys.argv[2:]):
    folders, denied, reasons, gone = {}, [], [], [0]
    def failed(error, path=None):
        path = path or error.filename
        if error.errno in (2, 20) and path != root:  # ENOENT, ENOTDIR: deleted or moved meanwhile
            gone[0] += 1
            return
        denied.append(path)
        reasons.append([error.errno, error.strerror])
    for path, names, _ in os.walk(root, onerror=failed):
        names[:] = [name for name in names if not ignored(name)]
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError as error:
            failed(error, path)
            continue
        folders[(status.st_dev, status.st_ino)] = path
    held = watched()
    unwatched = [[key[0], key[1], path] for key, path in folders.items() if key not in held]
    del held
    sys.stdout.write(json.dumps({"index": index, "folders": len(folders), "unwatched": unwatched, "gone": gone[0],
                                 "denied": denied[:20], "denied_count": len(denied),
                                 "reason": reasons[0] if reasons else None}) + "\n")
    sys.stdout.flush()
"""


# Second look at folders the first one found unwatched: one line per path that still
# exists, with its (device, inode). stdin: the paths, one JSON string per line.
_STAT_PROGRAM = r"""
import json, os, sys
for line in sys.stdin:
    if not line.strip():
        continue
    path = json.loads(line)
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        continue
    sys.stdout.write(json.dumps({"path": path, "device": status.st_dev, "inode": status.st_ino}) + "\n")
sys.stdout.flush()
"""

SECOND_LOOK_STEP = 0.2
"""Seconds between looks at folders found unwatched: watchdog watches a new folder when its
creation event reaches its thread, a moment after the folder appears."""
SECOND_LOOK_WITHIN = 3.0
"""Seconds the looks may go on while they still find progress (folders watched or gone)."""


_WATCH_LINE = re.compile(rb"^inotify wd:\S+ ino:([0-9a-f]+) sdev:([0-9a-f]+)", re.MULTILINE)


def watched_inodes(pid: str = "self") -> set[tuple[int, int]]:
    """(st_dev, inode) of every inotify watch held by process ``pid``, from its fdinfo
    (``inotify wd:… ino:<hex> sdev:<hex> …``, proc(5))."""
    watched: set[tuple[int, int]] = set()
    fdinfo = f"/proc/{pid}/fdinfo/"
    try:
        descriptors = os.listdir(fdinfo)
    except OSError:
        return watched
    for descriptor in descriptors:
        try:
            with open(fdinfo + descriptor, "rb") as file:
                text = file.read()
        except OSError:
            continue
        for inode, device in _WATCH_LINE.findall(text):
            kernel_device = int(device, 16)
            watched.add((os.makedev(kernel_device >> 20, kernel_device & 0xFFFFF), int(inode, 16)))
    return watched


def total_watches() -> int:
    return len(watched_inodes())


def user_watches(uid: int | None = None) -> int | None:
    """inotify watches held by every process of ``uid`` (default: this process's real
    uid), counted in their ``/proc/PID/fdinfo``: what ``fs.inotify.max_user_watches``
    limits (inotify(7)). None if this process's own fdinfo cannot be read."""
    uid = os.getuid() if uid is None else uid
    if not Path("/proc/self/fdinfo").is_dir():
        return None
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            descriptors = os.listdir(f"/proc/{entry.name}/fdinfo")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                with open(f"/proc/{entry.name}/fdinfo/{descriptor}", "rb") as file:
                    total += sum(1 for line in file if line.startswith(b"inotify wd:"))
            except OSError:
                continue
    return total


def watch_limit() -> int | None:
    """``fs.inotify.max_user_watches``, or None where it cannot be read."""
    try:
        return int(Path(MAX_USER_WATCHES).read_text().strip())
    except (OSError, ValueError):
        return None


def _second_look(
    unwatched: dict[tuple[int, int], str], timeout: float, stop: threading.Event | None
) -> tuple[dict[tuple[int, int], str], int]:
    """Look again at folders found unwatched until none is left or a look finds no
    progress (at most :data:`SECOND_LOOK_WITHIN` seconds): a folder made a moment ago is
    watched once watchdog has handled its creation event, one deleted or renamed meanwhile
    is gone. Returns the folders still there and unwatched, and how many vanished."""
    vanished = 0
    deadline = time.monotonic() + SECOND_LOOK_WITHIN
    while unwatched and time.monotonic() < deadline:
        if stop is not None and stop.wait(SECOND_LOOK_STEP):
            break
        if stop is None:
            time.sleep(SECOND_LOOK_STEP)
        records, finished = run_child(
            _STAT_PROGRAM, [], timeout, stop, stdin="".join(json.dumps(path) + "\n" for path in unwatched.values())
        )
        if not finished:
            break
        present = {(int(r["device"]), int(r["inode"])): str(r["path"]) for r in records}  # type: ignore[call-overload]
        vanished += sum(1 for key in unwatched if key not in present)
        watched = watched_inodes()
        remaining = {key: path for key, path in present.items() if key in unwatched and key not in watched}
        progress = len(remaining) < len(unwatched)
        unwatched = remaining
        if not progress:
            break
    return unwatched, vanished


def coverage(
    roots: Sequence[Path],
    timeout: float,
    stop: threading.Event | None = None,
    fuse: Sequence[bool] = (),
    limit_failures: Sequence[int] = (),
    ignore_regex: str = "",
) -> list[Coverage]:
    """Compare the folders under each root with the watches held; one :class:`Coverage`
    per root, in order. A root whose listing did not finish in ``timeout`` seconds has
    ``complete=False`` and is not judged. Folders found unwatched are looked at again
    (:func:`_second_look`) before they count. ``fuse``: per root, whether it is on a FUSE
    filesystem; ``limit_failures``: per root, the ENOSPC count of its watch (default 0).
    Folders whose name matches ``ignore_regex`` (:attr:`IgnoreFilter.regex`) are left out,
    with everything below them. The listing and the comparison with this process's watches
    happen in the child (:data:`_WALK_PROGRAM`): only the unwatched folders come back. Never
    raises for a filesystem error: those are part of the result."""
    if not roots:
        return []
    lines, _ = run_child(_WALK_PROGRAM, [ignore_regex, *(str(root) for root in roots)], timeout, stop)
    by_index = {int(line["index"]): line for line in lines}  # type: ignore[call-overload]
    limit = watch_limit()
    results = []
    for index, root in enumerate(roots):
        line = by_index.get(index)
        on_fuse = fuse[index] if index < len(fuse) else False
        refused = limit_failures[index] if index < len(limit_failures) else 0
        if line is None:
            results.append(Coverage(root, 0, 0, complete=False, fuse=on_fuse, limit_failures=refused))
            continue
        folders = int(line["folders"])  # type: ignore[call-overload]
        reported: list[list[Any]] = line["unwatched"]  # type: ignore[assignment]
        unwatched = {(int(dev), int(ino)): str(path) for dev, ino, path in reported}
        del reported
        vanished = 0
        gone = int(line.get("gone") or 0)  # type: ignore[call-overload]
        if unwatched:
            unwatched, vanished = _second_look(unwatched, timeout, stop)
        # The watches in use by this user: evidence for the watch limit, and the base of the
        # sysctl value a shortfall suggests (this process's own where others' are hidden).
        in_use = (user_watches() or total_watches()) if unwatched else None
        reason: list[Any] = line.get("reason") or [errno.EACCES, ""]  # type: ignore[assignment]
        results.append(
            Coverage(
                root,
                folders=folders - vanished,
                watched=folders - vanished - len(unwatched),
                unwatched=tuple(sorted(unwatched.values())[:5]),
                denied=tuple(line["denied"]),  # type: ignore[arg-type]
                denied_count=int(line["denied_count"]),  # type: ignore[call-overload]
                denied_errno=int(reason[0] or errno.EACCES),
                denied_reason=str(reason[1] or ""),
                limit=limit,
                vanished=vanished + gone,
                limit_failures=refused,
                in_use=in_use,
                fuse=on_fuse,
            )
        )
    return results
