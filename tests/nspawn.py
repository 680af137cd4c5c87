"""A minimal Debian 12 booted with ``systemd-nspawn --boot``: a real systemd for the unit tests.

* :func:`cached_rootfs` builds the root filesystem once with ``debootstrap`` (:data:`RECIPE`)
  into ``/var/cache/jellyfin-watcher-tests/<hash of the recipe>/rootfs`` and reuses it while
  the recipe is unchanged; a changed recipe builds a new tree next to it. A build runs under
  an exclusive lock and lands by ``rename``, so an interrupted build never leaves a half tree
  that looks complete; a tree in use is held with a shared lock, and trees of other recipes
  are deleted once no one holds them and no one used them for a day.
* :class:`Container` boots an *overlay* of that tree (``mount -t overlay``, the upper layer
  in the test's own folder), so a test run never writes to the cache; it runs commands
  inside with ``nsenter --all``, and in teardown powers the machine off by its pid
  (``SIGRTMIN+4`` to its init, systemd's "power off" signal, systemd(1) "SIGNALS"; SIGKILL
  after a deadline, which ends every process of its pid namespace), waits for
  ``systemd-nspawn`` to exit and unmounts the overlay. No container outlives its test.

``systemd-nspawn`` options (systemd-nspawn(1)), and why:

* ``--register=no``, plus ``--keep-unit`` on a host whose PID 1 is not systemd: nothing is
  asked of ``systemd-machined`` or the host's system bus, which a test machine may lack;
* no ``--private-network``: the container shares the host's network, so the service in it
  reaches a Jellyfin emulator the test runs on the host's 127.0.0.1;
* ``--system-call-filter=bpf`` and ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``: nspawn's default
  seccomp filter refuses ``bpf(2)``, and a cgroup v1 ("hybrid") layout has no cgroup for the
  programs either; with both, systemd in the container enforces ``IPAddressDeny=`` and
  ``IPAddressAllow=`` as on a real host (without them it logs "the local system does not
  support BPF/cgroup firewalling" and lets everything through);
* ``--link-journal=no``: the container's journal stays inside it;
* ``--bind=<device>`` for each host device node the caller names (``devices=``), e.g.
  ``/dev/autofs``: nspawn's own ``/dev`` holds a fixed few nodes (``null``, ``zero``, ``full``,
  ``random``, ``urandom``, ``tty``, ``net/tun``, the console and pseudo-terminals), and
  without ``/dev/autofs`` systemd refuses ``.automount`` units ("Operation on or unit type of
  srv-nas.automount not supported on this system": ``src/core/automount.c``,
  ``automount_supported()``, checked once when the manager starts, so the node must be there
  at boot). Where nspawn puts the container in a scope of the host's systemd (no
  ``--keep-unit``), that scope's device policy is closed; ``--property=DeviceAllow=`` opens it
  for those nodes.

Commands run inside with the container's own binaries and a clean environment
(:meth:`Container.run`); files are read and written through ``/proc/<pid of its init>/root``
(:meth:`Container.path`), which resolves paths in the container's mount namespace, so a
disk mounted inside the container is seen there too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

CACHE = Path(os.environ.get("JELLYFIN_WATCHER_TEST_CACHE", "/var/cache/jellyfin-watcher-tests"))
"""Where root filesystems are kept between test runs (outside the repository)."""

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3", "python3-venv")
"""systemd as PID 1, D-Bus and logind (user managers of lingering users), Python for the
wheel. Deliberately not procps: minimal images have no ``/bin/kill``, and the units must not
need one."""
AFTER = ("apt-get clean",)
"""Shell commands run in the new tree (``chroot``) once debootstrap is done."""

RECIPE: Mapping[str, object] = {
    "command": ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, MIRROR],
    "after": list(AFTER),
    "version": 1,
}
"""What :func:`cached_rootfs` builds, hashed into the cache key: a change of any value
(``version`` for a change in how it is built) builds a new tree."""

BUILD_TIMEOUT = 900.0
"""Seconds ``debootstrap`` may take (measured here: about a minute; five on a slow mirror)."""
BOOT_TIMEOUT = 120.0
"""Seconds from ``systemd-nspawn`` to ``systemctl is-system-running`` answering."""
POWEROFF_TIMEOUT = 60.0
"""Seconds an orderly power-off may take before the container is killed."""
COMMAND_TIMEOUT = 120.0
"""Default deadline of one command inside the container."""

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """A real systemd cannot be had here: the message says why (for ``pytest.skip``)."""


def recipe_key() -> str:
    """16 hex digits of the SHA-256 of :data:`RECIPE` (canonical JSON)."""
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def unavailable() -> str | None:
    """Why a container cannot be booted here (root, tools, overlayfs), or None."""
    if os.geteuid() != 0:
        return "needs root: it builds a Debian root filesystem with debootstrap and boots it with systemd-nspawn"
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter", "losetup", "mkfs.ext4")
               if shutil.which(tool) is None]
    if missing:
        return (f"needs {', '.join(missing)} (Debian: apt-get install systemd-container debootstrap "
                "util-linux e2fsprogs) to boot a real systemd")
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/mnt"):
        return "needs mount namespaces (/proc/self/ns/mnt)"
    return None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _build(target: Path) -> None:
    """Run :data:`RECIPE` into ``target`` (which must not exist). Raises :class:`Unavailable`."""
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), MIRROR]
    try:
        built = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"debootstrap took more than {BUILD_TIMEOUT:g} s (a slow or unreachable mirror?)") from None
    if built.returncode != 0:
        log = target / "debootstrap" / "debootstrap.log"
        details = log.read_text(errors="replace") if log.exists() else built.stdout + built.stderr
        raise Unavailable(f"debootstrap failed (exit {built.returncode}; offline, or {MIRROR} "
                          f"unreachable?):\n{_tail(details)}")
    for step in AFTER:
        done = subprocess.run(["chroot", str(target), "sh", "-c", step], capture_output=True, text=True,
                              timeout=300, check=False, env={"PATH": PATH, "LANG": "C.UTF-8"})
        if done.returncode != 0:
            raise Unavailable(f"{step!r} in the new root filesystem failed: {_tail(done.stderr)}")


@contextlib.contextmanager
def cached_rootfs() -> Iterator[Path]:
    """The root filesystem of :data:`RECIPE`, built now if the cache has none; it is held
    (a shared lock) until the context ends, so no other run deletes it meanwhile.

    Raises :class:`Unavailable` when debootstrap fails (e.g. offline).
    """
    key = recipe_key()
    folder = CACHE / key
    rootfs = folder / "rootfs"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not rootfs.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                (folder / "recipe.json").write_text(json.dumps(RECIPE, indent=2, sort_keys=True) + "\n")
                try:
                    _build(folder / "building")
                except BaseException:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
                (folder / "building").rename(rootfs)
            (folder / "used").touch()
            fcntl.flock(lock, fcntl.LOCK_SH)
            _forget_other_recipes(key)
            yield rootfs
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


STALE_AFTER = 24 * 3600.0
"""Seconds since its last use after which the tree of another recipe is deleted (if unused)."""


def _forget_other_recipes(key: str) -> None:
    """Delete trees of other recipes that no one holds and no one used for a day."""
    for lock_path in CACHE.glob("*.lock"):
        other = lock_path.name.removesuffix(".lock")
        used = CACHE / other / "used"
        if other == key or (used.exists() and time.time() - used.stat().st_mtime < STALE_AFTER):
            continue
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(CACHE / other, ignore_errors=True)  # the empty lock file stays: no race on it


def _host_runs_systemd() -> bool:
    return os.path.isdir("/run/systemd/system")


class Container:
    """A booted overlay of ``rootfs``; all its own files live under ``workdir``.

    ``with Container(rootfs, workdir, name) as machine:`` boots it and powers it off; or
    :meth:`mount_overlay` (then put files in the merged folder), :meth:`boot` and, always,
    :meth:`close`.
    """

    def __init__(self, rootfs: Path, workdir: Path, name: str, devices: Sequence[str] = ()) -> None:
        self.rootfs = rootfs
        self.devices = tuple(devices)
        """Host device nodes bound into the container's ``/dev`` at boot (read and write)."""
        self.workdir = workdir
        self.name = name
        self.merged = workdir / "merged"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._mounted = False
        self._log = workdir / "nspawn.log"

    # --- life cycle ---------------------------------------------------------------------

    def mount_overlay(self) -> Path:
        """Mount the overlay (lower: the cached tree, read-only); returns the merged folder."""
        upper, work = self.workdir / "upper", self.workdir / "work"
        for folder in (upper, work, self.merged):
            folder.mkdir(parents=True, exist_ok=True)
        for path in (self.rootfs, upper, work):
            if any(character in str(path) for character in ",:"):
                raise Unavailable(f"overlayfs cannot take a path with ',' or ':': {path}")
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)],
                                 capture_output=True, text=True, timeout=60, check=False)
        if mounted.returncode != 0:
            raise Unavailable(f"cannot mount an overlay of the root filesystem: {mounted.stderr.strip()}")
        self._mounted = True
        return self.merged

    def boot(self) -> None:
        """Start ``systemd-nspawn --boot`` and wait until systemd inside has finished
        starting up. Raises :class:`Unavailable` if it does not come up."""
        if not self._mounted:
            self.mount_overlay()
        command = [
            "systemd-nspawn", "--quiet", "--register=no", "--directory", str(self.merged),
            "--machine", self.name, "--boot", "--console=read-only", "--link-journal=no",
            "--system-call-filter=bpf",
        ]
        command += [f"--bind={device}" for device in self.devices]
        if not _host_runs_systemd():
            command.append("--keep-unit")
        else:
            command += [f"--property=DeviceAllow={device} rw" for device in self.devices]
        environ = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=environ, start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while self.leader is None:
            if self.process.poll() is not None:
                raise Unavailable(f"systemd-nspawn exited with {self.process.returncode} before booting:\n"
                                  f"{_tail(self.log())}")
            if time.monotonic() >= deadline:
                raise Unavailable(f"systemd-nspawn started no init within {BOOT_TIMEOUT:g} s:\n{_tail(self.log())}")
            self.leader = self._find_leader(self.process.pid)
            if self.leader is None:
                time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline and self.process.poll() is None:
            # The manager's socket appears a moment after the init starts: until then
            # systemctl cannot connect and says so on stderr.
            answer = self.run("systemctl", "is-system-running", "--wait", check=False,
                              timeout=max(1.0, deadline - time.monotonic()))
            state = answer.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise Unavailable(f"systemd in the container did not finish booting (state {state or 'unknown'!r}):\n"
                          f"{_tail(self.log())}")

    @staticmethod
    def _find_leader(nspawn: int) -> int | None:
        """The pid (in our namespace) of the container's init: a child of ``nspawn`` that is
        pid 1 of its own pid namespace."""
        from support import children_of

        for pid in children_of(nspawn):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    fields = line.split()
                    if fields[:1] == ["NSpid:"] and len(fields) > 2 and fields[-1] == "1":
                        return pid
        return None

    def log(self) -> str:
        """What systemd-nspawn and the container's console printed."""
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")
        return ""

    def close(self) -> None:
        """Power off, wait, kill after a deadline; unmount the overlay; remove the upper layer."""
        process = self.process
        if process is not None and process.poll() is None:
            # The leader is nspawn's child: its pid cannot be reused while nspawn is alive.
            if self.leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                process.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                if self.leader is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)  # ends its whole pid namespace
                try:
                    process.wait(POWEROFF_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.process = None
        self.leader = None
        if self._mounted:
            if subprocess.run(["umount", str(self.merged)], capture_output=True, timeout=60, check=False).returncode:
                subprocess.run(["umount", "-l", str(self.merged)], capture_output=True, timeout=60, check=False)
            self._mounted = False
        # nspawn removes this folder itself unless /run is on disk (it refuses to delete
        # there): it is this machine's, named after it, and empty.
        with contextlib.suppress(OSError):
            os.rmdir(f"/run/systemd/nspawn/propagate/{self.name}")
        for layer in ("upper", "work"):
            shutil.rmtree(self.workdir / layer, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # --- inside -------------------------------------------------------------------------

    def run(self, *argv: str, user: str | None = None, input: str | None = None,
            environ: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (as root, or as ``user`` through ``runuser``),
        with the container's binaries and only ``PATH``, ``LANG`` and ``environ`` set.

        For a ``user``, ``XDG_RUNTIME_DIR`` points at its runtime folder, so ``systemctl
        --user`` reaches its user manager. Raises AssertionError (with the output) when
        ``check`` and the command fails.
        """
        assert self.leader is not None, "the container is not running"
        variables = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", **(environ or {})}
        inner: list[str] = list(argv)
        if user is not None:
            uid = self.uid(user)
            variables.update({"HOME": self.home(user), "USER": user, "LOGNAME": user,
                              "XDG_RUNTIME_DIR": f"/run/user/{uid}"})
            inner = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]
        command = ["nsenter", "--target", str(self.leader), "--all", "--",
                   "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in variables.items()), *inner]
        done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} (in the container) exited with {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done

    def path(self, inside: str) -> Path:
        """The host path of ``inside`` as the container sees it (its mounts included)."""
        assert self.leader is not None, "the container is not running"
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644, owner: str | None = None) -> None:
        """Write a file inside the container (its folders made as needed, owned by root or ``owner``)."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)
        if owner is not None:
            self.run("chown", owner, inside)

    def uid(self, user: str) -> int:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2])
        raise KeyError(user)

    def home(self, user: str) -> str:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return fields[5]
        raise KeyError(user)

    def journal_cursor(self) -> str:
        """The journal's current end: pass it to :meth:`journal` for what comes after."""
        shown = self.run("journalctl", "--no-pager", "-q", "-n", "0", "--show-cursor")
        for line in shown.stdout.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        raise AssertionError(f"journalctl printed no cursor: {shown.stdout!r}")

    def journal(self, *matches: str, after: str | None = None) -> list[str]:
        """Messages of the journal matching ``matches`` (``journalctl`` match arguments such
        as ``_SYSTEMD_UNIT=x.service`` or ``--unit x.service``), after the cursor ``after``.

        With both matches and ``--after-cursor``, journalctl 252 may skip the first matching
        entry after the cursor when the cursor's own entry does not match; so the entries
        are read without the cursor and those after it kept here, by the sequence number
        each cursor carries (``i=``, within the same ``s=`` sequence; across sequences, the
        wall-clock time ``t=``).
        """
        if not after:
            return self.run("journalctl", "--no-pager", "-q", "-o", "cat", *matches).stdout.splitlines()
        since = _sequence(after)
        messages = []
        for line in self.run("journalctl", "--no-pager", "-q", "-o", "json", *matches).stdout.splitlines():
            entry = json.loads(line)
            sequence = _sequence(entry["__CURSOR"])
            if sequence[1] > since[1] if sequence[0] == since[0] else sequence[2] > since[2]:
                message = entry.get("MESSAGE") or ""
                if isinstance(message, list):  # not valid UTF-8: journalctl gives the bytes
                    message = bytes(message).decode("utf-8", "replace")
                messages.extend(str(message).splitlines() or [""])
        return messages


def _sequence(cursor: str) -> tuple[str, int, int]:
    """The sequence-number identity, the sequence number and the wall-clock time (µs) of a
    journal cursor: its ``s=``, ``i=`` and ``t=`` (hexadecimal), as journald writes them."""
    fields = dict(part.split("=", 1) for part in cursor.split(";") if "=" in part)
    return fields["s"], int(fields["i"], 16), int(fields["t"], 16)


def copy_into(source: Path, destination: Path, names: Sequence[str]) -> None:
    """Copy ``names`` (files or folders) from ``source`` to ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        origin = source / name
        if origin.is_dir():
            shutil.copytree(origin, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(origin, destination / name)
