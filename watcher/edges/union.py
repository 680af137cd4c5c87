"""Reading a union filesystem's branches, and probing them, in child processes under a deadline.

A root on a mergerfs pool depends on every branch of the pool: with one branch gone the
pool keeps answering with the others' files, the pool's mount does not change, and no
event is sent — but Jellyfin's next scan drops every item of the missing branch. So the
health check looks at the branches themselves (:func:`probe_pools`); what the answers mean
is decided in :mod:`watcher.health`.

* mergerfs: the branch list is read from the extended attribute ``user.mergerfs.branches``
  (older releases: ``user.mergerfs.srcmounts``) of ``<pool>/.mergerfs`` (mergerfs(1),
  "RUNTIME CONFIG"). The read goes through the pool's FUSE daemon, so it runs in a child.
* overlayfs: the layers come from the mount options (the mount table), no I/O needed.

Each branch is probed like a root (``realpath``, ``stat``, a listing), one thread per
branch, in a child process killed at the deadline: a branch on a hung share makes that
branch ``unresponsive``, never the watcher. A branch given as a glob is expanded there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from watcher.core.union import BranchSpec, parse_mergerfs_branches

# argv: pool mount points. stdout: one JSON line per pool with the raw attribute value.
_BRANCH_LIST_PROGRAM = r"""
import json, os, sys, threading
lock = threading.Lock()
def emit(**result):
    line = json.dumps(result) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
def read(index, pool):
    control = os.path.join(pool, ".mergerfs")
    error = None
    for name in ("user.mergerfs.branches", "user.mergerfs.srcmounts"):
        try:
            value = os.getxattr(control, name)
        except OSError as problem:
            error = problem
            continue
        return emit(index=index, value=os.fsdecode(value))
    emit(index=index, error=error.strerror if error is not None else "no branch list")
threads = [threading.Thread(target=read, args=(i, p), daemon=True) for i, p in enumerate(sys.argv[1:])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""

# argv[1]: JSON [[path or glob, [relative folders to look for]], ...]. stdout: for a glob, one
# line with its matches; then one line per branch probed.
_BRANCH_PROBE_PROGRAM = r"""
import glob, json, os, stat, sys, threading
lock = threading.Lock()
def emit(**result):
    line = json.dumps(result) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
def probe(index, path, relatives):
    real = os.path.realpath(path)
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return emit(index=index, path=path, real=real, kind="absent")
    except PermissionError:
        return emit(index=index, path=path, real=real, kind="denied")
    except OSError as error:
        return emit(index=index, path=path, real=real, kind="error", errno=error.errno, error=error.strerror)
    if not stat.S_ISDIR(status.st_mode):
        return emit(index=index, path=path, real=real, kind="file")
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except PermissionError:
        return emit(index=index, path=path, real=real, kind="denied")
    except OSError as error:
        return emit(index=index, path=path, real=real, kind="error", errno=error.errno, error=error.strerror)
    found = [relative for relative in relatives if os.path.isdir(os.path.join(path, relative))]
    emit(index=index, path=path, real=real, kind="dir", empty=empty, counterparts=found)
def expand(index, pattern, relatives):
    if not glob.has_magic(pattern):
        return probe(index, pattern, relatives)
    matches = sorted(glob.glob(pattern))
    emit(index=index, matches=matches)
    threads = [threading.Thread(target=probe, args=(index, match, relatives), daemon=True) for match in matches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
requests = json.loads(sys.argv[1])
threads = [threading.Thread(target=expand, args=(i, path, relatives), daemon=True) for i, (path, relatives) in enumerate(requests)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


@dataclass(frozen=True, slots=True)
class PoolRequest:
    """A pool to look at: its mount point, its kind (``mergerfs`` or ``overlayfs``), the
    branches if already known (overlayfs layers from the mount options, or the branches
    learned earlier when the pool itself does not answer; None: read them from the pool),
    and the folders (relative to the pool) whose counterparts on each branch matter."""

    pool: str
    kind: str
    branches: tuple[BranchSpec, ...] | None
    relatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BranchAnswer:
    """One branch: ``path`` (a glob's match, else as the pool names it), its ``mode``, and
    what the probe found (``None``: no answer within the deadline). ``answer`` holds
    ``real``, ``kind`` (``dir``, ``absent``, ``file``, ``denied``, ``error``), ``empty``,
    ``errno``/``error``, and ``counterparts`` (the relative folders present on it)."""

    path: str
    mode: str
    answer: dict[str, object] | None


@dataclass(frozen=True, slots=True)
class PoolAnswer:
    """The branches of one pool; ``problem`` says why they are not known (then
    ``unresponsive`` tells whether the pool did not answer at all)."""

    pool: str
    kind: str
    branches: tuple[BranchAnswer, ...] = ()
    problem: str = ""
    unresponsive: bool = False


def probe_pools(requests: Sequence[PoolRequest], timeout: float, stop: threading.Event | None = None) -> list[PoolAnswer]:
    """Read each pool's branches (unless given) and probe every branch; one answer per
    request, in order. Both steps together take at most ``timeout`` seconds (plus the
    reaping of killed children, 0.2 s each). Never raises for a filesystem problem."""
    from watcher.edges.child import run_child

    if not requests:
        return []
    deadline = _Deadline(timeout)
    specs: list[tuple[BranchSpec, ...] | None] = [request.branches for request in requests]
    problems = ["" for _ in requests]
    unresponsive = [False for _ in requests]
    unread = [index for index, request in enumerate(requests) if request.branches is None]
    if unread:
        lines, _ = run_child(_BRANCH_LIST_PROGRAM, [requests[index].pool for index in unread], deadline.left(), stop)
        answered = {int(str(line["index"])): line for line in lines}
        for position, index in enumerate(unread):
            line = answered.get(position)
            if line is None:
                problems[index] = f"its branch list did not come within {timeout:g} s"
                unresponsive[index] = True
            elif "value" in line:
                specs[index] = tuple(parse_mergerfs_branches(str(line["value"])))
            else:
                problems[index] = f"its branch list cannot be read ({line.get('error')})"
    flat: list[tuple[int, BranchSpec]] = [
        (index, spec) for index, known in enumerate(specs) for spec in (known or ())
    ]
    answers: dict[int, list[dict[str, object]]] = {}
    matches: dict[int, list[str]] = {}
    if flat:
        argument = json.dumps([[spec.path, list(requests[index].relatives)] for index, spec in flat])
        lines, _ = run_child(_BRANCH_PROBE_PROGRAM, [argument], max(deadline.left(), 0.05), stop)
        for line in lines:
            position = int(str(line["index"]))
            if "matches" in line and isinstance(line["matches"], list):
                matches[position] = [str(match) for match in line["matches"]]
            else:
                answers.setdefault(position, []).append(line)
    results = []
    for index, request in enumerate(requests):
        branches = []
        for position, (owner, spec) in enumerate(flat):
            if owner != index:
                continue
            got = {str(line.get("path")): line for line in answers.get(position, [])}
            if spec.is_glob:
                # A glob whose expansion did not arrive is one branch that did not answer.
                for path in matches.get(position, [spec.path]):
                    branches.append(BranchAnswer(path, spec.mode, got.get(path)))
            else:
                branches.append(BranchAnswer(spec.path, spec.mode, got.get(spec.path)))
        results.append(
            PoolAnswer(request.pool, request.kind, tuple(branches), problems[index], unresponsive[index])
        )
    return results


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())
