"""The Debouncer, driven by a fake clock: every ``now`` is a plain float (seconds)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from watcher.core.debounce import Batch, Debouncer

QUIET = 30.0
MAX_WAIT = 600.0
MOVIES = "/media/movies"
SHOWS = "/media/shows"


@pytest.fixture
def debouncer() -> Debouncer:
    return Debouncer(quiet_period=QUIET, max_wait=MAX_WAIT)


# --- When a batch is due -------------------------------------------------------------------


def test_nothing_pending_is_never_due(debouncer: Debouncer) -> None:
    assert debouncer.pending is None
    assert debouncer.deadline() is None
    assert not debouncer.due(0.0)
    assert not debouncer.due(1e12)
    assert debouncer.take() is None


def test_due_after_quiet_period_of_silence(debouncer: Debouncer) -> None:
    debouncer.add(now=100.0, root=MOVIES)

    assert not debouncer.due(100.0)
    assert not debouncer.due(129.999)
    assert debouncer.due(130.0)
    assert debouncer.due(10_000.0)


def test_each_change_restarts_the_quiet_period(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    debouncer.add(now=20.0, root=MOVIES)

    assert not debouncer.due(30.0)
    assert not debouncer.due(49.999)
    assert debouncer.due(50.0)


def test_due_at_max_wait_even_while_changes_keep_coming(debouncer: Debouncer) -> None:
    # A change every 10 s (well inside the 30 s quiet period) for 20 minutes.
    first_due = None
    for step in range(121):
        now = step * 10.0
        if debouncer.due(now):
            first_due = now
            break
        debouncer.add(now=now, root=MOVIES)

    assert first_due == MAX_WAIT
    assert debouncer.deadline() == MAX_WAIT


def test_max_wait_is_anchored_at_the_first_change(debouncer: Debouncer) -> None:
    debouncer.add(now=1000.0, root=MOVIES)
    debouncer.add(now=1590.0, root=MOVIES)

    assert not debouncer.due(1599.999)
    assert debouncer.due(1600.0)


def test_deadline_is_the_earlier_of_quiet_period_and_max_wait(debouncer: Debouncer) -> None:
    debouncer.add(now=5.0, root=MOVIES)
    assert debouncer.deadline() == 35.0

    debouncer.add(now=590.0, root=MOVIES)
    assert debouncer.deadline() == 605.0  # first + max_wait, not last + quiet (620)


def test_zero_quiet_period_is_due_at_once() -> None:
    debouncer = Debouncer(quiet_period=0, max_wait=MAX_WAIT)
    debouncer.add(now=7.0, root=MOVIES)

    assert debouncer.deadline() == 7.0
    assert not debouncer.due(6.999)
    assert debouncer.due(7.0)


def test_zero_max_wait_is_due_at_the_first_change() -> None:
    debouncer = Debouncer(quiet_period=QUIET, max_wait=0)
    debouncer.add(now=7.0, root=MOVIES)
    debouncer.add(now=8.0, root=MOVIES)

    assert debouncer.deadline() == 7.0
    assert debouncer.due(7.0)


def test_max_wait_shorter_than_quiet_period_wins() -> None:
    debouncer = Debouncer(quiet_period=60, max_wait=10)
    debouncer.add(now=0.0, root=MOVIES)

    assert debouncer.deadline() == 10.0


# --- Many changes, one batch -------------------------------------------------------------


def test_any_number_of_changes_make_exactly_one_batch(debouncer: Debouncer) -> None:
    for index in range(1000):
        debouncer.add(now=index * 0.01, root=MOVIES if index % 2 else SHOWS)

    assert debouncer.due(100.0)
    batch = debouncer.take()
    assert batch == Batch(frozenset({MOVIES, SHOWS}), 1000, 0.0, 9.99)
    assert debouncer.take() is None
    assert not debouncer.due(1e12)


def test_add_counts_several_changes_at_once(debouncer: Debouncer) -> None:
    debouncer.add(now=1.0, root=MOVIES, changes=5)
    debouncer.add(now=2.0, root=MOVIES, changes=3)

    assert debouncer.pending == Batch(frozenset({MOVIES}), 8, 1.0, 2.0)


@pytest.mark.parametrize("changes", [0, -1])
def test_adding_no_changes_starts_no_batch(debouncer: Debouncer, changes: int) -> None:
    debouncer.add(now=1.0, root=MOVIES, changes=changes)

    assert debouncer.pending is None
    assert debouncer.deadline() is None


def test_adding_no_changes_does_not_postpone_a_pending_batch(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    debouncer.add(now=25.0, root=SHOWS, changes=0)

    assert debouncer.pending == Batch(frozenset({MOVIES}), 1, 0.0, 0.0)
    assert debouncer.due(30.0)


def test_add_many_counts_one_change_per_root(debouncer: Debouncer) -> None:
    debouncer.add_many(now=3.0, roots=[MOVIES, SHOWS])

    assert debouncer.pending == Batch(frozenset({MOVIES, SHOWS}), 2, 3.0, 3.0)


def test_pending_does_not_remove_the_batch(debouncer: Debouncer) -> None:
    debouncer.add(now=1.0, root=MOVIES)

    assert debouncer.pending == debouncer.pending
    assert debouncer.take() == Batch(frozenset({MOVIES}), 1, 1.0, 1.0)


def test_take_resets_everything(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    debouncer.add(now=500.0, root=SHOWS)
    debouncer.take()

    assert debouncer.pending is None
    assert debouncer.deadline() is None

    # The next batch starts afresh: neither the old first change (max_wait) nor the old
    # roots or count leak into it.
    debouncer.add(now=2000.0, root=MOVIES)
    assert debouncer.pending == Batch(frozenset({MOVIES}), 1, 2000.0, 2000.0)
    assert debouncer.deadline() == 2030.0


def test_batch_is_immutable_and_hashable(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    batch = debouncer.take()
    assert batch is not None

    with pytest.raises(AttributeError):
        batch.changes = 2  # type: ignore[misc]
    assert hash(batch) == hash(Batch(frozenset({MOVIES}), 1, 0.0, 0.0))


# --- restore() after a failed refresh ----------------------------------------------------


def test_restored_batch_stays_due(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    debouncer.add(now=10.0, root=SHOWS)
    batch = debouncer.take()
    assert batch is not None

    debouncer.restore(batch)

    assert debouncer.pending == batch
    assert debouncer.due(41.0)
    assert debouncer.deadline() == 40.0


def test_restore_merges_newer_changes(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    debouncer.add(now=5.0, root=MOVIES)
    failed = debouncer.take()
    assert failed is not None
    # Changes that arrived while the refresh was being sent.
    debouncer.add(now=40.0, root=SHOWS, changes=3)

    debouncer.restore(failed)

    assert debouncer.pending == Batch(frozenset({MOVIES, SHOWS}), 5, 0.0, 40.0)
    # The newer change restarts the quiet period, but max_wait still counts from the
    # failed batch's first change: its age is kept.
    assert debouncer.deadline() == min(40.0 + QUIET, 0.0 + MAX_WAIT)


def test_restored_batch_keeps_its_age_for_max_wait(debouncer: Debouncer) -> None:
    debouncer.add(now=0.0, root=MOVIES)
    failed = debouncer.take()
    assert failed is not None
    debouncer.add(now=595.0, root=MOVIES)

    debouncer.restore(failed)

    assert debouncer.deadline() == MAX_WAIT
    assert debouncer.due(MAX_WAIT)


def test_restore_into_an_empty_debouncer_is_never_dropped(debouncer: Debouncer) -> None:
    batch = Batch(frozenset({MOVIES}), 7, -600.0, -600.0)

    debouncer.restore(batch)

    assert debouncer.pending == batch
    assert debouncer.due(0.0)
    assert debouncer.take() == batch
    assert debouncer.pending is None


def test_adding_after_restore_keeps_the_first_change(debouncer: Debouncer) -> None:
    debouncer.restore(Batch(frozenset({MOVIES}), 2, 10.0, 20.0))
    debouncer.add(now=30.0, root=SHOWS)

    assert debouncer.pending == Batch(frozenset({MOVIES, SHOWS}), 3, 10.0, 30.0)


def test_batch_merge() -> None:
    older = Batch(frozenset({MOVIES}), 2, 1.0, 5.0)
    newer = Batch(frozenset({SHOWS}), 3, 4.0, 9.0)

    expected = Batch(frozenset({MOVIES, SHOWS}), 5, 1.0, 9.0)
    assert older.merge(newer) == expected
    assert newer.merge(older) == expected


# --- Arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quiet_period", "max_wait"),
    [(-1, 600), (30, -1), (-0.001, -0.001)],
)
def test_negative_timings_raise_value_error(quiet_period: float, max_wait: float) -> None:
    with pytest.raises(ValueError, match="quiet_period and max_wait"):
        Debouncer(quiet_period=quiet_period, max_wait=max_wait)


@pytest.mark.parametrize(("quiet_period", "max_wait"), [(math.nan, 600), (30, math.nan)])
def test_nan_timings_raise_value_error(quiet_period: float, max_wait: float) -> None:
    with pytest.raises(ValueError):
        Debouncer(quiet_period=quiet_period, max_wait=max_wait)


# --- Property: due exactly at min(last + quiet, first + max_wait) -------------------------


@pytest.mark.parametrize("seed", range(20))
def test_due_exactly_at_the_earlier_deadline_for_random_event_times(seed: int) -> None:
    generator = random.Random(seed)
    quiet_period = generator.choice([0.0, 0.5, 3.0, 30.0])
    max_wait = generator.choice([0.0, 2.0, 30.0, 600.0])
    debouncer = Debouncer(quiet_period=quiet_period, max_wait=max_wait)
    start = generator.uniform(-1000.0, 1000.0)
    times = sorted(start + generator.uniform(0.0, 60.0) for _ in range(generator.randint(1, 40)))
    roots = [generator.choice([MOVIES, SHOWS, "/media/music"]) for _ in times]
    for now, root in zip(times, roots, strict=True):
        debouncer.add(now=now, root=root)

    expected = min(times[-1] + quiet_period, times[0] + max_wait)
    assert debouncer.deadline() == expected
    assert not debouncer.due(math.nextafter(expected, -math.inf))
    assert debouncer.due(expected)
    assert debouncer.take() == Batch(frozenset(roots), len(times), times[0], times[-1])
    assert debouncer.take() is None


@pytest.mark.parametrize("seed", range(20))
def test_polling_loop_takes_one_batch_at_the_deadline(seed: int) -> None:
    """The service's shape: feed events in time order, poll due() between them, take()."""
    generator = random.Random(1000 + seed)
    debouncer = Debouncer(quiet_period=5.0, max_wait=20.0)
    events = sorted(generator.uniform(0.0, 100.0) for _ in range(generator.randint(1, 60)))
    batches: list[tuple[Batch, list[float]]] = []
    pending_events: list[float] = []
    for now in events:
        deadline = debouncer.deadline()
        if deadline is not None and deadline <= now:
            assert deadline == min(pending_events[-1] + 5.0, pending_events[0] + 20.0)
            assert debouncer.due(deadline)
            batch = debouncer.take()
            assert batch is not None
            batches.append((batch, pending_events))
            pending_events = []
        debouncer.add(now=now, root=MOVIES)
        pending_events.append(now)
    final = debouncer.take()
    assert final is not None
    batches.append((final, pending_events))

    assert sum(batch.changes for batch, _ in batches) == len(events)
    for batch, members in batches:
        assert batch == Batch(frozenset({MOVIES}), len(members), members[0], members[-1])
        # Inside a batch no gap reaches the quiet period, and the batch spans < max_wait.
        assert all(later - earlier < 5.0 for earlier, later in itertools.pairwise(members))
        assert members[-1] - members[0] < 20.0


