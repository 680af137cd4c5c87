"""The status of files still open for writing, checked in a child process.

A file whose creation was seen but whose close-after-write was not may be a copy under way
— or a hard link, a symlink, a file moved in from elsewhere, which are complete at once
(:mod:`watcher.core.writes`). This stats each one (``lstat``: a symlink is not followed) in
a child process under a deadline, like every filesystem access to a root: a hung mount
makes the check time out, never the daemon hang.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from watcher.core.writes import WriteCheck
from watcher.edges.child import run_child

TIMEOUT = 10.0
"""Seconds the check may take."""

# stdin: one path per line; stdout: one JSON line per path, then {"done": n}.
_CHECK_PROGRAM = r"""
import json, os, stat, sys, time
checked = 0
for line in sys.stdin.buffer:
    path = os.fsdecode(line.rstrip(b"\n"))
    if not path:
        continue
    checked += 1
    try:
        status = os.lstat(path)
    except OSError:
        sys.stdout.write(json.dumps({"path": path, "exists": False}) + "\n")
        continue
    sys.stdout.write(json.dumps({"path": path, "exists": True, "regular": stat.S_ISREG(status.st_mode),
                                 "links": status.st_nlink, "age": time.time() - status.st_mtime}) + "\n")
sys.stdout.write(json.dumps({"done": checked}) + "\n")
sys.stdout.flush()
"""


def check_writes(
    paths: Sequence[str], timeout: float = TIMEOUT, stop: threading.Event | None = None
) -> tuple[tuple[WriteCheck, ...], bool]:
    """Each path's :class:`WriteCheck`, and whether the check finished within ``timeout``
    seconds (if not, the checks mean nothing). A path holding a newline is reported gone:
    it cannot travel on a line, and it is no longer held."""
    lines = [path for path in paths if "\n" not in path]
    records, finished = run_child(_CHECK_PROGRAM, [], timeout, stop, stdin="".join(path + "\n" for path in lines))
    done = bool(records) and "done" in records[-1]
    checks = [
        WriteCheck(
            str(record["path"]),
            exists=bool(record["exists"]),
            regular=bool(record.get("regular", False)),
            links=int(record.get("links", 0)),  # type: ignore[call-overload]
            age=float(record.get("age", 0.0)),  # type: ignore[arg-type]
        )
        for record in records
        if "path" in record
    ]
    checks += [WriteCheck(path, exists=False) for path in paths if "\n" in path]
    return tuple(checks), finished and done
