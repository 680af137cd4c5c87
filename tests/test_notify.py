"""Notifications, end to end: the real daemon tells a real HTTP receiver through apprise.

The receiver (:class:`Receiver`) is an HTTP server on 127.0.0.1 (a free port) that apprise's
``json://`` target posts to (``{"title", "message", "type", ...}``); it can answer 200, 500,
or hang (read the request, never answer). The daemon runs as a child process
(``support.WatcherProcess``) against the Jellyfin emulator and, where the event is about
storage, real mounts (loop-mounted ext4 images under ``tmp_path``; root only).

What is asserted: each event is delivered once with the content a person needs (the root,
its state, the changes kept; the library, count, share, paths and the command; the key
message), then its resolution; a change within the rate limit waits for it; a receiver
answering 500 or hanging delays no refresh and is logged once; no secret (the API key, the
URL's token and password) ever shows in a message, a log line or the command output.

The delay a hanging or failing receiver adds to a refresh is measured against a run
without notifications in the same test, and printed with the prefix ``[notify]`` (``pytest
-s``): the assertion itself is causal (the refresh arrived while the notice was still
unanswered), never a timing bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest
from support import LoopDisk, WatcherProcess, closed_port, movie, run_cli, toml_string, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher import config as watcher_config
from watcher.config import load, masked_url
from watcher.edges import statusfile as watcher_status
from watcher.errors import ConfigError

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""
STOP_WITHIN = 2.0
"""Seconds the watcher may take to exit on SIGTERM (README: "stops within 2 seconds")."""
QUIET = 0.5
"""``watch.quiet_period``, seconds."""
SETTLE = 1.0
"""``watch.settle``, seconds."""
TOKEN = "tok-" + os.urandom(8).hex()
"""The secret part of the receiver's URL path (like an ntfy topic or a webhook token)."""
PASSWORD = "pw-" + os.urandom(8).hex()
"""The password in the receiver's URL (sent as HTTP basic auth)."""
HOST = socket.gethostname()
DELIVERY_TIMEOUT = 5.0
"""``notify.timeout`` where a receiver hangs: the daemon waits that long for its answer."""
MODES = ["none", "500", "hang"]
"""Receivers of the delay measurement: no notifications, one answering 500, one hanging."""
ROUNDS = 3


# --- the receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One POST the receiver read: ``time.monotonic()`` it arrived, title, body, apprise type."""

    arrived: float
    wall: float
    """``time.time()`` it arrived, to compare with the ``asctime`` of a log line."""
    title: str
    body: str
    type: str
    path: str


class Receiver:
    """An HTTP server on 127.0.0.1 for apprise's ``json://`` target.

    ``mode``: ``ok`` (answer 200), ``500``, or ``hang`` (read the request, answer nothing
    until the test ends). :attr:`messages` holds every request read, answered or not;
    :attr:`answered` counts the answers given. Use as a context manager: hanging handlers
    are released and every thread joined on the way out.
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.messages: list[Message] = []
        self.answered = 0
        self.given_up: list[float] = []
        """``time.monotonic()`` at which a client gave up on an unanswered request (mode ``hang``)."""
        self.closing = threading.Event()
        self._condition = threading.Condition()
        self.server = _ReceiverServer(self)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="notify-receiver", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self) -> str:
        """The apprise URL for this receiver, with a password and a token that must never show."""
        return f"json://watcher:{PASSWORD}@127.0.0.1:{self.port}/hook/{TOKEN}"

    def record(self, message: Message) -> None:
        with self._condition:
            self.messages.append(message)
            self._condition.notify_all()

    def gave_up(self) -> float:
        """When a client first gave up on an unanswered request (``time.monotonic()``; 0.0: none did)."""
        with self._condition:
            return self.given_up[0] if self.given_up else 0.0

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Message]:
        """The first ``count`` messages; fails if they have not all arrived within ``timeout``."""
        with self._condition:
            self._condition.wait_for(lambda: len(self.messages) >= count, timeout)
            messages = list(self.messages)
        assert len(messages) >= count, f"{len(messages)} of {count} messages arrived: {[m.title for m in messages]}"
        return messages[:count]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _ReceiverServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        receiver.record(Message(time.monotonic(), time.time(), str(payload.get("title")), str(payload.get("message")),
                                str(payload.get("type")), self.path))
        if receiver.mode == "hang":
            # Never answer; note when the client gives up (closes the connection).
            while not receiver.closing.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    with receiver._condition:
                        receiver.given_up.append(time.monotonic())
                    break
            self.close_connection = True
            return
        status = 500 if receiver.mode == "500" else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with receiver._condition:
            receiver.answered += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- helpers ----------------------------------------------------------------------------------


def notify_config(tmp_path: Path, jellyfin_url: str, roots: Sequence[Path | tuple[Path, Path]], *,
                  urls: Sequence[str] = (), after: float = 0.0, rate_limit: float = 600.0, timeout: float = 3.0,
                  quiet: float = QUIET) -> Path:
    """``tmp_path/config.toml``: short timings, ``roots`` (a ``(path, mount)`` pair sets the
    root's mount), and a ``[notify]`` section when ``urls`` are given."""
    document: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": jellyfin_url, "timeout": 2},
        "watch": {"quiet_period": quiet, "max_wait": 30, "settle": SETTLE, "health_interval": 1,
                  "probe_timeout": 1, "backoff_max": 2, "poll_interval": 1},
        "roots": [{"path": root[0], "mount": root[1]} if isinstance(root, tuple) else {"path": root} for root in roots],
    }
    if urls:
        document["notify"] = {"urls": list(urls), "after": after, "rate_limit": rate_limit, "timeout": timeout}
    return write_config(tmp_path / "config.toml", document)