# --- Folders and partial takes (path- and library-scoped refreshes) --------------------


def test_folders_are_collected_per_root() -> None:
    debouncer = Debouncer(quiet_period=1, max_wait=10)
    debouncer.add(0.0, MOVIES, folder=f"{MOVIES}/Alien (1979)")
    debouncer.add(0.1, MOVIES, folder=f"{MOVIES}/Alien (1979)")
    debouncer.add(0.2, SHOWS, folder=f"{SHOWS}/Dark/Season 1")

    batch = debouncer.take()

    assert batch is not None
    assert batch.folders == {f"{MOVIES}/Alien (1979)", f"{SHOWS}/Dark/Season 1"}
    assert batch.whole_roots == frozenset()


def test_a_change_without_folder_marks_the_whole_root() -> None:
    debouncer = Debouncer(quiet_period=1, max_wait=10)
    debouncer.add(0.0, MOVIES, folder=f"{MOVIES}/a")
    debouncer.add(0.1, MOVIES)
    debouncer.add(0.2, MOVIES, folder=f"{MOVIES}/b")

    batch = debouncer.take()

    assert batch is not None
    assert batch.whole_roots == {MOVIES}
    assert batch.folders == frozenset()


def test_too_many_folders_collapse_to_the_root() -> None:
    from watcher.core.debounce import MAX_FOLDERS

    debouncer = Debouncer(quiet_period=1, max_wait=10)
    for index in range(MAX_FOLDERS + 1):
        debouncer.add(0.0, MOVIES, folder=f"{MOVIES}/{index}")

    batch = debouncer.take()

    assert batch is not None
    assert batch.whole_roots == {MOVIES}
    assert batch.changes == MAX_FOLDERS + 1


