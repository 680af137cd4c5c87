"""Automounted roots, end to end, with Debian's ``automount`` (autofs) and loop-disk shares.

NAS shares are often automounted: an ``x-systemd.automount`` line in fstab, or an autofs
map. The share is mounted when something looks it up and unmounted again after an idle
timeout. What the watcher must do with such a root:

* its probe's look-up mounts the share (a root is never "unmounted" only because nobody
  had looked at it lately);
* a share that fails to mount is unhealthy (``unmounted``, naming the automount): no
  refresh while it is away;
* while it watches a root it keeps the share mounted (inotify watches die with an expired
  mount); if the share goes anyway and comes back, the root is watched again and counted as
  changed — one refresh — and is not "unmounted" forever.

The automount daemon runs as a child of the test with maps of its own under ``tmp_path``
(:class:`pools.Automounter`): an indirect map (``auto/<key>``) and a direct map (an autofs
mount on the mount point itself, as systemd makes for ``x-systemd.automount``). Real
systemd automount units need systemd as PID 1: that test skips with the reason elsewhere.
Every daemon asserts items lost = 0 in the emulator and the exact refresh count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pools import Automounter
from support import LoopDisk, WatcherProcess, movie, run_cli, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""
TIMEOUT = 1
"""The automounts' idle timeout, seconds."""
MOVIES = 10

AUTOFS = pytest.mark.root_only("automount", "mkfs.ext4")


def share_image(tmp_path: Path, name: str) -> Path:
    """An ext4 image holding ``movies/`` with ``MOVIES`` movies (mounted once to fill it)."""
    image = tmp_path / f"{name}.img"
    with LoopDisk(image, tmp_path / f"{name}-seed") as disk:
        for number in range(MOVIES):
            movie(disk.mount_point / "movies", f"Movie {number:03d}")
    return image


def automount_config(tmp_path: Path, url: str, roots: list[Path]) -> Path:
    return write_config(tmp_path / "config.toml", {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": url},
        "watch": {"quiet_period": 0.5, "max_wait": 90, "probe_timeout": 2, "settle": 0.5, "health_interval": 0.5},
        "roots": [{"path": root} for root in roots],
    })


