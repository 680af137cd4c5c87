"""Watch verification: does the kernel really watch every folder under each root?

watchdog fails silently: a permission-denied folder gets no watch, and past
``fs.inotify.max_user_watches`` it skips the rest of the tree without a word (FACTS.md,
"watchdog 7.1"). So after (re)watching, the folders under each root are listed (in a
child process with a deadline, like every filesystem access to a root) and compared with
the watches this process holds, read from the kernel: ``/proc/self/fdinfo/<fd>`` of an
inotify descriptor has one ``inotify wd:… ino:<hex> sdev:<hex> …`` line per watch
(proc(5)). ``sdev`` is the kernel's internal device number (major << 20 | minor).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watcher.health import run_child

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"

# Lists every folder under each root without following symlinks (a symlink loop cannot
# trap it): one line per root with the folders' (device, inode) pairs and the folders that
# could not be listed.
_WALK_PROGRAM = r"""
import json, os, sys
for index, root in enumerate(sys.argv[1:]):
    folders, denied, paths = [], [], {}
    def failed(error):
        denied.append(error.filename)
    for path, names, _ in os.walk(root, onerror=failed):
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError as error:
            denied.append(path)
            continue
        folders.append([status.st_dev, status.st_ino])
        paths["%d:%d" % (status.st_dev, status.st_ino)] = path
    sys.stdout.write(json.dumps({"index": index, "folders": folders, "denied": denied[:20],
                                 "denied_count": len(denied), "paths": paths}) + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of a root the kernel watches.

    ``folders``: folders found under the root (itself included); ``watched``: how many of
    them hold an inotify watch of this process; ``unwatched``: a few of the others;
    ``denied``: folders that could not be listed (permission denied, I/O error).
    ``complete``: False when the listing did not finish within its deadline.
    """

    root: Path
    folders: int
    watched: int
    unwatched: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    denied_count: int = 0
    complete: bool = True
    limit: int | None = field(default=None)

    @property
    def shortfall(self) -> int:
        return self.folders - self.watched + self.denied_count

    def problem(self) -> str | None:
        """The ERROR line for a shortfall, naming the cause and the fix; None if covered."""
        if not self.complete or self.shortfall <= 0:
            return None
        missing = self.shortfall
        head = f"{missing} of {self.folders + self.denied_count} folders under {self.root} are not watched"
        if self.denied_count:
            return (
                f"{head}: permission denied on {self.denied[0]}"
                + (f" and {self.denied_count - 1} more" if self.denied_count > 1 else "")
                + ": give the watcher's user read and execute access to them"
            )
        suggestion = max(524288, 2 * (total_watches() + missing))
        limit = f" (now {self.limit})" if self.limit else ""
        example = f" (e.g. {self.unwatched[0]})" if self.unwatched else ""
        return (
            f"{head}{example}: the inotify watch limit{limit} is reached; raise it with "
            f"sysctl fs.inotify.max_user_watches={suggestion} (and in /etc/sysctl.d/ to keep it)"
        )


def watched_inodes(pid: str = "self") -> set[tuple[int, int]]:
    """(st_dev, inode) of every inotify watch held by process ``pid``, from its fdinfo."""
    watched: set[tuple[int, int]] = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    try:
        descriptors = list(fdinfo.iterdir())
    except OSError:
        return watched
    for descriptor in descriptors:
        try:
            text = descriptor.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if not line.startswith("inotify wd:"):
                continue
            fields = dict(part.split(":", 1) for part in line.split()[1:] if ":" in part)
            try:
                kernel_device = int(fields["sdev"], 16)
                inode = int(fields["ino"], 16)
            except (KeyError, ValueError):
                continue
            watched.add((os.makedev(kernel_device >> 20, kernel_device & 0xFFFFF), inode))
    return watched


def total_watches() -> int:
    return len(watched_inodes())


def watch_limit() -> int | None:
    """``fs.inotify.max_user_watches``, or None where it cannot be read."""
    try:
        return int(Path(MAX_USER_WATCHES).read_text().strip())
    except (OSError, ValueError):
        return None


def coverage(roots: Sequence[Path], timeout: float, stop: threading.Event | None = None) -> list[Coverage]:
    """Compare the folders under each root with the watches held; one :class:`Coverage`
    per root, in order. A root whose listing did not finish in ``timeout`` seconds has
    ``complete=False`` and is not judged."""
    if not roots:
        return []
    lines, _ = run_child(_WALK_PROGRAM, [str(root) for root in roots], timeout, stop)
    by_index = {int(line["index"]): line for line in lines}  # type: ignore[call-overload]
    watched = watched_inodes()
    limit = watch_limit()
    results = []
    for index, root in enumerate(roots):
        line = by_index.get(index)
        if line is None:
            results.append(Coverage(root, 0, 0, complete=False))
            continue
        folders = [tuple(pair) for pair in line["folders"]]  # type: ignore[union-attr]
        paths: dict[str, str] = line["paths"]  # type: ignore[assignment]
        unwatched = [paths[f"{dev}:{ino}"] for dev, ino in folders if (dev, ino) not in watched]
        results.append(
            Coverage(
                root,
                folders=len(folders),
                watched=len(folders) - len(unwatched),
                unwatched=tuple(sorted(unwatched)[:5]),
                denied=tuple(line["denied"]),  # type: ignore[arg-type]
                denied_count=int(line["denied_count"]),  # type: ignore[call-overload]
                limit=limit,
            )
        )
    return results
