"""Helpers for the end-to-end tests: the watcher as a subprocess, real mounts, waiting.

Everything here waits on a condition with a deadline, never for a fixed time, and every
context manager undoes what it did in teardown, whatever happened in the test:

* :class:`WatcherProcess`: ``python -m watcher run ...`` as a child process; a reader
  thread collects its stderr lines (with the time each arrived) so tests can wait for the
  line a user would read.
* :func:`run_cli`: a one-shot command (``check``, ``refresh``) as a subprocess.
* :class:`TmpfsMount`, :class:`LoopDisk`, :class:`BindFS`: a tmpfs, a loop-mounted ext4
  image and a ``bindfs -f`` FUSE mount whose daemon can be SIGSTOPped to make the mount hang
  (every access to a FUSE mount whose daemon is stopped blocks until it runs again). They always unmount in teardown.

The API key handed to a child through ``JELLYFIN_API_KEY`` must never show in its output:
:meth:`WatcherProcess.terminate` and :func:`run_cli` check that (scenario h).

The section "shared test helpers" near the top holds the small helpers every test file
needs (configuration files, media files, the checks at the end of a run); new helpers go
at the end of the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w

if TYPE_CHECKING:
    from tests.jellyfin.emulator import JellyfinEmulator

REPO = Path(__file__).resolve().parent.parent
"""The checkout under test; children run with it as their working directory, so that
``python -m watcher`` imports this checkout's package."""

_T = TypeVar("_T")

# Environment variables that would change what a child does, were they set in the
# environment the tests run in: each test says explicitly what it wants.
_ISOLATED_VARIABLES = (
    "JELLYFIN_URL",
    "JELLYFIN_API_KEY",
    "JELLYFIN_API_KEY_FILE",
    "JELLYFIN_WATCHER_CONFIG",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "JOURNAL_STREAM",
)


