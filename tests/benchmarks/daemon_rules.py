"""Three measurements of the daemon as a whole, each a real daemon against the Jellyfin emulator.

Not part of the test run (pytest collects ``test_*.py`` only; the test suite proves each rule
with short timings). Run it from the checkout::

    python tests/benchmarks/daemon_rules.py                  # all three, about 5 minutes
    python tests/benchmarks/daemon_rules.py --only copy html
    python tests/benchmarks/daemon_rules.py --only hang --runs 5   # root, bindfs
    python tests/benchmarks/daemon_rules.py --only hang --release abort

``copy``
    One file written for ``--copy-seconds`` (default 180) into a root, 64 KiB every half
    second, with the default quiet period (30 s) and ``max_wait`` (600 s): how many refreshes
    Jellyfin receives, and when, against the moment the writer closed the file.
``html``
    A sign-in proxy answers every request with its HTML login page (200) for
    ``--html-seconds`` (default 60), then lets everything through: every WARNING and ERROR
    the daemon logged, the requests it made meanwhile, the refreshes after, and its exit.
``hang``
    A bindfs mount hangs (SIGSTOP) while watchdog walks 1,500 folders just moved in: the time
    from SIGTERM to "stopped" in the log, whether the process ends while the mount still
    hangs (``--exit-wait`` seconds), and the time from the mount's release (bindfs resumed,
    or ``--release abort``: its FUSE connection aborted) to the exit.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import MKV, BindFS, WatcherProcess, child_env, movie, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library
from tests.jellyfin.proxies import SignInProxy

WAIT = 60.0


def measure_copy(workspace: Path, seconds: float) -> None:
    root = workspace / "copy" / "movies"
    movie(root, "Seed (2000)")
    with JellyfinEmulator(libraries=[Library("Movies", [str(root)])]) as jellyfin:
        jellyfin.index()
        config = write_config(
            workspace / "copy" / "config.toml",
            {
                "state_dir": workspace / "copy" / "state",
                "jellyfin": {"url": jellyfin.url},
                "roots": [{"path": root}],
            },
        )
        env = child_env(api_key=jellyfin.api_key, home=workspace / "copy" / "home")
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            target = root / "Long Copy (2024)" / "Long Copy (2024).mkv"
            target.parent.mkdir()
            began = time.monotonic()
            with open(target, "wb") as file:
                file.write(MKV)
                while time.monotonic() - began < seconds:
                    file.write(b"\0" * 65536)
                    file.flush()
                    time.sleep(0.5)  # the pace of the copy itself, not a wait for the daemon
            closed = time.monotonic()
            during = len(jellyfin.refreshes)
            jellyfin.wait_for_refreshes(1, 30.0 + WAIT)
            first = time.monotonic()
            # Anything more would come within another quiet period.
            time.sleep(35.0)  # a measurement window, not a wait for a condition
            code = watcher.terminate(WAIT)
        print(
            f"copy: one file written for {closed - began:.0f} s ({target.stat().st_size / 2**20:.1f} MiB), "
            f"quiet period 30 s (default)"
        )
        print(f"  refreshes while the file was being written: {during}")
        print(f"  refreshes in all: {len(jellyfin.refreshes)}; the first {first - closed:.1f} s after the close")
        print(f"  the file in Jellyfin: {str(target) in jellyfin.items}; daemon exit code {code}")


def measure_html(workspace: Path, seconds: float) -> None:
    root = workspace / "html" / "movies"
    movie(root, "Seed (2000)")
    key = "f" * 32
    with (
        JellyfinEmulator(api_key=key, libraries=[Library("Movies", [str(root)])]) as jellyfin,
        SignInProxy(jellyfin.url, mode="page") as proxy,
    ):
        jellyfin.index()
        config = write_config(
            workspace / "html" / "config.toml",
            {
                "state_dir": workspace / "html" / "state",
                "jellyfin": {"url": proxy.url},
                "watch": {"quiet_period": 2},
                "roots": [{"path": root}],
            },
        )
        env = child_env(api_key=key, home=workspace / "html" / "home")
        began = time.monotonic()
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(root, "New (2024)")
            while time.monotonic() - began < seconds:
                if not watcher.alive():
                    break
                time.sleep(0.5)  # the minute of HTML pages itself
            alive = watcher.alive()
            asked = len(proxy.requests)
            during = len(jellyfin.refreshes)
            opened = time.monotonic()
            proxy.exempt = True
            jellyfin.wait_for_refreshes(1, WAIT)
            refreshed = time.monotonic()
            code = watcher.terminate(WAIT)
        print(
            f"html: every answer an HTML sign-in page (200) for {opened - began:.0f} s, then normal; quiet period 2 s"
        )
        print(
            f"  alive after the minute: {alive}; requests to the proxy during it: {asked}; "
            f"refreshes Jellyfin received during it: {during}"
        )
        print(
            f"  refreshes in all: {len(jellyfin.refreshes)}, {refreshed - opened:.1f} s after the proxy let it through; "
            f"exit code {code}; tracebacks: {watcher.output.count('Traceback')}"
        )
        print("  the daemon's WARNING and ERROR lines, and what it logged after:")
        for line in watcher.lines:
            if re.search(r" (WARNING|ERROR) |refresh sent|stopped", line):
                print(f"    {line}")


def measure_hang(workspace: Path, runs: int, exit_wait: float, release: str) -> None:
    if os.geteuid() != 0:
        print("hang: skipped (needs root for bindfs)")
        return
    stopped: list[float] = []
    ended_at: list[float] = []
    exits: list[float] = []
    for run in range(runs):
        base = workspace / f"hang{run}"
        source = base / "source"
        movie(source, "Seed (2000)")
        with (
            JellyfinEmulator(libraries=[Library("Movies", [str(source)])]) as jellyfin,
            BindFS(source, base / "fuse") as fuse,
        ):
            jellyfin.index()
            root = fuse.mount_point
            config = write_config(
                base / "config.toml",
                {
                    "state_dir": base / "state",
                    "jellyfin": {"url": jellyfin.url},
                    "watch": {"quiet_period": 0.5, "probe_timeout": 1, "health_interval": 1, "settle": 0.5},
                    "roots": [{"path": root}],
                },
            )
            env = child_env(api_key=jellyfin.api_key, home=base / "home")
            with WatcherProcess(["--config", config], env) as watcher:
                watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
                incoming = source / ".incoming"
                for index in range(1500):
                    (incoming / f"Extras {index // 30:02d}" / f"Part {index:04d}").mkdir(parents=True)
                (root / ".incoming").rename(root / "Big (2024)")
                connection = os.stat(root).st_dev
                fuse.stop()
                watcher.wait_for_line(re.escape(f"{root} is unresponsive ("), WAIT)
                mark = watcher.mark()
                sent = time.monotonic()
                watcher.send_signal(signal.SIGTERM)
                arrived, _ = watcher.wait_for_timed_line(r"stopped; ", WAIT, start=mark)
                stopped.append(arrived - sent)
                ended = _ends_within(watcher, exit_wait)
                if ended is not None:
                    ended_at.append(ended - sent)
                resumed = time.monotonic()
                if release == "abort":
                    # The kernel's FUSE connection of the mount, named by its device number
                    # (Documentation/filesystems/fuse.rst, "Control filesystem").
                    connections = Path("/sys/fs/fuse/connections")
                    if not any(connections.iterdir()):  # fusectl(5) not mounted yet
                        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(connections)], check=True)
                    (connections / str(os.minor(connection)) / "abort").write_text("1")
                else:
                    fuse.resume()
                wait_until(lambda: not watcher.alive(), WAIT, message=f"the watcher did not end after the {release}")
                if ended is None:
                    exits.append(time.monotonic() - resumed)
    print(f"hang: FUSE mount stopped during watchdog's walk of 1,500 new folders, {runs} runs")
    print(
        f"  SIGTERM -> 'stopped' logged: median {statistics.median(stopped) * 1000:.0f} ms, "
        f"max {max(stopped) * 1000:.0f} ms"
    )
    print(
        f"  process ended while the mount still hung (within {exit_wait:g} s): {len(ended_at)} of {runs}"
        + (
            f", SIGTERM -> exit median {statistics.median(ended_at) * 1000:.0f} ms, max {max(ended_at) * 1000:.0f} ms"
            if ended_at
            else ""
        )
    )
    if exits:
        print(f"  the others ended {statistics.median(exits) * 1000:.0f} ms (median) after the mount's {release}")


def _ends_within(watcher: WatcherProcess, seconds: float) -> float | None:
    """When (``time.monotonic()``) the process ended, watched for at most ``seconds``; None
    if it did not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not watcher.alive():
            return time.monotonic()
        threading.Event().wait(0.01)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("copy", "html", "hang"), default=("copy", "html", "hang"))
    parser.add_argument("--copy-seconds", type=float, default=180.0)
    parser.add_argument("--html-seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3, help="runs of the hang measurement")
    parser.add_argument("--exit-wait", type=float, default=5.0)
    parser.add_argument(
        "--release",
        choices=("resume", "abort"),
        default="resume",
        help="how the hung mount is released: SIGCONT to bindfs, or abort its FUSE connection",
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemon-rules-") as folder:
        workspace = Path(folder)
        if "hang" in options.only:
            measure_hang(workspace, options.runs, options.exit_wait, options.release)
        if "html" in options.only:
            measure_html(workspace, options.html_seconds)
        if "copy" in options.only:
            measure_copy(workspace, options.copy_seconds)


if __name__ == "__main__":
    main()
