"""Root health: is every library folder really there, on the disk it belongs to?

States, in the order they are decided:

* ``unresponsive``: the filesystem probe did not answer within the probe timeout.
* ``unmounted``: the mount point the root lives on (the longest mount-point prefix of its
  real path in the mount table) is not the expected one, e.g. ``/`` instead of ``/mnt/usb``.
* ``missing``: not there, or not a folder.
* ``unreadable``: permission denied, or an I/O error such as a dead FUSE daemon (ENOTCONN).
* ``empty``: no entries — the bare mount point a failed mount leaves behind.
* ``healthy``.

A root on a union filesystem (a mergerfs pool, an overlay) also needs every branch of the
pool: a branch that is missing, unmounted, unreadable, unresponsive, or empty where it held
files makes the root unhealthy, in that branch's state, with a reason naming the branch and
the pool (:mod:`watcher.edges.union` reads and probes the branches). A root behind an
automount (autofs, ``x-systemd.automount``) is looked up by the probe, which mounts it; if
the mount table then still shows autofs there, the share did not mount: ``unmounted``.

Every filesystem call on a root (``realpath``, ``stat``, ``scandir``) runs in a child
process that is killed when the deadline passes: on a dead NFS/SMB/FUSE mount these calls
block in the kernel and no thread can be cancelled (nfs(5), ``hard``: requests are retried
indefinitely; a FUSE request waits for its daemon's answer). The
mount table is read in-process with ``psutil.disk_partitions(all=True)``, which never
blocks, even when a mount is dead; ``all=False`` would drop nfs, cifs, tmpfs and fuse.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import psutil

from watcher.config import Root
from watcher.core.automount import autofs_mounts, automount_of, unmounted_automount
from watcher.core.health import BranchHealth, Health, State
from watcher.core.state import LearnedBranch
from watcher.core.union import OVERLAY, POOL_KINDS, BranchSpec, parse_overlay_layers
from watcher.edges.child import run_child
from watcher.edges.mounts import mount_ids
from watcher.edges.union import BranchAnswer, PoolRequest, probe_pools

logger = logging.getLogger(__name__)


# The child's program: one thread per root so that one hung root does not hide the others;
# one JSON line per root on stdout as soon as it is known. Standard library only, run with
# ``python -I -S`` so that it starts in milliseconds.
_PROBE_PROGRAM = r"""
import json, os, stat, sys, threading
lock = threading.Lock()
def emit(index, **result):
    result["index"] = index
    line = json.dumps(result) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