def assert_no_secrets(*texts: str, api_key: str) -> None:
    """None of the secrets (the API key, the URL's token and password) in ``texts``."""
    for secret, name in ((api_key, "the API key"), (TOKEN, "the notification URL's token"),
                         (PASSWORD, "the notification URL's password")):
        for text in texts:
            assert secret not in text, f"{name} shows: {text.replace(secret, '<SECRET>')[:400]!r}"


def finish(watcher: WatcherProcess, receiver: Receiver | None, jellyfin: JellyfinEmulator) -> None:
    """SIGTERM: exit 0 within 2 s (even with a delivery hanging) with nothing pending;
    nothing lost in Jellyfin; no secret anywhere."""
    started = time.monotonic()
    assert watcher.terminate(WAIT) == 0, watcher.output
    took = time.monotonic() - started
    assert took <= STOP_WITHIN, f"the watcher took {took:.2f} s to exit on SIGTERM"
    assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
    assert "Traceback" not in watcher.output, watcher.output
    assert jellyfin.wait_for_scans_idle(WAIT)
    assert jellyfin.removed == [], "a scan deleted items"
    texts = [watcher.output] + ([m.title + "\n" + m.body + "\n" + m.path.replace(TOKEN, "") for m in receiver.messages]
                                if receiver else [])
    assert_no_secrets(*texts, api_key=jellyfin.api_key)