def mount_id(point: Path) -> int | None:
    """The kernel's ID of the mount on top at ``point``."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            if fields[4] == str(point):
                found = int(fields[0])
    return found


def finish(watcher: WatcherProcess, jellyfin: JellyfinEmulator, refreshes: int) -> None:
    assert watcher.terminate(WAIT) == 0, watcher.output
    print(f"[automount] the daemon's log:\n{watcher.output}")  # shown with pytest -s
    assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert "Traceback" not in watcher.output, watcher.output
    assert jellyfin.wait_for_scans_idle(WAIT)
    assert len(jellyfin.refreshes) == refreshes, f"{len(jellyfin.refreshes)} refreshes:\n{watcher.output}"
    assert jellyfin.removed == [], f"items lost: {[item.path for item in jellyfin.removed]}"


@pytest.fixture
def automounter(tmp_path: Path) -> Iterator[Automounter]:
    """``auto/share`` (a loop disk with movies) and ``auto/broken`` (an image that does not
    exist) in an indirect map; ``direct/nas`` and ``direct/bad`` likewise in a direct map."""
    share, nas = share_image(tmp_path, "share"), share_image(tmp_path, "nas")
    with Automounter(
        tmp_path / "autofs",
        indirect={"share": f"-fstype=ext4,loop :{share}", "broken": f"-fstype=ext4,loop :{tmp_path / 'gone.img'}"},
        direct={tmp_path / "direct" / "nas": f"-fstype=ext4,loop :{nas}",
                tmp_path / "direct" / "bad": f"-fstype=ext4,loop :{tmp_path / 'gone.img'}"},
        timeout=TIMEOUT,
    ) as automounter:
        yield automounter


@AUTOFS
@pytest.mark.parametrize("kind", ["indirect", "direct"])
def test_the_probe_mounts_the_share_and_an_expired_share_is_healthy(tmp_path: Path, automounter: Automounter,
                                                                    env: dict[str, str], kind: str) -> None:
    point = automounter.indirect_point / "share" if kind == "indirect" else tmp_path / "direct" / "nas"
    root = point / "movies"
    state = tmp_path / "state"
    assert not automounter.mounted(point)

    learned = run_cli("refresh", "--dry-run", "--state-dir", state, root, env=env)  # learns where it lives
    assert learned.returncode == 0, learned
    assert automounter.mounted(point), "the probe's look-up did not mount the share"
    assert json.loads((state / "state.json").read_text())["mounts"] == {str(root): str(point)}

    wait_until(lambda: not automounter.mounted(point), WAIT, message="the idle share did not expire")
    checked = run_cli("check", "--state-dir", state, root, env=env)
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith(f"{root}: healthy (on {point} (ext4))"), checked.stdout
    assert automounter.mounted(point)


@AUTOFS
@pytest.mark.parametrize("kind", ["indirect", "direct"])
def test_share_that_cannot_mount_is_unhealthy(tmp_path: Path, automounter: Automounter, jellyfin: JellyfinEmulator,
                                              env: dict[str, str], kind: str) -> None:
    point = automounter.indirect_point / "broken" if kind == "indirect" else tmp_path / "direct" / "bad"
    root = point / "movies"
    other = tmp_path / "shows"
    movie(other, "Show 1")
    jellyfin.libraries = [Library("Movies", [str(root)]), Library("Shows", [str(other)], collection_type="tvshows")]
    assert jellyfin.index() == 1
    reason = f"the automount {point} did not mount: "

    checked = run_cli("check", "--state-dir", tmp_path / "state", root, env=env)
    assert checked.returncode == 1, checked
    assert checked.stdout.startswith(f"{root}: unmounted ({reason}"), checked.stdout

    config = automount_config(tmp_path, jellyfin.url, [root, other])
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(re.escape(f"{root} is unmounted ({reason}"), WAIT)
        watcher.wait_for_line(r"watching 1 of 2 roots", WAIT)
        movie(other, "Show 2")
        held = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
        assert reason in held, held
        assert watcher.terminate(WAIT) == 0
        print(f"[automount] the daemon's log:\n{watcher.output}")  # shown with pytest -s
        assert re.search(r"stopped; \d+ changes pending", watcher.lines[-1]), watcher.output
    assert jellyfin.refreshes == [] and jellyfin.removed == []


@AUTOFS
@pytest.mark.parametrize("kind", ["indirect", "direct"])
def test_watched_share_stays_mounted_and_comes_back_after_an_expiry(tmp_path: Path, automounter: Automounter,
                                                                    jellyfin: JellyfinEmulator, env: dict[str, str],
                                                                    kind: str) -> None:
    point = automounter.indirect_point / "share" if kind == "indirect" else tmp_path / "direct" / "nas"
    root = point / "movies"
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == MOVIES  # looks the share up: it is mounted now, and expires when idle
    config = automount_config(tmp_path, jellyfin.url, [root])
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        mounted_as = mount_id(point)
        assert mounted_as is not None and automounter.mounted(point)

        # The automounter tries to expire the idle share every second: the watcher keeps it
        # in use, so it stays the same mount, and the watch on it keeps working.
        tries = automounter.expiry_attempts(point)
        wait_until(lambda: automounter.expiry_attempts(point) >= tries + 3, WAIT,
                   message="the automounter did not try to expire the share")
        assert mount_id(point) == mounted_as, "the watched share expired"
        assert watcher.count(r" is (unmounted|back)") == 0, watcher.output
        movie(root, "New (2024)")
        watcher.wait_for_line(r"refresh sent: ", WAIT)
        jellyfin.wait_for_refreshes(1, WAIT)

        # It goes anyway (an expiry that did not wait for us, here a lazy unmount): the
        # next look-up mounts it again, the root is watched again and counted as changed.
        mark = watcher.mark()
        automounter.expire(point)
        watcher.wait_for_line(re.escape(f"watching {root} again; counting it as changed"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        jellyfin.wait_for_refreshes(2, WAIT)
        assert mount_id(point) not in (None, mounted_as)
        checked = run_cli("check", "--config", config, env=env)
        assert checked.returncode == 0 and "healthy" in checked.stdout, checked

        mark = watcher.mark()
        movie(root, "After (2025)")  # seen on the new mount
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 3)
    assert {str(root / title / f"{title}.mkv") for title in ("New (2024)", "After (2025)")} <= set(jellyfin.items)
    assert len(jellyfin.items) == MOVIES + 2


@AUTOFS
def test_automounts_below_a_root_are_looked_up(tmp_path: Path, automounter: Automounter, env: dict[str, str]) -> None:
    # A root holding two direct automounts: one mounts on look-up, one cannot. Both are
    # learned as mount points below the root; each check looks them up again, so the idle
    # one is mounted (not "gone") and the broken one is named.
    root, nas, bad = tmp_path / "direct", tmp_path / "direct" / "nas", tmp_path / "direct" / "bad"
    state = tmp_path / "state"
    first = run_cli("refresh", "--dry-run", "--state-dir", state, root, env=env)
    assert first.returncode == 0, first
    assert json.loads((state / "state.json").read_text())["below"] == {str(root): [str(bad), str(nas)]}
    assert not automounter.mounted(nas)

    checked = run_cli("check", "--state-dir", state, root, env=env)
    assert checked.returncode == 1, checked
    assert checked.stdout.startswith(f"{root}: unmounted ({bad} mounted below it is not mounted: "), checked.stdout
    assert str(nas) not in checked.stdout, checked.stdout
    assert automounter.mounted(nas), "the check did not look the idle automount up"


def systemd_skip_reason() -> str | None:
    if not os.path.isdir("/run/systemd/system"):
        return ("needs systemd as PID 1 for a real x-systemd.automount unit; the direct-map tests cover the same kernel "
                "autofs, and tests/test_systemd.py runs one under the systemd of a container")
    if os.geteuid() != 0:
        return "needs root to start automount units"
    if shutil.which("systemd-mount") is None:
        return "needs systemd-mount"
    return None


@pytest.mark.skipif(systemd_skip_reason() is not None, reason=systemd_skip_reason() or "")
def test_systemd_automount_unit(tmp_path: Path, env: dict[str, str]) -> None:
    image = share_image(tmp_path, "usb")
    point = tmp_path / "usb"
    point.mkdir()
    subprocess.run(["systemd-mount", "--automount=yes", "--timeout-idle-sec=1", str(image), str(point)],
                   check=True, capture_output=True, timeout=30)
    try:
        root = point / "movies"
        state = tmp_path / "state"
        assert run_cli("refresh", "--dry-run", "--state-dir", state, root, env=env).returncode == 0
        checked = run_cli("check", "--state-dir", state, root, env=env)
        assert checked.returncode == 0 and checked.stdout.startswith(f"{root}: healthy (on {point} "), checked
    finally:
        subprocess.run(["systemd-mount", "--umount", str(point)], capture_output=True, timeout=30, check=False)
