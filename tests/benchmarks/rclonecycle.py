"""Polling cycles on a real rclone mount, ``mtime`` against ``list``, in a process of its own:
``python -m tests.benchmarks.rclonecycle WORKDIR FOLDERS FILES CYCLES``.

Builds a library of FOLDERS folders / FILES empty files in ``WORKDIR/server``, serves it
with ``rclone serve webdav`` on 127.0.0.1 and mounts it with ``rclone mount``
(:mod:`tests.shares`), then runs :class:`watcher.poll.RootPoller` on the mount, as the daemon
does, once per rclone folder cache (``--dir-cache-time``) and polling method:

* ``expired``: ``--dir-cache-time 1s``, one second between cycles: every listing goes to the
  server, so a change made there shows in the next cycle. This is the cost of freshness.
* ``fresh``: ``--dir-cache-time 1h``: every listing comes from rclone's cache; nothing new
  shows until the cache expires.

The first cycle of each builds the baseline (a walk of the whole tree) and is timed apart.
Before each steady cycle one file is written *on the server's side* in one folder, so each
cycle has one change to find; ``detected`` says whether every cycle found it. Prints one
JSON line: per cache and method, ``baseline`` (wall seconds), ``wall`` and ``cpu`` (the
watcher's side: its child process) per steady cycle, ``rclone_cpu`` (the mount process'
CPU seconds per steady cycle, from ``/proc/PID/stat``) and ``detected``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))  # ``shares`` and ``support``, as the test suite imports them

from shares import RcloneMount, RcloneServer

from tests.benchmarks.tree import build
from watcher.config import DEFAULT_IGNORE
from watcher.core.filters import IgnoreFilter
from watcher.edges.poll import RootPoller

CACHES = {"expired": "1s", "fresh": "1h"}
GAP = 1.2
"""Seconds between steady cycles with the 1 s folder cache: it has expired at each cycle."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as file:
        data = file.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> int:
    workdir, folders, files, cycles = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    tree = build(workdir / "server" / "library", folders, files)
    leaves = tree.folders
    ignore = IgnoreFilter(DEFAULT_IGNORE).regex
    results: dict[str, dict[str, object]] = {}
    made = 0
    for cache, dir_cache_time in CACHES.items():
        with RcloneServer(workdir / "server", workdir / f"serve-{cache}.log") as server, \
                RcloneMount(server.url, workdir / f"mount-{cache}", workdir / f"mount-{cache}.log",
                            dir_cache_time=dir_cache_time) as mount:
            root = mount.mount_point / "library"
            for method in ("mtime", "list"):
                poller = RootPoller(root, interval=3600, timeout=3600, ignore_regex=ignore, put=lambda item: None,
                                    method=method)
                started = time.monotonic()
                first = poller.cycle()
                baseline = time.monotonic() - started
                assert first.first and not first.failed, first
                walls, cpus, rclone, detected = [], [], [], True
                for _ in range(cycles):
                    leaf = Path(leaves[(made * 7919) % len(leaves)])
                    (leaf / f"server-side-{made}.mkv").write_bytes(b"")  # on the server's disk
                    made += 1
                    if cache == "expired":
                        time.sleep(GAP)  # the daemon polls every poll_interval >= the folder cache
                    before_cpu, before_rclone = _children_cpu(), _process_cpu(mount.pid)
                    started = time.monotonic()
                    result = poller.cycle()
                    walls.append(time.monotonic() - started)
                    cpus.append(_children_cpu() - before_cpu)
                    rclone.append(_process_cpu(mount.pid) - before_rclone)
                    mounted_leaf = str(root / Path(leaf).relative_to(tree.root))
                    detected &= not result.failed and mounted_leaf in result.changed
                results[f"{cache}.{method}"] = {
                    "baseline": baseline, "wall": walls, "cpu": cpus, "rclone_cpu": rclone, "detected": detected,
                    "directories": poller.directories,
                }
    print(json.dumps({"folders": tree.directories, "files": tree.files, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
