"""One polling method on one tree, in a process of its own (so that its memory is its own):
``python -m tests.benchmarks.pollcycle rootpoller|snapshot ROOT CYCLES``.

Prints one JSON line: ``cpu`` (CPU seconds of each steady cycle, children included),
``retained_mib`` (memory kept between cycles), ``peak_mib`` (the most memory one steady cycle
needed, over the process's baseline; for the RootPoller plus its child's peak RSS) and
``detected`` (whether every cycle reported the one new file made before it).

* ``rootpoller``: :class:`watcher.poll.RootPoller` as the daemon runs it (default ignore
  list): a child process stats the known folders and lists the changed ones.
* ``snapshot``: what watchdog's ``PollingObserver`` does each cycle: a new
  ``DirectorySnapshot`` of the whole tree, diffed with the previous one, which it keeps.

The first cycle builds the baseline and is not counted. Before each steady cycle one file
is created in one folder, so each cycle has one real change to find. The peak is read from
``VmHWM`` after resetting it (``/proc/self/clear_refs``, "5"); where that is not allowed the
peak is the RSS growth instead.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def _kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
    except OSError:
        return False
    return True


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _leaf(root: Path) -> Path:
    folder = root
    while True:
        subfolders = sorted(entry.path for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))
        if not subfolders:
            return folder
        folder = Path(subfolders[len(subfolders) // 2])


def main(argv: list[str]) -> int:
    kind, root, cycles = argv[0], Path(argv[1]), int(argv[2])
    leaf = _leaf(root)
    if kind == "rootpoller":
        from watcher.config import DEFAULT_IGNORE
        from watcher.core.filters import IgnoreFilter
        from watcher.edges.poll import RootPoller

        poller = RootPoller(root, interval=3600, timeout=3600, ignore_regex=IgnoreFilter(DEFAULT_IGNORE).regex, put=lambda item: None)

        def first() -> object:
            result = poller.cycle()
            assert result.first and not result.failed, result
            return result

        def cycle(new_file: Path) -> bool:
            result = poller.cycle()
            return not result.failed and result.changed == (str(new_file.parent),)

    elif kind == "snapshot":
        from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

        state: dict[str, DirectorySnapshot] = {}

        def first() -> object:
            state["old"] = DirectorySnapshot(str(root), recursive=True)
            return state["old"]

        def cycle(new_file: Path) -> bool:
            new = DirectorySnapshot(str(root), recursive=True)
            diff = DirectorySnapshotDiff(state["old"], new)
            state["old"] = new
            return diff.files_created == [str(new_file)]

    else:
        raise SystemExit(f"unknown kind {kind!r}")

    base = _kib("VmRSS")
    first()
    retained = _kib("VmRSS") - base
    cpu, peaks, detected = [], [], True
    made: list[Path] = []
    for index in range(cycles):
        new_file = leaf / f"poll-new-{kind}-{os.getpid()}-{index}.mkv"
        new_file.write_bytes(b"")
        made.append(new_file)
        time.sleep(0.01)  # a new mtime, even on a coarse clock
        reset = _reset_peak()
        before = _kib("VmRSS")
        started, children = time.process_time(), _children_cpu()
        detected &= cycle(new_file)
        cpu.append(time.process_time() - started + _children_cpu() - children)
        peak = (_kib("VmHWM") if reset else max(before, _kib("VmRSS"))) - base
        if kind == "rootpoller":
            peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        peaks.append(peak)
    for path in made:
        path.unlink()
    extra = {}
    if kind == "rootpoller":
        extra = {"directories": poller.directories, "child_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    print(json.dumps({"cpu": cpu, "retained_mib": retained / 1024, "peak_mib": max(peaks) / 1024, "detected": detected, **extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
