"""What the loss guard costs on a large library: ``guard.predict`` against the Jellyfin emulator.

Not part of the test run (pytest collects ``test_*.py`` only). Run it from the checkout::

    python tests/benchmarks/guard_cost.py                 # 50,000 items
    python tests/benchmarks/guard_cost.py --items 10000 --missing 500 --runs 3

It creates ``--items`` empty media files in a temporary folder (``Show NNN/Episode NNNNN.mkv``,
100 per folder), indexes them in the emulator, deletes ``--missing`` of them, and times
``guard.predict`` the way the daemon calls it, split into

* HTTP paging: the ``GET /Items`` pages (count and seconds), and of those seconds the
  emulator's (answering, measured in its process) and the client's (the rest: HTTP on
  127.0.0.1, JSON decoding, mapping the paths);
* the existence check: ``guard.missing_files``, the child process that stats every path;

plus the parent process's peak RSS growth (``VmHWM`` in ``/proc/self/status``, before and
after), and in a separate run the existence-check child's own peak RSS (its ``VmHWM``).

The emulator runs in a process of its own, so that its memory does not count as the
watcher's. By default it does *not* validate its answers against Jellyfin's OpenAPI spec
(openapi-core needs about 15 ms per item, 12 minutes for 50,000): ``--validate`` turns that
back on. Either way the paging figure is the emulator's speed, not a real Jellyfin's, whose
database query for a page of 1,000 items with ``fields=Path`` is its own cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from watcher import guard  # noqa: E402
from watcher.config import Secret  # noqa: E402
from watcher.jellyfin import JellyfinClient  # noqa: E402

PER_FOLDER = 100

_EMULATOR = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.jellyfin.emulator import JellyfinEmulator, Library
emulator = JellyfinEmulator()
if sys.argv[3] != "validate":
    emulator._check_response = lambda *arguments: []  # openapi-core: ~15 ms per item
emulator.libraries = [Library("Shows", [sys.argv[2]], collection_type="tvshows")]
import time
spent = [0.0]
handle = emulator._handle
def timed(method, target, *rest):
    began = time.monotonic()
    try:
        return handle(method, target, *rest)
    finally:
        if target.startswith("/Items?"):
            spent[0] += time.monotonic() - began
emulator._handle = timed
emulator.start()
count = emulator.index()
print(json.dumps({"url": emulator.url, "api_key": emulator.api_key, "items": count}), flush=True)
for line in sys.stdin:  # "report": the seconds spent answering GET /Items since the last report
    print(json.dumps({"items_seconds": spent[0]}), flush=True)
    spent[0] = 0.0
emulator.stop()
print(json.dumps({"violations": emulator.violations}), flush=True)
"""


