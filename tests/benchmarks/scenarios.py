"""The benchmarks. Each takes the :class:`Context` and returns its rows of the table."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.benchmarks import procfs
from tests.benchmarks.harness import (
    ChildProcesses,
    Daemon,
    DaemonConfig,
    InotifyWait,
    MountTableChanges,
    Row,
    Workspace,
    bind_mount,
    judge_at_most,
    judge_ratio_at_least,
    judge_ratio_at_most,
    mount_tmpfs,
    mounted_tmpfs,
    percentile,
    seconds,
    status_of,
    umount,
    wait_for_cpu_to_settle,
)
from tests.benchmarks.tree import Tree, build, storm
from tests.support import REPO


@dataclass(frozen=True)
class Size:
    name: str
    directories: int
    """Folders of the library tree (set-up, idle, latency, storm)."""
    files: int
    setup_runs: int
    storm_files: int
    storm_quiet: float
    latency_runs: int
    latency_quiet: float
    mount_runs: int
    settle: float
    health_interval: float
    """``watch.health_interval`` of the idle benchmark; it watches one interval (+ 1 s)."""
    poll_directories: int
    poll_files: int
    poll_cycles: int
    guard_items: int
    """Media items of the library the loss guard predicts for."""
    churn_changes: int
    """Foreign mount-table changes of the churn benchmark."""
    workspace: str
    """The workspace tmpfs's size and inodes (``mount -o size=…,nr_inodes=…``)."""

    def describe(self) -> str:
        return (f"{self.name}: {self.directories:,} folders / {self.files:,} files; storm of {self.storm_files:,} files; "
                f"{self.latency_runs} latency runs; {self.mount_runs} mount cycles; idle {self.health_interval:g} s; "
                f"polling {self.poll_directories:,} folders / {self.poll_files:,} files; loss guard {self.guard_items:,} "
                f"items; {self.churn_changes} mount-table changes")


SIZES = {
    "large": Size("large", 100_000, 500_000, 3, 200_000, 5.0, 25, 0.5, 25, 0.5, 60.0, 100_000, 500_000, 3, 200_000, 200,
                  "8g,nr_inodes=3m"),
    "full": Size("full", 20_000, 100_000, 3, 100_000, 5.0, 25, 0.5, 25, 0.5, 60.0, 20_000, 200_000, 3, 50_000, 200,
                 "2g,nr_inodes=1m"),
    "smoke": Size("smoke", 200, 1_000, 1, 1_000, 1.0, 3, 0.5, 3, 0.3, 5.0, 200, 2_000, 2, 2_000, 20, "1g,nr_inodes=200k"),
}

RSS_TARGET_MIB = 60.0
"""The daemon's RSS once verification is done, at 100,000 folders (and so at fewer)."""


@dataclass
class Context:
    size: Size
    workspace: Workspace
    inotifywait: bool
    root: bool
    """Running as root with mounts allowed (tmpfs workspace, mount-loss benchmark)."""
    log: Callable[[str], None]
    mounts: MountTableChanges | None = None
    """Counts mount-table changes made by other programs (started by ``__main__``)."""
    children: ChildProcesses | None = None
    """Counts the child processes the daemon under test starts (started by ``__main__``)."""
    _tree: Tree | None = None
    _emulator: object | None = None
    api_key: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")

    def library(self) -> Tree:
        """The library tree (built on first use)."""
        if self._tree is None:
            started = time.monotonic()
            self._tree = build(self.workspace.path / "library", self.size.directories, self.size.files)
            self.log(f"built the library tree: {self._tree.directories:,} folders, {self._tree.files:,} files "
                     f"in {time.monotonic() - started:.1f} s ({self.workspace.kind})")
        return self._tree

    def mount_changes(self) -> int:
        return self.mounts.count if self.mounts is not None else 0

    def count_children(self, pid: int) -> None:
        """Count the child processes of ``pid`` from now on (see :meth:`children_note`)."""
        if self.children is not None and self.children.available:
            self.children.watch(pid)

    def children_started(self) -> int | None:
        """Child processes started since :meth:`count_children`, or None where they cannot be counted."""
        return self.children.count if self.children is not None and self.children.available else None

    def children_note(self) -> str:
        started = self.children_started()
        if started is None:
            return " Child processes not counted (the kernel's process events need root)."
        return f" The daemon started {started} child processes (probes, listings) meanwhile."

    def foreign(self, before: int) -> str:
        """A note on mount-table changes since ``before`` (others' mounts make the daemon probe)."""
        changes = self.mount_changes() - before
        if not changes:
            return ""
        return (f" NOISE: the mount table changed {changes} times meanwhile (other programs mounting): the daemon "
                "probed its roots for each, a quiet machine would not.")

    def jellyfin(self):
        if self._emulator is None:
            from tests.jellyfin.emulator import JellyfinEmulator

            self._emulator = JellyfinEmulator(api_key=self.api_key).start()
        return self._emulator

    def close(self) -> list[str]:
        """Stop the emulator; returns its spec violations (requests the watcher got wrong)."""
        violations: list[str] = []
        if self._emulator is not None:
            self._emulator.stop()  # type: ignore[attr-defined]
            violations = self._emulator.violations  # type: ignore[attr-defined]
        return violations