def probe(index, path):
    real = os.path.realpath(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return emit(index, real=real, kind="absent")
    except NotADirectoryError:
        return emit(index, real=real, kind="absent")
    except PermissionError:
        return emit(index, real=real, kind="denied")
    except OSError as error:
        return emit(index, real=real, kind="error", errno=error.errno, error=error.strerror)
    if not stat.S_ISDIR(status.st_mode):
        return emit(index, real=real, kind="file")
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except PermissionError:
        return emit(index, real=real, kind="denied", dev=status.st_dev, ino=status.st_ino)
    except OSError as error:
        return emit(index, real=real, kind="error", errno=error.errno, error=error.strerror)
    try:
        status = os.stat(path)  # after the listing, which mounts an automount stat does not
    except OSError:
        pass
    emit(index, real=real, kind="dir", empty=empty, dev=status.st_dev, ino=status.st_ino)
threads = [threading.Thread(target=probe, args=(i, p), daemon=True) for i, p in enumerate(sys.argv[1:])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""

_ERRNO_HINTS = {
    107: "transport endpoint is not connected: the FUSE daemon or network share is gone",  # ENOTCONN
    116: "stale file handle: the network share was re-exported or the server restarted",  # ESTALE
    5: "input/output error: the disk or share is failing",  # EIO
    112: "host is down",  # EHOSTDOWN
}


def probe_roots(
    roots: Sequence[Root],
    expected_mounts: Mapping[Path, Path],
    timeout: float,
    stop: threading.Event | None = None,
    expected_below: Mapping[Path, Sequence[str]] | None = None,
    expected_branches: Mapping[Path, Mapping[str, LearnedBranch]] | None = None,
) -> list[Health]:
    """Check every root; one :class:`Health` per root, in order.

    ``expected_mounts`` maps a root's path to the mount point it must live on (the
    configured ``mount``, else the one recorded when it was last healthy); a root with
    neither is checked only for existence, readability and entries. ``timeout`` (seconds)
    bounds the probe of the roots: a root whose answer is not in by then is
    ``unresponsive``. ``expected_below`` maps a root's path to the mount points below it
    that must be mounted (a disk mounted inside a library folder: Jellyfin would drop its
    items). ``expected_branches`` maps a root's path to the branches of its pool learned
    while healthy (their mount points, whether they held files). Roots on a union
    filesystem then have their pool's branches probed, within another ``timeout``.
    ``stop``, when set, cuts the wait short (roots not answered count as unresponsive).
    Never raises for a filesystem problem; never blocks longer than twice ``timeout``.
    """
    if not roots:
        return []
    autofs = autofs_mounts((point, fstype, opts) for point, _, fstype, opts in _mount_entries())
    below_wanted = {root.path: list((expected_below or {}).get(root.path, ())) for root in roots}
    # Automounted disks below a root are looked up too, so that they mount (or show they
    # cannot): left alone, an expired one would read as gone.
    triggers = sorted({point for points in below_wanted.values() for point in points if automount_of(point, autofs)})
    answers = _run_probe([str(root.path) for root in roots] + triggers, timeout, stop)
    entries = _mount_entries()
    mounts = {point: (device, fstype) for point, device, fstype, _ in entries}
    options = {point: opts for point, _, _, opts in entries}
    autofs = autofs_mounts((point, fstype, opts) for point, _, fstype, opts in entries)
    ids = mount_ids()
    results = []
    for index, root in enumerate(roots):
        answer = answers.get(index)
        expected = root.mount or expected_mounts.get(root.path)
        health = _judge(root, answer, expected, mounts, autofs, timeout)
        if answer is not None and health.mount_point is not None:
            real = str(answer.get("real") or root.path)
            below = mounts_below(real, mounts)
            health = replace(health, mounts=tuple((point, ids.get(point, 0)) for point in [str(health.mount_point), *below]))
            gone = [
                point for point in below_wanted[root.path] if point not in mounts or mounts[point][1] == "autofs"
            ]
            if gone and health.state in (State.HEALTHY, State.EMPTY):
                health = replace(
                    health,
                    state=State.UNMOUNTED,
                    reason=f"{_list_paths(gone)} mounted below it {'is' if len(gone) == 1 else 'are'} not mounted: "
                    "is the disk or share there? (if it was removed on purpose: jellyfin-watcher check --relearn)",
                )
            needed = [str(health.mount_point), *below]
            held = tuple(
                point for point in needed if automount_of(point, autofs) and mounts.get(point, ("", ""))[1] != "autofs"
            )
            health = replace(health, automounts=held)
        results.append(health)
    return _with_branches(results, answers, mounts, options, ids, expected_branches or {}, timeout, stop)


def _mount_entries() -> list[tuple[str, str, str, str]]:
    """(mount point, device, filesystem type, options) of every mount, stacked ones
    included, in table order (the last one on a mount point is on top)."""
    return [(part.mountpoint, part.device, part.fstype, part.opts) for part in psutil.disk_partitions(all=True)]


def _with_branches(
    results: list[Health],
    answers: Mapping[int, dict[str, object]],
    mounts: Mapping[str, tuple[str, str]],
    options: Mapping[str, str],
    ids: Mapping[str, int],
    learned: Mapping[Path, Mapping[str, LearnedBranch]],
    timeout: float,
    stop: threading.Event | None,
) -> list[Health]:
    """Probe the branches of the pools the roots live on, and judge each root by them.

    A root whose own probe did not answer is looked at through the branches learned for it
    (the pool may hang because one branch does): the reason then names that branch.
    """
    requests: dict[str, PoolRequest] = {}
    wanted: dict[int, tuple[str, str]] = {}  # root index → (pool, root's real path)
    for index, health in enumerate(results):
        known = learned.get(health.root.path) or {}
        if health.state is State.UNRESPONSIVE and known:
            first = next(iter(known.values()))
            specs = tuple(BranchSpec(path, branch.mode) for path, branch in known.items())
            requests.setdefault(first.pool, PoolRequest(first.pool, first.kind, specs))
            wanted[index] = (first.pool, "")
            continue
        pool = str(health.mount_point) if health.mount_point is not None else ""
        kind = POOL_KINDS.get(health.fstype or "")
        if kind is None or answers.get(index) is None:
            continue
        real = str(answers[index].get("real") or health.root.path)
        relative = os.path.relpath(real, pool)
        layers = tuple(parse_overlay_layers(options.get(pool, ""))) if health.fstype == OVERLAY else None
        previous = requests.get(pool)
        relatives = tuple(sorted({*(previous.relatives if previous else ()), relative}))
        requests[pool] = PoolRequest(pool, kind, layers, relatives)
        wanted[index] = (pool, real)
    if not wanted:
        return results
    pools = {answer.pool: answer for answer in probe_pools(list(requests.values()), timeout, stop)}
    judged = list(results)
    for index, (pool, real) in wanted.items():
        health = results[index]
        answer = pools.get(pool)
        if answer is None:
            continue
        known = learned.get(health.root.path) or {}
        relative = os.path.relpath(real, pool) if real else ""
        branches = tuple(
            _judge_branch(branch, answer.pool, answer.kind, known.get(branch.path), relative, mounts, ids, timeout)
            for branch in answer.branches
        )
        bad = [branch for branch in branches if not branch.healthy]
        if health.state is State.UNRESPONSIVE:
            hung = [branch for branch in bad if branch.state is State.UNRESPONSIVE]
            reason = health.reason
            if hung:
                reason = f"no answer within {timeout:g} s: {'; '.join(branch.describe() for branch in hung)}"
            judged[index] = replace(health, pool=pool, branches=branches, reason=reason)
            continue
        judged[index] = health = replace(health, pool=pool, branches=branches, pool_problem=answer.problem)
        if answer.unresponsive and health.state in (State.HEALTHY, State.EMPTY):
            judged[index] = replace(
                health, state=State.UNRESPONSIVE, reason=f"the {answer.kind} pool {pool}: {answer.problem}"
            )
        elif bad and health.state in (State.HEALTHY, State.EMPTY, State.MISSING):
            judged[index] = replace(health, state=bad[0].state, reason="; ".join(branch.describe() for branch in bad))
    return judged


def _judge_branch(
    branch: BranchAnswer,
    pool: str,
    kind: str,
    learned: LearnedBranch | None,
    relative: str,
    mounts: Mapping[str, tuple[str, str]],
    ids: Mapping[str, int],
    timeout: float,
) -> BranchHealth:
    found = BranchHealth(branch.path, branch.mode, pool, kind, State.HEALTHY)
    answer = branch.answer
    if answer is None:
        return replace(found, state=State.UNRESPONSIVE, reason=f"does not answer within {timeout:g} s")
    real = str(answer.get("real") or branch.path)
    mount_point = mount_point_of(real, mounts)
    found = replace(
        found,
        mount_point=mount_point,
        fstype=mounts.get(mount_point, ("", ""))[1] or None,
        mount_id=ids.get(mount_point, 0),
        empty=bool(answer.get("empty")),
    )
    present = answer.get("counterparts")
    if answer.get("kind") == "dir" and isinstance(present, list) and relative in present:
        found = replace(found, counterpart=real if relative == "." else os.path.join(real, relative))
    # A branch on a mount inside the one it was learned on has had a disk mounted since
    # (it was first seen while its disk was away): that is not a fault.
    if learned is not None and learned.mount != mount_point and not mount_point.startswith(learned.mount.rstrip("/") + "/"):
        return replace(found, state=State.UNMOUNTED, reason="is not mounted")
    if found.fstype == "autofs":
        return replace(found, state=State.UNMOUNTED, reason="is not mounted (its automount did not mount)")
    kind_found = answer.get("kind")
    if kind_found == "absent" and kind == "overlayfs" and learned is None:
        # An overlay's layers are named in its mount options as the namespace that mounted
        # it saw them: a container's own root (Docker, systemd-nspawn) names host folders
        # that do not exist in here. Never seen here, they cannot be checked here.
        return replace(found, reason="not visible in this mount namespace (a container's own layers?): not checked",
                       visible=False, mount_point=None, fstype=None, mount_id=0)
    if kind_found == "absent":
        return replace(found, state=State.MISSING, reason="is missing")
    if kind_found == "file":
        return replace(found, state=State.MISSING, reason="is a file, not a folder")
    if kind_found == "denied":
        return replace(found, state=State.UNREADABLE, reason="is unreadable (permission denied)")
    if kind_found == "error":
        number = answer.get("errno")
        hint = _ERRNO_HINTS.get(number) if isinstance(number, int) else None
        return replace(found, state=State.UNREADABLE, reason=f"is unreadable ({hint or answer.get('error')})")
    if found.empty and learned is not None and learned.held_files:
        return replace(
            found,
            state=State.EMPTY,
            reason="is empty, but held files when last seen healthy "
            "(if it was emptied on purpose: jellyfin-watcher check --relearn)",
        )
    return found


def mounts_below(real_path: str, mounts: Mapping[str, tuple[str, str]]) -> list[str]:
    """Mount points strictly inside ``real_path``, sorted."""
    prefix = real_path.rstrip("/") + "/"
    return sorted(point for point in mounts if point.startswith(prefix))


def _list_paths(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def mount_table() -> dict[str, tuple[str, str]]:
    """Mount point → (device, filesystem type), from ``psutil.disk_partitions(all=True)``.

    For a mount point listed more than once (stacked mounts), the last entry is the one on
    top. Never blocks on a dead mount.
    """
    table: dict[str, tuple[str, str]] = {}
    for partition in psutil.disk_partitions(all=True):
        table[partition.mountpoint] = (partition.device, partition.fstype)
    return table


def mount_point_of(real_path: str, mounts: Mapping[str, tuple[str, str]]) -> str:
    """The longest mount point in ``mounts`` that contains ``real_path`` (``/`` at worst)."""
    best = "/"
    for mount_point in mounts:
        if len(mount_point) <= len(best):
            continue
        if real_path == mount_point or real_path.startswith(mount_point.rstrip("/") + "/"):
            best = mount_point
    return best


def _judge(
    root: Root,
    answer: dict[str, object] | None,
    expected: Path | None,
    mounts: Mapping[str, tuple[str, str]],
    autofs: Mapping[str, str],
    timeout: float,
) -> Health:
    if answer is None:
        return Health(
            root,
            State.UNRESPONSIVE,
            f"no answer within {timeout:g} s: a hung network share or FUSE mount?",
        )
    real = str(answer.get("real") or root.path)
    mount_point = mount_point_of(real, mounts)
    device, inode = answer.get("dev"), answer.get("ino")
    found = Health(
        root,
        State.HEALTHY,
        mount_point=Path(mount_point),
        fstype=mounts.get(mount_point, ("", ""))[1] or None,
        device=device if isinstance(device, int) else None,
        inode=inode if isinstance(inode, int) else None,
    )
    kind = answer.get("kind")
    waiting = unmounted_automount(real, mount_point, found.fstype or "", autofs)
    if waiting is not None:
        return replace(
            found,
            state=State.UNMOUNTED,
            reason=f"the automount {waiting} did not mount: is the share reachable, and its automount map or unit right?",
        )
    if expected is not None and Path(mount_point) != expected:
        return replace(
            found,
            state=State.UNMOUNTED,
            reason=f"it lives on {mount_point} instead of the mount point {expected}: is the disk or share mounted?",
        )
    if kind == "absent":
        return replace(found, state=State.MISSING, reason="no such folder")
    if kind == "file":
        return replace(found, state=State.MISSING, reason="it is a file, not a folder", is_file=True)
    if kind == "denied":
        return replace(found, state=State.UNREADABLE, reason="permission denied")
    if kind == "error":
        number = answer.get("errno")
        hint = _ERRNO_HINTS.get(number) if isinstance(number, int) else None
        return replace(found, state=State.UNREADABLE, reason=hint or str(answer.get("error")))
    if answer.get("empty"):
        return replace(found, state=State.EMPTY, reason="it has no entries: a bare mount point left by a failed mount?")
    return found


def _run_probe(paths: list[str], timeout: float, stop: threading.Event | None) -> dict[int, dict[str, object]]:
    """Run the probe child; return the answers that arrived before the deadline, by index."""
    lines, _ = run_child(_PROBE_PROGRAM, paths, timeout, stop)
    return {int(line.pop("index")): line for line in lines}  # type: ignore[call-overload]