def kib(field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process, KiB."""
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_peak_kib(paths: list[str]) -> int:
    """Peak RSS (KiB) of the existence-check program fed ``paths``, as ``guard`` runs it."""
    program = guard._EXISTS_PROGRAM + (
        "\nfor line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'):\n"
        "        sys.stdout.write(json.dumps({'hwm': int(line.split()[1])}) + '\\n')\n"
    )
    completed = subprocess.run([sys.executable, "-I", "-S", "-c", program], input="".join(p + "\n" for p in paths),
                               capture_output=True, text=True, check=True)
    return int(json.loads(completed.stdout.splitlines()[-1])["hwm"])


def make_library(folder: Path, items: int) -> list[Path]:
    paths = []
    for number in range(items):
        show = folder / f"Show {number // PER_FOLDER:03d}"
        if number % PER_FOLDER == 0:
            show.mkdir(parents=True)
        path = show / f"Episode {number:05d}.mkv"
        path.touch()
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000, help="media items in the library (default 50000)")
    parser.add_argument("--missing", type=int, default=1_000, help="files deleted before the prediction (default 1000)")
    parser.add_argument("--runs", type=int, default=2, help="predictions in a row (the first one is the cold one)")
    parser.add_argument("--timeout", type=float, default=60.0, help="the existence check's deadline (the daemon's: 60 s)")
    parser.add_argument("--validate", action="store_true", help="keep the emulator's response validation (very slow)")
    arguments = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    emulator = None
    try:
        started = time.monotonic()
        files = make_library(folder / "shows", arguments.items)
        made = time.monotonic() - started
        emulator = subprocess.Popen(
            [sys.executable, "-c", _EMULATOR, str(REPO), str(folder / "shows"), "validate" if arguments.validate else "fast"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        assert emulator.stdin is not None and emulator.stdout is not None
        started = time.monotonic()
        ready = json.loads(emulator.stdout.readline())
        indexed = time.monotonic() - started
        assert ready["items"] == arguments.items, ready
        for path in files[: arguments.missing]:
            path.unlink()

        client = JellyfinClient(ready["url"], Secret(ready["api_key"]), 600)
        [library] = client.libraries()
        timings = {"http": 0.0, "check": 0.0}
        items, missing_files = client.items, guard.missing_files

        def timed_items(*args, **kwargs):  # type: ignore[no-untyped-def]
            began = time.monotonic()
            try:
                return items(*args, **kwargs)
            finally:
                timings["http"] += time.monotonic() - began

        def timed_missing(*args, **kwargs):  # type: ignore[no-untyped-def]
            began = time.monotonic()
            try:
                return missing_files(*args, **kwargs)
            finally:
                timings["check"] += time.monotonic() - began

        client.items = timed_items  # type: ignore[method-assign]
        guard.missing_files = timed_missing  # type: ignore[assignment]

        print(f"library: {arguments.items} items in {arguments.items // PER_FOLDER} folders under {folder} "
              f"(files made in {made:.1f} s, indexed by the emulator in {indexed:.1f} s), {arguments.missing} deleted; "
              f"page size {guard.PAGE_SIZE}; emulator response validation {'on' if arguments.validate else 'off'}")
        print(f"{'run':>3} {'pages':>5} {'HTTP paging s':>13} {'existence check s':>17} {'total s':>8} "
              f"{'(emulator s':>11} {'client s)':>9} {'peak RSS growth MiB':>19} {'RSS growth MiB':>14}  verdict")
        for run in range(1, arguments.runs + 1):
            timings.update(http=0.0, check=0.0)
            peak_before, rss_before = kib("VmHWM"), kib("VmRSS")
            began = time.monotonic()
            prediction = guard.predict(client, library, str, arguments.timeout)
            total = time.monotonic() - began
            peak_after, rss_after = kib("VmHWM"), kib("VmRSS")
            emulator.stdin.write("report\n")
            emulator.stdin.flush()
            server = json.loads(emulator.stdout.readline())["items_seconds"]
            assert not prediction.unresponsive, "the existence check did not finish in time: raise --timeout"
            assert (prediction.items, prediction.missing) == (arguments.items, arguments.missing), prediction
            verdict = "refused" if prediction.refused(guard.Limits()) else "ok"
            print(f"{run:>3} {prediction.pages:>5} {timings['http']:>13.2f} {timings['check']:>17.2f} {total:>8.2f} "
                  f"{server:>11.2f} {timings['http'] - server:>9.2f} {(peak_after - peak_before) / 1024:>19.1f} {(rss_after - rss_before) / 1024:>14.1f}  "
                  f"{verdict} ({prediction.missing} of {prediction.items})")
            if run == 1:
                first_peak = peak_before
        print(f"parent peak RSS: {first_peak / 1024:.1f} MiB before the first prediction (interpreter, imports, "
              f"client), {kib('VmHWM') / 1024:.1f} MiB at the end")
        print(f"existence-check child (separate run, same {arguments.items} paths): peak RSS "
              f"{child_peak_kib([str(path) for path in files]) / 1024:.1f} MiB")
        client.close()
        emulator.stdin.close()
        done = json.loads(emulator.stdout.readline())
        if done["violations"]:
            print(f"spec violations: {done['violations'][:3]}")
            return 1
        print("reproduce: cd " + str(REPO) + " && python tests/benchmarks/guard_cost.py " + " ".join(sys.argv[1:]))
        return 0
    finally:
        if emulator is not None and emulator.poll() is None:
            emulator.kill()
            emulator.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
