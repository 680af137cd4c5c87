"""Keeping automounted roots mounted while they are watched.

An automount (autofs, ``x-systemd.automount``) is unmounted when it has been idle for its
timeout, and inotify watches do not count as use: the mount expires under them, the
watches die with it (the kernel sends ``IN_UNMOUNT``; watchdog 7.1 passes no event on), and
the next look-up mounts the share afresh — a new mount every few minutes, each one a root
that came back and is counted as changed. The kernel never expires a mount in use (an open
file or folder on it: ``Documentation/filesystems/autofs.rst``, "Mount expiry"), so the
watcher holds each automounted mount point a root needs open while it watches the root.

Opening a folder touches the filesystem in this process; it is done right where the
watch is set up, which walks the same folders anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

logger = logging.getLogger(__name__)


class MountHolder:
    """Open folder descriptors, by root: while one is open its mount cannot expire."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[str, int]]] = {}

    def hold(self, root: str, mount_points: Sequence[str]) -> None:
        """Keep ``mount_points`` open for ``root`` (what was held for it before is let go)."""
        self.release(root)
        held = []
        for point in mount_points:
            try:
                held.append((point, os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)))
            except OSError as error:
                logger.debug("cannot hold the automount %s open: %s", point, error)
        if held:
            self._held[root] = held

    def release(self, root: str) -> None:
        """Let the automounts of ``root`` expire again."""
        for _, descriptor in self._held.pop(root, []):
            with contextlib.suppress(OSError):
                os.close(descriptor)

    def close(self) -> None:
        for root in list(self._held):
            self.release(root)
