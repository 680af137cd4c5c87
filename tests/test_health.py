"""Root health: ``probe_roots`` on real temporary folders, ``mount_point_of`` on fake tables.

The probe runs in a child process (a stat on a dead network or FUSE mount blocks in the
kernel, and no thread can be cancelled), so every test here
spawns a real ``python -I -S`` child. Tests that need real mounts carry ``root_only``
(conftest.py) and skip, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from support import BindFS, TmpfsMount

from watcher.config import Root
from watcher.core.health import Health, State
from watcher.edges import probe as health
from watcher.edges.probe import mount_point_of, probe_roots

TIMEOUT = 10.0
"""Probe timeout (seconds) for folders that answer at once: generous, never reached."""

running_as_root = hasattr(os, "geteuid") and os.geteuid() == 0


def probe_one(root: Root, expected_mounts: dict[Path, Path] | None = None) -> Health:
    [result] = probe_roots([root], expected_mounts or {}, TIMEOUT)
    assert result.root == root
    return result


def mount_of(path: Path) -> Path:
    """The mount point ``path`` lives on, per this process's mount table."""
    return Path(mount_point_of(os.path.realpath(path), health.mount_table()))


def no_children_left() -> bool:
    return psutil.Process().children(recursive=True) == []


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A folder with one film in it: a healthy root."""
    folder = tmp_path / "movies"
    (folder / "Film (2020)").mkdir(parents=True)
    (folder / "Film (2020)" / "Film (2020).mkv").write_bytes(b"\0" * 16)
    return folder


# --- One root, each state ------------------------------------------------------------------


def test_healthy(library: Path) -> None:
    result = probe_one(Root(library))

    status = library.stat()
    assert result.state is State.HEALTHY
    assert result.healthy
    assert result.reason == ""
    assert result.mount_point == mount_of(library)
    assert result.fstype
    assert (result.device, result.inode) == (status.st_dev, status.st_ino)
    assert result.is_file is False
    assert result.describe() == f"{library} is healthy"


def test_missing(tmp_path: Path) -> None:
    result = probe_one(Root(tmp_path / "gone"))

    assert result.state is State.MISSING
    assert not result.healthy
    assert result.reason == "no such folder"
    assert result.is_file is False
    assert (result.device, result.inode) == (None, None)
    assert result.describe() == f"{tmp_path / 'gone'} is missing (no such folder)"


def test_missing_parent(tmp_path: Path) -> None:
    assert probe_one(Root(tmp_path / "a" / "b" / "c")).state is State.MISSING


def test_below_a_file_is_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    result = probe_one(Root(tmp_path / "file" / "movies"))

    assert result.state is State.MISSING
    assert result.is_file is False


def test_a_file(tmp_path: Path) -> None:
    file = tmp_path / "movies.mkv"
    file.write_bytes(b"\0")

    result = probe_one(Root(file))

    assert result.state is State.MISSING
    assert result.is_file is True
    assert "file" in result.reason


def test_empty(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()

    result = probe_one(Root(folder))

    assert result.state is State.EMPTY
    assert "no entries" in result.reason
    assert result.device == folder.stat().st_dev


def test_one_hidden_entry_is_not_empty(tmp_path: Path) -> None:
    folder = tmp_path / "almost-empty"
    folder.mkdir()
    (folder / ".keep").write_text("")

    assert probe_one(Root(folder)).state is State.HEALTHY


@pytest.mark.skipif(running_as_root, reason="root reads any folder whatever its permission bits (and cannot probe as another user in-process)")
def test_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    (folder / "x").mkdir(parents=True)
    folder.chmod(0)
    try:
        result = probe_one(Root(folder))
    finally:
        folder.chmod(0o755)

    assert result.state is State.UNREADABLE
    assert result.reason == "permission denied"


@pytest.mark.skipif(running_as_root, reason="root reads any folder whatever its permission bits")
def test_unreachable_parent_is_unreadable(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    (parent / "movies" / "x").mkdir(parents=True)
    parent.chmod(0)
    try:
        result = probe_one(Root(parent / "movies"))
    finally:
        parent.chmod(0o755)

    assert result.state is State.UNREADABLE


def test_symlink_loop_is_unreadable(tmp_path: Path) -> None:
    # An OSError other than not-found/denied (here ELOOP), reachable even as root.
    loop = tmp_path / "loop"
    loop.symlink_to(loop)

    result = probe_one(Root(loop))

    assert result.state is State.UNREADABLE
    assert result.reason == os.strerror(40)  # ELOOP


def test_name_too_long_is_unreadable(tmp_path: Path) -> None:
    result = probe_one(Root(tmp_path / ("x" * 300)))

    assert result.state is State.UNREADABLE
    assert result.reason == os.strerror(36)  # ENAMETOOLONG


def test_symlinked_root_is_judged_by_its_target(tmp_path: Path, library: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(library)

    result = probe_one(Root(link))

    assert result.state is State.HEALTHY
    assert result.inode == library.stat().st_ino
    assert result.root.path == link


def test_dangling_symlink_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")

    assert probe_one(Root(link)).state is State.MISSING


# --- Expected mount points -----------------------------------------------------------------


def test_unmounted_when_the_root_is_not_on_the_expected_mount(library: Path) -> None:
    actual = mount_of(library)

    result = probe_one(Root(library), {library: Path("/nonexistent-mount")})

    assert result.state is State.UNMOUNTED
    assert str(actual) in result.reason
    assert "/nonexistent-mount" in result.reason
    assert result.mount_point == actual
    assert result.describe().startswith(f"{library} is unmounted (")


def test_healthy_when_on_the_expected_mount(library: Path) -> None:
    result = probe_one(Root(library), {library: mount_of(library)})

    assert result.state is State.HEALTHY


def test_expected_mounts_of_other_roots_do_not_apply(tmp_path: Path, library: Path) -> None:
    result = probe_one(Root(library), {tmp_path / "elsewhere": Path("/nonexistent-mount")})

    assert result.state is State.HEALTHY


def test_unmounted_is_decided_before_missing(tmp_path: Path) -> None:
    gone = tmp_path / "gone"

    result = probe_one(Root(gone), {gone: Path("/nonexistent-mount")})

    assert result.state is State.UNMOUNTED


def test_configured_mount_is_checked(library: Path) -> None:
    result = probe_one(Root(library, mount=Path("/nonexistent-mount")))

    assert result.state is State.UNMOUNTED
    assert "/nonexistent-mount" in result.reason


def test_configured_mount_wins_over_expected_mounts(library: Path) -> None:
    actual = mount_of(library)

    wrong_learned = probe_one(Root(library, mount=actual), {library: Path("/nonexistent-mount")})
    wrong_configured = probe_one(Root(library, mount=Path("/nonexistent-mount")), {library: actual})

    assert wrong_learned.state is State.HEALTHY
    assert wrong_configured.state is State.UNMOUNTED


@pytest.mark.root_only()
def test_root_on_a_real_mount(tmp_path: Path) -> None:
    mount_point = tmp_path / "usb"
    with TmpfsMount(mount_point):
        (mount_point / "movies" / "Film").mkdir(parents=True)
        root = Root(mount_point / "movies", mount=mount_point)

        mounted = probe_one(root)

        assert mounted.state is State.HEALTHY
        assert mounted.mount_point == mount_point
        assert mounted.fstype == "tmpfs"

    # The disk is gone: the folder below the bare mount point is gone too, but what the
    # user reads is that the disk is not mounted.
    unmounted = probe_one(root)
    assert unmounted.state is State.UNMOUNTED
    assert str(mount_point) in unmounted.reason
    assert unmounted.mount_point == mount_of(tmp_path)
    assert str(unmounted.mount_point) in unmounted.reason

    # The bare mount point itself, without an expected mount: empty.
    assert probe_one(Root(mount_point)).state is State.EMPTY


@pytest.mark.root_only()
def test_symlink_into_a_mount_is_judged_by_the_mount(tmp_path: Path) -> None:
    mount_point = tmp_path / "usb"
    link = tmp_path / "movies-link"
    with TmpfsMount(mount_point):
        (mount_point / "movies" / "Film").mkdir(parents=True)
        link.symlink_to(mount_point / "movies")

        result = probe_one(Root(link), {link: mount_point})

    assert result.state is State.HEALTHY
    assert result.mount_point == mount_point


@pytest.mark.root_only()
def test_mount_below_a_root_does_not_change_the_roots_mount(tmp_path: Path, library: Path) -> None:
    nested = library / "usb"
    nested.mkdir()
    with TmpfsMount(nested):
        result = probe_one(Root(library), {library: mount_of(tmp_path)})

    assert result.state is State.HEALTHY


@pytest.mark.root_only("bindfs", "fusermount")
def test_hung_mount_is_unresponsive_within_the_timeout(tmp_path: Path, library: Path) -> None:
    source = tmp_path / "source"
    (source / "Film").mkdir(parents=True)
    mount_point = tmp_path / "fuse"
    with BindFS(source, mount_point) as fuse:
        fuse.stop()
        started = time.monotonic()

        results = probe_roots([Root(library), Root(mount_point), Root(tmp_path / "gone")], {}, 0.5)

        elapsed = time.monotonic() - started
        fuse.resume()

    assert [result.state for result in results] == [State.HEALTHY, State.UNRESPONSIVE, State.MISSING]
    assert "0.5 s" in results[1].reason
    assert results[1].mount_point is None
    assert elapsed < 0.5 + 0.5
    # The child that was stuck in the kernel is reaped by a later probe.
    deadline = time.monotonic() + 5.0
    while True:
        assert probe_roots([Root(library)], {}, TIMEOUT)[0].state is State.HEALTHY
        if no_children_left() or time.monotonic() >= deadline:
            break
    assert no_children_left()


# --- Several roots, stopping, timeouts -----------------------------------------------------


def test_several_roots_keep_their_order(tmp_path: Path, library: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    file = tmp_path / "file"
    file.write_text("x")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    roots = [
        Root(tmp_path / "gone"),
        Root(library),
        Root(file),
        Root(empty),
        Root(library, mount=Path("/nonexistent-mount")),
        Root(loop),
        Root(library),
    ]

    results = probe_roots(roots, {}, TIMEOUT)

    assert [result.root for result in results] == roots
    assert [result.state for result in results] == [
        State.MISSING,
        State.HEALTHY,
        State.MISSING,
        State.EMPTY,
        State.UNMOUNTED,
        State.UNREADABLE,
        State.HEALTHY,
    ]
    assert [result.is_file for result in results] == [False, False, True, False, False, False, False]


def test_many_roots(tmp_path: Path) -> None:
    roots = []
    for index in range(40):
        folder = tmp_path / f"root-{index:02}"
        folder.mkdir()
        if index % 2:
            (folder / "film.mkv").write_text("")
        roots.append(Root(folder))

    results = probe_roots(roots, {}, TIMEOUT)

    assert [result.root for result in results] == roots
    assert [result.state for result in results] == [State.EMPTY, State.HEALTHY] * 20


def test_no_roots_no_probe() -> None:
    assert probe_roots([], {}, TIMEOUT) == []


def test_set_stop_event_returns_promptly_with_roots_unresponsive(tmp_path: Path, library: Path) -> None:
    stop = threading.Event()
    stop.set()
    roots = [Root(library), Root(tmp_path / "gone")]
    started = time.monotonic()

    results = probe_roots(roots, {}, 30.0, stop)

    assert time.monotonic() - started < 1.0
    assert [result.root for result in results] == roots
    assert [result.state for result in results] == [State.UNRESPONSIVE, State.UNRESPONSIVE]
    assert all(result.mount_point is None for result in results)
    assert no_children_left()


def test_unset_stop_event_does_not_cut_the_probe_short(library: Path) -> None:
    [result] = probe_roots([Root(library)], {}, TIMEOUT, threading.Event())

    assert result.state is State.HEALTHY


def test_zero_timeout_gives_unresponsive_at_once(library: Path) -> None:
    started = time.monotonic()

    [result] = probe_roots([Root(library)], {}, 0.0)

    assert time.monotonic() - started < 1.0
    assert result.state is State.UNRESPONSIVE
    assert result.reason.startswith("no answer within 0 s")
    assert no_children_left()


def test_probe_leaves_no_child_process(library: Path) -> None:
    probe_roots([Root(library)], {}, TIMEOUT)

    assert no_children_left()


# --- Unusual names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "with\nnewline",
        "-starts-with-dash",
        "quote\"and'apostrophe",
        "spaces and\ttab",
        "ünïcødé 映画",
        os.fsdecode(b"undecodable-\xff\xfe"),
    ],
)
def test_unusual_names(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "film.mkv").write_text("")

    result = probe_one(Root(folder))

    assert result.state is State.HEALTHY
    assert result.inode == folder.stat().st_ino


# --- mount_point_of ------------------------------------------------------------------------

FAKE_TABLE = {
    "/": ("/dev/sda1", "ext4"),
    "/mnt/a": ("/dev/sdb1", "ext4"),
    "/mnt/a/inner": ("/dev/sdc1", "xfs"),
    "/mnt/ab": ("nas:/ab", "nfs"),
    "/srv/media": ("mergerfs", "fuse.mergerfs"),
    "/mnt/with space": ("/dev/sdd1", "vfat"),
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/home/user/movies", "/"),
        ("/mnt", "/"),
        ("/mnt/a", "/mnt/a"),
        ("/mnt/a/movies", "/mnt/a"),
        ("/mnt/ab", "/mnt/ab"),
        ("/mnt/ab/movies", "/mnt/ab"),
        ("/mnt/abc/movies", "/"),  # prefix trap: /mnt/ab does not contain /mnt/abc
        ("/mnt/a/inner", "/mnt/a/inner"),
        ("/mnt/a/inner/deep/movies", "/mnt/a/inner"),
        ("/mnt/a/innerx", "/mnt/a"),
        ("/srv/media/movies", "/srv/media"),
        ("/srv/mediax", "/"),
        ("/mnt/with space/films", "/mnt/with space"),
    ],
)
def test_mount_point_of_takes_the_longest_containing_mount_point(path: str, expected: str) -> None:
    assert mount_point_of(path, FAKE_TABLE) == expected


def test_mount_point_of_does_not_depend_on_table_order() -> None:
    reversed_table = dict(reversed(list(FAKE_TABLE.items())))

    for path in ("/mnt/a/inner/x", "/mnt/ab/x", "/mnt/a/x", "/x"):
        assert mount_point_of(path, reversed_table) == mount_point_of(path, FAKE_TABLE)


def test_mount_point_of_falls_back_to_slash() -> None:
    assert mount_point_of("/mnt/a/movies", {}) == "/"
    assert mount_point_of("/mnt/a/movies", {"/mnt/b": ("x", "ext4")}) == "/"


def test_mount_point_of_ignores_a_trailing_slash_in_the_table() -> None:
    assert mount_point_of("/mnt/a/movies", {"/": ("", ""), "/mnt/a/": ("", "")}) == "/mnt/a/"
    assert mount_point_of("/mnt/ab/movies", {"/": ("", ""), "/mnt/a/": ("", "")}) == "/"


def test_mount_table_lists_the_root_filesystem() -> None:
    table = health.mount_table()

    assert "/" in table
    assert all(mount_point.startswith("/") for mount_point in table)


@pytest.mark.root_only()
def test_mount_table_lists_a_new_tmpfs(tmp_path: Path) -> None:
    with TmpfsMount(tmp_path / "t"):
        assert health.mount_table()[str(tmp_path / "t")][1] == "tmpfs"