def _remarks(lines: list[str], expected: str = r"queue overflowed", rewatches: bool = False) -> str:
    """The daemon's WARNING and ERROR lines other than ``expected`` ones (and roots watched
    again, unless ``rewatches`` are expected), for the notes: a figure is only meaningful
    when the daemon had nothing to complain about."""
    unexpected = [line for line in lines if re.search(r" (WARNING|ERROR) ", line) and not re.search(expected, line)]
    rewatched = 0 if rewatches else sum(1 for line in lines if re.search(r"watching .* again", line))
    parts = []
    if unexpected:
        parts.append(f"the daemon logged {len(unexpected)} unexpected WARNING/ERROR lines, e.g. {unexpected[0][24:200]!r}")
    if rewatched:
        parts.append(f"it watched a root again {rewatched} times (a new walk and verification each)")
    return (" ATTENTION: " + "; ".join(parts) + ".") if parts else ""


def _no_reference(ctx: Context) -> str:
    return "-" if ctx.inotifywait else "n/a (no inotifywait)"


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference:
        return ""
    return f" ({value / reference:.1f}x)"


# --- set-up ----------------------------------------------------------------------------------


def setup(ctx: Context) -> list[Row]:
    """Time from process start to READY=1 and RSS then, against ``inotifywait -r -m`` on the
    same tree (to "Watches established."); then the time until the first watch
    verification has ended (the status file's ``verified``) and the RSS a second later."""
    tree = ctx.library()
    ours, first_line, rss, ref_times, ref_rss, verified, rss_verified, peak = [], [], [], [], [], [], [], []
    mounts_before = ctx.mount_changes()
    children = []
    for run in range(ctx.size.setup_runs):
        if ctx.inotifywait:
            with InotifyWait(tree.root) as reference:
                ref_times.append(reference.start())
                ref_rss.append(procfs.rss_mib(reference.pid))
        config = DaemonConfig([tree.root])
        with Daemon(ctx.workspace, f"setup{run}", config) as daemon:
            ctx.count_children(daemon.pid)
            ours.append(daemon.wait_ready(300))
            rss.append(procfs.rss_mib(daemon.pid))
            verified.append(daemon.wait_verified(300))
            time.sleep(1.0)
            rss_verified.append(procfs.rss_mib(daemon.pid))
            peak.append(procfs.status_kib(daemon.pid, "VmHWM") / 1024)
            lines = daemon.process.timed_lines
            if lines:
                first_line.append(lines[0][0] - daemon.process.started_at)
            output = daemon.process.output
            started = ctx.children_started()
            if started is not None:
                children.append(started)
    warning = ""
    if re.search(r"are not watched|cannot watch|polling ", output):
        problem = next(line for line in output.splitlines() if re.search(r"are not watched|cannot watch|polling ", line))
        warning = f" WARNING, the root was not fully watched (the figure is not comparable): {problem[:300]}"

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    time_ours = median(ours)
    time_ref = median(ref_times) if ref_times else None
    what = f"{tree.directories:,} folders / {tree.files:,} files"
    rss_ref = f"{median(ref_rss):.1f} MiB" if ref_rss else _no_reference(ctx)
    return [
        Row("setup.time", f"set-up: start to READY=1 ({what})", seconds(time_ours),
            seconds(time_ref) if time_ref is not None else _no_reference(ctx), "<= 1.5x inotifywait",
            judge_ratio_at_most(time_ours, time_ref, 1.5),
            note=(f"median of {len(ours)} run(s) (each: {', '.join(seconds(value) for value in ours)}); the daemon's "
                  f"first log line came {seconds(median(first_line)) if first_line else 'n/a'} after the start "
                  "(interpreter, imports, configuration, one probe): the rest is probing and watching (the walk of the "
                  "tree)." + ctx.foreign(mounts_before) + warning)),
        Row("setup.rss", "set-up: RSS at READY", f"{median(rss):.1f} MiB", rss_ref, "-",
            "info" + (_ratio(median(rss), median(ref_rss)) if ref_rss else "")),
        Row("setup.verified", "set-up: start to first watch verification done", seconds(median(verified)),
            seconds(time_ref) if time_ref is not None else _no_reference(ctx), "-",
            "info" + (_ratio(median(verified), time_ref) if time_ref else ""),
            note=("the verification lists every folder in a child process and compares with the kernel's watches "
                  "(reference: inotifywait's set-up, which verifies nothing)"
                  + (f"; child processes started by then (probes, the listing): {median(children)}" if children else ""))),
        Row("setup.rss.verified", "set-up: RSS 1 s after verification", f"{median(rss_verified):.1f} MiB", rss_ref,
            f"<= {RSS_TARGET_MIB:g} MiB (at 100,000 folders)",
            judge_at_most(median(rss_verified), RSS_TARGET_MIB, lambda value: f"{value:.1f} MiB")
            + (_ratio(median(rss_verified), median(ref_rss)) if ref_rss else ""),
            note=f"peak RSS (VmHWM) {median(peak):.1f} MiB"),
    ]


