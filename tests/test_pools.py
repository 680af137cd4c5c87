"""Pooled storage, end to end: mergerfs pools over loop disks, overlays, and the loss guard
before every refresh.

A mergerfs pool keeps answering when one of its branches goes away: no event, no change of
the pool's mount, just half the library gone — and Jellyfin's next scan would drop the
missing branch's items. The watcher reads the pool's branches (``user.mergerfs.branches``
of ``<pool>/.mergerfs``), learns where each lives while healthy, holds every refresh while
one is missing, and watches each root's counterparts on the branches (a file written
straight to a branch makes no event on the pool). Where the branch check cannot know (a
branch already away when the watcher first saw the pool), the loss guard, run before
every refresh, refuses the mass removal.

Every daemon here is the real ``jellyfin-watcher run`` (``support.WatcherProcess``) against
the Jellyfin emulator, whose scan deletes items whose files it cannot find, so each test
asserts items lost = 0 and exactly one refresh where one is due. Mounts need root, FUSE and
Debian's ``mergerfs``; without them the tests skip with the reason. Waits are on conditions
with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pools import MergerFSPool, OverlayMount
from support import REPO, BindFS, LoopDisk, WatcherProcess, movie, run_cli, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher.core.union import (
    BranchSpec,
    parse_mergerfs_branches,
    parse_overlay_layers,
    translate,
)
from watcher.edges import predict as guard

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""
PROBE_TIMEOUT = 1.0
"""``watch.probe_timeout``, seconds."""
STOP_WITHIN = 2.0
"""Seconds the watcher may take to exit on SIGTERM."""
PER_BRANCH = 30
"""Movies on each branch of the pool."""

MERGERFS = pytest.mark.root_only("mergerfs", "fusermount", "mkfs.ext4")


# --- helpers ----------------------------------------------------------------------------------


def pool_config(tmp_path: Path, url: str, roots: list[Path], *, scope: str = "server", fallback: str = "poll") -> Path:
    return write_config(tmp_path / "config.toml", {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": url},
        "refresh": {"scope": scope},
        "watch": {"quiet_period": 0.5, "max_wait": 90, "probe_timeout": PROBE_TIMEOUT, "settle": 0.5,
                  "health_interval": 0.5, "poll_interval": 0.5},
        "roots": [{"path": root, "fallback": fallback} for root in roots],
    })


def movies(folder: Path, count: int, start: int = 0) -> list[Path]:
    return [movie(folder, f"Movie {number:03d}") for number in range(start, start + count)]


def learned_branches(state_dir: Path, root: Path) -> set[str]:
    """The branches the daemon has learned for ``root`` (from its state file)."""
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return set()
    return set((data.get("branches") or {}).get(str(root), {}))


def status_json(config: Path, env: dict[str, str]) -> dict[str, Any]:
    completed = run_cli("status", "--json", "--config", config, env=env)
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


@contextlib.contextmanager
def frozen(watcher: WatcherProcess) -> Iterator[None]:
    """Stop the daemon while the test changes things, so it sees them all at once."""
    watcher.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        watcher.send_signal(signal.SIGCONT)


def finish(watcher: WatcherProcess, jellyfin: JellyfinEmulator, refreshes: int) -> None:
    """SIGTERM: exit 0 within 2 s with nothing pending; exactly ``refreshes`` refreshes; no
    item lost."""
    code = watcher.terminate(WAIT)
    print(f"[pools] the daemon's log:\n{watcher.output}")  # shown with pytest -s
    assert code == 0, watcher.output
    assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert "Traceback" not in watcher.output, watcher.output
    assert jellyfin.wait_for_scans_idle(WAIT), "Jellyfin's scans did not finish"
    assert len(jellyfin.refreshes) == refreshes, f"{len(jellyfin.refreshes)} refreshes:\n{watcher.output}"
    assert jellyfin.removed == [], f"items lost: {[item.path for item in jellyfin.removed]}"


@dataclass
class Pool:
    """A mergerfs pool on ``mount_point`` over two loop disks, each with ``movies/`` holding
    ``PER_BRANCH`` movies; the library root is ``mount_point / "movies"``."""

    mount_point: Path
    disks: list[LoopDisk]
    mergerfs: MergerFSPool

    @property
    def root(self) -> Path:
        return self.mount_point / "movies"

    def branch(self, index: int) -> Path:
        return self.disks[index].mount_point


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    with contextlib.ExitStack() as stack:
        disks = []
        for index in (1, 2):
            disk = stack.enter_context(LoopDisk(tmp_path / f"disk{index}.img", tmp_path / f"disk{index}"))
            movies(disk.mount_point / "movies", PER_BRANCH, start=index * 100)
            disks.append(disk)
        mount_point = tmp_path / "pool"
        mergerfs = stack.enter_context(MergerFSPool(mount_point, [disk.mount_point for disk in disks]))
        yield Pool(mount_point, disks, mergerfs)


def library_on(pool: Pool, jellyfin: JellyfinEmulator) -> None:
    jellyfin.libraries = [Library("Movies", [str(pool.root)])]
    assert jellyfin.index() == 2 * PER_BRANCH


@contextlib.contextmanager
def start(config: Path, env: dict[str, str], pool: Pool) -> Iterator[WatcherProcess]:
    """The daemon, once it watches the pool's root and has learned both branches."""
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots|watching 2 of 2 roots", WAIT)
        wanted = {str(pool.branch(0)), str(pool.branch(1))}
        wait_until(lambda: learned_branches(config.parent / "state", pool.root) == wanted, WAIT,
                   message="the daemon did not learn the pool's branches")
        yield watcher


