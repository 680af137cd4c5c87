"""StateStore: the state file survives restarts, and its problems never stop the watcher."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from watcher.core.state import PendingChanges, SavedState
from watcher.edges.state import FORMAT_VERSION, STATE_FILE, StateStore

LOGGER = "watcher.edges.state"


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER and record.levelno == logging.ERROR]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def sample() -> SavedState:
    return SavedState(
        mounts={"/mnt/usb/movies": "/mnt/usb", "/srv/shows": "/"},
        pending=PendingChanges(roots=["/mnt/usb/movies", "/srv/shows"], changes=42),
    )


# --- Round trip ----------------------------------------------------------------------------


def test_nothing_saved_loads_an_empty_state(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    assert store.load() == SavedState()
    assert caplog.records == []
    assert not store.directory.exists()


def test_round_trip(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    assert store.save(sample()) is True

    assert store.load() == sample()
    assert StateStore(store.directory).load() == sample()
    assert caplog.records == []


def test_round_trip_without_pending_changes(store: StateStore) -> None:
    state = SavedState(mounts={"/a": "/"}, pending=None)

    assert store.save(state) is True

    assert store.load() == state


def test_round_trip_of_unusual_paths(store: StateStore) -> None:
    odd = os.fsdecode(b"/media/m\xf6vies/with\nnewline \"quoted\"")
    state = SavedState(mounts={odd: "/"}, pending=PendingChanges([odd], 1))

    assert store.save(state) is True

    assert store.load() == state


def test_zero_pending_changes_load_as_nothing_pending(store: StateStore) -> None:
    store.save(SavedState(pending=PendingChanges(["/a"], 0)))

    assert store.load().pending is None


def test_a_later_save_replaces_the_earlier_one(store: StateStore) -> None:
    store.save(sample())
    store.save(SavedState(mounts={"/b": "/mnt/b"}))

    assert store.load() == SavedState(mounts={"/b": "/mnt/b"})


def test_file_format(store: StateStore) -> None:
    store.save(sample())

    data = json.loads(store.path.read_text(encoding="utf-8"))

    assert data == {
        "version": FORMAT_VERSION,
        "mounts": {"/mnt/usb/movies": "/mnt/usb", "/srv/shows": "/"},
        "below": {},
        "pending": {"roots": ["/mnt/usb/movies", "/srv/shows"], "changes": 42},
    }
    assert store.path == store.directory / STATE_FILE


def test_directory_is_created_private(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "a" / "b" / "state")

    assert store.save(sample()) is True

    assert store.directory.is_dir()
    assert stat.S_IMODE(store.directory.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(store.path.stat().st_mode) & 0o077 == 0


# --- Atomic writes ------------------------------------------------------------------------


def test_save_leaves_no_temporary_files(store: StateStore) -> None:
    for changes in range(1, 6):
        assert store.save(SavedState(pending=PendingChanges(["/a"], changes))) is True

    assert sorted(os.listdir(store.directory)) == [STATE_FILE]


def test_failed_replace_keeps_the_old_file_and_leaves_no_temporary_file(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(sample())
    # Make the rename fail: the state file's name is now taken by a non-empty directory.
    old = store.path.read_bytes()
    store.path.unlink()
    store.path.mkdir()
    (store.path / "keep").write_bytes(old)

    assert store.save(SavedState(mounts={"/new": "/"})) is False

    assert sorted(os.listdir(store.directory)) == [STATE_FILE]
    assert (store.path / "keep").read_bytes() == old
    assert len(error_lines(caplog)) == 1


# --- Corrupt files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"\x00" * 64,  # what a crash can leave behind on some filesystems
        b'{"version": 1, "mounts": {',  # truncated
        b"[]",
        b"null",
        b"42",
        b'"a string"',
        b'{"mounts": {}, "pending": null}',  # no version
        b'{"version": 2, "mounts": {}, "pending": null}',
        b'{"version": "1", "mounts": {}, "pending": null}',
        b'{"version": 1, "mounts": [["/a", "/"]], "pending": null}',
        b'{"version": 1, "mounts": {"/a": 5}, "pending": null}',
        b'{"version": 1, "mounts": "/", "pending": null}',
        b'{"version": 1, "mounts": {}, "pending": 5}',
        b'{"version": 1, "mounts": {}, "pending": "x"}',
        b'{"version": 1, "mounts": {}, "pending": []}',
        b'{"version": 1, "mounts": {}, "pending": {}}',
        b'{"version": 1, "mounts": {}, "pending": {"roots": ["/a"]}}',
        b'{"version": 1, "mounts": {}, "pending": {"roots": "/a", "changes": 1}}',
        b'{"version": 1, "mounts": {}, "pending": {"roots": [1], "changes": 1}}',
        b'{"version": 1, "mounts": {}, "pending": {"roots": ["/a"], "changes": "1"}}',
        b'{"version": 1, "mounts": {}, "pending": {"roots": ["/a"], "changes": 1.5}}',
        b"\xff\xfe not utf-8",
    ],
)
def test_corrupt_file_is_reported_and_replaced(
    store: StateStore, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    store.directory.mkdir()
    store.path.write_bytes(content)

    assert store.load() == SavedState()

    errors = error_lines(caplog)
    assert len(errors) == 1
    assert str(store.path) in errors[0]

    caplog.clear()
    assert store.save(sample()) is True
    assert store.load() == sample()
    assert error_lines(caplog) == []


def test_deeply_nested_file_is_reported_not_raised(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    store.directory.mkdir()
    store.path.write_text("[" * 100_000, encoding="utf-8")

    assert store.load() == SavedState()
    assert len(error_lines(caplog)) == 1


def test_state_file_that_is_a_directory_is_reported(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    store.path.mkdir(parents=True)

    assert store.load() == SavedState()

    errors = error_lines(caplog)
    assert len(errors) == 1
    assert str(store.path) in errors[0]


# --- Unwritable directory -----------------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path: Path) -> StateStore:
    # Permission bits do not stop root; a state dir below a regular file fails for everyone
    # (ENOTDIR).
    (tmp_path / "file").write_text("not a directory")
    return StateStore(tmp_path / "file" / "state")


def test_unwritable_directory_returns_false_and_logs_one_error(
    unwritable: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    results = [unwritable.save(sample()) for _ in range(5)]

    assert results == [False] * 5
    errors = error_lines(caplog)
    assert len(errors) == 1
    assert str(unwritable.path) in errors[0]
    assert "Not a directory" in errors[0]
    assert "--state-dir" in errors[0]


def test_unwritable_directory_loads_an_empty_state_quietly(
    unwritable: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The file cannot exist; the save that follows reports the problem.
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    assert unwritable.load() == SavedState()


def test_error_is_logged_again_after_a_successful_save(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    store = StateStore(blocker / "state")

    assert store.save(sample()) is False
    assert store.save(sample()) is False
    assert len(error_lines(caplog)) == 1

    blocker.unlink()
    assert store.save(sample()) is True
    assert len(error_lines(caplog)) == 1

    shutil.rmtree(blocker)
    blocker.write_text("")
    assert store.save(sample()) is False
    assert len(error_lines(caplog)) == 2


def test_a_different_error_is_logged_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path / "state")
    store.directory.mkdir()
    store.path.mkdir()
    (store.path / "x").write_text("")  # rename onto a non-empty directory fails

    assert store.save(sample()) is False
    store.path.joinpath("x").unlink()
    store.path.rmdir()
    store.directory.rmdir()
    store.directory.write_text("")  # now ENOTDIR
    assert store.save(sample()) is False
    assert store.save(sample()) is False

    assert len(error_lines(caplog)) == 2


def test_learn_remembers_mount_points_and_never_drops_a_disk_below() -> None:
    saved = SavedState()

    assert saved.learn("/mnt/usb/movies", "/mnt/usb", ["/mnt/usb/movies/extra"], configured=False) is True
    assert saved.learn("/mnt/usb/movies", "/", [], configured=False) is False  # known: not re-learned

    assert saved.mounts == {"/mnt/usb/movies": "/mnt/usb"}
    assert saved.below == {"/mnt/usb/movies": ["/mnt/usb/movies/extra"]}
    assert saved.expected_mounts() == {Path("/mnt/usb/movies"): Path("/mnt/usb")}
    assert saved.expected_below() == {Path("/mnt/usb/movies"): ["/mnt/usb/movies/extra"]}


def test_learn_skips_a_configured_mount_point_and_forget_drops_everything() -> None:
    saved = SavedState()

    assert saved.learn("/srv/shows", "/srv", [], configured=True) is False
    assert saved.mounts == {} and saved.below == {}
    saved.learn("/srv/films", "/srv", ["/srv/films/disk2"], configured=False)
    saved.forget("/srv/films")
    assert saved.mounts == {} and saved.below == {}