# --- idle ------------------------------------------------------------------------------------


def idle(ctx: Context) -> list[Row]:
    """CPU and wake-ups of a daemon with nothing to do, over one health interval (+ 1 s), so
    that exactly one periodic health check falls into the window.

    Every thread's schedstat is read every 0.25 s. A *wake-up* of the daemon is a run of
    consecutive readings in which any thread ran (the main loop waking for its health check
    is one wake-up, however many timeslices the check itself takes: it starts a probe child
    and waits for its answer); the raw timeslices are shown too."""
    tree = ctx.library()
    interval = ctx.size.health_interval
    config = DaemonConfig([tree.root], health_interval=interval)
    with Daemon(ctx.workspace, "idle", config) as daemon:
        daemon.wait_ready(300)
        assert daemon.ready_at is not None
        daemon.wait_verified(300)
        time.sleep(max(0.0, daemon.ready_at + 0.5 - time.monotonic()))
        ctx.count_children(daemon.pid)
        cpu_before = daemon.cpu()
        mounts_before = ctx.mount_changes()
        started = time.monotonic()
        readings = [procfs.threads(daemon.pid)]
        times = [time.monotonic()]
        end = daemon.ready_at + interval + 1.5
        while time.monotonic() < end:
            time.sleep(0.25)
            readings.append(procfs.threads(daemon.pid))
            times.append(time.monotonic())
        duration = time.monotonic() - started
        cpu_total = daemon.cpu() - cpu_before
        remarks = _remarks(daemon.process.lines)
    steps = [later.since(earlier) for earlier, later in itertools.pairwise(readings)]
    thread_cpu = sum(step[0] for step in steps)
    changes = ctx.mounts.times if ctx.mounts is not None else []
    wakeups, running, background, explained = 0, False, 0, 0
    for index, (_, slices, by_thread) in enumerate(steps):
        if slices and not running:
            wakeups += 1
            # a foreign mount-table change in this reading or the one before explains it
            explained += any(times[max(0, index - 1)] <= moment <= times[index + 1] for moment in changes)
        running = bool(slices)
        if slices and not by_thread.get(daemon.pid):
            background += slices  # threads woke while the main loop slept
    slices = sum(step[1] for step in steps)
    per_interval = wakeups * interval / duration
    busiest = max((step[1] for step in steps), default=0)
    foreign = ctx.mount_changes() - mounts_before
    if background:
        why = f"{background} timeslices ran while the main loop slept: some thread wakes on its own"
    else:
        why = ("no thread ran while the main loop slept: watchdog 7.1's observer blocks on its queue and its inotify "
               "reader in poll() without a timeout, the mount monitor in poll() too, and the service loop sleeps until "
               "its next deadline")
    if foreign:
        quiet = (wakeups - explained) * interval / duration
        why += (f". NOISE: other programs changed the mount table {foreign} times meanwhile, each a health check "
                f"a quiet machine would not see; {explained} of the wake-ups came with such a change, the others make "
                f"{quiet:.2f} per interval: rerun on a quiet machine")
    return [
        Row("idle.wakeups", f"idle: wake-ups per health interval ({interval:g} s)", f"{per_interval:.2f}", "-",
            "<= 1 per interval", judge_at_most(per_interval, 1.0, lambda value: f"{value:.2f}"),
            note=(f"{wakeups} wake-up(s) in {duration:.1f} s (a wake-up: consecutive 0.25 s readings in which a thread "
                  f"ran); {slices} timeslices in all, {busiest} at most in one reading (the health check starts a probe "
                  f"child and waits for its answer). {why}.{ctx.children_note()}{remarks}")),
        Row("idle.cpu", f"idle: CPU over {duration:.0f} s", f"{max(cpu_total, thread_cpu):.3f} s", "-",
            "-", "info", note=f"threads' own CPU {thread_cpu * 1000:.1f} ms (schedstat); with the probe children {cpu_total:.2f} s (clock ticks)"),
    ]