# --- reading a pool's branches (pure) -------------------------------------------------------------


def test_mergerfs_branch_lists_are_parsed_with_modes_and_globs() -> None:
    assert parse_mergerfs_branches("/mnt/disk1=RW:/mnt/disk2=NC,100G:/mnt/ro=RO:/mnt/disk*") == [
        BranchSpec("/mnt/disk1", "RW"), BranchSpec("/mnt/disk2", "NC"), BranchSpec("/mnt/ro", "RO"),
        BranchSpec("/mnt/disk*", "RW"),
    ]
    assert parse_mergerfs_branches("/mnt/a:/mnt/b/") == [BranchSpec("/mnt/a", "RW"), BranchSpec("/mnt/b", "RW")]
    assert parse_mergerfs_branches("/mnt/x=y=RO") == [BranchSpec("/mnt/x=y", "RO")]
    assert [spec.is_glob for spec in parse_mergerfs_branches("/a:/b*:/c[12]")] == [False, True, True]


def test_overlay_layers_are_parsed_from_mount_options() -> None:
    options = r"rw,relatime,lowerdir=/l1:/l\:2::/data,upperdir=/my\054up,workdir=/work,uuid=on"
    assert parse_overlay_layers(options) == [
        BranchSpec("/l1", "lower"), BranchSpec("/l:2", "lower"), BranchSpec("/data", "lower"), BranchSpec("/my,up", "upper"),
    ]
    assert parse_overlay_layers("rw,lowerdir+=/a,lowerdir+=/b,datadir+=/c") == [
        BranchSpec("/a", "lower"), BranchSpec("/b", "lower"), BranchSpec("/c", "lower"),
    ]


def test_events_on_a_branch_are_translated_to_the_pool() -> None:
    assert translate("/mnt/d1/movies/New/New.mkv", "/mnt/d1/movies", "/pool/movies") == "/pool/movies/New/New.mkv"
    assert translate("/mnt/d1/movies", "/mnt/d1/movies", "/pool/movies") == "/pool/movies"
    assert translate("/mnt/d1/moviesX/a", "/mnt/d1/movies", "/pool/movies") == "/mnt/d1/moviesX/a"


# --- a branch unplugged --------------------------------------------------------------------------


