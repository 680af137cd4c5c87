"""Real network shares for the tests: an rclone WebDAV remote and an sshfs mount, each with
its own server on 127.0.0.1, all under the test's ``tmp_path`` on free ports.

* :class:`RcloneServer`: ``rclone serve webdav DIR --addr 127.0.0.1:PORT``, a WebDAV server
  whose process the test can kill (:meth:`~RcloneServer.kill`), start again on the same
  port, or freeze (:meth:`~RcloneServer.stop`, SIGSTOP: connections open, nothing answered).
* :class:`RcloneMount`: ``rclone mount :webdav,url=…: MOUNT_POINT`` of that server.
* :class:`SSHServer`: an ``sshd`` with its own host key, client key and configuration,
  started in a mount namespace of its own (``unshare --mount``) whose private ``/run`` holds
  the privilege-separation folder sshd insists on (``/run/sshd``), so nothing outside the
  test's folder is created; :meth:`~SSHServer.drop_connections` kills the sessions, like a
  network cut, and :meth:`~SSHServer.kill` the server itself.
* :class:`SSHFSMount`: ``sshfs -f`` of a folder served by that sshd.

Every helper is a context manager that undoes what it did whatever happened: frozen
processes are resumed first (an unmount of a FUSE mount whose server is frozen would hang),
mounts are unmounted (``fusermount -u``, else ``umount -l``), and every process started
here is killed by its pid and reaped.

How the shares answer once their server is gone was measured on Debian 12 (rclone 1.60,
sshfs 3.7.3, OpenSSH 9.2) and is what the tests rely on:

* rclone serves folder listings from its VFS cache for ``--dir-cache-time`` (default 5 min;
  the tests use 1 s, as the README advises for the watcher), then asks the server. A
  killed server: that listing fails with EIO after about 4.5 s (rclone's low-level
  retries), a lookup after about 20 s. A SIGSTOPped server: the request is never answered
  (still hung after 14 minutes, whatever ``--timeout``), the caller sleeps uninterruptibly
  in the kernel until the server is resumed. Through the mount a folder's modification
  time never changes when files are added on the server.
* ``rclone serve`` has a VFS of its own: it is started with ``--dir-cache-time 1s`` too,
  or new files would reach its listings only after 5 minutes.
* sshfs serves listings from its cache for ``dcache_timeout`` (20 s by default; the tests
  use 1 s); with ``-o reconnect`` a dropped connection is re-established on the next
  access that misses the cache (0.3 s here); with the server down that access fails with
  EIO at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from support import children_of, is_mounted, wait_until

from watcher.edges import statusfile as status_file

START_WITHIN = 15.0
"""Seconds a server or mount may take to come up on a loaded machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_verified(state_dir: Path, timeout: float) -> dict[str, Any]:
    """The daemon's status document once its watch verification has finished (``verified``
    true: every folder that can be watched is, or its root is polled); waits at most
    ``timeout`` seconds. Raises AssertionError otherwise."""

    def verified() -> dict[str, Any] | None:
        document = status_file.read(state_dir)
        if document is None or not document.get("verified"):
            return None
        return document

    document: dict[str, Any] = wait_until(
        verified, timeout, message=f"the watcher's verification did not finish within {timeout:g} s"
    )
    return document


def root_status(state_dir: Path, root: Path) -> dict[str, Any] | None:
    """The entry of ``root`` in the daemon's status document, or None."""
    document = status_file.read(state_dir) or {}
    for entry in document.get("roots", []):
        if entry.get("path") == str(root):
            return entry  # type: ignore[no-any-return]
    return None


def _reap(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Kill ``process`` (by its pid, SIGCONT first in case it is frozen) and reap it."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel: left to the next teardown step
        process.wait(timeout)


def _unmount_fuse(mount_point: Path) -> None:
    """``fusermount -u``; if the mount is busy (a process stuck on it) or that does not
    return, a lazy ``umount -l``, which never waits for the filesystem."""
    if not is_mounted(mount_point):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["fusermount", "-u", str(mount_point)], capture_output=True, check=False, timeout=10)
    while is_mounted(mount_point):
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=True, timeout=30)


class _Process:
    """A server or mount process of a test; a context manager that always ends it."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def _spawn(self, argv: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGSTOP: the process keeps its sockets and mounts but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL, and reap."""
        _reap(self.process)
        self.stopped = False

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.resume()
        _reap(self.process)
        self.process = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class RcloneServer(_Process):
    """``rclone serve webdav DIRECTORY --addr 127.0.0.1:PORT`` (a free port, kept across
    :meth:`kill` and :meth:`start`)."""

    def __init__(self, directory: Path, log: Path, dir_cache_time: str = "1s") -> None:
        super().__init__(log)
        self.directory = directory
        self.port = free_port()
        self.dir_cache_time = dir_cache_time

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = self._spawn([
            "rclone", "serve", "webdav", str(self.directory), "--addr", f"127.0.0.1:{self.port}",
            "--dir-cache-time", self.dir_cache_time, "--config", "/dev/null",
        ])
        process = self.process
        wait_until(lambda: accepts(self.port) or process.poll() is not None, START_WITHIN,
                   message=f"rclone serve webdav did not listen on port {self.port}:\n{self.output()}")
        if process.poll() is not None:
            raise RuntimeError(f"rclone serve webdav exited with code {process.returncode}:\n{self.output()}")
        return self

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise


class _FuseMount(_Process):
    """A FUSE file system served by a foreground process on ``mount_point``: started by
    :meth:`_mount`, which waits until the kernel shows the mount (or the process ended);
    closed by unmounting it, then reaping the process."""

    def __init__(self, mount_point: Path, log: Path) -> None:
        super().__init__(log)
        self.mount_point = mount_point

    def _mount(self, argv: list[str]) -> Self:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        name = " ".join(argv[:2]) if argv[0] == "rclone" else argv[0]
        try:
            self.process = process = self._spawn(argv)
            wait_until(lambda: is_mounted(self.mount_point) or process.poll() is not None, START_WITHIN,
                       message=f"{name} did not mount {self.mount_point}:\n{self.output()}")
            if not is_mounted(self.mount_point):
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{self.output()}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.resume()
        try:
            _unmount_fuse(self.mount_point)
        finally:
            super().close()


class RcloneMount(_FuseMount):
    """``rclone mount :webdav,url=URL: MOUNT_POINT`` in the foreground (``--dir-cache-time``
    short, so that server-side changes show within a second or two)."""

    def __init__(self, url: str, mount_point: Path, log: Path, dir_cache_time: str = "1s") -> None:
        super().__init__(mount_point, log)
        self.url = url
        self.dir_cache_time = dir_cache_time

    def __enter__(self) -> Self:
        return self._mount([
            "rclone", "mount", f":webdav,url='{self.url}':", str(self.mount_point),
            "--dir-cache-time", self.dir_cache_time, "--poll-interval", "0", "--config", "/dev/null",
        ])


class SSHServer(_Process):
    """An ``sshd`` on 127.0.0.1 (a free port) for root with a key of its own, in a mount
    namespace of its own; ``folder`` holds its keys, configuration and log."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "sshd.log")
        self.folder = folder
        self.port = free_port()
        self.client_key = folder / "client_key"

    def _configure(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        host_key = self.folder / "host_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
        (self.folder / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            "",
        ]))
        return config

    def start(self) -> Self:
        config = self._configure()
        # sshd refuses to start without /run/sshd: a private /run in a private mount namespace
        # gives it one without touching the machine's. unshare and sh exec: the pid is sshd's.
        script = ("mount -t tmpfs -o size=1m,mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && "
                  f"exec /usr/sbin/sshd -D -e -f {config}")
        self.process = self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        process = self.process
        wait_until(lambda: accepts(self.port) or process.poll() is not None, START_WITHIN,
                   message=f"sshd did not listen on port {self.port}:\n{self.output()}")
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with code {process.returncode}:\n{self.output()}")
        return self

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes (children of the listener)."""
        return children_of(self.pid) if self.alive() else []

    def drop_connections(self) -> int:
        """Kill every session (SIGKILL, by pid): to the client, a cut connection. Returns
        how many sessions there were."""
        sessions = self.sessions()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid in self.sessions() for pid in sessions), START_WITHIN,
                   message="the sshd sessions did not end")
        return len(sessions)

    def kill(self) -> None:
        """Kill the sessions and the listener: the server is gone."""
        with contextlib.suppress(AssertionError):
            self.drop_connections()
        super().kill()

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self.drop_connections()
        super().close()


class SSHFSMount(_FuseMount):
    """``sshfs -f root@127.0.0.1:REMOTE MOUNT_POINT`` against :class:`SSHServer`, with
    ``reconnect`` and a 1 s directory cache (``options`` adds more ``-o`` options)."""

    def __init__(self, server: SSHServer, remote: Path, mount_point: Path, log: Path,
                 options: tuple[str, ...] = ()) -> None:
        super().__init__(mount_point, log)
        self.server = server
        self.remote = remote
        self.options = options

    def __enter__(self) -> Self:
        options = [
            f"port={self.server.port}", f"IdentityFile={self.server.client_key}", "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null", "BatchMode=yes", "reconnect", "ServerAliveInterval=2",
            "ServerAliveCountMax=2", "dcache_timeout=1", *self.options,
        ]
        return self._mount(["sshfs", "-f", "-o", ",".join(options), f"root@127.0.0.1:{self.remote}",
                            str(self.mount_point)])