# --- latency ---------------------------------------------------------------------------------


def latency(ctx: Context) -> list[Row]:
    """One new file, then nothing: the time from the file's close to the refresh request
    arriving at the emulator, minus the quiet period."""
    tree = ctx.library()
    jellyfin = ctx.jellyfin()
    quiet = ctx.size.latency_quiet
    config = DaemonConfig([tree.root], quiet_period=quiet, max_wait=3600, url=jellyfin.url)
    samples = []
    with Daemon(ctx.workspace, "latency", config, api_key=ctx.api_key) as daemon:
        daemon.wait_ready(120)
        mounts_before = ctx.mount_changes()
        for run in range(ctx.size.latency_runs):
            count = len(jellyfin.refreshes)
            mark = daemon.process.mark()
            path = os.path.join(tree.folders[(run * 7919) % len(tree.folders)], f"latency-{uuid.uuid4().hex[:8]}.mkv")
            with open(path, "wb") as file:
                file.write(b"\x1a\x45\xdf\xa3")
            closed = time.monotonic()
            refreshes = jellyfin.wait_for_refreshes(count + 1, quiet + 30)
            assert len(refreshes) > count, f"no refresh within {quiet + 30:g} s:\n{daemon.process.output[-2000:]}"
            samples.append(refreshes[count].time - closed - quiet)
            daemon.process.wait_for_line(r"refresh sent: ", 30, start=mark)
            jellyfin.wait_for_scans_idle(30)
        remarks = _remarks(daemon.process.lines)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    note = (f"{len(samples)} runs, quiet period {quiet:g} s; includes the health probe (a child process) and "
            "GET /ScheduledTasks before POST /Library/Refresh." + ctx.foreign(mounts_before) + remarks)
    return [
        Row("latency.p50", "latency: last event to refresh - quiet, p50", seconds(p50), "-", "-", "info", note=note),
        Row("latency.p99", "latency: last event to refresh - quiet, p99", seconds(p99), "-", "<= 250 ms",
            judge_at_most(p99, 0.25, seconds)),
    ]


# --- storm -----------------------------------------------------------------------------------


def _storm_reference(ctx: Context, tree: Tree, count: int) -> tuple[float, int, int, float]:
    """inotifywait through the same storm: CPU seconds, events it printed, overflows, seconds."""
    events_file = ctx.workspace.folder("inotifywait") / "events.txt"
    with InotifyWait(tree.root, events_file) as reference:
        reference.start()
        before = reference.cpu()
        took = storm(tree.folders, count, "ref")
        after = wait_for_cpu_to_settle(reference.cpu)
    events = overflows = 0
    with open(events_file, "rb") as file:
        for line in file:
            events += 1
            overflows += line.startswith(b"Q_OVERFLOW")
    return after - before, events, overflows, took


