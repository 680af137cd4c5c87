"""The notification policy (``watcher.core.notices``) as tables: views in, notices out.

Time is plain numbers (seconds of any monotonic clock). Each case feeds :class:`Notices` a
timeline of ``(now, view)`` and compares what it decides at each step with what the user
must be told: the problem once, after ``after`` where it applies, its changes at most
once per ``rate_limit``, and the resolution at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from watcher.core.notices import (
    BODY_LIMIT,
    TITLE_LIMIT,
    DaemonView,
    Failure,
    Notice,
    Notices,
    PendingView,
    Policy,
    RefreshView,
    Refusal,
    RootView,
    trial_notice,
)

HOST = "nas"
AFTER = 900.0
RATE = 3600.0
USB = "/mnt/usb/movies"
NAS = "/mnt/nas/shows"

HEALTHY = RootView(USB, "healthy", since=0.0)
UNMOUNTED = RootView(USB, "unmounted", "it lives on / instead of the mount point /mnt/usb: is the disk or share mounted?",
                     since=100.0)
NAS_OK = RootView(NAS, "healthy")
NAS_DOWN = RootView(NAS, "unresponsive", "no answer within 5 s", since=1500.0)
DEFAULT = Policy(AFTER, RATE)


def held(changes: int = 37, since: float = 100.0) -> PendingView:
    return PendingView(changes, (USB,), since=since - 10, held_since=since)


def view(*roots: RootView, pending: PendingView | None = None, last: RefreshView | None = None) -> DaemonView:
    return DaemonView(tuple(roots), pending, last)


def run(timeline: Sequence[tuple[float, DaemonView]], policy: Policy = DEFAULT) -> list[tuple[float, str]]:
    """``(now, title)`` of every notice sent along ``timeline``."""
    notices = Notices(policy, HOST)
    sent: list[tuple[float, str]] = []
    for now, snapshot in timeline:
        sent.extend((now, notice.title) for notice in notices.update(now, snapshot))
    return sent


def one(notices: Notices, now: float, snapshot: DaemonView) -> Notice:
    result = notices.update(now, snapshot)
    assert len(result) == 1, result
    return result[0]


# --- a refresh held by the health gate ---------------------------------------------------------


def test_a_held_refresh_is_told_once_after_the_delay_then_its_resolution() -> None:
    down = view(UNMOUNTED, NAS_OK, pending=held())
    sent = RefreshView(1300.0, 38, (USB,))
    timeline = [
        (100.0, down),          # the gate holds the batch
        (999.0, down),          # 899 s: not yet
        (1000.0, down),         # 900 s: told
        (1005.0, down),         # still held: nothing new
        (5000.0, down),         # ... however long it lasts
        (5001.0, view(HEALTHY, NAS_OK, last=RefreshView(5001.0, 38, (USB,)))),  # back, batch sent
        (5002.0, view(HEALTHY, NAS_OK, last=sent)),
    ]
    assert run(timeline) == [(1000.0, "nas: refresh held back"), (5001.0, "nas: storage back, refresh sent")]


def test_a_hold_shorter_than_the_delay_is_never_told() -> None:
    timeline = [(100.0, view(UNMOUNTED, pending=held())), (950.0, view(UNMOUNTED, pending=held())),
                (990.0, view(HEALTHY, last=RefreshView(990.0, 37)))]
    assert run(timeline) == []


def test_held_notice_names_the_root_its_state_reason_the_changes_and_since_when() -> None:
    notices = Notices(Policy(AFTER, RATE), HOST)
    notices.update(100.0, view(UNMOUNTED, NAS_OK, pending=held()))
    notice = one(notices, 1060.0, view(UNMOUNTED, NAS_OK, pending=held(changes=37)))
    assert notice == Notice(
        "held",
        "warning",
        "nas: refresh held back",
        "/mnt/usb/movies is unmounted for 16 min: it lives on / instead of the mount point /mnt/usb: is the disk "
        "or share mounted?\n"
        "37 changes kept, held for 16 min; sent once every root is healthy.",
    )
    resolution = one(notices, 1200.0, view(HEALTHY, NAS_OK, last=RefreshView(1200.0, 40, (USB,))))
    assert resolution == Notice("held", "success", "nas: storage back, refresh sent",
                                "Every root is healthy again.\nThe kept batch was sent to Jellyfin (40 changes).",
                                resolved=True)


def test_a_second_root_going_down_is_a_change_told_once_the_rate_limit_allows() -> None:
    one_down = view(UNMOUNTED, NAS_OK, pending=held())
    both_down = view(UNMOUNTED, NAS_DOWN, pending=held())
    timeline = [(100.0, one_down), (1000.0, one_down), (1500.0, both_down), (4599.0, both_down), (4600.0, both_down),
                (4700.0, both_down)]
    assert run(timeline) == [(1000.0, "nas: refresh held back"), (4600.0, "nas: refresh held back")]
    notices = Notices(Policy(AFTER, RATE), HOST)
    for now, snapshot in timeline[:4]:
        notices.update(now, snapshot)
    assert notices.wake_at == 4600.0
    body = one(notices, 4600.0, both_down).body
    assert "/mnt/usb/movies is unmounted for 1 h 15 min" in body
    assert "/mnt/nas/shows is unresponsive for 51 min: no answer within 5 s." in body


def test_a_flapping_disk_sends_at_most_one_notice_per_interval_and_nothing_for_flaps_already_over() -> None:
    policy = Policy(after=0.0, rate_limit=600.0)
    timeline = []
    for cycle in range(10):  # down 20 s, up 10 s, with a new change each time
        start = 100.0 + cycle * 30
        timeline.append((start, view(UNMOUNTED, pending=held(since=start))))
        timeline.append((start + 20, view(HEALTHY, last=RefreshView(start + 20, 1))))
    timeline.append((700.0, view(UNMOUNTED, pending=held(since=700.0))))  # down for good, past the interval
    assert run(timeline, policy) == [
        (100.0, "nas: refresh held back"),
        (120.0, "nas: storage back, refresh sent"),
        (700.0, "nas: refresh held back"),
    ]


def test_a_root_that_is_back_but_settling_still_holds_and_says_so() -> None:
    settling = RootView(USB, "settling", "watched again once it has stayed healthy for 10 s", since=1000.0)
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    notice = one(notices, 1002.0, view(settling, pending=held(since=990.0)))
    assert notice.body.startswith("/mnt/usb/movies is back, settling for 2 s: watched again once it has stayed")


def test_storage_back_but_the_guard_now_refuses_says_the_batch_is_still_kept() -> None:
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    notices.update(100.0, view(UNMOUNTED, pending=held()))
    refusal = Refusal("Movies", 60, 100, ("/m/a.mkv",))
    refused = PendingView(37, (USB,), since=90.0, refusals=(refusal,), refused_since=200.0)
    result = notices.update(200.0, view(HEALTHY, pending=refused))
    assert [(notice.kind, notice.title) for notice in result] == [
        ("held", "nas: storage back"),
        ("refused", "nas: refresh refused by the loss guard"),
    ]
    assert result[0].body == "Every root is healthy again.\n37 changes still kept: the loss guard refuses the refresh."


def test_an_ungated_root_does_not_show_in_a_held_notice() -> None:
    ungated = RootView("/mnt/scratch", "unmounted", "gone", gated=False)
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    body = one(notices, 100.0, view(UNMOUNTED, ungated, pending=held())).body
    assert "/mnt/scratch" not in body and USB in body


# --- the loss guard --------------------------------------------------------------------------


MOVIES = Refusal("Movies", 60, 100, tuple(f"/media/movies/Movie {n:03d}/Movie {n:03d}.mkv" for n in range(5)))


def refused(*refusals: Refusal, changes: int = 61, since: float = 50.0) -> PendingView:
    return PendingView(changes, ("/media/movies",), since=40.0, refusals=refusals, refused_since=since)


def test_a_refusal_is_told_at_once_with_library_count_share_paths_and_the_command() -> None:
    notices = Notices(Policy(AFTER, RATE), HOST)
    notice = one(notices, 50.0, view(pending=refused(MOVIES)))
    assert notice == Notice(
        "refused",
        "failure",
        "nas: refresh refused by the loss guard",
        "Library Movies: a scan would remove 60 of 100 items (60%). Missing:\n"
        "/media/movies/Movie 000/Movie 000.mkv\n"
        "/media/movies/Movie 001/Movie 001.mkv\n"
        "/media/movies/Movie 002/Movie 002.mkv\n"
        "and 57 more\n"
        "61 changes kept.\n"
        "If this clean-up is deliberate: jellyfin-watcher refresh --allow-removals 60",
    )
    # Predicted again with more missing: the same refusal, not told again.
    assert notices.update(110.0, view(pending=refused(Refusal("Movies", 70, 100, MOVIES.examples)))) == []
    resolution = one(notices, 200.0, view(last=RefreshView(200.0, 61)))
    assert resolution.title == "nas: loss guard satisfied, refresh sent"
    assert resolution.body == "The loss guard no longer objects.\nThe kept batch was sent to Jellyfin (61 changes)."


def test_an_unresponsive_existence_check_offers_no_command() -> None:
    notices = Notices(Policy(AFTER, RATE), HOST)
    body = one(notices, 50.0, view(pending=refused(Refusal("Shows", 0, 400, unresponsive=True)))).body
    assert body == ("Library Shows: the check of its files did not finish in time (unresponsive storage).\n"
                    "61 changes kept.")


def test_another_library_refused_is_a_change_of_state() -> None:
    shows = Refusal("Shows", 30, 40, ("/media/shows/a.mkv",))
    timeline = [(50.0, view(pending=refused(MOVIES))), (60.0, view(pending=refused(MOVIES, shows))),
                (3650.0, view(pending=refused(MOVIES, shows)))]
    assert [now for now, _ in run(timeline)] == [50.0, 3650.0]


# --- Jellyfin -------------------------------------------------------------------------------


KEY_MESSAGE = ("Jellyfin at http://127.0.0.1:8096 rejected the API key (HTTP 401): make a new key in Dashboard → "
               "API Keys and give it through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file")


def failing(kind: str, message: str, since: float = 30.0, changes: int = 2) -> PendingView:
    return PendingView(changes, (USB,), since=20.0, failure=Failure(kind, message, since))


def test_a_rejected_key_is_told_at_once_and_resolved_when_a_refresh_goes_through() -> None:
    notices = Notices(Policy(AFTER, RATE), HOST)
    notice = one(notices, 30.0, view(HEALTHY, pending=failing("key", KEY_MESSAGE)))
    assert notice == Notice("key", "failure", "nas: Jellyfin rejected the API key",
                            KEY_MESSAGE + "\n2 changes kept; watching goes on.")
    assert notices.update(300.0, view(HEALTHY, pending=failing("key", KEY_MESSAGE, changes=5))) == []
    resolution = one(notices, 400.0, view(HEALTHY, last=RefreshView(400.0, 5)))
    assert resolution == Notice("key", "success", "nas: Jellyfin accepts the API key again",
                                "Jellyfin accepts the API key again.\nThe kept batch was sent to Jellyfin (5 changes).",
                                resolved=True)


def test_an_unreachable_jellyfin_is_told_after_the_delay() -> None:
    message = "cannot connect to Jellyfin at http://127.0.0.1:8096: check the URL and port, and that Jellyfin is running"
    down = view(HEALTHY, pending=failing("unreachable", message))
    timeline = [(30.0, down), (929.0, down), (930.0, down), (2000.0, down),
                (2100.0, view(HEALTHY, last=RefreshView(2100.0, 2)))]
    assert run(timeline) == [(930.0, "nas: Jellyfin unreachable"), (2100.0, "nas: Jellyfin reachable again")]
    notices = Notices(Policy(AFTER, RATE), HOST)
    assert notices.update(30.0, down) == [] and notices.wake_at == 930.0
    assert one(notices, 930.0, down).body == f"No refresh for 15 min: {message}\n2 changes kept; retrying."


def test_unreachable_then_key_rejected_resolves_one_and_tells_the_other() -> None:
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    notices.update(30.0, view(pending=failing("unreachable", "no answer")))
    result = notices.update(60.0, view(pending=failing("key", KEY_MESSAGE)))
    assert [(notice.kind, notice.resolved) for notice in result] == [("jellyfin", True), ("key", False)]
    assert result[0].body == "Jellyfin answers again after 30 s.\n2 changes still kept: Jellyfin rejects the API key."


# --- watching --------------------------------------------------------------------------------


def test_a_root_polled_instead_is_told_at_once_per_root() -> None:
    problem = ("3 of 601 folders under /mnt/usb/movies are not watched: the inotify watch limit (now 8192) is reached; "
               "raise it with sysctl fs.inotify.max_user_watches=524288 (and in /etc/sysctl.d/ to keep it)")
    polled = RootView(USB, "healthy", watch_problem=problem, polled=True)
    other = RootView(NAS, "healthy", watch_problem=f"permission denied on {NAS}/x", polled=True)
    notices = Notices(Policy(AFTER, RATE), HOST)
    notice = one(notices, 10.0, view(polled, NAS_OK))
    assert notice == Notice("watch", "warning", "nas: library folder not fully watched",
                            problem + "\n/mnt/usb/movies is polled instead: changes show up within a polling interval.")
    assert notices.update(20.0, view(polled, NAS_OK)) == []
    # A second root's problem is its own, but shares the kind's rate limit.
    assert notices.update(30.0, view(polled, other)) == [] and notices.wake_at == 3610.0
    assert [n.body.split("\n")[0] for n in notices.update(3610.0, view(polled, other))] == [f"permission denied on {NAS}/x"]
    resolution = one(notices, 4000.0, view(RootView(USB, "healthy"), other))
    assert resolution == Notice("watch", "success", "nas: library folder watched again",
                                "/mnt/usb/movies is fully watched again.", resolved=True)


# --- shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
                                           (3660, "1 h 1 min"), (86400, "1 day"), (3 * 86400 + 4 * 3600, "3 days 4 h")])
def test_durations_read_well(seconds: float, text: str) -> None:
    since = 1000.0
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    notice = one(notices, since + seconds, view(RootView(USB, "missing", "no such folder", since=since),
                                                 pending=held(since=since)))
    assert notice.body.startswith(f"{USB} is missing for {text}: no such folder.")


def test_long_titles_bodies_and_paths_are_cut_for_a_phone() -> None:
    long_path = "/mnt/" + "deep/" * 100 + "movie.mkv"
    host = "a-very-long-host-name-" * 5
    notices = Notices(Policy(after=0.0, rate_limit=RATE), host)
    many = Refusal("Movies", 10_000, 10_000, (long_path,) * 5)
    notice = one(notices, 50.0, view(pending=refused(many, Refusal("Shows", 9_000, 9_000, (long_path,) * 5))))
    assert len(notice.title) <= TITLE_LIMIT and notice.title.endswith("…")
    assert len(notice.body) <= BODY_LIMIT
    assert all(len(line) <= 200 for line in notice.body.splitlines())
    assert "…" in notice.body.splitlines()[1]


def test_control_characters_in_paths_are_escaped() -> None:
    notices = Notices(Policy(after=0.0, rate_limit=RATE), HOST)
    odd = RootView("/mnt/odd\nname", "missing", "no such folder")
    body = one(notices, 1.0, view(odd, pending=PendingView(1, (odd.path,), 0.0, held_since=0.0))).body
    assert body.startswith("/mnt/odd\\nname is missing")


def test_the_test_message() -> None:
    assert trial_notice(HOST) == Notice(
        "test", "info", "nas: test notification",
        "jellyfin-watcher can reach you here. You will be told when a refresh is held back, refused or failing, "
        "and when it is resolved.",
    )


def test_nothing_to_tell_means_no_wake_up() -> None:
    notices = Notices(Policy(AFTER, RATE), HOST)
    assert notices.update(0.0, view(HEALTHY)) == [] and notices.wake_at == float("inf")
