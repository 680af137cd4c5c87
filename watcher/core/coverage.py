"""How much of a root the kernel watches, and what to say about a shortfall. Pure.

:mod:`watcher.edges.verify` lists the folders under a root and the watches this process
holds (``/proc/self/fdinfo``); :class:`Coverage` is what it found and :meth:`Coverage.problem`
the line a user reads, blaming a cause only with evidence.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

LIMIT = "limit"
"""Cause: ``fs.inotify.max_user_watches`` is reached (with evidence)."""


DENIED = "denied"
"""Cause: folders the watcher may not list (permission denied, I/O error, PATH_MAX)."""


UNREPORTED = "unreported"
"""Cause: folders the kernel never reported (made behind a FUSE mount's back, or while
events were lost) and that no watch limit explains."""


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of a root the kernel watches.

    ``folders``: folders found under the root (itself included); ``watched``: how many of
    them hold an inotify watch of this process; ``unwatched``: a few of the others;
    ``denied``: folders that could not be listed (permission denied, I/O error, a path
    longer than PATH_MAX); ``denied_errno``/``denied_reason``: why the first of them failed.
    ``complete``: False when the listing did not finish within its deadline.
    ``vanished``: folders listed, then gone before a second look (deleted or renamed
    meanwhile: not a problem). ``limit_failures``: folders under the root that inotify
    refused a watch with ENOSPC (:meth:`watcher.watch.RootWatcher.limit_failures`);
    ``in_use``: inotify watches held by all processes of this user when the shortfall was
    found (None when not needed or unknown); ``fuse``: the root is on a FUSE filesystem.
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
    vanished: int = 0
    limit_failures: int = 0
    in_use: int | None = None
    fuse: bool = False

    @property
    def missing(self) -> int:
        """Folders that exist and hold no watch."""
        return self.folders - self.watched

    @property
    def shortfall(self) -> int:
        return self.missing + self.denied_count

    @property
    def limit_reached(self) -> bool:
        """Evidence that ``max_user_watches`` is why folders are missing: adding a watch
        failed with ENOSPC, or the watches in use plus the missing ones exceed the limit."""
        if self.limit_failures > 0:
            return True
        return self.limit is not None and self.in_use is not None and self.in_use + self.missing > self.limit

    @property
    def cause(self) -> str | None:
        """:data:`LIMIT`, :data:`UNREPORTED` or :data:`DENIED` (that order: the first that
        applies), or None when every folder is watched or the listing was incomplete."""
        if not self.complete or self.shortfall <= 0:
            return None
        if self.missing > 0:
            return LIMIT if self.limit_reached else UNREPORTED
        return DENIED

    @property
    def may_have_missed_changes(self) -> bool:
        """Whether changes in readable folders may have gone unseen (the folders exist and
        hold no watch): not so for folders the watcher may not read, which polling cannot
        list either (it lists them once they are readable, which inotify would not)."""
        return self.cause in (LIMIT, UNREPORTED)

    def problem(self) -> str | None:
        """The log line for a shortfall, naming the cause and the fix; None if covered."""
        cause = self.cause
        if cause is None:
            return None
        head = f"{self.shortfall} of {self.folders + self.denied_count} folders under {self.root} are not watched"
        example = f" (e.g. {shown(self.unwatched[0])})" if self.unwatched else ""
        if cause == LIMIT:
            suggestion = max(524288, 2 * ((self.in_use or 0) + self.missing))
            limit = f" (now {self.limit})" if self.limit else ""
            if self.limit_failures:
                evidence = f"inotify refused {self.limit_failures} of them a watch: no space left (ENOSPC)"
            else:
                evidence = f"{self.in_use} watches in use by this user + {self.missing} missing > {self.limit}"
            return (
                f"{head}{example}: the inotify watch limit{limit} is reached ({evidence}); raise it with "
                f"sysctl fs.inotify.max_user_watches={suggestion} (and in /etc/sysctl.d/ to keep it)"
            )
        if cause == UNREPORTED:
            if self.fuse:
                return (
                    f"{head}{example}: the kernel never reported them; they were made behind the FUSE mount's back "
                    f"(in the folder it serves, not through {self.root}), and a FUSE mount reports no change made that way"
                )
            return (
                f"{head}{example}: the kernel never reported them (they appeared while events were lost, or below a "
                "mount made after the root was watched)"
            )
        more = f" and {self.denied_count - 1} more" if self.denied_count > 1 else ""
        first = shown(self.denied[0]) if self.denied else "?"
        if self.denied_errno in (errno.EACCES, errno.EPERM):
            return f"{head}: permission denied on {first}{more}: give the watcher's user read and execute access to them"
        if self.denied_errno == errno.ENAMETOOLONG:
            return (
                f"{head}: {first}{more} cannot be listed: file name too long, its path is longer than "
                "Linux allows (PATH_MAX, 4096 bytes), Jellyfin cannot read it either: shorten the folder names"
            )
        return f"{head}: {first}{more} cannot be listed ({self.denied_reason or 'error ' + str(self.denied_errno)})"


def shown(path: str, limit: int = 200) -> str:
    """``path`` fit for one log line: control characters (a newline in a name) and bytes
    that are not UTF-8 escaped, and a very long path cut in the middle with its length."""
    text = "".join(character if character.isprintable() else repr(character)[1:-1] for character in path)
    if len(text) <= limit:
        return text
    size = len(os.fsencode(path))
    return f"{text[: limit // 2]}…{text[-limit // 2 :]} ({size} bytes)"