def storm_benchmark(ctx: Context) -> list[Row]:
    """Files created as fast as possible: one refresh, the daemon's CPU (probe children
    included), the kernel queue overflows it logged; inotifywait's CPU for the same storm."""
    tree = ctx.library()
    count = ctx.size.storm_files
    jellyfin = ctx.jellyfin()
    quiet = ctx.size.storm_quiet
    config = DaemonConfig([tree.root], quiet_period=quiet, max_wait=3600, url=jellyfin.url)
    with Daemon(ctx.workspace, "storm", config, api_key=ctx.api_key) as daemon:
        daemon.wait_ready(300)
        daemon.wait_verified(300)
        ctx.count_children(daemon.pid)
        before_refreshes = len(jellyfin.refreshes)
        mark = daemon.process.mark()
        cpu_before = daemon.cpu()
        main_before = procfs.cpu_seconds_of_thread(daemon.pid, daemon.pid)
        mounts_before = ctx.mount_changes()
        children_before = procfs.children_cpu_seconds(daemon.pid)
        took = storm(tree.folders, count, "ours")
        finished = time.monotonic()
        refreshes = jellyfin.wait_for_refreshes(before_refreshes + 1, 600)
        first = refreshes[before_refreshes].time if len(refreshes) > before_refreshes else float("nan")
        # A second refresh would come at the latest one quiet period after the last change
        # the daemon processed: wait that long again, and until its CPU is still.
        time.sleep(quiet + 1.0)
        cpu_after = wait_for_cpu_to_settle(daemon.cpu)
        main_cpu = procfs.cpu_seconds_of_thread(daemon.pid, daemon.pid) - main_before
        children_cpu = procfs.children_cpu_seconds(daemon.pid) - children_before
        jellyfin.wait_for_scans_idle(30)
        refresh_count = len(jellyfin.refreshes) - before_refreshes
        lines = daemon.process.lines[mark:]
        children_note = ctx.children_note()
    overflow_lines = sum(1 for line in lines if "WARNING" in line and "event queue overflowed" in line)
    watchdog_lines = sum(1 for line in lines if "WARNING" in line and "Inotify queue overflowed" in line)
    cpu = cpu_after - cpu_before
    reference = None
    ref_note = "inotifywait not installed"
    if ctx.inotifywait:
        ref_cpu, events, ref_overflows, ref_took = _storm_reference(ctx, tree, count)
        reference = ref_cpu
        ref_note = (f"inotifywait printed {events:,} events ({ref_overflows} Q_OVERFLOW) for its replay of the storm "
                    f"({count:,} files in {seconds(ref_took)}, into the same folders)")
    _remove_storm_files(tree)
    return [
        Row("storm.refreshes", f"storm: refreshes for {count:,} new files", str(refresh_count), "-", "= 1",
            "pass" if refresh_count == 1 else f"MISS ({refresh_count} refreshes)",
            note=(f"{count:,} files in {seconds(took)}; the refresh came {seconds(first - finished)} after the last file "
                  f"(quiet period {quiet:g} s)")),
        Row("storm.cpu", "storm: daemon CPU (children included)", f"{cpu:.2f} s",
            f"{reference:.2f} s" if reference is not None else _no_reference(ctx), "<= 3x inotifywait",
            judge_ratio_at_most(cpu, reference, 3.0) if reference is not None else "no reference",
            note=(f"the service loop (main thread) {main_cpu:.2f} s, other threads (watchdog's inotify reader with its "
                  f"re-walks after overflows, emitter and dispatcher; the HTTP requests) {cpu - main_cpu - children_cpu:.2f} s, probe children "
                  f"{children_cpu:.2f} s.{children_note} {ref_note}.{ctx.foreign(mounts_before)}{_remarks(lines)}")),
        Row("storm.overflows", "storm: queue-overflow WARNINGs logged", str(overflow_lines), "-", "-", "info",
            note=f"watchdog's own 'Inotify queue overflowed' WARNINGs: {watchdog_lines}; each overflow counts every root as changed"),
    ]


def _remove_storm_files(tree: Tree) -> None:
    """Delete the storms' files (ours and the reference's): later benchmarks see the library as built."""
    for folder in tree.folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("storm-"):
                    os.unlink(entry.path)


# --- mount loss ------------------------------------------------------------------------------


