"""What comparing Jellyfin's view of the roots with this machine's costs per refresh.

Not part of the test run (pytest collects ``test_*.py`` only). Run it from the checkout::

    python tests/benchmarks/serverview_cost.py                   # 2 and 20 roots, 200 entries each
    python tests/benchmarks/serverview_cost.py --roots 2 20 50 --entries 1000 --runs 30

For each number of roots it makes that many library folders of ``--entries`` film folders in a
temporary folder, starts the Jellyfin emulator in a process of its own (its answers are not
validated against the spec, which is the emulator's cost, not Jellyfin's) and times, ``--runs``
times each, what the daemon does before every refresh:

* the reference: ``health.probe_roots``, the health probe every refresh already pays;
* the check: ``edges.serverview.check_roots`` on the probe's results, i.e. one child process
  listing every root here plus one ``GET /Environment/DirectoryContents`` per root.

It prints, per number of roots: requests per refresh (counted by the emulator), the median and
90th percentile of the check's wall time (this machine's listing runs while Jellyfin is asked),
the time the emulator's request handler took per check (measured in its process; it checks each
request against the OpenAPI spec, which a real Jellyfin does not, and stands in for Jellyfin's
own time), and the median check time as a ratio to the median probe time of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from watcher.config import Config, JellyfinSettings, Root, Secret
from watcher.edges.jellyfin import JellyfinClient
from watcher.edges.probe import probe_roots
from watcher.edges.serverview import check_roots

_EMULATOR = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.jellyfin.emulator import JellyfinEmulator
emulator = JellyfinEmulator()
emulator._check_response = lambda *arguments: []  # the emulator's own cost, not Jellyfin's
import time
spent = [0.0]
handle = emulator._handle
def timed(method, target, *rest):
    began = time.perf_counter()
    try:
        return handle(method, target, *rest)
    finally:
        spent[0] += time.perf_counter() - began
emulator._handle = timed
emulator.start()
print(json.dumps({"url": emulator.url, "api_key": emulator.api_key}), flush=True)
for line in sys.stdin:  # "count": requests answered, and seconds spent answering them, so far
    print(json.dumps({"requests": len(emulator.requests), "seconds": spent[0]}), flush=True)
emulator.stop()
print(json.dumps({"violations": emulator.violations}), flush=True)
"""


def measure(roots: int, entries: int, runs: int, workdir: Path) -> dict[str, float]:
    folders = []
    for number in range(roots):
        folder = workdir / f"library {number:02d}"
        for entry in range(entries):
            (folder / f"Film {entry:04d}").mkdir(parents=True)
        folders.append(folder)
    emulator = subprocess.Popen([sys.executable, "-c", _EMULATOR, str(REPO)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert emulator.stdin is not None and emulator.stdout is not None
    try:
        started = json.loads(emulator.stdout.readline())
        client = JellyfinClient(started["url"], Secret(started["api_key"]), timeout=30)
        config = Config(jellyfin=JellyfinSettings(url=started["url"]))
        root_list = [Root(folder) for folder in folders]

        def served() -> tuple[int, float]:
            assert emulator.stdin is not None and emulator.stdout is not None
            emulator.stdin.write("count\n")
            emulator.stdin.flush()
            answer = json.loads(emulator.stdout.readline())
            return int(answer["requests"]), float(answer["seconds"])

        check_roots(client, config, probe_roots(root_list, {}, 5.0))  # warm-up: connection, caches
        probes, checks, own = [], [], []
        first = served()
        for _ in range(runs):
            began = time.perf_counter()
            healths = probe_roots(root_list, {}, 5.0)
            probes.append(time.perf_counter() - began)
            before = served()
            began = time.perf_counter()
            comparisons = check_roots(client, config, healths)
            checks.append(time.perf_counter() - began)
            own.append(served()[1] - before[1])
            assert len(comparisons) == roots and not any(comparison.holds for comparison in comparisons)
        requests = (served()[0] - first[0]) / runs
        client.close()
    finally:
        emulator.stdin.close()
        tail = emulator.stdout.read()
        emulator.wait(30)
    violations = json.loads(tail.strip().splitlines()[-1])["violations"]
    assert violations == [], violations
    deciles = statistics.quantiles(checks, n=10)
    return {"requests": requests, "check_median_ms": statistics.median(checks) * 1000,
            "check_p90_ms": deciles[-1] * 1000, "emulator_median_ms": statistics.median(own) * 1000,
            "probe_median_ms": statistics.median(probes) * 1000,
            "ratio": statistics.median(checks) / statistics.median(probes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--entries", type=int, default=200, help="entries per root (default 200)")
    parser.add_argument("--runs", type=int, default=20)
    arguments = parser.parse_args(argv)
    print(f"entries per root: {arguments.entries}; runs: {arguments.runs}")
    print("roots | requests per refresh | check median ms | check p90 ms | of which emulator answering, median ms | "
          "probe median ms (reference) | check / probe")
    for roots in arguments.roots:
        with tempfile.TemporaryDirectory(prefix="serverview-cost-") as folder:
            result = measure(roots, arguments.entries, arguments.runs, Path(folder))
        print(f"{roots:5d} | {result['requests']:20.1f} | {result['check_median_ms']:15.1f} | "
              f"{result['check_p90_ms']:12.1f} | {result['emulator_median_ms']:38.1f} | "
              f"{result['probe_median_ms']:27.1f} | {result['ratio']:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