@MERGERFS
def test_branch_unplugged_with_a_change_is_held_until_it_is_back(tmp_path: Path, pool: Pool,
                                                                 jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    library_on(pool, jellyfin)
    config = pool_config(tmp_path, jellyfin.url, [pool.root])
    disk2 = pool.disks[1]
    with start(config, env, pool) as watcher:
        with frozen(watcher):
            new = movie(pool.root, "New (2024)")  # through the pool
            disk2.unmount()  # and a branch's disk unplugged before the batch is due
        reason = f"branch {disk2.mount_point} of the mergerfs pool {pool.mount_point} is not mounted"
        warning = watcher.wait_for_line(re.escape(f"{pool.root} is unmounted ({reason})"), WAIT)
        assert " WARNING " in warning, warning
        held = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
        assert reason in held, held
        assert jellyfin.refreshes == []

        # check and status name the branch too.
        checked = run_cli("check", "--config", config, env=env)
        assert checked.returncode == 1, checked
        assert f"{pool.root}: unmounted ({reason})" in checked.stdout, checked.stdout
        assert f"  branch {pool.branch(0)} (RW) of the mergerfs pool {pool.mount_point}: healthy (on {pool.branch(0)}, ext4)" \
            in checked.stdout.splitlines(), checked.stdout
        assert f"  branch {disk2.mount_point} (RW) of the mergerfs pool {pool.mount_point} is not mounted" \
            in checked.stdout.splitlines(), checked.stdout
        document = wait_until(lambda: (doc := status_json(config, env))["roots"][0]["state"] == "unmounted" and doc,
                              WAIT, interval=0.2)
        branches = {branch["path"]: branch for branch in document["roots"][0]["branches"]}
        assert branches[str(disk2.mount_point)]["state"] == "unmounted"
        assert branches[str(pool.branch(0))]["state"] == "healthy"
        shown = run_cli("status", "--config", config, env=env).stdout
        assert f"branch {disk2.mount_point} (RW) of {pool.mount_point}" in shown, shown

        mark = watcher.mark()
        disk2.mount()
        watcher.wait_for_line(re.escape(f"watching {pool.root} again; counting it as changed"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    assert str(new) in jellyfin.items
    assert len(jellyfin.items) == 2 * PER_BRANCH + 1


@MERGERFS
def test_branch_unplugged_without_a_change_loses_nothing(tmp_path: Path, pool: Pool, jellyfin: JellyfinEmulator,
                                                         env: dict[str, str]) -> None:
    # Nothing is pending when the branch goes. What could refresh meanwhile: a change through
    # the pool (not seen: the root is not watched while unhealthy), a change in another
    # library (a batch: held by the health gate), the periodic health check (never refreshes
    # by itself), a cron job running the one-shot refresh (suppressed). When the branch is
    # back, one refresh covers everything.
    shows = tmp_path / "shows"
    movie(shows, "Show 1")
    jellyfin.libraries = [Library("Movies", [str(pool.root)]), Library("Shows", [str(shows)], collection_type="tvshows")]
    assert jellyfin.index() == 2 * PER_BRANCH + 1
    config = pool_config(tmp_path, jellyfin.url, [pool.root, shows])
    disk2 = pool.disks[1]
    reason = f"branch {disk2.mount_point} of the mergerfs pool {pool.mount_point} is not mounted"
    with start(config, env, pool) as watcher:
        disk2.unmount()
        watcher.wait_for_line(re.escape(f"{pool.root} is unmounted ({reason})"), WAIT)

        cron = run_cli("refresh", "--config", config, env=env)
        assert cron.returncode == 1, cron
        assert f"refresh suppressed: {pool.root} is unmounted ({reason})" in cron.stdout, cron.stdout

        later = movie(pool.root, "Later (2024)")
        episode = movie(shows, "Show 2")
        held = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
        assert reason in held, held
        # Health checks every 0.5 s go on meanwhile; the status shows the root down the
        # whole time, and nothing is refreshed.
        for _ in range(3):
            document = status_json(config, env)
            assert document["roots"][0]["state"] == "unmounted", document
        assert jellyfin.refreshes == []

        mark = watcher.mark()
        disk2.mount()
        watcher.wait_for_line(re.escape(f"watching {pool.root} again; counting it as changed"), WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    assert {str(later), str(episode)} <= set(jellyfin.items)
    assert len(jellyfin.items) == 2 * PER_BRANCH + 3


@MERGERFS
def test_branch_away_when_first_seen_the_guard_refuses(tmp_path: Path, pool: Pool, jellyfin: JellyfinEmulator,
                                                       env: dict[str, str]) -> None:
    # The watcher starts while a branch's disk is away: the branch is an empty folder, as
    # far as anything can tell a healthy (new, empty) branch. Only the loss guard, run before
    # every refresh, sees that half of the library would go.
    library_on(pool, jellyfin)
    disk2 = pool.disks[1]
    disk2.unmount()
    config = pool_config(tmp_path, jellyfin.url, [pool.root])
    with WatcherProcess(["--config", config], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        new = movie(pool.root, "New (2024)")  # a batch that only adds a file
        refused = watcher.wait_for_line(r"ERROR refresh refused: ", WAIT)
        assert f"library Movies: {PER_BRANCH} of {2 * PER_BRANCH} items (50%) would be removed: " in refused, refused
        assert str(disk2.mount_point) not in refused  # the paths are the pool's
        assert str(pool.root / "Movie 200" / "Movie 200.mkv") in refused, refused
        assert jellyfin.refreshes == []

        mark = watcher.mark()
        disk2.mount()  # the disk is back: a mount inside where the branch was first seen
        watcher.wait_for_line(r"the loss guard no longer objects: refreshing", WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        checked = run_cli("check", "--config", config, env=env)
        assert checked.returncode == 0, checked
        assert f"branch {disk2.mount_point} (RW) of the mergerfs pool {pool.mount_point}: healthy (on {disk2.mount_point}" \
            in checked.stdout, checked.stdout
        finish(watcher, jellyfin, 1)
    assert str(new) in jellyfin.items


# --- a file written straight to a branch ---------------------------------------------------------


@MERGERFS
@pytest.mark.parametrize("scope", ["server", "path"])
def test_file_written_to_a_branch_directly_is_refreshed(tmp_path: Path, pool: Pool, jellyfin: JellyfinEmulator,
                                                        env: dict[str, str], scope: str) -> None:
    # fallback = "none": the folder made on the branch is one the pool's inotify watch never
    # reports (made behind the FUSE mount's back); watch verification says so, and would
    # otherwise switch the root to polling, which would see the file too. Here only the
    # watch on the branch can.
    library_on(pool, jellyfin)
    config = pool_config(tmp_path, jellyfin.url, [pool.root], scope=scope, fallback="none")
    with start(config, env, pool) as watcher:
        direct = movie(pool.branch(0) / "movies", "Direct (2024)")  # a download client on the disk
        sent = watcher.wait_for_line(r"refresh sent: ", WAIT)
        if scope == "path":
            # Jellyfin is told the folder as it sees it: in the pool, not on the disk.
            assert str(pool.root / "Direct (2024)") in sent or str(pool.root) in sent, sent
            assert str(pool.branch(0)) not in sent, sent
        finish(watcher, jellyfin, 1)
    assert str(pool.root / "Direct (2024)" / "Direct (2024).mkv") in jellyfin.items
    assert direct.exists()


# --- a branch that hangs ----------------------------------------------------------------------------


@pytest.mark.root_only("mergerfs", "fusermount", "mkfs.ext4", "bindfs")
def test_hung_branch_is_named(tmp_path: Path, jellyfin: JellyfinEmulator, env: dict[str, str]) -> None:
    # The second branch is a FUSE mount whose daemon is stopped: listing the pool hangs, so
    # the root is unresponsive, and the branches learned while healthy are probed one by
    # one to name the one that hangs.
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(LoopDisk(tmp_path / "disk1.img", tmp_path / "disk1"))
        movies(disk.mount_point / "movies", PER_BRANCH)
        movies(tmp_path / "nas-source" / "movies", PER_BRANCH, start=100)
        nas = stack.enter_context(BindFS(tmp_path / "nas-source", tmp_path / "nas"))
        pool = stack.enter_context(MergerFSPool(tmp_path / "pool", [disk.mount_point, nas.mount_point]))
        root = pool.mount_point / "movies"
        jellyfin.libraries = [Library("Movies", [str(root)])]
        assert jellyfin.index() == 2 * PER_BRANCH
        config = pool_config(tmp_path, jellyfin.url, [root])
        with WatcherProcess(["--config", config], env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            wait_until(lambda: len(learned_branches(tmp_path / "state", root)) == 2, WAIT)
            nas.stop()
            line = watcher.wait_for_line(re.escape(f"{root} is unresponsive ("), WAIT)
            assert line.endswith(f"{root} is unresponsive (no answer within 1 s: branch {nas.mount_point} of the mergerfs "
                                 f"pool {pool.mount_point} does not answer within 1 s)"), line
            assert f"branch {disk.mount_point} " not in line, line
            mark = watcher.mark()
            nas.resume()
            watcher.wait_for_line(re.escape(f"{root} is healthy again"), WAIT, start=mark)
            finish(watcher, jellyfin, 0)


# --- overlayfs --------------------------------------------------------------------------------------


@pytest.mark.root_only()
def test_overlay_layers_are_listed_and_checked(tmp_path: Path, env: dict[str, str]) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    movies(lower / "movies", 3)
    with OverlayMount(tmp_path / "merged", [lower], upper, tmp_path / "work") as overlay:
        root = overlay.mount_point / "movies"
        state = tmp_path / "state"
        first = run_cli("refresh", "--dry-run", "--state-dir", state, root, env=env)  # learns the layers
        assert first.returncode == 0, first
        checked = run_cli("check", "--state-dir", state, root, env=env)
        assert checked.returncode == 0, checked
        lines = checked.stdout.splitlines()
        assert lines[0].startswith(f"{root}: healthy (on {overlay.mount_point} (overlay))"), lines
        assert lines[1].startswith(f"  branch {lower} (lower) of the overlayfs pool {overlay.mount_point}: healthy"), lines
        assert lines[2].startswith(f"  branch {upper} (upper) of the overlayfs pool {overlay.mount_point}: healthy"), lines
        learned = json.loads((state / "state.json").read_text())["branches"][str(root)]
        assert set(learned) == {str(lower), str(upper)}


# --- the existence check and folders that cannot be read ------------------------------------------


def without_permission_bypass(argv: list[str]) -> list[str]:
    """``argv`` run without root's permission bypass (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
    the kernel checks mode bits for it as for any user (as tests/test_faults.py does)."""
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]


@pytest.mark.root_only("setpriv")
def test_unreadable_folder_counts_as_removed_and_is_named(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                          env: dict[str, str]) -> None:
    # 30 movies sit in a folder neither the watcher's user nor Jellyfin's may list. The
    # health check passes (the root itself is readable); Jellyfin 10.11 would drop those 30
    # items on the next scan. The emulator scans as root and could list the folder, so the
    # test tells it that Jellyfin's user cannot (``unreadable_folders``).
    root = tmp_path / "movies"
    movies(root / "Public", PER_BRANCH)
    private = root / "Private"
    movies(private, PER_BRANCH, start=100)
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 2 * PER_BRANCH
    os.chown(private, 65534, 65534)
    private.chmod(0o700)
    jellyfin.unreadable_folders = {str(private)}
    config = pool_config(tmp_path, jellyfin.url, [root])
    watcher = WatcherProcess(["--config", config], env)
    watcher.argv = without_permission_bypass(watcher.argv)
    with watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root / "Public", "New (2024)")
        refused = watcher.wait_for_line(r"ERROR refresh refused: ", WAIT)
        assert f"library Movies: {PER_BRANCH} of {2 * PER_BRANCH} items (50%) would be removed: " in refused, refused
        assert f"; {PER_BRANCH} of them unreadable (permission denied on {private})" in refused, refused
        assert jellyfin.refreshes == []

        # The one-shot refresh (cron) refuses the same way.
        completed = subprocess.run(
            without_permission_bypass([sys.executable, "-m", "watcher", "refresh", "--config", str(config)]),
            capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False,
        )
        assert completed.returncode == 1, completed
        assert f"{PER_BRANCH} of them unreadable (permission denied on {private})" in completed.stdout, completed.stdout
        assert jellyfin.refreshes == []

        # The permissions are fixed (for both users): the next change goes through, once.
        mark = watcher.mark()
        private.chmod(0o755)
        jellyfin.unreadable_folders = set()
        movie(root / "Public", "Newer (2025)")
        watcher.wait_for_line(r"the loss guard no longer objects: refreshing", WAIT, start=mark)
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        finish(watcher, jellyfin, 1)
    assert len(jellyfin.items) == 2 * PER_BRANCH + 2


def test_existence_check_lists_each_folder_from_the_library_folder_down(tmp_path: Path) -> None:
    # A scan reaches a file by listing every folder from the library folder down: a file
    # whose folder is gone, or is no longer listed by its parent, is not found.
    library = tmp_path / "movies"
    kept, gone = movie(library, "Kept"), movie(library, "Gone")
    nested = movie(library / "Collection" / "Part 1", "Nested")
    shutil.rmtree(gone.parent)
    outside = tmp_path / "elsewhere" / "Stray.mkv"  # in no library folder: its own folder is listed
    found = guard.check_files([str(kept), str(gone), str(nested), str(outside)], [str(library)], WAIT)
    assert found == guard.FileCheck((str(gone), str(outside)), (), True)
    (library / "Collection").rename(library / "Renamed")
    found = guard.check_files([str(kept), str(nested)], [str(library)], WAIT)
    assert found.missing == (str(nested),) and found.finished


@pytest.mark.root_only("bindfs", "fusermount")
def test_existence_check_counts_a_dead_fuse_folder_as_unreadable(tmp_path: Path) -> None:
    # A FUSE mount below the library folder whose daemon died answers ENOTCONN: Jellyfin's
    # listing of it throws, and 10.11 removes the items below it.
    library = tmp_path / "movies"
    kept = movie(library, "Kept")
    source = tmp_path / "nas"
    movies(source, 3)
    with BindFS(source, library / "nas") as mount:
        below = sorted(str(path) for path in (library / "nas").glob("*/*.mkv"))
        assert len(below) == 3
        assert mount.process is not None
        mount.process.kill()
        mount.process.wait()
        found = guard.check_files([str(kept), *below], [str(library)], WAIT)
        assert found.missing == () and found.finished
        assert {path for path, _, _ in found.unreadable} == set(below)
        assert {(folder, error) for _, folder, error in found.unreadable} == {
            (str(library / "nas"), "transport endpoint is not connected")
        }


@pytest.mark.root_only("unshare")
def test_an_overlay_whose_layers_this_namespace_cannot_see_is_not_unhealthy(tmp_path: Path, env: dict[str, str]) -> None:
    """A container's own root (Docker, systemd-nspawn) is an overlay whose mount options name
    host folders that do not exist inside the container: a root on it is healthy, its layers
    reported as not checked. Here: the overlay is mounted in a private mount namespace, then
    the folder holding its layers is covered by an empty tmpfs, as a container sees it."""
    hidden = tmp_path / "host"
    lower, upper, work = hidden / "lower", hidden / "upper", hidden / "work"
    movies(lower / "movies", 3)
    upper.mkdir()
    work.mkdir()
    merged = tmp_path / "merged"
    merged.mkdir()
    root = merged / "movies"
    watcher = f'{sys.executable} -m watcher check --state-dir {tmp_path / "state"} {root}'
    script = (
        f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged} && "
        f"mount -t tmpfs tmpfs {hidden} && "
        f"{watcher} >/dev/null && exec {watcher}"  # the second check: nothing was learned of the layers
    )
    checked = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)
    assert checked.returncode == 0, checked
    lines = checked.stdout.splitlines()
    assert lines[0].startswith(f"{root}: healthy (on {merged} (overlay))"), lines
    assert lines[1] == (f"  branch {lower} (lower) of the overlayfs pool {merged}: not visible in this mount "
                        "namespace (a container's own layers?): not checked"), lines
