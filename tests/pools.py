"""Test helpers for pooled and automounted storage: a mergerfs pool, an overlay, autofs.

Each is a context manager that builds the thing under the test's own ``tmp_path`` and
undoes it in teardown, whatever happened in the test (FUSE daemons and automount daemons
are children of the test, stopped by pid):

* :class:`MergerFSPool`: Debian's ``mergerfs -f`` over branch folders (loop disks from
  :class:`support.LoopDisk` make branches that can be unplugged and plugged back with
  their files; tmpfs branches lose theirs);
* :class:`OverlayMount`: ``mount -t overlay`` with lower and upper layers;
* :class:`Automounter`: Debian's ``automount`` daemon in the foreground with a master map
  of its own (an indirect map, and optionally a direct one, the kind ``x-systemd.automount``
  makes), in a session of its own: autofs never mounts for processes of the daemon's own
  process group, which a child of the test would otherwise share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from support import _Mount, is_mounted, mount_points, unmount, wait_until

WAIT = 10.0
"""Seconds to wait for a daemon to mount or unmount."""


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


class MergerFSPool(_Mount):
    """``mergerfs -f BRANCH1:BRANCH2… MOUNT_POINT`` as a child process.

    ``branches`` are folders (each may carry a mode suffix such as ``=NC`` through
    ``modes``). Teardown unmounts the pool (``fusermount -u``, else a lazy unmount) and reaps
    the daemon. The options are mergerfs' defaults (new files go to a branch where their
    folder exists, ``category.create=epmfs``) but for ``fsname`` and ``minfreespace=0``
    (the default, 4 GiB, is more than a test disk holds).
    """

    def __init__(self, mount_point: Path, branches: Sequence[Path], modes: Mapping[Path, str] | None = None,
                 options: Sequence[str] = ()) -> None:
        super().__init__(mount_point)
        self.branches = list(branches)
        self.modes = dict(modes or {})
        self.options = ["fsname=test-pool", "minfreespace=0", *options]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> str:
        """The branch list as given to mergerfs (``/a=RW:/b=NC``)."""
        return ":".join(f"{branch}={self.modes.get(branch, 'RW')}" for branch in self.branches)

    def mount(self) -> None:
        self.process = subprocess.Popen(
            ["mergerfs", "-f", "-o", ",".join(self.options), self.spec, str(self.mount_point)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        process = self.process
        wait_until(lambda: self.mounted or process.poll() is not None, WAIT, message="mergerfs did not mount")
        if not self.mounted:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"mergerfs exited with code {process.returncode} without mounting: {error.strip()}")

    def close(self) -> None:
        try:
            if self.mounted and _run("fusermount", "-u", str(self.mount_point)).returncode != 0:
                unmount(self.mount_point)
        finally:
            if self.process is not None:
                try:
                    self.process.wait(WAIT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                if self.process.stderr is not None:
                    self.process.stderr.close()
                self.process = None


class OverlayMount(_Mount):
    """An overlay on ``mount_point``: ``lower`` layers (first on top), an ``upper`` layer
    and its ``work`` folder (created)."""

    def __init__(self, mount_point: Path, lower: Sequence[Path], upper: Path, work: Path) -> None:
        super().__init__(mount_point)
        self.lower, self.upper, self.work = list(lower), upper, work

    def mount(self) -> None:
        for folder in (self.upper, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={':'.join(map(str, self.lower))},upperdir={self.upper},workdir={self.work}"
        completed = _run("mount", "-t", "overlay", "overlay", "-o", options, str(self.mount_point))
        if completed.returncode != 0:
            raise RuntimeError(f"mount -t overlay failed: {completed.stderr.strip()}")


class Automounter:
    """Debian's ``automount -f`` with maps in ``folder``.

    ``indirect``: key → map entry (``"-fstype=ext4,loop :/path/disk.img"``), mounted below
    ``folder / "auto"`` on look-up. ``direct``: absolute mount point → map entry (a direct
    map, ``/-`` in the master map: an autofs mount on the mount point itself, which is
    what systemd makes of ``x-systemd.automount``). ``timeout``: seconds a mount may stay
    idle before it is expired.

    Teardown sends SIGTERM (automount unmounts what it mounted that is not busy, then its
    own autofs mounts), waits, and lazily unmounts whatever is left under ``folder``.

    automount keeps a FIFO per master map entry in ``/run``: ``autofs.fifo-<path>`` for an
    indirect map (unique to the test's folder), ``autofs.fifo--`` for the direct map, which
    two automount daemons with direct maps running at the same moment would share.
    """

    def __init__(self, folder: Path, indirect: Mapping[str, str] | None = None,
                 direct: Mapping[Path, str] | None = None, timeout: int = 2) -> None:
        self.folder = folder
        self.indirect_point = folder / "auto"
        self.indirect = dict(indirect or {})
        self.direct = dict(direct or {})
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "automount.log"

    def __enter__(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        master = []
        if self.indirect:
            self.indirect_point.mkdir(exist_ok=True)
            indirect_map = self.folder / "auto.indirect"
            indirect_map.write_text("".join(f"{key} {entry}\n" for key, entry in self.indirect.items()))
            master.append(f"{self.indirect_point} file:{indirect_map} --timeout={self.timeout}")
        if self.direct:
            direct_map = self.folder / "auto.direct"
            direct_map.write_text("".join(f"{point} {entry}\n" for point, entry in self.direct.items()))
            master.append(f"/- file:{direct_map} --timeout={self.timeout}")
        master_map = self.folder / "auto.master"
        master_map.write_text("\n".join(master) + "\n")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["automount", "-f", "-d", "-C", "-n", "1", "-t", str(self.timeout),
                 "-p", str(self.folder / "automount.pid"), f"file:{master_map}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wanted = ([str(self.indirect_point)] if self.indirect else []) + [str(point) for point in self.direct]
            process = self.process
            wait_until(lambda: all(self.autofs_at(point) for point in wanted) or process.poll() is not None, WAIT,
                       message="automount did not set up its autofs mounts")
            if process.poll() is not None:
                raise RuntimeError(f"automount exited with code {process.returncode}: {self.log.read_text()[-2000:]}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def autofs_at(point: str) -> bool:
        """Whether an autofs mount sits on ``point`` (from ``/proc/self/mountinfo``)."""
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
            return any(line.split()[4] == point and line.split(" - ")[1].split()[0] == "autofs" for line in file)

    def mounted(self, point: Path) -> bool:
        """Whether a real filesystem (not autofs) is on top at ``point``."""
        top = None
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
            for line in file:
                if line.split()[4] == str(point):
                    top = line.split(" - ")[1].split()[0]
        return top is not None and top != "autofs"

    def expiry_attempts(self, point: Path) -> int:
        """How often the daemon has tried to expire ``point`` so far (its debug log): each
        try past the timeout unmounts it unless it is in use."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        # "expire_proc_indirect: expire /auto/share", "expire_proc_direct: send expire to trigger /mnt/nas"
        return sum(1 for line in text.splitlines() if line.endswith((f": expire {point}", f" expire to trigger {point}")))

    def expire(self, point: Path) -> None:
        """Take the share on ``point`` away as an expiry would, busy or not (lazily)."""
        _run("umount", "-l", str(point))

    def close(self) -> None:
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.process = None
        prefix = str(self.folder).rstrip("/") + "/"
        for point in sorted((p for p in mount_points() if p.startswith(prefix)), key=len, reverse=True):
            with contextlib.suppress(RuntimeError):
                while is_mounted(Path(point)):
                    if _run("umount", "-l", point).returncode != 0:
                        break


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse")
