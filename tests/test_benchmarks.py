"""The benchmark command works: ``python -m tests.benchmarks --size smoke`` exits 0 and prints
its table with every row.

The smoke size judges nothing (its trees are tiny and the machine may be busy): the figures
are printed, not asserted. The full size is run by hand on a quiet machine
(``python -m tests.benchmarks``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from support import REPO

from tests.benchmarks.scenarios import ROW_KEYS


@pytest.mark.timeout(300)
@pytest.mark.root_only()  # conftest: skips, with the reason, without root or where mounts are refused
def test_smoke_benchmark_prints_every_row() -> None:
    """Root: the benchmarks build their trees in a tmpfs and unmount a tmpfs root."""
    if shutil.which("inotifywait") is None:
        pytest.skip("needs inotifywait, the reference the table compares with: install inotify-tools")
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--size", "smoke"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, check=False,
    )
    print(completed.stdout)
    assert completed.returncode == 0, f"exit code {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-4000:]}"
    lines = completed.stdout.splitlines()
    assert any(re.match(r"id\s+\| measure\s+\| jellyfin-watcher\s+\| reference\s+\| target\s+\| result", line) for line in lines), completed.stdout
    for benchmark, keys in ROW_KEYS.items():
        for key in keys:
            rows = [line for line in lines if line.startswith(key + " ") and line.count(" | ") >= 5]
            assert len(rows) == 1, f"row {key} ({benchmark}) missing from the table:\n{completed.stdout}"
            result = rows[0].rsplit(" | ", 1)[1]
            assert result.split()[0] in ("pass", "MISS", "info"), f"row {key}: {result}"
    assert "inotifywait not found" not in completed.stdout
    assert "ERROR" not in completed.stdout, completed.stdout
