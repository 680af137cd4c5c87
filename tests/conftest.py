"""Shared fixtures of the test suite.

* ``jellyfin``: a started :class:`~tests.jellyfin.emulator.JellyfinEmulator` with no
  libraries yet (tests set ``jellyfin.libraries`` and call ``jellyfin.index()``); teardown
  stops it and fails the test if any request broke Jellyfin's OpenAPI spec.
* an autouse check, as in watchdog's own tests, that a test leaves no thread of this process
  running. The daemon under test runs in a subprocess, so what it catches are in-process
  helpers: the emulator's server and scan threads, stderr readers of ``support``.
* the ``root_only(*tools)`` marker: skips, with the reason, a test that needs root (real
  mounts), a tool that is not installed (``bindfs``, ``mkfs.ext4``, ...), or a kernel or
  container that refuses mounts.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for _path in (str(_TESTS.parent), str(_TESTS)):  # ``tests.jellyfin.emulator`` and ``support``
    if _path not in sys.path:
        sys.path.insert(0, _path)

from support import child_env, tools_missing  # noqa: E402

from tests.jellyfin.emulator import JellyfinEmulator  # noqa: E402

THREAD_GRACE = 5.0
"""Seconds a test's threads get to end after its teardown before they count as leaked."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "root_only(*tools): needs root (real mounts) and the given command-line tools; "
        "skipped with the reason otherwise",
    )


@functools.cache
def _mount_refused() -> str | None:
    """Why mounting does not work here (None if a tmpfs mounts and unmounts)."""
    with tempfile.TemporaryDirectory(prefix="mount-probe-") as folder:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", folder], capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            return f"mount -t tmpfs failed: {mounted.stderr.strip() or mounted.returncode}"
        if subprocess.run(["umount", folder], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", folder], capture_output=True, check=False)
    return None


def root_only_skip_reason(*tools: str) -> str | None:
    """Why a test needing root, real mounts and ``tools`` cannot run here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root: it mounts filesystems (tmpfs, loop ext4, bindfs); run the tests as root to include it"
    missing = tools_missing("mount", "umount", *tools)
    if missing:
        return f"needs {', '.join(missing)}: install them (Debian: bindfs, e2fsprogs, fuse3, mount) to include it"
    refused = _mount_refused()
    if refused:
        return f"mounting is not permitted here ({refused}): a container without CAP_SYS_ADMIN?"
    if "bindfs" in tools and not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse for bindfs"
    if "mkfs.ext4" in tools and not os.path.exists("/dev/loop-control"):
        return "needs loop devices (/dev/loop-control) to mount an ext4 image"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("root_only")
    if marker is not None:
        reason = root_only_skip_reason(*marker.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread of this process running after its teardown."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        leaked = [thread for thread in threading.enumerate() if thread not in before and thread.is_alive()]
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if leaked:
        pytest.fail(f"the test leaked threads: {', '.join(sorted(thread.name for thread in leaked))}", pytrace=False)


@pytest.fixture
def jellyfin() -> Iterator[JellyfinEmulator]:
    """A running Jellyfin emulator without libraries; no spec violations allowed."""
    emulator = JellyfinEmulator(api_key=f"test-key-{uuid.uuid4().hex}")  # unique: a leak is unambiguous
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
    assert emulator.violations == [], "requests broke Jellyfin's API spec"


@pytest.fixture
def env(jellyfin: JellyfinEmulator, tmp_path: Path) -> dict[str, str]:
    """Environment for watcher children: the emulator's API key in ``JELLYFIN_API_KEY``, and
    no configuration or state of the machine's user."""
    return child_env(api_key=jellyfin.api_key, home=tmp_path / "home")
