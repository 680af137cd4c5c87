"""What the loss guard costs per refresh on a large library: ``guard.predict`` against the emulator.

With ``guard.when = "always"`` (the default) the daemon predicts before every refresh, so
this is a cost every refresh pays. Not part of the test run (pytest collects ``test_*.py``
only). Run it from the checkout::

    python tests/benchmarks/guard_cost.py                 # 50,000 and 200,000 items
    python tests/benchmarks/guard_cost.py --items 10000 --missing 500 --runs 3

For each size it creates ``--items`` empty media files in a temporary folder
(``Show NNN/Episode NNNNN.mkv``, 100 per folder), indexes them in the emulator, deletes
``--missing`` of them, and times ``guard.predict`` the way the daemon calls it, split into

* HTTP paging: the ``GET /Items`` pages (count and seconds), and of those seconds the
  emulator's (answering, measured in its process) and the client's (the rest: HTTP on
  127.0.0.1, JSON decoding, mapping the paths);
* the existence check: ``guard.check_files``, the child process that lists every folder
  from the library location down to each file (each folder once) and looks the file up;

plus the parent process's peak RSS growth (``VmHWM`` in ``/proc/self/status``, before and
after), and in a separate run the existence-check child's own peak RSS (its ``VmHWM``).
The reference, measured in the same run: ``find LIBRARY -type f`` (a C program walking the
same tree, as little as any scan does); the existence check is given as a multiple of it.
The figure per refresh is the warm run (the last): the daemon's next refresh finds the
folders in the page cache too.

The emulator runs in a process of its own, so that its memory does not count as the
watcher's. By default it does *not* validate its answers against Jellyfin's OpenAPI spec
(openapi-core needs about 15 ms per item, 12 minutes for 50,000): ``--validate`` turns that
back on. Either way the paging figure is the emulator's speed, not a real Jellyfin's, whose
database query for a page of 1,000 items with ``fields=Path`` is its own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from watcher.config import Secret
from watcher.core.guard import Limits
from watcher.edges import predict as guard
from watcher.edges.jellyfin import JellyfinClient

PER_FOLDER = 100

_EMULATOR = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.jellyfin.emulator import JellyfinEmulator, Library, _Reply
emulator = JellyfinEmulator()
if sys.argv[3] != "validate":
    emulator._check_response = lambda *arguments: []  # openapi-core: ~15 ms per item
emulator.libraries = [Library("Shows", [sys.argv[2]], collection_type="tvshows")]
import dataclasses, time
# The emulator builds every item's answer for every page (fine for tests, minutes for 200,000
# items): here each query's full answer is built once and paged from memory. The items do
# not change during the benchmark; the emulator's time is reported apart either way.
whole = {}
build = emulator._get_items
def paged(call):
    key = tuple(sorted((name, tuple(values)) for name, values in call.query.items() if name not in ("startIndex", "limit")))
    if key not in whole:
        query = {name: values for name, values in call.query.items() if name not in ("startIndex", "limit")}
        whole[key] = build(dataclasses.replace(call, query=query)).body
    body = whole[key]
    start = int(call.query.get("startIndex", ["0"])[-1])
    limit = call.query.get("limit")
    items = body["Items"][start:] if limit is None else body["Items"][start:start + int(limit[-1])]
    return _Reply(200, {"Items": items, "TotalRecordCount": body["TotalRecordCount"], "StartIndex": start})
emulator._get_items = paged
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
    text = json.dumps([os.path.commonpath(paths)]) + "\n" + "".join(p + "\n" for p in paths)
    completed = subprocess.run([sys.executable, "-I", "-S", "-c", program], input=text,
                               capture_output=True, text=True, check=True)
    return int(json.loads(completed.stdout.splitlines()[-1])["hwm"])


def library_paths(folder: Path, items: int, start: int = 0) -> Iterator[str]:
    """The media files of the library, as strings. Generated, not kept: a list of 200,000
    paths in this process would slow its garbage collector, and so the client's figures."""
    for number in range(start, items):
        yield f"{folder}/Show {number // PER_FOLDER:03d}/Episode {number:05d}.mkv"


def make_library(folder: Path, items: int) -> None:
    for number, path in enumerate(library_paths(folder, items)):
        if number % PER_FOLDER == 0:
            os.makedirs(os.path.dirname(path))
        with open(path, "wb"):
            pass


