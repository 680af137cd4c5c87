"""Polling, for roots inotify cannot see into: network shares and FUSE mounts.

inotify only sees changes made through this machine's mount: files written on the NAS
itself or by another client of an NFS/SMB/rclone share produce no event (inotify(7),
"Limitations and caveats": inotify "does not catch remote events that occur on network
filesystems"). watchdog's ``PollingObserver`` stats every *file* on every cycle (1.33 s
and +194 MiB per cycle for 110k entries). This poller is cheaper:

* it remembers, per *directory*, its mtime and a 64-bit digest of the names of its
  relevant entries (ignore patterns applied) — memory proportional to directories;
* each cycle stats the known directories and lists only those whose mtime changed (adding,
  removing or renaming an entry changes the parent directory's mtime, on NFS and SMB too);
  new directories are walked (method ``mtime``);
* where a folder's mtime does not follow its contents (an rclone mount: through rclone's
  VFS it never changes when files are added on the server; object-store filesystems such
  as s3fs), each cycle lists every directory instead (method ``list``): as many listings
  as folders, each answered from the mount's own folder cache while that is fresh;
* a directory whose mtime changed but whose relevant names did not (Jellyfin writing an
  ``.nfo`` or a poster) is noise, not a change;
* a directory whose mtime is only a moment old when it is listed is listed again on the
  next cycle (:data:`RACY_NS`): on a filesystem with a coarse clock (sshfs: whole seconds)
  a second change within the same tick would leave the mtime unchanged.

All filesystem access runs in a child process under a deadline, like the health probe: a
hung share makes the cycle time out (reported so the service can probe the root), never a
hung daemon. A cycle in which the root itself is gone, or a folder cannot be read because of
the storage failing (an I/O error, a dropped connection), fails as a whole instead of
reporting a flood of deletions: unmounts and dead servers are the health gate's business.
A folder the watcher may not read is left as it was.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watcher.core.messages import PollResult
from watcher.edges.child import run_child

logger = logging.getLogger(__name__)

# argv: root, ignore regex, method ("mtime" or "list"), RACY_NS. stdin: known
# folders as JSON lines [path, mtime_ns, digest]. stdout: one JSON line per folder whose state
# changed: {"path", "mtime", "digest"} or {"path", "gone": true}; last line {"done": true,
# "stats": n, "lists": n}, {"root_gone": true}, or {"error": [path, errno, strerror]} when a
# folder could not be read because the storage is failing (an I/O error, a dead connection:
# FAILING): the cycle then proves nothing, and reporting the folder as gone would read as
# deletions. A folder that cannot be read for another reason (permission denied, a path
# beyond PATH_MAX) is left as it was known.
_POLL_PROGRAM = r"""
import errno, hashlib, json, os, re, stat, sys, time
root, pattern, method, RACY = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ignored = re.compile(pattern, re.IGNORECASE | re.DOTALL).match if pattern else (lambda name: None)
out = sys.stdout
GONE = (errno.ENOENT, errno.ENOTDIR)
FAILING = tuple(getattr(errno, name) for name in ("EIO", "ENOTCONN", "ESTALE", "EHOSTDOWN", "EHOSTUNREACH",
    "ETIMEDOUT", "ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "ENETDOWN", "ENETUNREACH", "ENODEV", "ENXIO",
    "EREMOTEIO", "ENOLINK", "ECOMM") if hasattr(errno, name))
class Failing(Exception):
    pass
def emit(**record):
    out.write(json.dumps(record) + "\n")  # ASCII: a name that is not UTF-8 travels as \udcXX
def fail(path, error):
    raise Failing(path, error)
try:
    os.stat(root)
except OSError:
    emit(root_gone=True); out.flush(); sys.exit(0)
known = {}
for line in sys.stdin:
    if not line.strip():
        continue
    path, mtime, digest = json.loads(line)
    known[path] = (mtime, digest)
