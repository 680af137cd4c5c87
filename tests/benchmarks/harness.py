"""What the benchmarks share: a workspace, the daemon with a notification socket,
``inotifywait`` as the reference, mounts, percentiles and the result table.

The daemon runs as the real program (``python -m watcher run``) through
:class:`tests.support.WatcherProcess`, with ``NOTIFY_SOCKET`` pointing at a datagram socket
of ours (:class:`NotifyListener`): ``READY=1`` marks the end of its start-up, ``STATUS=`` lines
show when a root went down and when it is watched again, each stamped with the
``time.monotonic()`` it arrived at.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.benchmarks import procfs
from tests.support import TmpfsMount, WatcherProcess, child_env

INOTIFYWAIT_EVENTS = ("create", "close_write", "delete", "move")
"""The events the watcher asks for (its watchdog ``event_filter``: created, deleted, moved,
closed after writing), so that both watch the same things."""


# --- the workspace --------------------------------------------------------------------------


class Workspace:
    """A scratch folder for trees, configurations and sockets: a tmpfs when root (the same
    filesystem for every run, nothing cached differently), else a temporary folder."""

    def __init__(self, size: str = "2g,nr_inodes=1m") -> None:
        # nr_inodes: the full run makes about 600,000 files and folders, more than a small
        # machine's default (half its RAM pages).
        self.path = Path(tempfile.mkdtemp(prefix="jfw-bench-"))
        self.tmpfs: TmpfsMount | None = None
        self.kind = "temporary folder"
        if os.geteuid() == 0 and shutil.which("mount"):
            mount = TmpfsMount(self.path, size=size)
            try:
                mount.__enter__()
            except Exception:  # no mount permission (a container): a plain folder will do
                pass
            else:
                self.tmpfs = mount
                self.kind = "tmpfs"
        self._counter = 0

    def folder(self, name: str) -> Path:
        """A new, empty, uniquely named folder in the workspace."""
        self._counter += 1
        path = self.path / f"{name}-{self._counter}"
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        if self.tmpfs is not None:
            self.tmpfs.close()
        shutil.rmtree(self.path, ignore_errors=True)


# --- systemd's notification socket ----------------------------------------------------------


class NotifyListener:
    """A datagram socket the daemon sends ``sd_notify`` messages to; every message is kept
    with the ``time.monotonic()`` it arrived at."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._messages: list[tuple[float, str]] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            arrived = time.monotonic()
            with self._condition:
                self._messages.append((arrived, data.decode("utf-8", "replace")))
                self._condition.notify_all()

    def mark(self) -> int:
        with self._condition:
            return len(self._messages)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, start: int = 0) -> tuple[float, str]:
        """The first message from index ``start`` on for which ``predicate`` holds, with its
        arrival time; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        position = start
        with self._condition:
            while True:
                while position < len(self._messages):
                    arrived, message = self._messages[position]
                    position += 1
                    if predicate(message):
                        return arrived, message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(message for _, message in self._messages[-10:])
                    raise AssertionError(f"no matching sd_notify message within {timeout:g} s; last ones:\n{seen}")
                self._condition.wait(remaining)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._socket.close()


def status_of(message: str) -> str | None:
    """The ``STATUS=`` value of an sd_notify message, or None."""
    for line in message.splitlines():
        if line.startswith("STATUS="):
            return line[len("STATUS=") :]
    return None


# --- the daemon -------------------------------------------------------------------------------


@dataclass
class DaemonConfig:
    roots: Sequence[Path]
    quiet_period: float = 30.0
    max_wait: float = 3600.0
    settle: float = 10.0
    health_interval: float = 60.0
    probe_timeout: float = 5.0
    url: str | None = None
    extra_watch: dict[str, object] = field(default_factory=dict)


class Daemon:
    """``jellyfin-watcher run --config …`` with its own state folder and notification socket.
    ``url`` None means ``dry_run``. Use as a context manager."""

    def __init__(self, workspace: Workspace, name: str, config: DaemonConfig, api_key: str | None = None) -> None:
        self.folder = workspace.folder(f"daemon-{name}")
        lines = [f"state_dir = {json.dumps(str(self.folder / 'state'))}", 'log_level = "info"']
        if config.url is None:
            lines.append("dry_run = true")
        lines += ["", "[watch]"]
        values: dict[str, object] = {
            "quiet_period": config.quiet_period,
            "max_wait": config.max_wait,
            "settle": config.settle,
            "health_interval": config.health_interval,
            "probe_timeout": config.probe_timeout,
            **config.extra_watch,
        }
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        if config.url is not None:
            lines += ["", "[jellyfin]", f"url = {json.dumps(config.url)}"]
        for root in config.roots:
            lines += ["", "[[roots]]", f"path = {json.dumps(str(root))}"]
        self.config_file = self.folder / "config.toml"
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # AF_UNIX paths are limited to 107 bytes: the socket goes in a short folder.
        self._socket_folder = Path(tempfile.mkdtemp(prefix="jfw-"))
        self.notify = NotifyListener(self._socket_folder / "notify")
        env = child_env(api_key=api_key, extra={"NOTIFY_SOCKET": str(self.notify.path)}, home=self.folder / "home")
        self.process = WatcherProcess(["--config", self.config_file], env)
        self.ready_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict[str, object] | None:
        """The daemon's status file (``<state dir>/status.json``), or None before it is written."""
        try:
            return json.loads((self.folder / "state" / "status.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def wait_verified(self, timeout: float) -> float:
        """Seconds from the start of the process until its status file says ``verified``
        (every root's first watch verification has ended), read every 10 ms."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and status.get("verified") and status.get("roots"):
                return time.monotonic() - self.process.started_at
            time.sleep(0.01)
        raise AssertionError(f"not verified within {timeout:g} s; the watcher said:\n{self.process.output[-3000:]}")

    def start(self) -> Daemon:
        self.process.start()
        return self

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the start of the process to its ``READY=1``."""
        try:
            arrived, _ = self.notify.wait_for(lambda message: "READY=1" in message.splitlines(), timeout)
        except AssertionError:
            raise AssertionError(f"no READY=1 within {timeout:g} s; the watcher said:\n{self.process.output[-3000:]}") from None
        self.ready_at = arrived
        return arrived - self.process.started_at

    def cpu(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.process.alive():
            with contextlib.suppress(AssertionError):
                self.process.terminate(30)
        self.process.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.notify.close()
        shutil.rmtree(self._socket_folder, ignore_errors=True)


def wait_for_cpu_to_settle(read: Callable[[], float], quiet: float = 1.0, timeout: float = 300.0) -> float:
    """Read a CPU counter until it has not moved for ``quiet`` seconds; return it."""
    deadline = time.monotonic() + timeout
    value = read()
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_value = read()
        if now_value != value:
            value, still_since = now_value, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return value


class MountTableChanges:
    """Counts changes of this mount namespace's mount table, as the daemon's mount monitor
    sees them (``/proc/self/mountinfo`` polls ``POLLPRI``): each one makes the daemon probe
    every root. On a machine where other programs mount and unmount (test suites), that is
    work a quiet machine would not see; the notes of the table give the count."""

    def __init__(self) -> None:
        self.count = 0
        self.times: list[float] = []
        """``time.monotonic()`` of each change seen."""
        self._stop_read, self._stop_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="mount-table-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        with open("/proc/self/mountinfo", "rb") as mountinfo:
            mountinfo.read()
            poller = select.poll()
            poller.register(mountinfo.fileno(), select.POLLPRI | select.POLLERR)
            poller.register(self._stop_read, select.POLLIN)
            while True:
                ready = poller.poll()
                if any(descriptor == self._stop_read for descriptor, _ in ready):
                    return
                mountinfo.seek(0)
                mountinfo.read()
                self.times.append(time.monotonic())
                self.count += 1

    def close(self) -> None:
        os.write(self._stop_write, b"x")
        self._thread.join(2)
        os.close(self._stop_read)
        os.close(self._stop_write)


class ChildProcesses:
    """Counts the child processes a process starts (probes, listings), exactly: the kernel's
    process events connector (``NETLINK_CONNECTOR``, ``CN_IDX_PROC``; ``linux/cn_proc.h``)
    reports every fork with the parent's and the child's ids; a new process (not a thread)
    has ``child_pid == child_tgid``. Needs root (CAP_NET_ADMIN); :attr:`available` says
    whether it works here. Use :meth:`watch` to choose the parent."""

    _LISTEN = 1  # PROC_CN_MCAST_LISTEN
    _FORK = 1  # PROC_EVENT_FORK

    def __init__(self) -> None:
        self.parent = 0
        self.count = 0
        self.available = False
        self._socket: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # NETLINK_CONNECTOR
            sock.bind((0, 1))  # CN_IDX_PROC
            message = struct.pack("=IIIIHHI", 1, 1, 0, 0, 4, 0, self._LISTEN)  # cn_msg: CN_IDX_PROC, CN_VAL_PROC
            sock.send(struct.pack("=IHHII", 16 + len(message), 3, 0, 0, os.getpid()) + message)  # NLMSG_DONE
            sock.settimeout(0.2)
        except (OSError, AttributeError):
            return
        self._socket = sock
        self.available = True
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="child-processes", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        """Count the children of ``pid`` from now on (the count starts at 0)."""
        self.parent, self.count = pid, 0

    def _run(self) -> None:
        assert self._socket is not None
        while not self._closed:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            offset = 0
            while offset + 16 <= len(data):
                length = struct.unpack_from("=I", data, offset)[0]
                if length < 16:
                    break
                body = data[offset + 16 : offset + length]  # cn_msg (20 bytes), then proc_event
                if len(body) >= 52 and struct.unpack_from("=I", body, 20)[0] == self._FORK:
                    _, parent_tgid, child_pid, child_tgid = struct.unpack_from("=iiii", body, 36)
                    if parent_tgid == self.parent and child_pid == child_tgid:
                        self.count += 1
                offset += (length + 3) & ~3

    def close(self) -> None:
        if self._socket is not None:
            self._closed = True
            self._thread.join(2)
            self._socket.close()
            self._socket = None


# --- the reference: inotifywait ---------------------------------------------------------------


class InotifyWait:
    """``inotifywait -r -m`` on ``root`` with the watcher's events; its output (one line per
    event) goes to ``events_file`` (or nowhere). Use as a context manager."""

    def __init__(self, root: Path, events_file: Path | None = None) -> None:
        argv = ["inotifywait", "-r", "-m"]
        for event in INOTIFYWAIT_EVENTS:
            argv += ["-e", event]
        self.argv = [*argv, "--format", "%e %w%f", str(root)]
        self.events_file = events_file
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._established = threading.Event()
        self._reader: threading.Thread | None = None
        self.started_at = 0.0
        self.established_at = 0.0

    def start(self, timeout: float = 120.0) -> float:
        """Start it; return the seconds until it printed ``Watches established.``."""
        output = open(self.events_file, "wb") if self.events_file else subprocess.DEVNULL  # noqa: SIM115
        self.started_at = time.monotonic()
        try:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.PIPE)
        finally:
            if self.events_file:
                output.close()  # type: ignore[union-attr]
        self._reader = threading.Thread(target=self._read, name="inotifywait-stderr", daemon=True)
        self._reader.start()
        if not self._established.wait(timeout):
            raise AssertionError(f"inotifywait did not establish its watches within {timeout:g} s: {self._stderr}")
        if not self.established_at:
            raise AssertionError(f"inotifywait exited: {' '.join(self._stderr)}")
        return self.established_at - self.started_at

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").strip()
            self._stderr.append(line)
            if line.startswith("Watches established"):
                self.established_at = time.monotonic()
                self._established.set()
        self._established.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        """CPU seconds, to the nanosecond (schedstat: inotifywait has one thread)."""
        run_ns = sum(run for run, _ in procfs.threads(self.pid).tasks.values())
        return run_ns / 1e9 if run_ns else procfs.cpu_seconds(self.pid, children=False)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self._reader is not None:
                self._reader.join(5)
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def __enter__(self) -> InotifyWait:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- mounts, by system call (no mount(8) process in the measured interval) ----------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_BIND = 4096
MNT_DETACH = 2


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def mount_tmpfs(target: Path, size: str = "16m") -> None:
    _check(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, f"size={size},mode=0755".encode()), f"mount tmpfs on {target}")


def bind_mount(source: Path, target: Path) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None), f"bind {source} on {target}")