def find_seconds(folder: Path) -> float:
    """Seconds ``find FOLDER -type f`` takes (the reference: a C program walking the tree)."""
    began = time.monotonic()
    subprocess.run(["find", str(folder), "-type", "f"], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - began


def measure(items: int, arguments: argparse.Namespace) -> dict[str, float]:
    """Build a library of ``items`` items, predict ``--runs`` times; the last (warm) run's
    figures, with the reference."""
    folder = Path(tempfile.mkdtemp(prefix="guard-cost-", dir=arguments.workspace))
    emulator = None
    try:
        started = time.monotonic()
        make_library(folder / "shows", items)
        made = time.monotonic() - started
        emulator = subprocess.Popen(
            [sys.executable, "-c", _EMULATOR, str(REPO), str(folder / "shows"), "validate" if arguments.validate else "fast"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        assert emulator.stdin is not None and emulator.stdout is not None
        started = time.monotonic()
        ready = json.loads(emulator.stdout.readline())
        indexed = time.monotonic() - started
        assert ready["items"] == items, ready
        for path in library_paths(folder / "shows", arguments.missing):
            os.unlink(path)

        client = JellyfinClient(ready["url"], Secret(ready["api_key"]), 600)
        [library] = client.libraries()
        timings = {"http": 0.0, "check": 0.0}
        items_call, check_files = client.items, guard.check_files

        def timed_items(*args, **kwargs):  # type: ignore[no-untyped-def]
            began = time.monotonic()
            try:
                return items_call(*args, **kwargs)
            finally:
                timings["http"] += time.monotonic() - began

        def timed_check(*args, **kwargs):  # type: ignore[no-untyped-def]
            began = time.monotonic()
            try:
                return check_files(*args, **kwargs)
            finally:
                timings["check"] += time.monotonic() - began

        client.items = timed_items  # type: ignore[method-assign]
        guard.check_files = timed_check  # type: ignore[assignment]

        print(f"\nlibrary: {items} items in {items // PER_FOLDER} folders under {folder} "
              f"(files made in {made:.1f} s, indexed by the emulator in {indexed:.1f} s), {arguments.missing} deleted; "
              f"page size {guard.PAGE_SIZE}; emulator response validation {'on' if arguments.validate else 'off'}")
        print(f"{'run':>3} {'pages':>5} {'HTTP paging s':>13} {'existence check s':>17} {'total s':>8} "
              f"{'(emulator s':>11} {'client s)':>9} {'peak RSS growth MiB':>19} {'RSS growth MiB':>14}  verdict")
        row: dict[str, float] = {}
        first_peak = 0
        try:
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
                assert (prediction.items, prediction.missing) == (items, arguments.missing), prediction
                verdict = "refused" if prediction.refused(Limits()) else "ok"
                print(f"{run:>3} {prediction.pages:>5} {timings['http']:>13.2f} {timings['check']:>17.2f} {total:>8.2f} "
                      f"{server:>11.2f} {timings['http'] - server:>9.2f} {(peak_after - peak_before) / 1024:>19.1f} "
                      f"{(rss_after - rss_before) / 1024:>14.1f}  {verdict} ({prediction.missing} of {prediction.items})")
                if run == 1:
                    first_peak = peak_before
                row = {"items": items, "pages": prediction.pages, "client": total - server, "paging": timings["http"] - server,
                       "check": timings["check"], "emulator": server,
                       "peak_growth": (peak_after - peak_before) / 1024}
        finally:
            client.items = items_call  # type: ignore[method-assign]
            guard.check_files = check_files  # type: ignore[assignment]
        reference = min(find_seconds(folder / "shows") for _ in range(3))
        row["find"] = reference
        child = child_peak_kib(list(library_paths(folder / "shows", items, start=arguments.missing))) / 1024
        row["child_peak"] = child
        print(f"parent peak RSS: {first_peak / 1024:.1f} MiB before the first prediction (interpreter, imports, "
              f"client), {kib('VmHWM') / 1024:.1f} MiB at the end")
        print(f"existence-check child (separate run, same paths): peak RSS {child:.1f} MiB")
        print(f"reference: find -type f over the same tree: {reference:.3f} s (best of 3)")
        client.close()
        emulator.stdin.close()
        done = json.loads(emulator.stdout.readline())
        if done["violations"]:
            raise RuntimeError(f"spec violations: {done['violations'][:3]}")
        return row
    finally:
        if emulator is not None and emulator.poll() is None:
            emulator.kill()
            emulator.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[50_000, 200_000],
                        help="media items in the library, one run per size (default 50000 200000)")
    parser.add_argument("--missing", type=int, default=1_000, help="files deleted before the prediction (default 1000)")
    parser.add_argument("--runs", type=int, default=2, help="predictions in a row (the first one is the cold one)")
    parser.add_argument("--timeout", type=float, default=60.0, help="the existence check's deadline (the daemon's: 60 s)")
    parser.add_argument("--validate", action="store_true", help="keep the emulator's response validation (very slow)")
    parser.add_argument("--workspace", metavar="DIR", help="make the libraries in DIR (default: the temporary folder)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line: each size's figures (python -m tests.benchmarks)")
    arguments = parser.parse_args()
    rows = [measure(items, arguments) for items in arguments.items]
    print("\nthe loss guard's cost per refresh (warm run; the emulator's own time per page left out):")
    print(f"{'items':>8} {'pages':>5} {'watcher s':>9} {'of it: paging s':>15} {'existence check s':>17} "
          f"{'find -type f s':>14} {'check / find':>12} {'parent peak +MiB':>16} {'child peak MiB':>14}")
    for row in rows:
        print(f"{row['items']:>8.0f} {row['pages']:>5.0f} {row['client']:>9.2f} {row['paging']:>15.2f} {row['check']:>17.2f} "
              f"{row['find']:>14.3f} {row['check'] / row['find']:>11.1f}x {row['peak_growth']:>16.1f} {row['child_peak']:>14.1f}")
    print("reproduce: cd " + str(REPO) + " && python tests/benchmarks/guard_cost.py " + " ".join(sys.argv[1:]))
    if arguments.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
