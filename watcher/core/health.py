"""A root's health, as a probe found it: values, no I/O.

States, in the order they are decided (:mod:`watcher.edges.probe` probes and judges):

* ``unresponsive``: the filesystem probe did not answer within the probe timeout.
* ``unmounted``: the mount point the root lives on (the longest mount-point prefix of its
  real path in the mount table) is not the expected one, e.g. ``/`` instead of ``/mnt/usb``;
  or a disk mounted below it, or a branch of its pool, is not mounted.
* ``missing``: not there, or not a folder.
* ``unreadable``: permission denied, or an I/O error such as a dead FUSE daemon (ENOTCONN).
* ``empty``: no entries — the bare mount point a failed mount leaves behind.
* ``healthy``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from watcher.config import Root
from watcher.core.state import LearnedBranch, SavedState


class State(enum.StrEnum):
    HEALTHY = "healthy"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    UNMOUNTED = "unmounted"
    UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True, slots=True)
class BranchHealth:
    """One branch of the pool a root lives on, as the last probe found it.

    ``path``: the branch as the pool names it (a glob's match); ``mode``: ``RW``, ``RO``,
    ``NC`` (mergerfs) or ``lower``, ``upper`` (overlayfs); ``pool``/``kind``: the pool's
    mount point and ``mergerfs`` or ``overlayfs``; ``reason``: what is wrong, worded to
    follow "branch … of the … pool …"; ``mount_point``/``fstype``/``mount_id``: where the
    branch lives per the mount table; ``empty``: it has no entries; ``counterpart``: the
    folder on this branch that holds the root's files, if there is one.
    """

    path: str
    mode: str
    pool: str
    kind: str
    state: State
    reason: str = ""
    mount_point: str | None = None
    fstype: str | None = None
    mount_id: int = 0
    empty: bool = False
    counterpart: str | None = None
    visible: bool = True
    """False for an overlay layer this mount namespace cannot see (a container's own root
    names host folders): it is neither checked nor learned."""

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY

    def describe(self) -> str:
        """``branch /mnt/disk2 of the mergerfs pool /pool is not mounted``"""
        text = f"branch {self.path} of the {self.kind} pool {self.pool}"
        return f"{text} {self.reason}" if self.reason else f"{text} is healthy"

    def as_status(self) -> dict[str, object]:
        """The branch as ``status --json`` shows it."""
        return {
            "path": self.path,
            "mode": self.mode,
            "pool": self.pool,
            "kind": self.kind,
            "state": self.state.value,
            "reason": self.reason,
            "mount_point": self.mount_point,
            "fstype": self.fstype,
        }


@dataclass(frozen=True, slots=True)
class Health:
    """What a probe found for one root.

    ``mount_point``/``fstype``: where the root's real path lives per the mount table (None
    when the probe could not resolve it). ``device``/``inode``: of the root folder (None
    unless it was stat'ed).
    """

    root: Root
    state: State
    reason: str = ""
    mount_point: Path | None = None
    fstype: str | None = None
    device: int | None = None
    inode: int | None = None
    is_file: bool = False
    mounts: tuple[tuple[str, int], ...] = ()
    """The mount point the root lives on and every mount point below it, each with its
    kernel mount ID (0 where unknown): a change means the watches on it died."""
    pool: str | None = None
    """The mount point of the union filesystem (mergerfs, overlay) the root lives on."""
    branches: tuple[BranchHealth, ...] = ()
    """The pool's branches, when the root lives on one."""
    pool_problem: str = ""
    """Why the pool's branches are not known (they are then not checked)."""
    automounts: tuple[str, ...] = ()
    """The automounted mount points the root needs (its own, the ones below it) that are
    mounted: keep them busy while watching, or they expire under the inotify watches."""

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY

    @property
    def mounts_below(self) -> list[str]:
        """The mount points below the root (``mounts`` starts with the root's own)."""
        return [point for point, _ in self.mounts[1:]]

    @property
    def counterparts(self) -> tuple[str, ...]:
        """The folders on a mergerfs pool's branches that hold the root's files: a file
        written straight to one of them makes no event on the pool."""
        return tuple(branch.counterpart for branch in self.branches if branch.counterpart and branch.kind == "mergerfs")

    @property
    def branch_identity(self) -> tuple[tuple[str, int, str | None], ...]:
        """Each branch with its mount ID and counterpart: a change means the watches on it died."""
        return tuple((branch.path, branch.mount_id, branch.counterpart) for branch in self.branches)

    def learn_into(self, saved: SavedState) -> bool:
        """Record where this (healthy) root lives in ``saved``, and the branches of its
        pool; True if anything was new."""
        mount_point = None if self.mount_point is None else str(self.mount_point)
        key = str(self.root.path)
        learned = saved.learn(key, mount_point, self.mounts_below, self.root.mount is not None)
        for branch in self.branches:
            if branch.healthy and branch.visible and branch.mount_point is not None:
                seen = LearnedBranch(branch.pool, branch.kind, branch.mode, branch.mount_point, not branch.empty)
                learned |= saved.learn_branch(key, branch.path, seen)
        return learned

    def describe(self) -> str:
        """``"/mnt/usb/movies is unmounted (…)"``: the line a user reads."""
        if self.healthy:
            return f"{self.root.path} is healthy"
        return f"{self.root.path} is {self.state} ({self.reason})"


def branch_lines(health: Health) -> list[str]:
    """One line per branch of the pool a root lives on, for ``check`` and ``doctor``:
    ``branch /mnt/disk1 (RW) of the mergerfs pool /pool: healthy (on /mnt/disk1, ext4)``,
    ``branch /mnt/disk2 (RW) of the mergerfs pool /pool is not mounted``."""
    lines = []
    if health.pool_problem:
        lines.append(f"the pool {health.pool}: {health.pool_problem}: its branches are not checked")
    for branch in health.branches:
        head = f"branch {branch.path} ({branch.mode}) of the {branch.kind} pool {branch.pool}"
        if branch.healthy and branch.reason:
            lines.append(f"{head}: {branch.reason}")
        elif branch.healthy:
            where = f"on {branch.mount_point}" + (f", {branch.fstype}" if branch.fstype else "")
            lines.append(f"{head}: healthy ({where})")
        else:
            lines.append(f"{head} {branch.reason}")
    return lines