def umount(target: Path, attempts: int = 50) -> None:
    """Unmount ``target``; retried on EBUSY (a probe child may be reading it right then)."""
    for _ in range(attempts):
        if _libc.umount2(os.fsencode(target), 0) == 0:
            return
        number = ctypes.get_errno()
        if number != errno.EBUSY:
            raise OSError(number, f"umount {target}: {os.strerror(number)}")
        time.sleep(0.01)
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), f"umount -l {target}")


@contextlib.contextmanager
def mounted_tmpfs(target: Path, size: str = "16m") -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount_tmpfs(target, size)
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            umount(target)


# --- figures ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 20 values is the largest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(min(rank, len(ordered))) - 1]


def seconds(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


@dataclass
class Row:
    """One line of the table. ``key`` names it for tests (``setup.time``, ...)."""

    key: str
    measure: str
    watcher: str
    reference: str = "-"
    target: str = "-"
    result: str = "info"
    note: str = ""


def judge_at_most(value: float, limit: float, show: Callable[[float], str]) -> str:
    if value != value:
        return "n/a"
    if value <= limit:
        return "pass"
    return f"MISS by {show(value - limit)} ({value / limit:.1f}x the target)" if limit > 0 else f"MISS by {show(value - limit)}"


def judge_ratio_at_most(value: float, reference: float | None, ratio: float) -> str:
    """``value`` must be at most ``ratio`` times ``reference``."""
    if reference is None or reference != reference:
        return "no reference"
    if reference <= 0:
        return "pass" if value <= 0 else "MISS (reference is 0)"
    measured = value / reference
    if measured <= ratio:
        return f"pass ({measured:.2f}x)"
    return f"MISS by {measured / ratio:.1f}x ({measured:.2f}x the reference, target {ratio:g}x)"


def judge_ratio_at_least(cheaper_by: float, ratio: float) -> str:
    """``cheaper_by`` (reference / ours) must be at least ``ratio``."""
    if cheaper_by != cheaper_by:
        return "n/a"
    if cheaper_by >= ratio:
        return f"pass ({cheaper_by:.1f}x cheaper)"
    return f"MISS by {ratio / cheaper_by:.1f}x (only {cheaper_by:.2f}x cheaper, target {ratio:g}x)"


def render(rows: Sequence[Row], title: str) -> str:
    """The table: one line per row, ``key`` first (what ``--only`` and the tests name)."""
    names = ("key", "measure", "watcher", "reference", "target")
    header = Row("id", "measure", "jellyfin-watcher", "reference", "target", "result")
    table = [header, *rows]
    widths = [max(len(getattr(row, name)) for row in table) for name in names]
    lines = [title]
    for index, row in enumerate(table):
        cells = []
        for name, width in zip(names, widths, strict=True):
            value = getattr(row, name)
            cells.append(value.rjust(width) if index and name in ("watcher", "reference") else value.ljust(width))
        lines.append(" | ".join([*cells, row.result]))
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths) + "-+-" + "-" * 24)
    notes = [f"  {row.key}: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)
