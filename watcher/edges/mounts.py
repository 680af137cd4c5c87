"""Mount identities from ``/proc/self/mountinfo`` (Linux).

psutil gives the mount table (mount point, device, type) but not the kernel's mount ID,
which is new for every mount: a disk unmounted and mounted again at the same place between
two health checks keeps its mount point, device and inode numbers, and only the mount ID
tells that the watch set up on the old mount is gone (inotify watches die with the mount:
the kernel sends ``IN_UNMOUNT`` and ``IN_IGNORED``, inotify(7)). Reading the file never blocks, even when a mount is dead.

Format (proc(5)): ``ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE
SOURCE SUPER_OPTIONS``; spaces, tabs, newlines and backslashes in paths are octal escapes
(``\\040``). Later lines for the same mount point are stacked on top of earlier ones.
"""

from __future__ import annotations

import re

MOUNTINFO = "/proc/self/mountinfo"

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes: ``/mnt/my\\040disk`` → ``/mnt/my disk``."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mount_ids(text: str) -> dict[str, int]:
    """Mount point → the mount ID of the mount on top there, from mountinfo text."""
    ids: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        ids[unescape(fields[4])] = int(fields[0])
    return ids


def mount_ids(path: str = MOUNTINFO) -> dict[str, int]:
    """Mount point → mount ID for this mount namespace; empty where mountinfo is absent
    (not Linux), which disables the check."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return parse_mount_ids(file.read())
    except OSError:
        return {}
