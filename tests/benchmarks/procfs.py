"""What the kernel says about a process: CPU time, memory, wake-ups (Linux ``/proc``).

* CPU: ``/proc/<pid>/stat`` fields 14-17 (``utime``, ``stime``, ``cutime``, ``cstime``, in
  clock ticks, proc(5)). ``cutime``/``cstime`` count the children the process has waited
  for: the watcher's probe, verification and polling children are part of its cost.
* Memory: ``VmRSS`` / ``VmHWM`` of ``/proc/<pid>/status`` (KiB).
* Wake-ups: the third field of ``/proc/<pid>/task/<tid>/schedstat`` is the number of
  timeslices the thread ran (one per time it was scheduled in), the first its time on the
  CPU in nanoseconds (sched-stats.rst). Summed over the threads alive at each reading.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
        text = file.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (all its threads, alive or ended), plus those of
    its reaped children when ``children``."""
    fields = _stat_fields(pid)  # fields[0] is field 3 (state)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def cpu_seconds_of_thread(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread of ``pid``."""
    with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as file:
        text = file.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the children ``pid`` has reaped."""
    fields = _stat_fields(pid)
    return (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status``, e.g. ``VmRSS`` or ``VmHWM``."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


@dataclass(frozen=True)
class Threads:
    """One reading of every thread's schedstat: tid → (CPU nanoseconds, timeslices)."""

    tasks: dict[int, tuple[int, int]]

    def since(self, earlier: Threads) -> tuple[float, int, dict[int, int]]:
        """CPU seconds, timeslices, and timeslices by thread between ``earlier`` and this
        reading (threads that ended in between are not counted: sample often)."""
        by_thread = {}
        nanoseconds = 0
        for tid, (run, slices) in self.tasks.items():
            before_run, before_slices = earlier.tasks.get(tid, (0, 0))
            nanoseconds += run - before_run
            by_thread[tid] = slices - before_slices
        return nanoseconds / 1e9, sum(by_thread.values()), by_thread


def threads(pid: int) -> Threads:
    tasks = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{entry}/schedstat", encoding="ascii") as file:
                    fields = file.read().split()
                tasks[int(entry)] = (int(fields[0]), int(fields[2]))
    return Threads(tasks)


def schedstat_available() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/schedstat")