counts = {"stats": 0, "lists": 0}
seen = set()
def listing(path):
    names, folders = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if ignored(entry.name):
                continue
            names.append(entry.name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
            except OSError:
                pass
    names.sort()
    digest = hashlib.blake2b("\0".join(names).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return digest, folders
def visit(path, mtime):
    # Lists one folder; returns its sub-folders ([] if it could not be listed). A folder
    # whose mtime is within RACY of now may change again within the same clock tick
    # (sshfs and SMB1 report whole seconds, FAT two): it is stored as -1, so that the
    # next cycle lists it again instead of trusting an mtime that would not move.
    seen.add(path)
    counts["lists"] += 1
    if method == "mtime" and mtime > time.time_ns() - RACY:
        mtime = -1
    try:
        digest, folders = listing(path)
    except OSError as error:
        if error.errno in GONE:
            emit(path=path, gone=True)
            return []
        if error.errno in FAILING:
            fail(path, error)
        return []
    old = known.get(path)
    if old is None or old[1] != digest or (method == "mtime" and old[0] != mtime):
        emit(path=path, mtime=mtime, digest=digest)
    return folders
def walk(path):
    # A folder not known yet, and everything below it (method mtime).
    pending = [path]
    while pending:
        folder = pending.pop()
        counts["stats"] += 1
        try:
            status = os.stat(folder, follow_symlinks=False)
        except OSError as error:
            if error.errno in FAILING:
                fail(folder, error)
            continue
        if not stat.S_ISDIR(status.st_mode):
            continue
        pending.extend(sub for sub in visit(folder, status.st_mtime_ns) if sub not in known)
def walk_all(path):
    # Every folder (method list). Listing several at a time gained nothing on an rclone
    # mount: rclone paces its requests to the server (about 100 a second for WebDAV).
    pending = [path]
    while pending:
        pending.extend(visit(pending.pop(), 0))
    for known_path in known:
        if known_path not in seen:
            emit(path=known_path, gone=True)
def check_known():
    for path, (mtime, digest) in known.items():
        counts["stats"] += 1
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError as error:
            if error.errno in GONE:
                emit(path=path, gone=True)
            elif error.errno in FAILING:
                fail(path, error)
            continue
        if status.st_mtime_ns != mtime:
            for folder in visit(path, status.st_mtime_ns):
                if folder not in known:
                    walk(folder)
try:
    if method == "list":
        walk_all(root)
    elif not known:
        walk(root)
    else:
        check_known()
except Failing as failing:
    path, error = failing.args
    emit(error=[path, error.errno or 0, error.strerror or str(error)])
    out.flush()
    sys.exit(0)
emit(done=True, **counts)
out.flush()
"""


RACY_NS = 3_000_000_000
"""Nanoseconds: a folder whose mtime is this close to the moment it is listed is listed again
on the next cycle (method ``mtime``). A change made within the same tick of a coarse clock
leaves the mtime as it was: sshfs passes SFTP's whole seconds, FAT has two. Three seconds
also leave a second of clock difference between a server and this machine."""


class RootPoller:
    """Polls one root every ``interval`` seconds on its own thread; results go to ``put``.

    ``ignore_regex``: the combined ignore pattern (:attr:`IgnoreFilter.regex`).
    ``timeout``: seconds one cycle may take. ``method``: ``"mtime"`` (stat the known
    folders, list those whose mtime changed) or ``"list"`` (list every folder, for
    filesystems whose folder mtimes do not follow their contents, e.g. an rclone mount).
    Raises ValueError for another method.
    """

    def __init__(self, root: Path, interval: float, timeout: float, ignore_regex: str, put: Callable[[object], None],
                 method: str = "mtime") -> None:
        if method not in ("mtime", "list"):
            raise ValueError(f"unknown polling method {method!r}: expected mtime or list")
        self.root = root
        self.interval = interval
        self.timeout = timeout
        self.method = method
        self._ignore = ignore_regex
        self._put = put
        self._stop = threading.Event()
        self._known: dict[str, tuple[int, str]] = {}
        self._thread = threading.Thread(target=self._run, name=f"poll {root}", daemon=True)

    @property
    def directories(self) -> int:
        return len(self._known)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        slow_said = False
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = self.cycle()
            except Exception as error:  # a bug must not end polling of this root for good
                logger.exception("polling %s failed; trying again in %g s", self.root, self.interval)
                result = PollResult(str(self.root), failed=f"the polling cycle failed: {error}", directories=len(self._known))
            took = time.monotonic() - started
            if took > self.interval and not result.failed and not slow_said:
                slow_said = True
                logger.warning(
                    "polling %s took %.0f s, more than its poll_interval of %g s: changes there are seen that much later; "
                    "raise poll_interval to match (on rclone, listings are served from its cache for --dir-cache-time)",
                    self.root, took, self.interval,
                )
            self._put(result)
            if self._stop.wait(self.interval):
                return

    def cycle(self) -> PollResult:
        """One polling cycle (blocking, at most ``timeout`` seconds)."""
        first = not self._known
        lines = [json.dumps([path, mtime, digest]) for path, (mtime, digest) in self._known.items()]
        records, finished = run_child(
            _POLL_PROGRAM, [str(self.root), self._ignore, self.method, str(RACY_NS)], self.timeout, self._stop,
            stdin="".join(line + "\n" for line in lines),
        )
        key = str(self.root)
        if records and records[-1].get("root_gone"):
            return PollResult(key, failed="the root is gone", directories=len(self._known))
        if records and records[-1].get("error"):
            error: list[object] = records[-1]["error"]  # type: ignore[assignment]
            return PollResult(key, failed=f"cannot list {error[0]}: {error[2]}", directories=len(self._known))
        if not finished or not records or not records[-1].get("done"):
            return PollResult(key, failed=f"the polling cycle did not finish within {self.timeout:g} s", directories=len(self._known))
        changed = []
        for record in records[:-1]:
            path = str(record["path"])
            if record.get("gone"):
                if self._known.pop(path, None) is not None:
                    changed.append(path)
                continue
            mtime, digest = int(record["mtime"]), str(record["digest"])  # type: ignore[call-overload]
            old = self._known.get(path)
            self._known[path] = (mtime, digest)
            if old is None or old[1] != digest:
                changed.append(path)
        if first:
            return PollResult(key, first=True, directories=len(self._known))
        return PollResult(key, changed=tuple(changed), directories=len(self._known))
