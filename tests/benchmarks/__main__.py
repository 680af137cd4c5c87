"""``python -m tests.benchmarks [--size full|large|smoke] [--only NAME ...] [--strict]``

Runs the benchmarks against the real daemon (``python -m watcher run``) and prints one table:
each figure next to its reference measured in the same run (``inotifywait``, watchdog's
``PollingObserver``), the target, and pass or by how much it was missed. Progress goes to
stderr, the table to stdout.

Exit code: 0 when every benchmark ran (targets missed or not: the table says), 1 when a
benchmark could not run (its row says ERROR), 2 for a usage error. With ``--strict`` a
missed target also exits 1.

Sizes: ``full`` (20,000 folders / 100,000 files; a 100,000-file storm; 25 latency and mount
runs; one 60 s health interval idle; polling on 20,000 folders / 200,000 files; the loss
guard on 50,000 items) takes a few minutes on a quiet machine: run it there. ``large``
(100,000 folders / 500,000 files; a 200,000-file storm; polling on 100,000 folders / 500,000
files; the loss guard on 200,000 items) takes about a quarter of an hour and 8 GiB of tmpfs
(memory). ``smoke`` uses tiny trees and a few runs and ends within a minute: it checks that
the benchmarks work, its figures judge nothing (the test suite runs it; never the others).

The watcher package's bytecode is compiled first (``compileall``, into its ``__pycache__``
folders, as pip does when it installs a package): a daemon started from source files alone,
as ``PYTHONDONTWRITEBYTECODE`` leaves a checkout, would spend its start-up compiling.

Needs Linux (``/proc``); root for a tmpfs workspace, the mount-loss and churn benchmarks and
counting the daemon's child processes (skipped otherwise, with its reason in the table);
``inotifywait`` (Debian/Ubuntu package ``inotify-tools``) for the reference columns (skipped
otherwise).
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

from tests.benchmarks.harness import (
    ChildProcesses,
    MountTableChanges,
    Row,
    Workspace,
    render,
)
from tests.benchmarks.scenarios import BENCHMARKS, ROW_KEYS, SIZES, Context
from tests.support import REPO


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _machine() -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    try:
        import watchdog.version

        watchdog_version = watchdog.version.VERSION_STRING
    except ImportError:
        watchdog_version = "?"
    return (f"{os.cpu_count()} CPUs, load average {load}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"watchdog {watchdog_version}")


def _inotifywait_version() -> str:
    try:
        completed = subprocess.run(["inotifywait", "--help"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "inotifywait"
    first = (completed.stdout or completed.stderr).splitlines()
    return first[0].strip() if first else "inotifywait"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full (default), large (100,000 folders, about 15 minutes) or smoke (tiny, < 60 s)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these benchmarks (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    arguments = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if arguments.only:
        names = [name.strip() for value in arguments.only for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    if not sys.platform.startswith("linux"):
        print("the benchmarks read /proc: Linux only", file=sys.stderr)
        return 2

    size = SIZES[arguments.size]
    compileall.compile_dir(REPO / "watcher", quiet=1)
    has_inotifywait = shutil.which("inotifywait") is not None
    started = time.monotonic()
    workspace = Workspace(size.workspace)
    ctx = Context(size=size, workspace=workspace, inotifywait=has_inotifywait, root=workspace.tmpfs is not None, log=_log,
                  mounts=MountTableChanges(), children=ChildProcesses())
    header = [f"jellyfin-watcher benchmarks, size {size.describe()}",
              f"machine: {_machine()}; workspace: {workspace.kind}; the package's bytecode compiled"]
    if has_inotifywait:
        header.append(f"reference: {_inotifywait_version()}, watchdog's PollingObserver")
    else:
        header.append("inotifywait not found: install inotify-tools (Debian/Ubuntu: apt install inotify-tools); "
                      "the inotifywait reference columns are skipped")
    if not ctx.root:
        header.append("not root (or mounts refused): trees in a temporary folder, the mount-loss benchmark is skipped")
    for line in header:
        _log(line)
    rows: list[Row] = []
    errors = 0
    try:
        for name in names:
            _log(f"{name} ...")
            begun = time.monotonic()
            try:
                produced = BENCHMARKS[name](ctx)
            except Exception as error:  # one benchmark failing must not hide the others
                errors += 1
                traceback.print_exc(file=sys.stderr)
                message = " ".join(str(error).split())[:160]
                produced = [Row(key, f"{name}: {key}", "-", "-", "-", f"ERROR: {type(error).__name__}: {message}") for key in ROW_KEYS[name]]
            rows.extend(produced)
            _log(f"{name} done in {time.monotonic() - begun:.1f} s")
    finally:
        violations = ctx.close()
        workspace.close()
        if ctx.mounts is not None:
            ctx.mounts.close()
        if ctx.children is not None:
            ctx.children.close()
    if violations:
        errors += 1
        rows.append(Row("emulator", "Jellyfin emulator: requests that broke the API spec", str(len(violations)), "-", "0",
                        "ERROR", note="; ".join(violations[:3])))
    title = "\n".join([*header, f"total {time.monotonic() - started:.0f} s", ""])
    print(render(rows, title), flush=True)
    missed = [row for row in rows if row.result.startswith("MISS")]
    if errors:
        return 1
    if arguments.strict and missed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
