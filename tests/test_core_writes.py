"""Files still being written (``watcher.core.writes``) and backoff: small rules, plain numbers."""

from __future__ import annotations

from watcher.core.backoff import Backoff
from watcher.core.writes import WriteCheck, WriteTracker


def test_a_created_file_is_open_until_closed_deleted_or_forgotten() -> None:
    writes = WriteTracker()
    writes.created(0.0, "/m/a.mkv")
    writes.created(1.0, "/m/b.mkv")
    writes.created(2.0, "/m/sub/c.mkv")
    writes.closed("/m/a.mkv")
    writes.deleted("/m/sub", is_directory=True)
    assert writes.paths == ("/m/b.mkv",)
    writes.forget_below("/m")
    assert len(writes) == 0


def test_open_files_follow_renames_of_themselves_and_their_folders() -> None:
    writes = WriteTracker()
    writes.created(5.0, "/m/a.mkv")
    writes.created(6.0, "/m/Show/e1.mkv")
    writes.moved("/m/a.mkv", "/m/b.mkv")
    writes.moved("/m/Show", "/m/Show (2024)", is_directory=True)
    assert writes.snapshot() == {"/m/b.mkv": 5.0, "/m/Show (2024)/e1.mkv": 6.0}


def test_the_oldest_open_file_sets_the_deadline_and_expires() -> None:
    writes = WriteTracker()
    writes.created(10.0, "/m/a.mkv")
    writes.created(20.0, "/m/b.mkv")
    assert writes.deadline(100.0) == 110.0
    assert writes.expired(109.0, 100.0) == []
    assert writes.expired(110.0, 100.0) == [("/m/a.mkv", 100.0)]
    assert writes.paths == ("/m/b.mkv",)


def test_only_a_single_link_regular_file_modified_recently_is_being_written() -> None:
    quiet = 30.0
    assert WriteCheck("/m/a.mkv", age=5.0).being_written(quiet)
    assert not WriteCheck("/m/a.mkv", age=31.0).being_written(quiet)  # a stalled writer stops holding
    assert not WriteCheck("/m/a.mkv", links=2).being_written(quiet)  # a hard link
    assert not WriteCheck("/m/a.mkv", regular=False).being_written(quiet)  # a symlink, a fifo
    assert not WriteCheck("/m/a.mkv", exists=False).being_written(quiet)
    assert WriteCheck("/m/a.mkv", age=0.5).being_written(0.0), "a zero quiet period still allows a second"


def test_settle_keeps_what_is_being_written_and_drops_the_rest() -> None:
    writes = WriteTracker()
    writes.created(0.0, "/m/copying.mkv")
    writes.created(0.0, "/m/linked.mkv")
    still = writes.settle([WriteCheck("/m/copying.mkv", age=1.0), WriteCheck("/m/linked.mkv", links=2),
                           WriteCheck("/m/unknown.mkv", age=1.0)], 30.0)
    assert still == ["/m/copying.mkv"] and writes.paths == ("/m/copying.mkv",)


def test_beyond_the_limit_creations_are_not_tracked() -> None:
    writes = WriteTracker(limit=2)
    for index in range(3):
        writes.created(0.0, f"/m/{index}.mkv")
    assert len(writes) == 2 and writes.overflowed


def test_backoff_doubles_to_its_maximum_and_resets() -> None:
    backoff = Backoff(maximum=10.0)
    assert [backoff.failed() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.succeeded()
    assert backoff.failed() == 1.0