def mount_loss(ctx: Context) -> list[Row]:
    """A tmpfs root unmounted and mounted again, by system call: the time to the STATUS=
    message that shows it down, and (minus ``settle``) to the one that shows it watched."""
    keys = ["mount.down.p50", "mount.down.p99", "mount.back.p50", "mount.back.p99"]
    if not ctx.root:
        reason = "skipped: needs root (it mounts a tmpfs)"
        return [Row(key, f"mount loss: {key}", "-", "-", "<= 100 ms", reason) for key in keys]
    base = ctx.workspace.folder("mount")
    store, root = base / "store", base / "root"
    root.mkdir()
    settle = ctx.size.settle
    downs, backs = [], []
    with mounted_tmpfs(store):
        (store / "Movie (2001)").mkdir()
        (store / "Movie (2001)" / "Movie (2001).mkv").write_bytes(b"")
        bind_mount(store, root)
        try:
            config = DaemonConfig([root], quiet_period=3600, max_wait=3600, settle=settle, health_interval=3600)
            with Daemon(ctx.workspace, "mount", config) as daemon:
                daemon.wait_ready(60)
                for _ in range(ctx.size.mount_runs):
                    mark = daemon.notify.mark()
                    unmounted = time.monotonic()
                    umount(root)
                    arrived, _ = daemon.notify.wait_for(lambda m: "unhealthy" in (status_of(m) or ""), 30, start=mark)
                    downs.append(arrived - unmounted)
                    mark = daemon.notify.mark()
                    remounted = time.monotonic()
                    bind_mount(store, root)
                    arrived, _ = daemon.notify.wait_for(
                        lambda m: (status_of(m) or "").startswith("watching 1 of 1 roots") and "unhealthy" not in (status_of(m) or ""),
                        30 + settle, start=mark)
                    backs.append(arrived - remounted - settle)
                remarks = _remarks(daemon.process.lines, expected=r"is unmounted \(|refresh suppressed", rewatches=True)
        finally:
            if root in map(Path, _mount_points()):
                umount(root)
    note_down = f"{len(downs)} cycles; umount(2) to the STATUS= message naming the root unhealthy (a mount-table change triggers a health probe)"
    note_back = (f"mount(2) to the STATUS= message 'watching 1 of 1 roots', minus settle = {settle:g} s (two probes, the "
                 f"watch and its verification).{remarks}")
    return [
        Row("mount.down.p50", "mount loss: umount to root down, p50", seconds(percentile(downs, 0.5)), "-", "-", "info", note=note_down),
        Row("mount.down.p99", "mount loss: umount to root down, p99", seconds(percentile(downs, 0.99)), "-", "<= 100 ms",
            judge_at_most(percentile(downs, 0.99), 0.1, seconds)),
        Row("mount.back.p50", "remount: to watching again - settle, p50", seconds(percentile(backs, 0.5)), "-", "-", "info", note=note_back),
        Row("mount.back.p99", "remount: to watching again - settle, p99", seconds(percentile(backs, 0.99)), "-", "<= 100 ms",
            judge_at_most(percentile(backs, 0.99), 0.1, seconds)),
    ]


def _mount_points() -> list[str]:
    from tests.support import mount_points

    return mount_points()


# --- polling ---------------------------------------------------------------------------------