def child_env(api_key: str | None = None, extra: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """The environment for a watcher child: this one without the watcher's own variables,
    plus ``JELLYFIN_API_KEY`` (if given) and ``extra``. ``home``: used as ``XDG_CONFIG_HOME``
    and ``XDG_STATE_HOME`` parent so that no per-user configuration of the machine leaks in."""
    env = {name: value for name, value in os.environ.items() if name not in _ISOLATED_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["XDG_CONFIG_HOME"] = str(home / "config")
        env["XDG_STATE_HOME"] = str(home / "state")
    if api_key is not None:
        env["JELLYFIN_API_KEY"] = api_key
    if extra:
        env.update(extra)
    return env


def wait_until(predicate: Callable[[], _T], timeout: float, interval: float = 0.02, message: str = "") -> _T:
    """Poll ``predicate`` until it returns something true; return that value.

    Raises AssertionError (with ``message``) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout:g} s: {predicate!r}")
        time.sleep(interval)


def assert_no_secret(secret: str | None, *texts: str, where: str = "output") -> None:
    """Fail if ``secret`` (the API key) occurs in any of ``texts``."""
    if not secret:
        return
    for text in texts:
        if secret in text:
            line = next(line for line in text.splitlines() if secret in line)
            raise AssertionError(f"the API key appears in the {where}: {line.replace(secret, '<KEY>')!r}")


# --- shared test helpers: configuration files, media files, the end of a run -------------------

DEFAULT_WAIT = 10.0
"""Deadline, seconds, of the waits in the helpers below unless the caller gives its own: for
what is not itself a timing assertion (a loaded 2-core machine)."""
STOP_WITHIN = 2.0
"""Seconds the watcher may take to exit on SIGTERM (README: "stops within 2 seconds")."""
MKV = b"\x1a\x45\xdf\xa3"
"""The first bytes of a Matroska file: the content of every media file the tests make."""


def _utf8_text(text: str) -> str:
    """``text`` if a TOML file can hold it; ValueError for a name that is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A TOML document is UTF-8 and a \u escape must be a Unicode scalar value (TOML 1.0,
        # "String"), so a name os.fsdecode turned into surrogate escapes has no TOML spelling.
        raise ValueError(f"{text!r} is not UTF-8: a TOML configuration cannot name it") from None
    return text


def toml_string(value: object) -> str:
    """``str(value)`` (a path, a URL) as a TOML basic string, quotes included, for a test that
    writes its configuration as text: newlines, quotes, backslashes and control characters
    are escaped (by tomli_w). Raises ValueError for a name that is not UTF-8 (surrogate
    escapes): no TOML file can hold it."""
    return tomli_w.dumps({"value": _utf8_text(str(value))}).removeprefix("value = ").removesuffix("\n")


def _toml_value(value: Any) -> Any:
    """``value`` with every path turned into its string, ready for tomli_w."""
    if isinstance(value, os.PathLike):
        return _utf8_text(os.fspath(value))
    if isinstance(value, str):
        return _utf8_text(value)
    if isinstance(value, Mapping):
        return {str(key): _toml_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_toml_value(item) for item in value]
    return value


def write_file(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, making its folders as needed; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_config(path: Path, config: str | Mapping[str, Any]) -> Path:
    """Write a configuration file and return ``path``.

    ``config``: the text itself (for a file a test wants exactly so, broken or odd), or the
    document as a mapping (tables as nested mappings, ``roots`` as a list of mappings; paths
    may be :class:`~pathlib.Path`), written as TOML by tomli_w. Raises ValueError for a path
    that is not UTF-8 (see :func:`toml_string`).
    """
    return write_file(path, config if isinstance(config, str) else tomli_w.dumps(_toml_value(config)))


def movie(folder: Path, title: str) -> Path:
    """``folder/title/title.mkv``, as a media manager lays a film out (folders made as needed)."""
    path = folder / title / f"{title}.mkv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MKV)
    return path


def read_status_file(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's status file ``state_dir/status.json`` as it is now; None when it is not
    there yet or half written. Reads the file only: never touches a (possibly hung) root."""
    try:
        document = json.loads((state_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def refresh_requests(jellyfin: JellyfinEmulator) -> list[str]:
    """``METHOD path`` of every refresh request the emulator answered."""
    return [f"{request.method} {request.path}" for request in jellyfin.requests
            if request.method == "POST" and re.search(r"/Refresh$|/Media/Updated$", request.path)]


def hung_child(pid: int, marker: str) -> int | None:
    """The pid of a child of process ``pid`` whose command line holds ``marker`` and that
    waits on a FUSE request (``/proc/PID/wchan`` is ``request_wait_answer``, the kernel's
    fs/fuse/dev.c), or None: proof that a probe of the daemon hangs on a stopped FUSE mount."""
    for child in children_of(pid):
        if marker not in cmdlines([child]).get(child, ""):
            continue
        try:
            with open(f"/proc/{child}/wchan", encoding="ascii") as file:
                if "request_wait_answer" in file.read():
                    return child
        except OSError:
            continue
    return None


def assert_nothing_lost(jellyfin: JellyfinEmulator, wait: float = DEFAULT_WAIT) -> None:
    """Jellyfin's scans finished, deleted no item and broke no rule of its API spec."""
    assert jellyfin.wait_for_scans_idle(wait), "Jellyfin's scans did not finish"
    assert jellyfin.removed == [], "a scan deleted items whose files were only unreachable"
    assert jellyfin.violations == []


def stop(watcher: WatcherProcess, within: float | None = STOP_WITHIN, wait: float = DEFAULT_WAIT) -> float:
    """SIGTERM: the watcher exits 0 (within ``within`` seconds unless None) without a
    traceback. Returns the seconds it took."""
    started = time.monotonic()
    code = watcher.terminate(wait)
    took = time.monotonic() - started
    assert code == 0, watcher.output
    if within is not None:
        assert took <= within, f"the watcher took {took:.2f} s to exit on SIGTERM"
    assert "Traceback" not in watcher.output, watcher.output
    return took


def stop_with_nothing_pending(watcher: WatcherProcess, within: float | None = None,
                              wait: float = DEFAULT_WAIT) -> float:
    """:func:`stop`, and the last line says no change is pending: proof that no further
    refresh was owed. Returns the seconds the exit took."""
    took = stop(watcher, within, wait)
    assert re.search(r"stopped; no changes pending$", watcher.lines[-1]), watcher.output
    return took


def finish(watcher: WatcherProcess, jellyfin: JellyfinEmulator, refreshes: int, wait: float = DEFAULT_WAIT) -> None:
    """The end of a run: the watcher exits 0 within 2 s of SIGTERM with nothing pending,
    Jellyfin got exactly ``refreshes`` refreshes, and its scans deleted nothing."""
    stop_with_nothing_pending(watcher, STOP_WITHIN, wait)
    assert jellyfin.wait_for_scans_idle(wait), "Jellyfin's scans did not finish"
    assert len(jellyfin.refreshes) == refreshes, f"{len(jellyfin.refreshes)} refreshes:\n{watcher.output}"
    assert_nothing_lost(jellyfin, wait)


# --- the daemon as a child process ------------------------------------------------------


class WatcherProcess:
    """``python -m watcher run *args`` as a child process.

    A reader thread puts every stderr line on :attr:`lines_queue` and keeps all of them in
    :attr:`lines` with the ``time.monotonic()`` at which each arrived (:attr:`timed_lines`).
    Use as a context manager: the child is killed and reaped, and the reader joined, on the
    way out whatever happened.

    ``secret``: the API key the child was given; :meth:`terminate` fails the test if it shows
    in the output (defaults to ``env["JELLYFIN_API_KEY"]``).
    """

    def __init__(self, args: Sequence[str | os.PathLike[str]], env: Mapping[str, str], secret: str | None = None,
                 command: str = "run") -> None:
        self.argv = [sys.executable, "-m", "watcher", command, *map(str, args)]
        self.env = dict(env)
        self.secret = secret if secret is not None else self.env.get("JELLYFIN_API_KEY")
        self.lines_queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._timed: list[tuple[float, str]] = []
        self._condition = threading.Condition()
        self._eof = False
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    # lifecycle

    def start(self) -> WatcherProcess:
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, name="watcher-stderr-reader", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> WatcherProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Kill the child if it still runs, reap it, join the reader, close the pipe."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        if self._reader is not None:
            self._reader.join(10)
        if process.stderr is not None:
            process.stderr.close()

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            now = time.monotonic()
            self.lines_queue.put(line)
            with self._condition:
                self._timed.append((now, line))
                self._condition.notify_all()
        with self._condition:
            self._eof = True
            self._condition.notify_all()

    # state

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        assert self._process is not None
        return self._process.poll()

    def send_signal(self, number: int) -> None:
        """Send signal ``number`` to the child (e.g. SIGSTOP/SIGCONT to freeze it)."""
        assert self._process is not None
        self._process.send_signal(number)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def lines(self) -> list[str]:
        with self._condition:
            return [line for _, line in self._timed]

    @property
    def timed_lines(self) -> list[tuple[float, str]]:
        """Every stderr line so far with the ``time.monotonic()`` it was read at."""
        with self._condition:
            return list(self._timed)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """The number of lines so far: pass it as ``start`` to wait only for later lines."""
        with self._condition:
            return len(self._timed)

    def count(self, pattern: str) -> int:
        """How many lines so far match ``pattern`` (``re.search``)."""
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    # waiting

    def wait_for_line(self, pattern: str, timeout: float, start: int = 0) -> str:
        """The first line from index ``start`` on that matches ``pattern`` (``re.search``),
        waiting at most ``timeout`` seconds for it. Fails at once if the child ends first."""
        return self.wait_for_timed_line(pattern, timeout, start)[1]

    def wait_for_timed_line(self, pattern: str, timeout: float, start: int = 0) -> tuple[float, str]:
        """Like :meth:`wait_for_line`, with the ``time.monotonic()`` the line arrived at."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        position = start
        with self._condition:
            while True:
                while position < len(self._timed):
                    arrived, line = self._timed[position]
                    position += 1
                    if regex.search(line):
                        return arrived, line
                if self._eof:
                    reason = f"the watcher exited (code {self._process.wait() if self._process else None}) first"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"not within {timeout:g} s"
                    break
                self._condition.wait(remaining)
            tail = "\n".join(line for _, line in self._timed[-40:])
        raise AssertionError(f"no stderr line matching {pattern!r}: {reason}. stderr so far:\n{tail}")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM; wait at most ``timeout`` seconds for the exit and the end of its output;
        return the exit code. Fails (after killing it) if it did not exit in time, and if
        the API key shows in its output."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"the watcher did not exit within {timeout:g} s of SIGTERM:\n{self.output}") from None
        assert self._reader is not None
        self._reader.join(timeout)
        assert_no_secret(self.secret, self.output, where="watcher's stderr")
        return code


def run_cli(*args: str | os.PathLike[str], env: Mapping[str, str], timeout: float = 30.0,
            secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m watcher *args`` to completion (``check``, ``refresh``); text output.

    Fails if the API key (``secret``, default ``env["JELLYFIN_API_KEY"]``) shows in the output.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "watcher", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    key = secret if secret is not None else env.get("JELLYFIN_API_KEY")
    assert_no_secret(key, completed.stdout, completed.stderr, where=f"output of {' '.join(map(str, args[:1]))}")
    return completed


def cmdlines(pids: Sequence[int] | None = None) -> dict[int, str]:
    """The argv (``/proc/PID/cmdline``, NULs as spaces) of ``pids`` (default: every process),
    by pid; processes that are gone are left out, zombies read as ``""``."""
    if pids is None:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    result = {}
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as file:
            result[pid] = file.read().replace(b"\0", b" ").decode("utf-8", "replace")
    return result


def children_of(pid: int) -> list[int]:
    """Pids of the direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as file:
                children.extend(int(word) for word in file.read().split())
    return children


# --- mounts ---------------------------------------------------------------------------


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def _checked(*command: str) -> None:
    completed = _run(*command)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr.strip()}")


def mount_points() -> list[str]:
    """Mount points of this mount namespace, in table order, from ``/proc/self/mountinfo``.

    Reads the table only: never touches a (possibly hung) filesystem.
    """
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            field = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field))
    return points


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (by the mount table; ``path`` is not touched)."""
    return str(path) in mount_points()


def unmount(path: Path) -> None:
    """Unmount everything mounted on ``path``: ``umount``, else a lazy ``umount -l``."""
    while is_mounted(path):
        if _run("umount", str(path)).returncode != 0:
            _checked("umount", "-l", str(path))


class _Mount:
    """Base of the mount helpers: a mount point that is unmounted in teardown."""

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point

    @property
    def mounted(self) -> bool:
        return is_mounted(self.mount_point)

    def mount(self) -> None:
        raise NotImplementedError

    def unmount(self) -> None:
        unmount(self.mount_point)

    def __enter__(self) -> Any:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        try:
            self.mount()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.unmount()


class TmpfsMount(_Mount):
    """A tmpfs on ``mount_point`` (created if needed). Its contents go with each unmount."""

    def __init__(self, mount_point: Path, size: str = "64m") -> None:
        super().__init__(mount_point)
        self.size = size

    def mount(self) -> None:
        _checked("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.mount_point))


class LoopDisk(_Mount):
    """An ext4 image file loop-mounted on ``mount_point``: a disk whose files survive being
    unmounted and mounted again (:meth:`unmount`, :meth:`mount`). Like a real disk it holds
    ``lost+found``."""

    def __init__(self, image: Path, mount_point: Path, size_mib: int = 16) -> None:
        super().__init__(mount_point)
        self.image = image
        with open(image, "wb") as file:
            file.truncate(size_mib * 1024 * 1024)
        _checked("mkfs.ext4", "-q", "-F", "-m", "0", str(image))

    def mount(self) -> None:
        # -o loop sets up a loop device with autoclear: it is detached at unmount.
        _checked("mount", "-o", "loop", str(self.image), str(self.mount_point))


class BindFS(_Mount):
    """``bindfs -f SOURCE MOUNT_POINT`` as a child process: a FUSE mount whose daemon the
    test can :meth:`stop` (SIGSTOP: every access to the mount then hangs) and :meth:`resume`.

    Teardown resumes the daemon first (an unmount of a stopped FUSE daemon's mount would
    hang), then unmounts (``fusermount -u``, else ``umount -l``) and reaps it.

    Careful: while stopped, any access to the mount by the test process hangs the test.
    """

    def __init__(self, source: Path, mount_point: Path) -> None:
        super().__init__(mount_point)
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def mount(self) -> None:
        self.process = subprocess.Popen(
            ["bindfs", "-f", str(self.source), str(self.mount_point)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process
        wait_until(lambda: self.mounted or process.poll() is not None, 10, message="bindfs did not mount")
        if not self.mounted:
            raise RuntimeError(f"bindfs exited with code {process.returncode} without mounting {self.mount_point}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGSTOP the FUSE daemon: the mount stays in the table, every access hangs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        self.resume()
        try:
            if self.mounted and _run("fusermount", "-u", str(self.mount_point)).returncode != 0:
                unmount(self.mount_point)
        finally:
            if self.process is not None:
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                self.process = None


def tools_missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