def test_take_some_roots_leaves_the_others_pending_with_their_timing() -> None:
    debouncer = Debouncer(quiet_period=1, max_wait=10)
    debouncer.add(0.0, MOVIES, folder=f"{MOVIES}/a")
    debouncer.add(0.5, SHOWS, folder=f"{SHOWS}/b")
    debouncer.add(0.6, SHOWS, folder=f"{SHOWS}/c")

    taken = debouncer.take([MOVIES])

    assert taken is not None
    assert (taken.roots, taken.changes, taken.folders) == ({MOVIES}, 1, {f"{MOVIES}/a"})
    left = debouncer.pending
    assert left is not None
    assert (left.roots, left.changes, left.folders) == ({SHOWS}, 2, {f"{SHOWS}/b", f"{SHOWS}/c"})
    assert debouncer.deadline() == 1.6


def test_take_roots_that_changed_nothing_takes_nothing() -> None:
    debouncer = Debouncer(quiet_period=1, max_wait=10)
    debouncer.add(0.0, MOVIES)

    assert debouncer.take([SHOWS]) is None
    assert debouncer.pending is not None


def test_restore_keeps_folders_and_whole_roots() -> None:
    debouncer = Debouncer(quiet_period=1, max_wait=10)
    debouncer.add(0.0, MOVIES, folder=f"{MOVIES}/a")
    debouncer.add(0.0, SHOWS)
    batch = debouncer.take()
    assert batch is not None

    debouncer.restore(batch)
    again = debouncer.take()

    assert again is not None
    assert again.folders == {f"{MOVIES}/a"}
    assert again.whole_roots == {SHOWS}
    assert again.changes == batch.changes