def logged_at(line: str) -> float:
    """The time (seconds since the epoch) in a log line's ``asctime`` prefix, truncated to ms."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def watched_directories(state_dir: Path) -> int | None:
    """The first root's verified watch count, from the daemon's status file (None: not yet)."""
    document = watcher_status.read(state_dir)
    roots = document.get("roots") if document else None
    return roots[0].get("watched_directories") if roots else None


def show(message: Message) -> str:
    """A message as the closing note quotes it."""
    return f"[{message.type}] {message.title}\n{message.body}"


@pytest.fixture
def notify_env(env: dict[str, str]) -> dict[str, str]:
    """The children's environment, without notification URLs of the machine's own."""
    return {name: value for name, value in env.items() if name != watcher_config.NOTIFY_URLS_VARIABLE}


# --- storage: a refresh held back -------------------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_unplugged_disk_is_told_once_and_its_resolution_once(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                             notify_env: dict[str, str]) -> None:
    other = tmp_path / "shows"
    movie(other, "Elsewhere (1990)")
    with LoopDisk(tmp_path / "usb.img", tmp_path / "usb") as disk, Receiver() as receiver:
        usb = disk.mount_point / "movies"
        movie(usb, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(usb)]), Library("Shows", [str(other)])]
        assert jellyfin.index() == 2
        config = notify_config(tmp_path, jellyfin.url, [(usb, disk.mount_point), other], urls=[receiver.url()],
                              after=1.0)
        with WatcherProcess(["--config", config], notify_env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            disk.unmount()  # the USB disk is unplugged ...
            watcher.wait_for_line(re.escape(f"{usb} is unmounted ("), WAIT)
            changed_at = time.time()
            movie(other, "New Episode (2024)")  # ... and a change elsewhere waits for it
            watcher.wait_for_line(r"refresh suppressed: ", WAIT)
            held = receiver.wait_for(1)[0]
            print(f"[notify] unplugged disk:\n{show(held)}")
            # Held from the moment the batch fell due (a quiet period after the change) ...
            assert held.wall - changed_at >= QUIET + 1.0, "told before the hold had lasted notify.after"
            assert held.type == "warning"
            assert held.title == f"{HOST}: refresh held back"
            assert re.fullmatch(
                re.escape(f"{usb} is unmounted for ") + r"\d+ s: " + re.escape(
                    f"it lives on / instead of the mount point {disk.mount_point}: is the disk or share mounted?")
                + r"\n\d+ changes? kept, held for \d+ s; sent once every root is healthy\.",
                held.body), held.body

            # Still unplugged for a few more health checks (one a second): nothing more is sent.
            assert not wait_until_or_none(lambda: len(receiver.messages) > 1, 3.0), show(receiver.messages[1])

            mark = watcher.mark()
            disk.mount()  # plugged back in: the kept batch goes out, and the all-clear follows
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            resolved = receiver.wait_for(2)[1]
            print(f"[notify] disk back:\n{show(resolved)}")
            assert resolved.type == "success"
            assert resolved.title == f"{HOST}: storage back, refresh sent"
            assert re.fullmatch(r"Every root is healthy again\.\nThe kept batch was sent to Jellyfin \(\d+ changes\)\.",
                                resolved.body), resolved.body
            finish(watcher, receiver, jellyfin)
    assert len(receiver.messages) == 2, [m.title for m in receiver.messages]
    assert len(jellyfin.refreshes) == 1


def wait_until_or_none(predicate: Any, window: float) -> Any:
    """``predicate``'s first true value within ``window`` seconds, else None: for a thing
    that must *not* happen, watched for a bounded window (a slow machine can only make the
    window see less, never fail a correct program)."""
    try:
        return wait_until(predicate, window)
    except AssertionError:
        return None


@pytest.mark.root_only("mkfs.ext4")
def test_a_change_within_the_rate_limit_waits_for_it(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                     notify_env: dict[str, str]) -> None:
    rate_limit = 4.0
    other = tmp_path / "shows"
    movie(other, "Elsewhere (1990)")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(LoopDisk(tmp_path / "one.img", tmp_path / "one"))
        second = stack.enter_context(LoopDisk(tmp_path / "two.img", tmp_path / "two"))
        receiver = stack.enter_context(Receiver())
        for disk in (first, second):
            movie(disk.mount_point, f"On {disk.mount_point.name} (2001)")
        jellyfin.libraries = [Library("Movies", [str(first.mount_point), str(second.mount_point), str(other)])]
        assert jellyfin.index() == 3
        config = notify_config(tmp_path, jellyfin.url, [first.mount_point, second.mount_point, other],
                              urls=[receiver.url()], after=0.0, rate_limit=rate_limit)
        watcher = stack.enter_context(WatcherProcess(["--config", config], notify_env))
        watcher.wait_for_line(r"watching 3 of 3 roots", WAIT)
        first.unmount()
        watcher.wait_for_line(re.escape(f"{first.mount_point} is unmounted ("), WAIT)
        movie(other, "New (2024)")
        suppressed = watcher.wait_for_line(r"refresh suppressed: ", WAIT)
        told = receiver.wait_for(1)[0]
        assert first.mount_point.name in told.body and f"{second.mount_point} is" not in told.body, told.body

        second.unmount()  # a change of state: told, but not before the rate limit allows
        watcher.wait_for_line(re.escape(f"{second.mount_point} is unmounted ("), WAIT)
        update = receiver.wait_for(2, rate_limit + WAIT)[1]
        # The first notice was decided when the batch was first held (notify.after = 0), so
        # the second may not be decided before that moment plus the rate limit.
        gap = update.wall - logged_at(suppressed)
        print(f"[notify] rate limit {rate_limit:g} s: the change was told {gap:.2f} s after the hold began "
              f"({update.arrived - told.arrived:.2f} s after the first notice arrived)")
        assert gap >= rate_limit, f"told {gap:.2f} s after the first notice was due, within the rate limit"
        assert update.title == f"{HOST}: refresh held back"
        assert f"{first.mount_point} is unmounted" in update.body and f"{second.mount_point} is unmounted" in update.body

        mark = watcher.mark()
        first.mount()
        second.mount()
        watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
        resolved = receiver.wait_for(3)[2]
        assert resolved.title == f"{HOST}: storage back, refresh sent"  # not rate-limited
        finish(watcher, receiver, jellyfin)
    assert [m.title.split(": ", 1)[1] for m in receiver.messages] == [
        "refresh held back", "refresh held back", "storage back, refresh sent"]


# --- the loss guard -------------------------------------------------------------------------------


def test_a_refusal_is_told_at_once_with_what_would_be_lost_and_the_command(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                          notify_env: dict[str, str]) -> None:
    library = tmp_path / "movies"
    files = [movie(library, f"Movie {number:03d}") for number in range(100)]
    jellyfin.libraries = [Library("Movies", [str(library)])]
    assert jellyfin.index() == 100
    with Receiver() as receiver:
        # notify.after is long: a refusal waits for a person, so it is told at once all the same.
        config = notify_config(tmp_path, jellyfin.url, [library], urls=[receiver.url()], after=900.0)
        with WatcherProcess(["--config", config], notify_env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            # The check that every folder is watched lists the tree once, after the start:
            # deleting folders while it lists them would read as folders it cannot watch.
            wait_until(lambda: watched_directories(tmp_path / "state") == 101, WAIT,
                       message="the watches were not verified")
            watcher.send_signal(signal.SIGSTOP)  # every deletion in one batch
            try:
                for path in files[:60]:
                    shutil.rmtree(path.parent)
            finally:
                watcher.send_signal(signal.SIGCONT)
            watcher.wait_for_line(r"ERROR refresh refused: ", WAIT)
            refused = receiver.wait_for(1)[0]
            print(f"[notify] refusal:\n{show(refused)}")
            assert refused.type == "failure"
            assert refused.title == f"{HOST}: refresh refused by the loss guard"
            lines = refused.body.splitlines()
            assert len(lines) == 7, refused.body
            assert lines[0] == "Library Movies: a scan would remove 60 of 100 items (60%). Missing:"
            assert len(set(lines[1:4])) == 3 and set(lines[1:4]) <= {str(path) for path in files[:60]}, refused.body
            assert lines[4] == "and 57 more"
            assert re.fullmatch(r"\d+ changes kept\.", lines[5]), lines[5]
            assert lines[6] == "If this clean-up is deliberate: jellyfin-watcher refresh --allow-removals 60"

            mark = watcher.mark()
            for path in files[:60]:  # the files come back: the guard no longer objects
                movie(library, path.stem)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            resolved = receiver.wait_for(2)[1]
            assert resolved.type == "success"
            assert resolved.title == f"{HOST}: loss guard satisfied, refresh sent"
            assert re.fullmatch(r"The loss guard no longer objects\.\nThe kept batch was sent to Jellyfin "
                                r"\(\d+ changes\)\.", resolved.body), resolved.body
            finish(watcher, receiver, jellyfin)
    assert len(receiver.messages) == 2


# --- Jellyfin --------------------------------------------------------------------------------------


def test_a_rejected_key_is_told_at_once_and_when_it_works_again(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                                notify_env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    key = jellyfin.api_key
    with Receiver() as receiver:
        config = notify_config(tmp_path, jellyfin.url, [root], urls=[receiver.url()], after=900.0)
        with WatcherProcess(["--config", config], notify_env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            jellyfin.api_key = "the-key-was-deleted-" + os.urandom(4).hex()  # someone deleted the key
            movie(root, "New (2024)")
            watcher.wait_for_line(r"ERROR Jellyfin at \S+ rejected the API key", WAIT)
            rejected = receiver.wait_for(1)[0]
            print(f"[notify] rejected key:\n{show(rejected)}")
            assert rejected.type == "failure"
            assert rejected.title == f"{HOST}: Jellyfin rejected the API key"
            assert re.fullmatch(re.escape(
                f"Jellyfin at {jellyfin.url} rejected the API key (HTTP 401): make a new key in Dashboard → API Keys "
                "and give it through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file\n") +
                r"\d+ changes? kept; watching goes on\.", rejected.body), rejected.body

            # Retried with backoff (a rejection each time): nothing more is told.
            mark = watcher.mark()
            jellyfin_attempts = len(jellyfin.requests)
            wait_until(lambda: len(jellyfin.requests) >= jellyfin_attempts + 2, WAIT, message="no retries")
            assert len(receiver.messages) == 1, [m.title for m in receiver.messages]

            jellyfin.api_key = key  # a new key is in place
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            resolved = receiver.wait_for(2)[1]
            assert resolved.title == f"{HOST}: Jellyfin accepts the API key again"
            assert re.fullmatch(r"Jellyfin accepts the API key again\.\nThe kept batch was sent to Jellyfin "
                                r"\(\d+ changes?\)\.", resolved.body), resolved.body
            finish(watcher, receiver, jellyfin)
    assert len(receiver.messages) == 2


def test_jellyfin_unreachable_is_told_only_after_the_delay(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                           notify_env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 1
    after = 2.0
    with Receiver() as receiver:
        config = notify_config(tmp_path, jellyfin.url, [root], urls=[receiver.url()], after=after)
        with WatcherProcess(["--config", config], notify_env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            jellyfin.set_down(True)
            changed_at = time.time()
            movie(root, "New (2024)")
            watcher.wait_for_line(r"WARNING refresh failed: Jellyfin answered HTTP 503", WAIT)
            told = receiver.wait_for(1)[0]
            print(f"[notify] Jellyfin down:\n{show(told)}")
            # The first failure comes a quiet period after the change at the earliest.
            assert told.wall - changed_at >= QUIET + after, "told before Jellyfin had been down notify.after"
            assert told.title == f"{HOST}: Jellyfin unreachable"
            assert re.fullmatch(r"No refresh for \d s: Jellyfin answered HTTP 503 to .*\n\d+ changes? kept; retrying\.",
                                told.body), told.body
            mark = watcher.mark()
            jellyfin.set_down(False)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            resolved = receiver.wait_for(2)[1]
            assert resolved.title == f"{HOST}: Jellyfin reachable again"
            assert re.fullmatch(r"Jellyfin answers again after \d+ s\.\nThe kept batch was sent to Jellyfin "
                                r"\(\d+ changes?\)\.", resolved.body), resolved.body
            finish(watcher, receiver, jellyfin)
    assert len(receiver.messages) == 2


# --- watching ---------------------------------------------------------------------------------------


@pytest.mark.root_only("setpriv")
def test_a_root_that_cannot_be_fully_watched_is_told_once(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                          notify_env: dict[str, str]) -> None:
    root = tmp_path / "movies"
    movie(root, "Seed (2000)")
    private = movie(root, "Private (2001)").parent
    os.chown(private, 65534, 65534)
    private.chmod(0o700)
    jellyfin.libraries = [Library("Movies", [str(root)])]
    assert jellyfin.index() == 2
    with Receiver() as receiver:
        config = notify_config(tmp_path, jellyfin.url, [root], urls=[receiver.url()], after=900.0)
        # Root without its permission bypass (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the
        # folder owned by nobody, mode 0700, is closed to the watcher as to any user.
        watcher = WatcherProcess(["--config", config], notify_env)
        watcher.argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *watcher.argv]
        with watcher:
            watcher.wait_for_line(r" ERROR .*not watched", WAIT)
            watcher.wait_for_line(re.escape(f"polling {root} every"), WAIT)
            told = receiver.wait_for(1)[0]
            print(f"[notify] polled instead:\n{show(told)}")
            assert told.type == "warning"
            assert told.title == f"{HOST}: library folder not fully watched"
            assert told.body == (
                f"1 of 3 folders under {root} are not watched: permission denied on {private}: give the watcher's "
                f"user read and execute access to them\n{root} is polled instead: changes show up within a polling "
                "interval.")
            movie(root, "New (2024)")
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            finish(watcher, receiver, jellyfin)
    assert len(receiver.messages) == 1


# --- never in the way ------------------------------------------------------------------------------


@pytest.mark.root_only("mkfs.ext4")
def test_a_failing_or_hanging_receiver_delays_no_refresh(tmp_path: Path, jellyfin: JellyfinEmulator,
                                                         notify_env: dict[str, str]) -> None:
    """Disk unplugged, a change held, the notice sent (to a receiver answering 500, or one that
    never answers), the disk plugged back: the time from the remount to the refresh reaching
    Jellyfin, against the same run without notifications."""
    other = tmp_path / "shows"
    movie(other, "Elsewhere (1990)")
    delays: dict[str, list[float]] = {"none": [], "500": [], "hang": []}
    with LoopDisk(tmp_path / "usb.img", tmp_path / "usb") as disk:
        movie(disk.mount_point, "On The Disk (2001)")
        jellyfin.libraries = [Library("Movies", [str(disk.mount_point), str(other)])]
        assert jellyfin.index() == 2
        # Three rounds, the order turned each round: a drift of the machine's load over the
        # test does not read as a difference between the modes.
        runs = [mode for turn in range(ROUNDS) for mode in (MODES[turn:] + MODES[:turn])]
        for run, mode in enumerate(runs):
            with contextlib.ExitStack() as stack:
                receiver = None if mode == "none" else stack.enter_context(Receiver(mode))
                urls = [receiver.url()] if receiver else []
                config = notify_config(tmp_path, jellyfin.url, [disk.mount_point, other], urls=urls, after=0.0,
                                      timeout=DELIVERY_TIMEOUT)
                watcher = stack.enter_context(WatcherProcess(["--config", config], notify_env))
                watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
                disk.unmount()
                watcher.wait_for_line(re.escape(f"{disk.mount_point} is unmounted ("), WAIT)
                movie(other, f"New {run} (2024)")
                watcher.wait_for_line(r"refresh suppressed: ", WAIT)
                if receiver is not None:
                    receiver.wait_for(1)  # the notice is at the receiver: answered 500, or hanging
                refreshes = len(jellyfin.refreshes)
                disk.mount()
                remounted = time.monotonic()
                refresh = jellyfin.wait_for_refreshes(refreshes + 1, WAIT)[refreshes]
                delays[mode].append(refresh.time - remounted)
                if mode == "hang":
                    # The refresh reached Jellyfin while the daemon was still waiting for the
                    # receiver's answer: the delivery did not stand in its way.
                    watcher.wait_for_line(r"WARNING notification URL 1 \(json://\*\*\*\*@127\.0\.0\.1:\d+/\*\*\*\*\): "
                                          r"a notice was not delivered: no answer within 5 s", WAIT)
                    assert receiver is not None
                    given_up = wait_until(receiver.gave_up, WAIT, message="the daemon never gave up on the receiver")
                    assert refresh.time < given_up, "the refresh waited for the notice's delivery"
                if mode == "500":
                    assert receiver is not None
                    receiver.wait_for(2)  # the resolution failed too ...
                    watcher.wait_for_line(r"WARNING notification URL 1 .*: a notice was not delivered: the service did "
                                          r"not accept it", WAIT)
                finish(watcher, receiver, jellyfin)
                if receiver is not None:  # ... and the failure was logged once
                    assert watcher.count(r"WARNING notification URL") == 1, watcher.output
    medians = {mode: statistics.median(values) for mode, values in delays.items()}
    spread = max(delays["none"]) - min(delays["none"])
    print("[notify] remount → refresh received at Jellyfin (includes settle 1 s and quiet period 0.5 s), "
          f"{ROUNDS} runs each: " + "; ".join(
              f"{mode}: median {medians[mode] * 1000:.0f} ms ({', '.join(f'{v * 1000:.0f}' for v in values)})"
              for mode, values in delays.items())
          + f". Added by a receiver answering 500: {(medians['500'] - medians['none']) * 1000:+.0f} ms, by a hanging "
          f"one: {(medians['hang'] - medians['none']) * 1000:+.0f} ms; runs without notifications spread over "
          f"{spread * 1000:.0f} ms")


# --- notify --test ----------------------------------------------------------------------------------


def test_notify_test_reports_each_url_masked(tmp_path: Path, notify_env: dict[str, str]) -> None:
    refused_port = closed_port()
    with Receiver() as good, Receiver("hang") as hanging:
        dead = f"json://127.0.0.1:{refused_port}/hook/{TOKEN}"
        config = notify_config(tmp_path, "http://127.0.0.1:8096", [tmp_path], timeout=1.0,
                              urls=[good.url(), dead, hanging.url(), f"unknownscheme://{TOKEN}"])
        started = time.monotonic()
        result = run_cli("notify", "--test", "--config", config, env=notify_env)
        took = time.monotonic() - started
        print(f"[notify] notify --test, 4 URLs, one hanging (timeout 1 s): {took:.2f} s\n{result.stdout}")
        assert result.returncode == 1, result
        assert result.stdout.splitlines() == [
            f"notification URL 1 (json://****@127.0.0.1:{good.port}/****): delivered",
            (f"notification URL 2 (json://127.0.0.1:{refused_port}/****): failed: the service did not accept it, "
             "or could not be reached"),
            f"notification URL 3 (json://****@127.0.0.1:{hanging.port}/****): failed: no answer within 1 s",
            ("notification URL 4 (unknownscheme://****): failed: apprise does not know this kind of URL "
             "(see https://github.com/caronc/apprise/wiki)"),
        ]
        message = good.wait_for(1)[0]
        assert message.title == f"{HOST}: test notification" and message.type == "info"
        assert message.path == f"/hook/{TOKEN}"
        assert_no_secrets(result.stdout, result.stderr, api_key="no-key")

        config = notify_config(tmp_path, "http://127.0.0.1:8096", [tmp_path], urls=[good.url()])
        result = run_cli("notify", "--test", "--config", config, env=notify_env)
        assert result.returncode == 0, result
        assert result.stdout == f"notification URL 1 (json://****@127.0.0.1:{good.port}/****): delivered\n"
        assert len(good.wait_for(2)) == 2


def test_notify_test_without_urls_is_a_configuration_error(tmp_path: Path, notify_env: dict[str, str]) -> None:
    config = notify_config(tmp_path, "http://127.0.0.1:8096", [tmp_path])
    result = run_cli("notify", "--test", "--config", config, env=notify_env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("jellyfin-watcher: error: no notification URLs to test: set notify.urls or notify.urls_file "
                             "in the configuration, JELLYFIN_WATCHER_NOTIFY_URLS, or the systemd credential "
                             "jellyfin-watcher-notify-urls\n")


# --- configuration: where URLs come from, and that they stay secret -------------------------------


def test_urls_from_the_environment_a_credential_a_file_or_the_configuration(tmp_path: Path) -> None:
    in_file = f"ntfy://ntfy.sh/{TOKEN}-file"
    url_file = tmp_path / "notify-urls"
    url_file.write_text(f"# my phone\n{in_file}\n\n  gotify://gotify.lan/{TOKEN}  \n", encoding="utf-8")
    url_file.chmod(0o600)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "jellyfin-watcher-notify-urls").write_text(f"ntfy://ntfy.sh/{TOKEN}-credential\n")
    (credentials / "jellyfin-watcher-notify-urls").chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f'[notify]\nurls_file = {toml_string(url_file)}\nafter = 60\nrate_limit = 120\ntimeout = 5\n')

    def urls(environ: dict[str, str]) -> tuple[list[str], str]:
        loaded = load(config, {}, environ)
        return [url.reveal() for url in loaded.notify.urls], loaded.sources["notify.urls"]

    assert urls({}) == ([in_file, f"gotify://gotify.lan/{TOKEN}"], f"{config}: notify.urls_file")
    with_credential = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert urls(with_credential) == ([f"ntfy://ntfy.sh/{TOKEN}-credential"], "systemd credential")
    from_env = {**with_credential, "JELLYFIN_WATCHER_NOTIFY_URLS": f"json://a.lan/{TOKEN} ntfy://ntfy.sh/x"}
    assert urls(from_env) == ([f"json://a.lan/{TOKEN}", "ntfy://ntfy.sh/x"], "JELLYFIN_WATCHER_NOTIFY_URLS")
    loaded = load(config, {}, {})
    assert (loaded.notify.after, loaded.notify.rate_limit, loaded.notify.timeout) == (60.0, 120.0, 5.0)
    assert TOKEN not in repr(loaded) and TOKEN not in str(loaded)

    config.write_text(f'[notify]\nurls = ["json://127.0.0.1:9/{TOKEN}"]\n')
    assert [url.reveal() for url in load(config, {}, {}).notify.urls] == [f"json://127.0.0.1:9/{TOKEN}"]
    defaults = load(None, {}, {})
    assert (defaults.notify.urls, defaults.notify.after, defaults.notify.rate_limit) == ((), 900.0, 3600.0)


@pytest.mark.parametrize("text, message", [
    (f'urls = ["ntfy.sh/{TOKEN}"]', "notify.urls: URL 1: expected an apprise URL such as ntfy://ntfy.sh/TOPIC"),
    (f'urls = ["json://a.lan/x", "json://a b/{TOKEN}"]', "notify.urls: URL 2: expected an apprise URL"),
    ('urls = "json://a.lan/x"', "notify.urls: expected a list of apprise URLs"),
    ('urls = ["json://a.lan/x"]\nurls_file = "/x"', "notify.urls and notify.urls_file are both set; keep one"),
    ("after = -1", "notify.after: expected seconds ≥ 0, got -1"),
    ("timeout = 0", "notify.timeout: expected seconds ≥ 0.5, got 0"),
    ("rate_limt = 5", "unknown key notify.rate_limt (did you mean notify.rate_limit?)"),
])
def test_bad_notify_settings_are_named_without_showing_the_url(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[notify]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load(config, {}, {})
    assert message in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_config_print_masks_urls_and_status_never_shows_them(tmp_path: Path, notify_env: dict[str, str]) -> None:
    config = notify_config(tmp_path, "http://127.0.0.1:8096", [tmp_path], after=30,
                          urls=[f"ntfys://me:{PASSWORD}@ntfy.example.com/{TOKEN}", f"tgram://123456:{TOKEN}/987"])
    printed = run_cli("config", "--print", "--config", config, env=notify_env)
    assert printed.returncode == 0, printed
    assert ('\n[notify]\nurls = ["ntfys://****@ntfy.example.com/****", "tgram://****/****"]'
            f"  # from {config}: notify.urls\nafter = 30  # from {config}: notify.after\n"
            f"rate_limit = 600  # from {config}: notify.rate_limit\ntimeout = 3  # from {config}: notify.timeout\n"
            ) in printed.stdout
    status = run_cli("status", "--json", "--config", config, env=notify_env)
    assert_no_secrets(printed.stdout, printed.stderr, status.stdout, status.stderr, api_key="no-key")
    from_env = run_cli("config", "--print", "--config", config,
                       env={**notify_env, "JELLYFIN_WATCHER_NOTIFY_URLS": f"json://hook.lan/{TOKEN}"})
    assert 'urls = ["json://hook.lan/****"]  # from JELLYFIN_WATCHER_NOTIFY_URLS' in from_env.stdout
    assert_no_secrets(from_env.stdout, from_env.stderr, api_key="no-key")


@pytest.mark.parametrize("url, shown", [
    (f"json://user:{PASSWORD}@127.0.0.1:8080/hook/{TOKEN}", "json://****@127.0.0.1:8080/****"),
    (f"ntfy://ntfy.sh/{TOKEN}", "ntfy://ntfy.sh/****"),
    (f"ntfy://{TOKEN}", "ntfy://****"),
    (f"gotify://gotify.example.com/{TOKEN}", "gotify://gotify.example.com/****"),
    (f"pover://{TOKEN}@{TOKEN}", "pover://****@****"),
    (f"tgram://123456:{TOKEN}/987", "tgram://****/****"),
    (f"discord://1234/{TOKEN}", "discord://****/****"),
    (f"json://[::1]:80/?token={TOKEN}", "json://[::1]:80/****"),
    ("json://localhost:80", "json://localhost:80"),
])
def test_masked_urls_show_the_service_never_a_secret(url: str, shown: str) -> None:
    assert masked_url(url) == shown


# --- documentation ---------------------------------------------------------------------------------


def test_readme_quotes_messages_the_receiver_really_gets() -> None:
    """The README's example messages are the ones the tests above assert, word for word."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    for phrase in ("refresh held back", "changes kept, held for", "sent once every root is healthy.",
                   "storage back, refresh sent", "Every root is healthy again.",
                   "refresh refused by the loss guard", "a scan would remove 60 of 100 items (60%). Missing:",
                   "If this clean-up is deliberate: jellyfin-watcher refresh --allow-removals 60",
                   "Jellyfin rejected the API key", "changes kept; watching goes on.",
                   "IPAddressAllow=", "jellyfin-watcher notify --test"):
        assert phrase in section, phrase


def test_the_sender_never_imports_apprise_without_urls() -> None:
    """No URLs, no apprise: the daemon's start-up costs nothing for those who do not use it."""
    program = ("import sys\nfrom watcher.edges.notifications import Sender\nsender = Sender((), 5.0)\nsender.start()\n"
               "sender.stop()\nprint('apprise' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parent.parent)
    assert completed.stdout.strip() == "False"

