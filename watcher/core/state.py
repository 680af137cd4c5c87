"""What the watcher remembers across restarts: values and the rules for learning them.

* the mount point each root was last seen healthy on, so that a watcher restarted while a
  USB disk is away does not learn ``/`` as the disk's mount point;
* the disks mounted below a root and the branches of its pool, seen while healthy;
* the pending batch (roots and change count), so that changes owed a refresh when the
  process stopped or crashed are refreshed after a restart, through the health gate.

Kept in ``<state dir>/state.json`` by :class:`watcher.edges.state.StateStore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class PendingChanges:
    """A batch owed a refresh, as persisted: root paths and a change count."""

    roots: list[str]
    changes: int


@dataclass(frozen=True, slots=True)
class LearnedBranch:
    """A branch of the pool a root lives on, as last seen healthy: the ``pool`` (its mount
    point) and its ``kind`` (``mergerfs``, ``overlayfs``), the branch's ``mode`` (``RW``,
    ``RO``, ``NC``, ``lower``, ``upper``), the ``mount`` point it lived on, and whether it
    ``held_files`` (had entries)."""

    pool: str
    kind: str
    mode: str
    mount: str
    held_files: bool


@dataclass(slots=True)
class SavedState:
    mounts: dict[str, str] = field(default_factory=dict)
    """Root path → the mount point it was last seen healthy on."""
    below: dict[str, list[str]] = field(default_factory=dict)
    """Root path → mount points seen below it while healthy (disks mounted inside it)."""
    pending: PendingChanges | None = None
    branches: dict[str, dict[str, LearnedBranch]] = field(default_factory=dict)
    """Root path → branch path → what was learned about that branch of the root's pool."""

    def expected_mounts(self) -> dict[Path, Path]:
        """Root path → the mount point it must live on, as ``health.probe_roots`` takes it."""
        return {Path(path): Path(mount) for path, mount in self.mounts.items()}

    def expected_below(self) -> dict[Path, list[str]]:
        """Root path → mount points that must be mounted below it."""
        return {Path(path): points for path, points in self.below.items()}

    def learn(self, root: str, mount_point: str | None, below: Iterable[str], configured: bool) -> bool:
        """Remember where a healthy ``root`` lives (unless its mount point is ``configured``
        or already known) and the disks mounted below it (added, never dropped: a disk
        that goes away is what the check is for). True if anything new was learned."""
        learned = False
        if not configured and root not in self.mounts and mount_point is not None:
            self.mounts[root] = mount_point
            learned = True
        points = sorted(set(below) | set(self.below.get(root, ())))
        if points != self.below.get(root, []) and (points or root in self.below):
            self.below[root] = points
            learned = True
        return learned

    def expected_branches(self) -> dict[Path, dict[str, LearnedBranch]]:
        """Root path → the branches of its pool learned while healthy, by branch path."""
        return {Path(path): dict(branches) for path, branches in self.branches.items()}

    def learn_branch(self, root: str, branch: str, learned: LearnedBranch) -> bool:
        """Remember a branch of ``root``'s pool seen healthy. Its mount point is kept once
        known (a later one would be learned while its disk is away), unless the new one
        lies inside it: a disk now mounted where the branch was first seen without one
        (the watcher started while it was away). That it held files, once seen, stays (a
        branch found empty later is the fault to catch). True if anything new was learned."""
        known = self.branches.get(root, {}).get(branch)
        if known is not None:
            deeper = learned.mount.startswith(known.mount.rstrip("/") + "/")
            merged = LearnedBranch(
                learned.pool,
                learned.kind,
                learned.mode,
                learned.mount if deeper else known.mount,
                known.held_files or learned.held_files,
            )
        else:
            merged = learned
        if merged == known:
            return False
        self.branches.setdefault(root, {})[branch] = merged
        return True

    def forget(self, root: str) -> None:
        """Drop what was learned about ``root`` (``check --relearn``)."""
        self.mounts.pop(root, None)
        self.below.pop(root, None)
        self.branches.pop(root, None)