def polling(ctx: Context) -> list[Row]:
    """One steady polling cycle of :class:`watcher.poll.RootPoller` against watchdog's
    ``PollingObserver`` method (snapshot + diff), each in a process of its own."""
    started = time.monotonic()
    tree = build(ctx.workspace.path / "network-share", ctx.size.poll_directories, ctx.size.poll_files)
    ctx.log(f"built the polled tree: {tree.directories:,} folders, {tree.files:,} files in {time.monotonic() - started:.1f} s")
    # A library at rest, as a steady cycle meets it: every folder's time a minute old. A folder
    # changed less than RACY_NS ago (3 s) is listed again on the next cycle, which a tree built
    # a moment ago would make of every folder, and its cycles would measure listings, not stats.
    rest = time.time() - 60
    for folder, _, _ in os.walk(tree.root):
        os.utime(folder, (rest, rest))
    results = {}
    for kind in ("rootpoller", "snapshot"):
        completed = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.pollcycle", kind, str(tree.root), str(ctx.size.poll_cycles)],
            cwd=REPO, capture_output=True, text=True, timeout=1800, check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"pollcycle {kind} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
        results[kind] = json.loads(completed.stdout.strip().splitlines()[-1])
    ours, theirs = results["rootpoller"], results["snapshot"]
    cpu_ours, cpu_theirs = sorted(ours["cpu"])[len(ours["cpu"]) // 2], sorted(theirs["cpu"])[len(theirs["cpu"]) // 2]
    what = f"{tree.directories:,} folders / {tree.files:,} files"
    detected = "" if ours["detected"] and theirs["detected"] else (
        f"; WARNING: a cycle missed the new file (RootPoller: {ours['detected']}, snapshot: {theirs['detected']})")
    return [
        Row("poll.cpu", f"polling cycle: CPU ({what})", seconds(cpu_ours), seconds(cpu_theirs), ">= 5x cheaper than PollingObserver",
            judge_ratio_at_least(cpu_theirs / cpu_ours if cpu_ours else float("inf"), 5.0),
            note=(f"median of {len(ours['cpu'])} steady cycles with one new file each; RootPoller's child process included. "
                  "Reference: watchdog's PollingObserver cycle (DirectorySnapshot of the tree + DirectorySnapshotDiff)" + detected)),
        Row("poll.memory", "polling cycle: peak memory", f"{ours['peak_mib']:.1f} MiB", f"{theirs['peak_mib']:.1f} MiB",
            ">= 5x cheaper than PollingObserver",
            judge_ratio_at_least(theirs["peak_mib"] / ours["peak_mib"] if ours["peak_mib"] else float("inf"), 5.0),
            note=(f"above each process's baseline; RootPoller: daemon side + its child's peak RSS ({ours['child_peak_mib']:.1f} MiB, "
                  f"a Python interpreter's worth at any size); kept between cycles: RootPoller {ours['retained_mib']:.1f} MiB "
                  f"for {ours['directories']:,} folders, snapshot {theirs['retained_mib']:.1f} MiB"
                  + ("; at this size the child's fixed cost (a Python interpreter) dominates: judge the full size"
                     if tree.files < 100_000 else ""))),
    ]


def rclone_polling(ctx: Context) -> list[Row]:
    """One steady polling cycle on a real rclone mount (``rclone serve webdav`` on 127.0.0.1,
    ``rclone mount``), method ``list`` against ``mtime``, with rclone's folder cache expired
    at each cycle (``--dir-cache-time 1s``: changes made on the server show) and fresh
    (``1h``: every listing from the cache). See :mod:`tests.benchmarks.rclonecycle`."""
    from tests.support import tools_missing

    missing = tools_missing("rclone", "fusermount")
    if not ctx.root or missing:
        why = "needs root" if not ctx.root else f"needs {', '.join(missing)}"
        return [Row(key, f"rclone polling: {key}", "-", "-", "-", "info", note=f"skipped: {why}") for key in ROW_KEYS["rclone"]]
    folders, files, cycles = ctx.size.poll_directories, ctx.size.files, 2
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.rclonecycle", str(ctx.workspace.path / "rclone"), str(folders), str(files),
         str(cycles)],
        cwd=REPO, capture_output=True, text=True, timeout=7200, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"rclonecycle failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    what = f"{result['folders']:,} folders / {result['files']:,} files"

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    rows = []
    for cache, meaning in (("expired", "folder cache expired (--dir-cache-time 1s)"),
                           ("fresh", "folder cache fresh (--dir-cache-time 1h)")):
        listing, stat = result[f"{cache}.list"], result[f"{cache}.mtime"]
        for name, key in (("wall", "wall"), ("cpu", "cpu")):
            ours, theirs = median(listing[key]), median(stat[key])
            rows.append(Row(
                f"rclone.{cache}.{name}", f"rclone polling cycle, {meaning}: {'time' if name == 'wall' else 'CPU'} ({what})",
                seconds(ours), seconds(theirs), "-", "info",
                note=(f"list (watcher column) against mtime (reference column), median of {len(listing[key])} steady cycles; "
                      f"rclone mount's CPU per cycle: list {median(listing['rclone_cpu']):.2f} s, mtime "
                      f"{median(stat['rclone_cpu']):.2f} s; first cycle (walk of the whole tree): list "
                      f"{seconds(listing['baseline'])}, mtime {seconds(stat['baseline'])}; a file written on the server "
                      f"before each cycle was found: list {listing['detected']}, mtime {stat['detected']}"
                      if name == "wall" else "the watcher's side: its polling child's CPU"),
            ))
    return rows


# --- mount-table churn ---------------------------------------------------------------------------


