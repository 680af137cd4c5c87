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

import errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watcher.health import run_child

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"

# Lists every folder under each root without following symlinks (a symlink loop cannot
# trap it): one line per root with the folders' (device, inode) pairs and the folders that
# could not be listed. argv: the ignore regex, then the roots. Ignored folders are left out:
# their changes do not matter, and some are unreadable by design (``lost+found``, root-only
# on every ext2/3/4 file system, which Jellyfin ignores too).
_WALK_PROGRAM = r"""
import json, os, re, sys
pattern = sys.argv[1]
ignored = re.compile(pattern, re.IGNORECASE | re.DOTALL).match if pattern else (lambda name: None)
for index, root in enumerate(sys.argv[2:]):
    folders, denied, paths, reasons = [], [], {}, []
    def failed(error, path=None):
        denied.append(path or error.filename)
        reasons.append([error.errno, error.strerror])
    for path, names, _ in os.walk(root, onerror=failed):
        names[:] = [name for name in names if not ignored(name)]
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError as error:
            failed(error, path)
            continue
        folders.append([status.st_dev, status.st_ino])
        paths["%d:%d" % (status.st_dev, status.st_ino)] = path
    sys.stdout.write(json.dumps({"index": index, "folders": folders, "denied": denied[:20],
                                 "denied_count": len(denied), "paths": paths,
                                 "reason": reasons[0] if reasons else None}) + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of a root the kernel watches.

    ``folders``: folders found under the root (itself included); ``watched``: how many of
    them hold an inotify watch of this process; ``unwatched``: a few of the others;
    ``denied``: folders that could not be listed (permission denied, I/O error, a path
    longer than PATH_MAX); ``denied_errno``/``denied_reason``: why the first of them failed.
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
    denied_errno: int = errno.EACCES
    denied_reason: str = ""

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
            more = f" and {self.denied_count - 1} more" if self.denied_count > 1 else ""
            first = shown(self.denied[0])
            if self.denied_errno in (errno.EACCES, errno.EPERM):
                return f"{head}: permission denied on {first}{more}: give the watcher's user read and execute access to them"
            if self.denied_errno == errno.ENAMETOOLONG:
                return (
                    f"{head}: {first}{more} cannot be listed: file name too long, its path is longer than "
                    "Linux allows (PATH_MAX, 4096 bytes), Jellyfin cannot read it either: shorten the folder names"
                )
            return f"{head}: {first}{more} cannot be listed ({self.denied_reason or 'error ' + str(self.denied_errno)})"
        suggestion = max(524288, 2 * (total_watches() + missing))
        limit = f" (now {self.limit})" if self.limit else ""
        example = f" (e.g. {shown(self.unwatched[0])})" if self.unwatched else ""
        return (
            f"{head}{example}: the inotify watch limit{limit} is reached; raise it with "
            f"sysctl fs.inotify.max_user_watches={suggestion} (and in /etc/sysctl.d/ to keep it)"
        )


def shown(path: str, limit: int = 200) -> str:
    """``path`` fit for one log line: control characters (a newline in a name) and bytes
    that are not UTF-8 escaped, and a very long path cut in the middle with its length."""
    text = "".join(character if character.isprintable() else repr(character)[1:-1] for character in path)
    if len(text) <= limit:
        return text
    size = len(os.fsencode(path))
    return f"{text[: limit // 2]}…{text[-limit // 2 :]} ({size} bytes)"


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


def coverage(roots: Sequence[Path], timeout: float, stop: threading.Event | None = None,
             ignore_regex: str = "") -> list[Coverage]:
    """Compare the folders under each root with the watches held; one :class:`Coverage`
    per root, in order. A root whose listing did not finish in ``timeout`` seconds has
    ``complete=False`` and is not judged. Folders whose name matches ``ignore_regex``
    (:attr:`IgnoreFilter.regex`) are left out, with everything below them."""
    if not roots:
        return []
    lines, _ = run_child(_WALK_PROGRAM, [ignore_regex, *(str(root) for root in roots)], timeout, stop)
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
        reason = line.get("reason") or [errno.EACCES, ""]  # type: ignore[union-attr]
        results.append(
            Coverage(
                root,
                folders=len(folders),
                watched=len(folders) - len(unwatched),
                unwatched=tuple(sorted(unwatched)[:5]),
                denied=tuple(line["denied"]),  # type: ignore[arg-type]
                denied_count=int(line["denied_count"]),  # type: ignore[call-overload]
                denied_errno=int(reason[0] or errno.EACCES),
                denied_reason=str(reason[1] or ""),
                limit=limit,
            )
        )
    return results
