"""Polling, for roots inotify cannot see into: network shares and FUSE mounts.

inotify only sees changes made through this machine's mount: files written on the NAS
itself or by another client of an NFS/SMB/rclone share produce no event (FACTS.md,
"watchdog 7.1"). watchdog's ``PollingObserver`` stats every *file* on every cycle (1.33 s
and +194 MiB per cycle for 110k entries). This poller is cheaper:

* it remembers, per *directory*, its mtime and a 64-bit digest of the names of its
  relevant entries (ignore patterns applied) — memory proportional to directories;
* each cycle stats the known directories and lists only those whose mtime changed (adding,
  removing or renaming an entry changes the parent directory's mtime, on NFS and SMB too);
  new directories are walked;
* a directory whose mtime changed but whose relevant names did not (Jellyfin writing an
  ``.nfo`` or a poster) is noise, not a change.

All filesystem access runs in a child process under a deadline, like the health probe: a
hung share makes the cycle time out (reported so the service can probe the root), never a
hung daemon. A cycle in which the root itself is gone reports that instead of a flood of
deletions: unmounts are the health gate's business.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watcher.health import run_child

logger = logging.getLogger(__name__)

# argv: root, ignore regex. stdin: known directories as JSON lines [path, mtime_ns, digest].
# stdout: one JSON line per directory whose state changed: {"path", "mtime", "digest"} or
# {"path", "gone": true}; last line {"done": true, "stats": n, "lists": n} or
# {"root_gone": true}.
_POLL_PROGRAM = r"""
import hashlib, json, os, re, stat, sys
root, pattern = sys.argv[1], sys.argv[2]
ignored = re.compile(pattern, re.IGNORECASE | re.DOTALL).match if pattern else (lambda name: None)
out = sys.stdout
def emit(**record):
    out.write(json.dumps(record) + "\n")  # ASCII: a name that is not UTF-8 travels as \udcXX
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
stats = lists = 0
def listing(path):
    global lists
    lists += 1
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
    try:
        digest, folders = listing(path)
    except OSError:
        emit(path=path, gone=True)
        return
    old = known.get(path)
    if old is None or old[1] != digest or old[0] != mtime:
        emit(path=path, mtime=mtime, digest=digest)
    for folder in folders:
        if folder not in known:
            walk(folder)
def walk(path):
    global stats
    stats += 1
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISDIR(status.st_mode):
        visit(path, status.st_mtime_ns)
if not known:
    walk(root)
else:
    for path, (mtime, digest) in known.items():
        stats += 1
        try:
            status = os.stat(path, follow_symlinks=False)
        except OSError:
            emit(path=path, gone=True)
            continue
        if status.st_mtime_ns != mtime:
            visit(path, status.st_mtime_ns)
emit(done=True, stats=stats, lists=lists)
out.flush()
"""


@dataclass(frozen=True, slots=True)
class PollResult:
    """Queue item: one polling cycle of ``root`` finished.

    ``changed``: folders whose relevant entries changed (or appeared, or vanished).
    ``first``: the cycle that built the baseline (reports nothing). ``failed``: the cycle
    did not finish in time or the root was gone — the service should probe the root.
    """

    root: str
    changed: tuple[str, ...] = ()
    first: bool = False
    failed: str = ""
    directories: int = 0


class RootPoller:
    """Polls one root every ``interval`` seconds on its own thread; results go to ``put``.

    ``ignore_regex``: the combined ignore pattern (:attr:`IgnoreFilter.regex`).
    ``timeout``: seconds one cycle may take.
    """

    def __init__(self, root: Path, interval: float, timeout: float, ignore_regex: str, put: Callable[[object], None]) -> None:
        self.root = root
        self.interval = interval
        self.timeout = timeout
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
        while not self._stop.is_set():
            try:
                result = self.cycle()
            except Exception as error:  # a bug must not end polling of this root for good
                logger.exception("polling %s failed; trying again in %g s", self.root, self.interval)
                result = PollResult(str(self.root), failed=f"the polling cycle failed: {error}", directories=len(self._known))
            self._put(result)
            if self._stop.wait(self.interval):
                return

    def cycle(self) -> PollResult:
        """One polling cycle (blocking, at most ``timeout`` seconds)."""
        first = not self._known
        lines = [json.dumps([path, mtime, digest]) for path, (mtime, digest) in self._known.items()]
        records, finished = run_child(_POLL_PROGRAM, [str(self.root), self._ignore], self.timeout, self._stop, stdin="".join(line + "\n" for line in lines))
        key = str(self.root)
        if records and records[-1].get("root_gone"):
            return PollResult(key, failed="the root is gone", directories=len(self._known))
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