def churn(ctx: Context) -> list[Row]:
    """Foreign mount-table changes while the daemon idles: a tmpfs mounted and unmounted in
    the workspace, away from the root, as container runtimes and test suites do on a busy
    machine. Each change wakes the daemon's mount monitor; counted: the child processes (health
    probes) it starts for them, and its CPU."""
    keys = ROW_KEYS["churn"]
    if not ctx.root:
        return [Row(key, f"mount-table churn: {key}", "-", "-", "-", "info", note="skipped: needs root (it mounts a tmpfs)")
                for key in keys]
    tree = ctx.library()
    target = ctx.workspace.folder("churn")
    config = DaemonConfig([tree.root], health_interval=3600)
    pairs = max(1, ctx.size.churn_changes // 2)
    with Daemon(ctx.workspace, "churn", config) as daemon:
        daemon.wait_ready(300)
        daemon.wait_verified(300)
        time.sleep(0.5)
        mounts_before = ctx.mount_changes()
        ctx.count_children(daemon.pid)
        cpu_before = daemon.cpu()
        started = time.monotonic()
        for _ in range(pairs):
            mount_tmpfs(target, "1m")
            time.sleep(0.01)
            umount(target)
            time.sleep(0.01)
        took = time.monotonic() - started
        cpu = wait_for_cpu_to_settle(daemon.cpu) - cpu_before
        children = ctx.children_started()
        changes = ctx.mount_changes() - mounts_before
        remarks = _remarks(daemon.process.lines)
    counted = children is not None
    per_change = children / changes if counted and changes else float("nan")
    return [
        Row("churn.children", "mount-table churn: probe children per change", f"{per_change:.2f}" if counted else "n/a",
            f"{changes} changes", "-", "info",
            note=(f"{pairs} tmpfs mounts and unmounts away from the root, 10 ms apart ({seconds(took)}); the mount "
                  f"table changed {changes} times (ours and any other program's); the daemon started "
                  f"{children if counted else 'an uncounted number of'} child processes.{remarks}")),
        Row("churn.cpu", "mount-table churn: daemon CPU per 100 changes", f"{cpu * 100 / changes:.2f} s" if changes else "n/a",
            "-", "-", "info", note="children included"),
    ]


# --- the loss guard --------------------------------------------------------------------------------


def guard(ctx: Context) -> list[Row]:
    """The loss guard's prediction for one library (``tests/benchmarks/guard_cost.py`` in a
    process of its own: it pages ``GET /Items`` from the emulator, in a process of its own
    too, and checks every file): the watcher's time per refresh (the warm run; the emulator's
    time answering left out), against ``find -type f`` over the same tree."""
    items = ctx.size.guard_items
    completed = subprocess.run(
        [sys.executable, "tests/benchmarks/guard_cost.py", "--items", str(items), "--missing", str(max(1, items // 200)),
         "--runs", "2", "--workspace", str(ctx.workspace.path), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=3600, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"guard_cost failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    [result] = json.loads(completed.stdout.strip().splitlines()[-1])
    what = f"{items:,} items"
    return [
        Row("guard.time", f"loss guard: prediction for {what}, per refresh", seconds(result["client"]),
            f"{seconds(result['find'])} (find)", "-", "info" + _ratio(result["check"], result["find"]),
            note=(f"the warm run of 2; {result['pages']:.0f} pages of GET /Items: paging {seconds(result['paging'])} "
                  f"(the emulator's own {seconds(result['emulator'])} left out), the existence check "
                  f"{seconds(result['check'])} against find -type f {seconds(result['find'])} (the ratio in the result "
                  "column: check / find)")),
        Row("guard.memory", "loss guard: peak memory of a prediction", f"{result['peak_growth']:.1f} MiB",
            "-", "-", "info", note=f"the daemon's peak RSS growth; the existence-check child's peak RSS {result['child_peak']:.1f} MiB"),
    ]


BENCHMARKS: dict[str, Callable[[Context], list[Row]]] = {
    "setup": setup,
    "idle": idle,
    "latency": latency,
    "storm": storm_benchmark,
    "mount": mount_loss,
    "poll": polling,
    "churn": churn,
    "guard": guard,
    "rclone": rclone_polling,
}

ROW_KEYS: dict[str, list[str]] = {
    "setup": ["setup.time", "setup.rss", "setup.verified", "setup.rss.verified"],
    "idle": ["idle.wakeups", "idle.cpu"],
    "latency": ["latency.p50", "latency.p99"],
    "storm": ["storm.refreshes", "storm.cpu", "storm.overflows"],
    "mount": ["mount.down.p50", "mount.down.p99", "mount.back.p50", "mount.back.p99"],
    "poll": ["poll.cpu", "poll.memory"],
    "churn": ["churn.children", "churn.cpu"],
    "guard": ["guard.time", "guard.memory"],
    "rclone": ["rclone.expired.wall", "rclone.expired.cpu", "rclone.fresh.wall", "rclone.fresh.cpu"],
}
