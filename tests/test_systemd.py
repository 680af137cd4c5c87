"""The shipped systemd units under a real systemd: a minimal Debian 12 booted with
``systemd-nspawn --boot`` (``tests/nspawn.py``), the project's wheel installed in a venv
inside it, the units installed as shipped.

The system unit runs with every hardening line it ships with; a drop-in changes only
``ExecStart=`` (the venv's command instead of ``/usr/local/bin``), plus, for the keep-alive
test alone, a short ``WatchdogSec=``. The user unit runs unchanged under the user manager of
a lingering user (``loginctl enable-linger``); its ``%h/.local/bin/jellyfin-watcher`` is a
link to the venv's command, as ``pipx`` makes one.

Storage: the library folder ``/srv/media`` inside the container holds two roots,
``/srv/media/a`` (an ext4 image on a loop device: a disk that keeps its files when unmounted
and mounted again) and ``/srv/media/b`` (a folder of the container's own file system).
The Jellyfin emulator runs on the host's 127.0.0.1 (the container shares the host's
network) and sees the media through ``/proc/<pid of the container's init>/root``, i.e.
exactly as the container sees it, mounts included: a scan while disk A is away really
deletes A's items (each unmount test shows that with a control scan), so "items lost 0"
means the service held the refresh. The watcher maps Jellyfin's paths with ``[[path_map]]``,
as it would for a Jellyfin in a container. One test adds a share behind an fstab
``x-systemd.automount`` line at ``/srv/nas`` (another ext4 image on a loop device; the
container gets the host's ``/dev/autofs`` for it, see ``tests/nspawn.py``).

Every check asserts an outcome systemd or the emulator reports: ``systemctl show``
properties, journal lines, exit codes, refresh counts, items lost. Nothing sleeps to let
something happen: every wait is on a condition with a deadline. Needs root; skipped with the
reason where a container cannot be booted (no systemd-nspawn, debootstrap offline, ...).
The first run builds the root filesystem (about a minute here; cached in
``/var/cache/jellyfin-watcher-tests``).

Run alone: ``python -m pytest tests/test_systemd.py -s`` (``-s`` prints the figures).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nspawn
import psutil
import pytest
from support import REPO, wait_until

from tests.jellyfin.emulator import JellyfinEmulator, Library

pytestmark = [
    pytest.mark.slow,
    # Each test's own time; building the root filesystem (cold cache), booting and
    # provisioning happen in the module's fixture, each step under a deadline of its own.
    pytest.mark.timeout(300, func_only=True),
]

_T = TypeVar("_T")

WAIT = 30.0
"""Deadline, seconds, for anything the service should do (a shared, loaded machine)."""

SYSTEM_UNIT_FILE = REPO / "packaging" / "systemd" / "jellyfin-watcher.service"
USER_UNIT_FILE = REPO / "packaging" / "systemd" / "jellyfin-watcher.user.service"
UNIT = "jellyfin-watcher.service"
VENV = "/opt/jellyfin-watcher"
COMMAND = f"{VENV}/bin/jellyfin-watcher"
MEDIA = "/srv/media"
DISK_A = f"{MEDIA}/a"
FOLDER_B = f"{MEDIA}/b"
USER = "alice"
MAX_EXPOSURE = 2.0
"""Highest acceptable ``systemd-analyze security`` score of the system unit (0 best, 10 worst)."""
DYNAMIC_UIDS = range(61184, 65520)
"""UIDs systemd allocates for ``DynamicUser=`` (systemd.exec(5), "DynamicUser=")."""
CONFIG_DIR = "/etc/jellyfin-watcher"
STATE_DIR = "/var/lib/jellyfin-watcher"
AUTOFS_DEVICE = "/dev/autofs"
"""The kernel's autofs control device: systemd runs ``.automount`` units only where it exists."""


def _eventually(predicate: Callable[[], _T | None], timeout: float, message: str = "") -> _T:
    """``support.wait_until`` for a predicate that answers None until it holds (polled
    every 0.2 s: each poll runs a command in the container)."""
    value = wait_until(predicate, timeout, interval=0.2, message=message)
    assert value is not None
    return value


# --- the machine ------------------------------------------------------------------------------


@dataclass
class Machine:
    """The booted container, its disk A, and where the emulator sees its media."""

    container: nspawn.Container
    device: str
    """The loop device (host) behind disk A."""

    def jellyfin_path(self, inside: str) -> str:
        """``inside`` as the emulator on the host reaches it (through the container's init)."""
        return str(self.container.path(inside))

    def mounted(self, mount_point: str) -> bool:
        """Whether something is mounted on ``mount_point`` in the container (its mount table)."""
        assert self.container.leader is not None
        with open(f"/proc/{self.container.leader}/mountinfo", encoding="utf-8") as table:
            return any(line.split()[4] == mount_point for line in table)

    def mount_a(self) -> None:
        if not self.mounted(DISK_A):
            self.container.run("mount", "/dev/test-disk-a", DISK_A)

    def unmount_a(self) -> None:
        self.container.run("umount", DISK_A)


def _host(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _wheelhouse(folder: Path) -> list[str]:
    """The project's wheel (built from a copy of the checkout, which stays clean) and the
    wheels of its dependencies, in ``folder``. Skips the module when they cannot be had."""
    source = folder.parent / "source"
    nspawn.copy_into(REPO, source, ["pyproject.toml", "README.md", "watcher"])
    built = _host(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(source))
    if built.returncode != 0:
        pytest.skip(f"cannot build the project's wheel (offline?): {built.stderr.strip()[-1500:]}")
    [wheel] = folder.glob("jellyfin_watcher-*.whl")
    fetched = _host(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(folder), str(wheel))
    if fetched.returncode != 0:
        pytest.skip(f"cannot download the dependencies' wheels (offline?): {fetched.stderr.strip()[-1500:]}")
    return sorted(path.name for path in folder.glob("*.whl"))


def _movie(container: nspawn.Container, folder: str, title: str) -> str:
    """``folder/title/title.mkv`` inside the container (through its mounts); returns the file."""
    path = f"{folder}/{title}/{title}.mkv"
    target = container.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x1aE\xdf\xa3 not really a film")
    target.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    reason = nspawn.unavailable()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("systemd")
    wheels = _wheelhouse(work / "wheels")
    image = work / "disk-a.img"
    with open(image, "wb") as file:
        file.truncate(32 * 1024 * 1024)
    made = _host("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    assert made.returncode == 0, made.stderr
    attached = _host("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device for disk A: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    started = time.monotonic()
    try:
        with nspawn.cached_rootfs() as rootfs:
            built = time.monotonic()
            container = nspawn.Container(rootfs, work / "container", f"jw-test-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                                         devices=[AUTOFS_DEVICE] if os.path.exists(AUTOFS_DEVICE) else [])
            try:
                merged = container.mount_overlay()
                shutil.copytree(work / "wheels", merged / "var" / "tmp" / "wheels")
                container.boot()
                booted = time.monotonic()
                _provision(container, device, wheels)
                print(f"\n[systemd] root filesystem ready in {built - started:.1f} s, booted in "
                      f"{booted - built:.1f} s, provisioned in {time.monotonic() - booted:.1f} s")
                yield Machine(container, device)
            finally:
                container.close()  # powered off, waited for, overlay unmounted
    except nspawn.Unavailable as why:
        pytest.skip(str(why))
    finally:
        _host("losetup", "--detach", device)


def _provision(container: nspawn.Container, device: str, wheels: list[str]) -> None:
    """The venv with the wheel, disk A mounted with two films, folder B with one, the
    lingering user, and the service's configuration folder."""
    container.run("python3", "-m", "venv", VENV, timeout=300)
    container.run(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--disable-pip-version-check",
                  "--find-links", "/var/tmp/wheels", "jellyfin-watcher", timeout=600)
    assert container.run(COMMAND, "--version", check=False).returncode in (0, 2)  # installed and runnable
    # Disk A: the host's loop device, given a node in the container's /dev.
    rdev = os.stat(device).st_rdev
    os.mknod(container.path("/dev/test-disk-a"), 0o600 | stat.S_IFBLK, rdev)
    container.run("mkdir", "-p", DISK_A, FOLDER_B)
    container.run("mount", "/dev/test-disk-a", DISK_A)
    _movie(container, DISK_A, "On Disk A (2001)")
    _movie(container, DISK_A, "Also On Disk A (2002)")
    _movie(container, FOLDER_B, "In Folder B (2003)")
    # The user of the user unit; lingering starts their manager without a login.
    container.run("useradd", "--create-home", "--shell", "/bin/sh", USER)
    container.run("loginctl", "enable-linger", USER)
    uid = container.uid(USER)
    wait_until(lambda: container.run("systemctl", "is-active", f"user@{uid}.service", check=False).stdout.strip() == "active",
               WAIT, interval=0.2, message=f"the user manager of {USER} did not start")


# --- a unit under systemctl ----------------------------------------------------------------------


class Service:
    """``jellyfin-watcher.service`` of the system manager, or of ``user``'s manager."""

    def __init__(self, container: nspawn.Container, user: str | None = None) -> None:
        self.container = container
        self.user = user

    def systemctl(self, *arguments: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        scope = ["--user"] if self.user else []
        return self.container.run("systemctl", "--no-pager", *scope, *arguments, user=self.user, check=check,
                                  timeout=timeout)

    def show(self, *properties: str) -> dict[str, str]:
        shown = self.systemctl("show", UNIT, *(f"--property={name}" for name in properties))
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.show(name)[name]

    def main_pid(self) -> int:
        """The main process, as a pid of the container."""
        return int(self.prop("MainPID"))

    def start(self) -> None:
        """``systemctl start``: for ``Type=notify`` it returns once the service sent READY=1."""
        started = self.systemctl("start", UNIT, check=False)
        assert started.returncode == 0, f"start failed: {started.stderr}\n" + "\n".join(self.journal()[-40:])

    def cursor(self) -> str:
        return self.container.journal_cursor()

    def journal(self, after: str | None = None) -> list[str]:
        if self.user is None:
            matches = ["--unit", UNIT]
        else:
            uid = str(self.container.uid(self.user))
            matches = [f"_UID={uid}", f"_SYSTEMD_USER_UNIT={UNIT}", "+", f"_UID={uid}", f"USER_UNIT={UNIT}"]
        return self.container.journal(*matches, after=after)

    def wait_for(self, pattern: str, after: str | None, timeout: float = WAIT) -> str:
        """The first journal line (after the cursor ``after``) that ``pattern`` searches."""
        def found() -> str | None:
            return next((line for line in self.journal(after) if re.search(pattern, line)), None)

        try:
            return _eventually(found, timeout)
        except AssertionError:
            raise AssertionError(f"no journal line matching {pattern!r} within {timeout:g} s:\n"
                                 + "\n".join(self.journal(after)[-40:])) from None

    def wait_for_status(self, pattern: str, timeout: float = WAIT) -> str:
        """``StatusText`` (the daemon's last ``STATUS=``) once ``pattern`` searches it."""
        def matching() -> str | None:
            text = self.prop("StatusText")
            return text if re.search(pattern, text) else None

        try:
            return _eventually(matching, timeout)
        except AssertionError:
            raise AssertionError(f"StatusText never matched {pattern!r}: {self.prop('StatusText')!r}") from None

    def environ(self) -> dict[str, str]:
        """The main process's environment (read as root in the container)."""
        raw = self.container.run("cat", f"/proc/{self.main_pid()}/environ").stdout
        return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _assert_status_finds_the_daemon(container: nspawn.Container, service: Service) -> None:
    """``jellyfin-watcher status`` in a plain shell of the service's user finds the running
    daemon (the same state directory), and both roots fully watched by inotify once the
    watches are verified: no folder the service's user cannot read (``lost+found`` on disk
    A, root-only) made it fall back to polling."""
    def verified() -> dict[str, Any] | None:
        shown = container.run(COMMAND, "status", "--json", user=service.user, check=False)
        document: dict[str, Any] = json.loads(shown.stdout)
        assert (shown.returncode, document["running"], document["pid"]) == (0, True, service.main_pid()), shown
        counts = [root["watched_directories"] for root in document["roots"]]
        return document if None not in counts else None

    document = _eventually(verified, WAIT, "the watches were never verified")
    roots = [(root["path"], root["mode"], root["watched_directories"]) for root in document["roots"]]
    assert roots == [(DISK_A, "events", 3), (FOLDER_B, "events", 2)], roots  # each root and its films


def _config(jellyfin: JellyfinEmulator, machine: Machine, quiet_period: float = 1.0) -> str:
    return f"""\
log_level = "info"

[jellyfin]
url = "{jellyfin.url}"

[watch]
quiet_period = {quiet_period:g}
settle = 1

[[roots]]
path = "{DISK_A}"

[[roots]]
path = "{FOLDER_B}"

# Jellyfin (the emulator on the host) sees this container's media through its init's root.
[[path_map]]
jellyfin = "{machine.jellyfin_path(MEDIA)}"
local = "{MEDIA}"
"""


def _library(jellyfin: JellyfinEmulator, machine: Machine) -> None:
    jellyfin.libraries = [Library("Movies", [machine.jellyfin_path(MEDIA)])]
    assert jellyfin.index() == 3


def _items_lost_none(jellyfin: JellyfinEmulator) -> None:
    assert jellyfin.wait_for_scans_idle(WAIT), "Jellyfin's scans did not finish"
    assert jellyfin.removed == [], "a scan deleted items whose files were only unreachable"
    assert jellyfin.violations == []


def _scan_now(jellyfin: JellyfinEmulator) -> None:
    """``POST /Library/Refresh`` from the test: what a scan behind the watcher's back does."""
    request = urllib.request.Request(
        jellyfin.url + "/Library/Refresh", data=b"", method="POST",
        headers={"Authorization": f'MediaBrowser Token="{jellyfin.api_key}", Client="tests", Version="0"'},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.status == 204


class _Cleanup:
    """Files a test adds to the media, removed in teardown so the next test starts from the
    same three films."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.folders: list[str] = []

    def movie(self, folder: str, title: str) -> str:
        path = _movie(self.machine.container, folder, title)
        self.folders.append(f"{folder}/{title}")
        return path

    def close(self) -> None:
        self.machine.mount_a()
        for folder in self.folders:
            shutil.rmtree(self.machine.container.path(folder), ignore_errors=True)


@pytest.fixture
def media(machine: Machine) -> Iterator[_Cleanup]:
    cleanup = _Cleanup(machine)
    try:
        yield cleanup
    finally:
        cleanup.close()


@pytest.fixture
def system_service(machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> Iterator[Service]:
    """The system unit as shipped, ``ExecStart=`` changed in a drop-in, the key in the file
    ``LoadCredential=`` reads, the configuration in ``/etc/jellyfin-watcher``. Not started."""
    container = machine.container
    _library(jellyfin, machine)
    container.write(f"{CONFIG_DIR}/api-key", jellyfin.api_key + "\n", mode=0o600)
    container.write(f"{CONFIG_DIR}/config.toml", _config(jellyfin, machine))
    container.path(f"/etc/systemd/system/{UNIT}").write_bytes(SYSTEM_UNIT_FILE.read_bytes())
    container.write(f"/etc/systemd/system/{UNIT}.d/exec-start.conf",
                    f"[Service]\nExecStart=\nExecStart={COMMAND} run --config {CONFIG_DIR}/config.toml\n")
    service = Service(container)
    service.systemctl("daemon-reload")
    try:
        yield service
    finally:
        service.systemctl("stop", UNIT, check=False)
        service.systemctl("reset-failed", UNIT, check=False)
        container.run("rm", "-rf", f"/etc/systemd/system/{UNIT}", f"/etc/systemd/system/{UNIT}.d", CONFIG_DIR,
                      STATE_DIR, f"/var/lib/private/{STATE_DIR.rsplit('/', 1)[1]}")
        service.systemctl("daemon-reload")


def _exposure(output: str, unit: str = UNIT) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", output)
    assert match, f"no overall exposure level in:\n{output[-2000:]}"
    return float(match.group(1))


# --- the system unit ---------------------------------------------------------------------------


def test_system_unit_is_ready_with_a_status_line_and_refreshes_once(system_service: Service, machine: Machine,
                                                                    jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    cursor = system_service.cursor()
    system_service.start()  # returns only after READY=1 (Type=notify)
    shown = system_service.show("Type", "NotifyAccess", "ActiveState", "SubState", "StatusText", "Result")
    assert (shown["Type"], shown["NotifyAccess"], shown["ActiveState"], shown["SubState"]) == \
        ("notify", "main", "active", "running"), shown
    assert re.fullmatch(r"watching 2 of 2 roots", shown["StatusText"]), shown["StatusText"]
    system_service.wait_for(re.escape(f"watching 2 of 2 roots: {DISK_A}, {FOLDER_B}"), cursor)
    status = system_service.systemctl("status", UNIT, check=False)
    assert "Status: \"watching 2 of 2 roots\"" in status.stdout, status.stdout
    # `jellyfin-watcher status` in a root shell finds the service's state directory.
    _assert_status_finds_the_daemon(machine.container, system_service)
    assert not [line for line in system_service.journal(cursor) if "ERROR" in line or "WARNING" in line]

    media.movie(FOLDER_B, "New In B (2024)")
    sent = system_service.wait_for(r"refresh sent: POST /Library/Refresh for \d+ changes under ", cursor)
    assert sent.endswith(f"changes under {FOLDER_B}"), sent
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    system_service.wait_for_status(r"^watching 2 of 2 roots · last refresh \d\d:\d\d \(sent\)$")
    _items_lost_none(jellyfin)
    assert len(jellyfin.items) == 4
    assert len(jellyfin.refreshes) == 1


def test_the_key_comes_only_through_load_credential(system_service: Service, machine: Machine,
                                                     jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    # The configuration names no key; the key file is root's alone, unreadable to the
    # dynamic user: only LoadCredential= can hand it over.
    assert "api_key" not in container.path(f"{CONFIG_DIR}/config.toml").read_text()
    key_file = container.path(f"{CONFIG_DIR}/api-key").stat()
    assert (key_file.st_uid, stat.S_IMODE(key_file.st_mode)) == (0, 0o600)
    cursor = system_service.cursor()
    system_service.start()
    environ = system_service.environ()
    assert environ["CREDENTIALS_DIRECTORY"] == f"/run/credentials/{UNIT}", environ
    assert not any(jellyfin.api_key in value for value in environ.values())
    assert not {"JELLYFIN_API_KEY", "JELLYFIN_API_KEY_FILE"} & environ.keys()
    credential = container.run("cat", f"/run/credentials/{UNIT}/jellyfin-api-key").stdout
    assert credential.strip() == jellyfin.api_key
    # The key works: Jellyfin accepts the refresh it authorizes (a wrong key is a 401 and
    # no refresh is recorded).
    media.movie(FOLDER_B, "Keyed (2024)")
    system_service.wait_for(r"refresh sent: ", cursor)
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    assert jellyfin.requests and all(
        request.status < 400 and request.headers.get("Authorization", "").startswith("MediaBrowser Token=")
        for request in jellyfin.requests
    ), [(request.path, request.status, request.headers) for request in jellyfin.requests]
    logged = "\n".join(system_service.journal(cursor))
    assert jellyfin.api_key not in logged
    assert jellyfin.api_key not in system_service.systemctl("status", UNIT, check=False).stdout
    _items_lost_none(jellyfin)


def test_state_directory_belongs_to_the_dynamic_user(system_service: Service, machine: Machine) -> None:
    container = machine.container
    cursor = system_service.cursor()
    system_service.start()
    pid = system_service.main_pid()
    uid = int(next(line.split()[1] for line in container.run("cat", f"/proc/{pid}/status").stdout.splitlines()
                   if line.startswith("Uid:")))
    assert uid in DYNAMIC_UIDS, f"the service runs as uid {uid}, not a dynamic user"
    # and with no capabilities, no way to gain privileges, and a system-call filter.
    assert _process_status(container, pid, "CapEff", "CapBnd", "NoNewPrivs", "Seccomp") == \
        {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
    assert system_service.environ()["STATE_DIRECTORY"] == STATE_DIR
    # StateDirectory= with DynamicUser=: a link to /var/lib/private/<name>, which belongs
    # to the dynamic user (systemd.exec(5), "RuntimeDirectory=" and "DynamicUser=").
    link = container.path(STATE_DIR)
    assert link.is_symlink() and os.readlink(link) == "private/jellyfin-watcher"
    private = container.path("/var/lib/private").stat()
    assert (private.st_uid, stat.S_IMODE(private.st_mode)) == (0, 0o700)
    state = container.path("/var/lib/private/jellyfin-watcher").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (uid, 0o700)
    # The daemon wrote its state there: the mount point of disk A, learned.
    system_service.wait_for(re.escape(f"watching 2 of 2 roots: {DISK_A}, {FOLDER_B}"), cursor)
    saved = _eventually(lambda: _read_json(container.path(f"{STATE_DIR}/state.json")), WAIT,
                        "no state.json in the state directory")
    assert saved["mounts"][DISK_A] == DISK_A, saved
    assert container.path(f"{STATE_DIR}/state.json").stat().st_uid == uid


def _process_status(container: nspawn.Container, pid: int, *fields: str) -> dict[str, str]:
    """Fields of ``/proc/<pid>/status`` in the container (proc(5))."""
    lines = container.run("cat", f"/proc/{pid}/status").stdout.splitlines()
    values = dict(line.split(":", 1) for line in lines if ":" in line)
    return {field: values[field].strip() for field in fields}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
        return document
    except (OSError, ValueError):
        return None


def test_disk_unmounted_and_mounted_again_while_the_hardened_service_runs(
        system_service: Service, machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    # The service has a mount namespace of its own (ProtectSystem=, ReadOnlyPaths=, ...):
    # it must follow the container's mounts, or it would refresh while A is away.
    cursor = system_service.cursor()
    system_service.start()
    system_service.wait_for(re.escape(f"watching 2 of 2 roots: {DISK_A}, {FOLDER_B}"), cursor)

    machine.unmount_a()
    system_service.wait_for(re.escape(f"{DISK_A} is unmounted ("), cursor)
    media.movie(FOLDER_B, "While A Is Away (2024)")
    suppressed = system_service.wait_for(r"refresh suppressed: ", cursor)
    assert f"{DISK_A} is unmounted" in suppressed and re.search(r"keeping .+ until every root is healthy", suppressed)
    system_service.wait_for_status(re.escape(f"1 unhealthy: {DISK_A} (unmounted)") + r" · \d+ changes pending \(held back\)")
    assert jellyfin.refreshes == []

    mark = system_service.cursor()
    machine.mount_a()
    system_service.wait_for(re.escape(f"{DISK_A} is healthy again"), mark)
    sent = system_service.wait_for(r"refresh sent: ", mark)
    assert sent.endswith(f"changes under {DISK_A}, {FOLDER_B}"), sent  # the kept batch, with what A missed
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    system_service.wait_for_status(r"^watching 2 of 2 roots · last refresh \d\d:\d\d \(sent\)$")
    _items_lost_none(jellyfin)
    assert len(jellyfin.items) == 4
    assert len(jellyfin.refreshes) == 1

    # Control: the emulator sees the container's mounts, so the hold mattered. A scan while
    # A is away deletes A's two films.
    system_service.systemctl("stop", UNIT)
    machine.unmount_a()
    _scan_now(jellyfin)
    assert jellyfin.wait_for_scans_idle(WAIT)
    assert sorted(item.path.rsplit("/", 1)[1] for item in jellyfin.removed) == \
        ["Also On Disk A (2002).mkv", "On Disk A (2001).mkv"]


def test_reload_rereads_the_configuration_and_keeps_the_pending_batch(
        system_service: Service, machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    # The minimal system has no /bin/kill (no procps): ExecReload= must not need one.
    assert not container.path("/bin/kill").exists() and not container.path("/usr/bin/kill").exists()
    container.write(f"{CONFIG_DIR}/config.toml", _config(jellyfin, machine, quiet_period=3600))
    cursor = system_service.cursor()
    system_service.start()
    pid = system_service.main_pid()
    media.movie(FOLDER_B, "Before The Reload (2024)")
    system_service.wait_for_status(r"\d+ changes pending")

    # The new file shortens the quiet period: only a batch kept over the reload can then go out.
    container.write(f"{CONFIG_DIR}/config.toml", _config(jellyfin, machine, quiet_period=1))
    reloaded = system_service.systemctl("reload", UNIT, check=False)
    assert reloaded.returncode == 0, reloaded.stderr + "\n".join(system_service.journal(cursor)[-20:])
    system_service.wait_for(r"configuration reloaded", cursor)
    sent = system_service.wait_for(r"refresh sent: ", cursor)
    assert sent.endswith(f"changes under {FOLDER_B}"), sent
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    shown = system_service.show("MainPID", "NRestarts", "ActiveState")
    assert (int(shown["MainPID"]), shown["NRestarts"], shown["ActiveState"]) == (pid, "0", "active"), shown
    _items_lost_none(jellyfin)
    assert len(jellyfin.refreshes) == 1


def test_the_former_reload_command_fails_where_there_is_no_procps(system_service: Service, machine: Machine) -> None:
    # Control for the test above: ExecReload=/bin/kill -HUP $MAINPID, as the unit had it.
    machine.container.write(f"/etc/systemd/system/{UNIT}.d/reload.conf",
                            "[Service]\nExecReload=\nExecReload=/bin/kill -HUP $MAINPID\n")
    system_service.systemctl("daemon-reload")
    cursor = system_service.cursor()
    system_service.start()
    reloaded = system_service.systemctl("reload", UNIT, check=False)
    assert reloaded.returncode != 0
    system_service.wait_for(r"Failed to locate executable /bin/kill", cursor)


def test_stop_within_the_timeout_saves_the_batch_for_the_next_start(
        system_service: Service, machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    container.write(f"{CONFIG_DIR}/config.toml", _config(jellyfin, machine, quiet_period=3600))
    cursor = system_service.cursor()
    system_service.start()
    media.movie(FOLDER_B, "Before The Stop (2024)")
    system_service.wait_for_status(r"\d+ changes pending")

    limit = int(system_service.prop("TimeoutStopUSec").removesuffix("s")) if system_service.prop(
        "TimeoutStopUSec").endswith("s") else None
    began = time.monotonic()
    system_service.systemctl("stop", UNIT)
    took = time.monotonic() - began
    print(f"\n[systemd] systemctl stop took {took:.2f} s (TimeoutStopSec {limit} s)")
    assert limit is not None and took < limit
    assert system_service.prop("ActiveState") == "inactive"
    # How it ended, from systemd's own lines (once inactive, the unit's properties are
    # dropped with it): exited by itself with status 0 after SIGTERM, nothing killed.
    _assert_clean_stop(system_service, cursor)
    stopped = system_service.wait_for(r"stopped; \d+ changes pending", cursor)
    assert f"under {FOLDER_B}, saved in {STATE_DIR}/state.json" in stopped, stopped
    saved = _read_json(container.path("/var/lib/private/jellyfin-watcher/state.json"))
    assert saved is not None and saved["pending"]["roots"] == [FOLDER_B], saved
    assert jellyfin.refreshes == []

    container.write(f"{CONFIG_DIR}/config.toml", _config(jellyfin, machine, quiet_period=1))
    mark = system_service.cursor()
    system_service.start()
    system_service.wait_for(r"\d+ changes under .* were pending when the watcher last stopped", mark)
    system_service.wait_for(r"refresh sent: ", mark)
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    _items_lost_none(jellyfin)
    assert len(jellyfin.items) == 4


def _assert_clean_stop(service: Service, cursor: str) -> None:
    """systemd says it stopped the unit, and that nothing failed or was killed on the way
    (it would say "State 'stop-sigterm' timed out. Killing.", "Main process exited,
    code=killed, status=9/KILL" or "Failed with result ...")."""
    service.wait_for(r"^Stopped jellyfin-watcher\.service", cursor)
    lines = service.journal(cursor)
    bad = r"timed out|Killing|code=killed|code=dumped|status=\d+/|Failed with result"
    assert not [line for line in lines if re.search(bad, line)], lines


def test_keepalive_holds_and_a_stalled_loop_is_restarted(system_service: Service, machine: Machine) -> None:
    watchdog = 5  # seconds; keep-alives every 2.5 s, margin enough on a loaded machine
    machine.container.write(f"/etc/systemd/system/{UNIT}.d/keepalive.conf",
                            f"[Service]\nWatchdogSec={watchdog}s\nRestartSec=1s\n")
    system_service.systemctl("daemon-reload")
    cursor = system_service.cursor()
    system_service.start()
    assert system_service.prop("WatchdogUSec") == f"{watchdog}s"
    pid = system_service.main_pid()

    # Keep-alives: systemd stamps each WATCHDOG=1 it receives. Collect stamps until they span
    # more than one watchdog period: the service outlived WatchdogSec without a restart.
    stamps: set[int] = set()

    def spanning() -> bool:
        stamps.add(int(system_service.prop("WatchdogTimestampMonotonic")))
        return len(stamps) >= 3 and max(stamps) - min(stamps) > watchdog * 1_000_000

    wait_until(spanning, WAIT, interval=0.2, message=f"keep-alive stamps: {sorted(stamps)}")
    shown = system_service.show("MainPID", "NRestarts", "ActiveState")
    assert (int(shown["MainPID"]), shown["NRestarts"], shown["ActiveState"]) == (pid, "0", "active"), shown

    # The loop stalls (SIGSTOP: no more keep-alives): systemd aborts and restarts it.
    system_service.systemctl("kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)
    system_service.wait_for(rf"Watchdog timeout \(limit {watchdog}s\)!", cursor)
    system_service.wait_for(r"Failed with result 'watchdog'", cursor)
    def running_again() -> dict[str, str] | None:
        shown = system_service.show("MainPID", "NRestarts", "ActiveState", "SubState")
        return shown if (shown["NRestarts"], shown["ActiveState"], shown["SubState"]) == ("1", "active", "running") else None

    restarted = _eventually(running_again, WAIT, "the service was not restarted after the watchdog fired")
    assert int(restarted["MainPID"]) != pid
    system_service.wait_for_status(r"^watching 2 of 2 roots")


def test_exposure_of_the_unit_as_shipped(system_service: Service, machine: Machine) -> None:
    # What systemd itself, running the unit, rates it (the drop-in changes only ExecStart=).
    system_service.start()
    analyzed = machine.container.run("systemd-analyze", "security", "--no-pager", UNIT, check=False)
    score = _exposure(analyzed.stdout)
    print(f"\n[systemd] {UNIT} under systemd: overall exposure {score:.1f} (limit {MAX_EXPOSURE:g})")
    assert score <= MAX_EXPOSURE, analyzed.stdout
    claimed = re.search(r"(\d+\.\d+) once systemd has loaded it", (REPO / "README.md").read_text(encoding="utf-8"))
    if claimed:  # the README quotes this score: it must be this one
        assert float(claimed.group(1)) == score, f"README says {claimed.group(1)}, systemd says {score:.1f}"


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of the shipped unit's ``IPAddressAllow=`` (``localhost`` and
    ``link-local`` as systemd.resource-control(5) defines them)."""
    [line] = [line for line in SYSTEM_UNIT_FILE.read_text().splitlines() if line.startswith("IPAddressAllow=")]
    names = {"localhost": ["127.0.0.0/8", "::1/128"], "link-local": ["169.254.0.0/16", "fe80::/64"]}
    return [ipaddress.ip_network(network) for word in line.split("=", 1)[1].split()
            for network in names.get(word, [word])]


def _outside_address() -> str | None:
    """An IPv4 address of this machine that the unit's IPAddressAllow= does not admit."""
    allowed = _allowed_networks()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET:
                ip = ipaddress.ip_address(address.address)
                if not any(ip in network for network in allowed):
                    return str(ip)
    return None


def test_ip_address_allow_admits_jellyfin_on_loopback_and_nothing_else(
        system_service: Service, machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    port = str(urllib.parse.urlsplit(jellyfin.url).port)
    # Control: this container enforces IP firewalls at all (BPF programs on cgroups).
    control = container.run("systemd-run", "--quiet", "--wait", "--pipe", "--property=IPAddressDeny=any",
                            "python3", "-c", _CONNECT, "127.0.0.1", port, check=False)
    if control.stdout.strip() == "connected":
        pytest.skip("this container does not enforce IPAddressDeny= (no BPF cgroup firewall): nothing to check")
    assert control.stdout.strip() in ("timed out", "Operation not permitted"), control

    cursor = system_service.cursor()
    system_service.start()
    # A probe joins the service's own cgroup, where the unit's firewall applies to it.
    cgroup = system_service.prop("ControlGroup")
    probe = f'echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs && exec python3 -c "$0" "$@"'
    inside = container.run("sh", "-c", probe, _CONNECT, "127.0.0.1", port, check=False)
    assert inside.stdout.strip() == "connected", inside
    outside = _outside_address()
    if outside is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((outside, 0))
            listener.listen(8)
            other = str(listener.getsockname()[1])
            # Reachable from the container, but not from the service.
            assert container.run("python3", "-c", _CONNECT, outside, other).stdout.strip() == "connected"
            refused = container.run("sh", "-c", probe, _CONNECT, outside, other, check=False)
            assert refused.stdout.strip() in ("timed out", "Operation not permitted"), (outside, refused)
    else:
        print("\n[systemd] no address of this machine lies outside IPAddressAllow=: only loopback was checked")
    # And the service itself reaches Jellyfin on loopback.
    media.movie(FOLDER_B, "Through The Firewall (2024)")
    system_service.wait_for(r"refresh sent: ", cursor)
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    _items_lost_none(jellyfin)


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as error:
    print(error.strerror or error)
"""


# --- a share behind x-systemd.automount --------------------------------------------------------

NAS = "/srv/nas"
"""Where the share is automounted in the container (an fstab line with ``x-systemd.automount``)."""
NAS_ROOT = f"{NAS}/movies"
NAS_DEVICE = "/var/tmp/test-nas"
"""The share's block device node, outside ``/dev``: in a container (``/sys`` read-only)
systemd-fstab-generator skips every fstab line that names a device under ``/dev`` or ``/sys``
("Running in a container, ignoring fstab device entry for ...", ``src/fstab-generator/fstab-generator.c``),
where device nodes are normally absent; this one is there."""
NAS_AUTOMOUNT = "srv-nas.automount"
"""``systemd-escape --path --suffix=automount /srv/nas``; the share's mount unit is ``srv-nas.mount``."""
NAS_MOUNT = "srv-nas.mount"
IDLE = "/srv/idle"
"""A control automount (tmpfs) with the share's idle timeout, which nothing holds: its
expiry shows that an idle timeout has passed."""
IDLE_AUTOMOUNT = "srv-idle.automount"
NAS_FILMS = ("On The Share (2010)", "Also On The Share (2011)")
NAS_WORK = "/var/tmp/jellyfin-watcher-nas"
"""The command line's configuration and state for the share (not the service's)."""
_REQUEST = re.compile(rf"Got automount request for {re.escape(NAS)}, triggered by (\d+) \((.*)\)")
"""What systemd logs when a process of the container looks the automount point up
(``src/core/automount.c``, ``automount_dispatch_io()``). A process outside the container's
pid namespace, such as the emulator on the host, sends no request at all: its look-up fails
with ``ENOENT`` (the kernel's ``fs/autofs/waitq.c``, ``autofs_wait()``: "we are in an
unrelated pid namespace")."""


@dataclass
class Share:
    """The automounted share, seen from the host through the container's mount table."""

    machine: Machine

    def top(self, point: str = NAS) -> tuple[int, str] | None:
        """(mount ID, filesystem type) of the mount on top at ``point`` in the container:
        ``autofs`` while the share is not mounted, ``ext4`` once it is; None if neither."""
        assert self.machine.container.leader is not None
        with open(f"/proc/{self.machine.container.leader}/mountinfo", encoding="utf-8") as table:
            rows = [line.split() for line in table if line.split()[4] == point]
        under = {row[1] for row in rows}  # parent IDs: a mount stacked on another names it
        tops = [(int(row[0]), row[row.index("-") + 1]) for row in rows if row[0] not in under]
        return tops[-1] if tops else None

    def fstype(self, point: str = NAS) -> str | None:
        top = self.top(point)
        return top[1] if top else None

    def wait_expired(self, point: str = NAS) -> None:
        """Until the idle automount at ``point`` has been unmounted again (only autofs left)."""
        wait_until(lambda: self.fstype(point) == "autofs", WAIT, interval=0.1,
                   message=f"the idle automount {point} did not expire: {self.top(point)}")

    def idle_timeout_passes(self) -> None:
        """Until systemd has expired the control automount :data:`IDLE`, looked up now, twice
        over: two idle timeouts have passed, and systemd has checked its automounts for
        expiry after each."""
        for _ in range(2):
            self.machine.container.run("ls", IDLE)  # the look-up mounts it
            assert self.fstype(IDLE) == "tmpfs"
            self.wait_expired(IDLE)

    def journal(self, after: str | None) -> list[str]:
        """systemd's lines about the share after the cursor ``after``. Not filtered by
        ``journalctl --unit``: with a match, ``--after-cursor`` also skips the first matching
        entry when the cursor's own entry does not match (systemd 252 steps two entries past
        the cursor)."""
        return [line for line in self.machine.container.journal(after=after) if NAS in line or "srv-nas." in line]

    def wait_for(self, pattern: re.Pattern[str], after: str) -> re.Match[str]:
        """The first of systemd's lines about the share after the cursor ``after`` that ``pattern`` searches."""
        def found() -> re.Match[str] | None:
            return next((match for line in self.journal(after) if (match := pattern.search(line))), None)

        try:
            return _eventually(found, WAIT)
        except AssertionError:
            raise AssertionError(f"no line matching {pattern.pattern!r} about {NAS} within {WAIT:g} s:\n"
                                 + "\n".join(self.journal(after)[-20:])) from None

    def wait_for_request(self, after: str) -> re.Match[str]:
        """systemd's line for the first look-up after the cursor ``after`` that made it mount the share."""
        return self.wait_for(_REQUEST, after)


@pytest.fixture
def nas(machine: Machine, tmp_path: Path) -> Iterator[Share]:
    """An ext4 image holding two films under ``movies/`` (a loop device of the host), behind
    the fstab line ``noauto,x-systemd.automount,x-systemd.idle-timeout=1`` at :data:`NAS`,
    ``daemon-reload`` run and the automount unit started; the share itself not mounted yet."""
    container = machine.container
    if not container.path(AUTOFS_DEVICE).exists():
        pytest.skip(f"this host has no {AUTOFS_DEVICE} to give the container (the autofs module is not "
                    "loaded: modprobe autofs4), and systemd runs no .automount unit without it")
    seed = tmp_path / "nas"
    for title in NAS_FILMS:
        file = seed / "movies" / title / f"{title}.mkv"
        file.parent.mkdir(parents=True)
        file.write_bytes(b"\x1aE\xdf\xa3 not really a film")
    for folder in (seed, *seed.rglob("*")):
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    image = tmp_path / "nas.img"
    with open(image, "wb") as file:
        file.truncate(16 * 1024 * 1024)
    made = _host("mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(seed), str(image))
    assert made.returncode == 0, made.stderr
    attached = _host("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device for the share: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    fstab = container.path("/etc/fstab")
    original = fstab.read_text()
    share = Share(machine)
    try:
        os.mknod(container.path(NAS_DEVICE), 0o600 | stat.S_IFBLK, os.stat(device).st_rdev)
        fstab.write_text(original + f"{NAS_DEVICE} {NAS} ext4 noauto,x-systemd.automount,x-systemd.idle-timeout=1 0 0\n"
                         f"tmpfs {IDLE} tmpfs noauto,x-systemd.automount,x-systemd.idle-timeout=1 0 0\n")
        container.run("systemctl", "daemon-reload")
        container.run("systemctl", "start", NAS_AUTOMOUNT, IDLE_AUTOMOUNT)
        shown = container.run("systemctl", "show", NAS_AUTOMOUNT, "--property=ActiveState,SubState,TimeoutIdleUSec").stdout
        assert sorted(shown.split()) == ["ActiveState=active", "SubState=waiting", "TimeoutIdleUSec=1s"], shown
        assert share.fstype() == "autofs"
        container.write(f"{NAS_WORK}/config.toml", f'state_dir = "{NAS_WORK}/state"\n\n[[roots]]\npath = "{NAS_ROOT}"\n')
        yield share
    finally:
        container.run("systemctl", "stop", UNIT, check=False)  # the service holds the share open
        container.run("systemctl", "stop", NAS_AUTOMOUNT, NAS_MOUNT, IDLE_AUTOMOUNT, "srv-idle.mount", check=False)
        for point in (NAS, IDLE):
            for _ in range(3):  # whatever is left (a failed stop), lazily
                if share.top(point) is None:
                    break
                container.run("umount", "-l", point, check=False)
        fstab.write_text(original)
        container.run("systemctl", "daemon-reload", check=False)
        container.run("systemctl", "reset-failed", NAS_AUTOMOUNT, NAS_MOUNT, IDLE_AUTOMOUNT, "srv-idle.mount", check=False)
        container.run("rm", "-rf", NAS_DEVICE, NAS_WORK, check=False)
        container.run("rmdir", NAS, IDLE, check=False)
        _host("losetup", "--detach", device)


def _nas_config(jellyfin: JellyfinEmulator, machine: Machine) -> str:
    return f"""\
log_level = "info"

[jellyfin]
url = "{jellyfin.url}"

[watch]
quiet_period = 1
settle = 1

[[roots]]
path = "{NAS_ROOT}"

[[path_map]]
jellyfin = "{machine.jellyfin_path(NAS)}"
local = "{NAS}"
"""


def test_x_systemd_automount_share_is_mounted_by_the_probe_and_refreshed_while_held(
        nas: Share, system_service: Service, machine: Machine, jellyfin: JellyfinEmulator) -> None:
    container = machine.container
    config = f"{NAS_WORK}/config.toml"

    # The command line: its probe's look-up makes systemd mount the share.
    mark = container.journal_cursor()
    learned = container.run(COMMAND, "refresh", "--dry-run", "--config", config, check=False)
    assert learned.returncode == 0, learned
    assert int(nas.wait_for_request(mark).group(1)) > 0  # asked by a process of the container
    saved = _read_json(container.path(f"{NAS_WORK}/state/state.json"))
    assert saved is not None and saved["mounts"] == {NAS_ROOT: NAS}, saved

    # Idle for a second: systemd unmounts it. Expired is not unmounted: the check mounts it again.
    nas.wait_expired()
    mark = container.journal_cursor()
    checked = container.run(COMMAND, "check", "--config", config, check=False)
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith(f"{NAS_ROOT}: healthy (on {NAS} (ext4))"), checked.stdout
    nas.wait_for_request(mark)

    # The service (as shipped, in a mount namespace of its own): it mounts the share, holds it
    # while it watches, and refreshes with nothing lost.
    nas.wait_expired()
    container.write(f"{CONFIG_DIR}/config.toml", _nas_config(jellyfin, machine))
    cursor = system_service.cursor()
    system_service.start()
    system_service.wait_for(re.escape(f"watching 1 of 1 roots: {NAS_ROOT}"), cursor)
    nas.wait_for_request(cursor)
    held = nas.top()
    assert held is not None and held[1] == "ext4", held
    # Jellyfin (the emulator, on the host: outside the container's pid namespace its look-ups
    # cannot make systemd mount the share) finds the films only while the share is mounted.
    shared = machine.jellyfin_path(NAS_ROOT)
    jellyfin.libraries = [*jellyfin.libraries, Library("Share", [shared])]
    assert jellyfin.index() == len(NAS_FILMS)
    _movie(container, NAS_ROOT, "New On The Share (2024)")
    sent = system_service.wait_for(r"refresh sent: ", cursor)
    assert sent.endswith(f"changes under {NAS_ROOT}"), sent
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    _items_lost_none(jellyfin)
    assert sorted(path.rsplit("/", 1)[1] for path in jellyfin.items if path.startswith(shared + "/")) == \
        sorted(f"{title}.mkv" for title in (*NAS_FILMS, "New On The Share (2024)"))
    # Idle timeouts pass: the share stays the same mount (the watcher keeps it in use). The
    # kernel's expiry check does not see that use, which is in the service's own mount
    # namespace: systemd tries to unmount the share, and the unmount is refused.
    nas.idle_timeout_passes()
    assert nas.top() == held, "the watched share was unmounted"
    nas.wait_for(re.compile(rf"umount: {re.escape(NAS)}: target is busy"), cursor)
    assert nas.top() == held, "the watched share was unmounted"
    print("\n[systemd] the share's journal while held:\n" + "\n".join(nas.journal(cursor)))
    assert not [line for line in system_service.journal(cursor) if "ERROR" in line or "WARNING" in line]


# --- the user unit ------------------------------------------------------------------------------


@pytest.fixture
def user_service(machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> Iterator[Service]:
    """The user unit, unchanged, in ``~/.config/systemd/user`` of a lingering user; the key
    and the configuration where its header says. Not started."""
    container = machine.container
    home = container.home(USER)
    _library(jellyfin, machine)
    for folder in (".local/bin", ".config/systemd/user", ".config/jellyfin-watcher"):
        container.run("mkdir", "-p", f"{home}/{folder}", user=USER)
    container.run("ln", "-sf", COMMAND, f"{home}/.local/bin/jellyfin-watcher", user=USER)
    container.write(f"{home}/.config/jellyfin-watcher/api-key", jellyfin.api_key + "\n", mode=0o600, owner=USER)
    container.write(f"{home}/.config/jellyfin-watcher/config.toml", _config(jellyfin, machine), owner=USER)
    container.path(f"{home}/.config/systemd/user/{UNIT}").write_bytes(USER_UNIT_FILE.read_bytes())
    container.run("chown", f"{USER}:", f"{home}/.config/systemd/user/{UNIT}")
    service = Service(container, user=USER)
    service.systemctl("daemon-reload")
    try:
        yield service
    finally:
        service.systemctl("stop", UNIT, check=False)
        service.systemctl("reset-failed", UNIT, check=False)
        container.run("rm", "-rf", f"{home}/.config/systemd/user/{UNIT}", f"{home}/.config/jellyfin-watcher",
                      f"{home}/.local/state/jellyfin-watcher")
        service.systemctl("daemon-reload")


def test_user_unit_is_ready_keeps_its_state_and_refreshes_once(user_service: Service, machine: Machine,
                                                               jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    home = container.home(USER)
    cursor = user_service.cursor()
    user_service.start()
    shown = user_service.show("Type", "ActiveState", "SubState", "StatusText")
    assert (shown["Type"], shown["ActiveState"], shown["SubState"]) == ("notify", "active", "running"), shown
    assert shown["StatusText"] == "watching 2 of 2 roots", shown
    user_service.wait_for(re.escape(f"watching 2 of 2 roots: {DISK_A}, {FOLDER_B}"), cursor)
    environ = user_service.environ()
    # No StateDirectory= (systemd 252 would make it ~/.config/jellyfin-watcher): the
    # watcher's own default, where `status` looks too.
    assert "STATE_DIRECTORY" not in environ, environ
    assert not any(jellyfin.api_key in value for value in environ.values())
    _assert_status_finds_the_daemon(container, user_service)
    assert not [line for line in user_service.journal(cursor) if "ERROR" in line or "WARNING" in line]
    uid = container.uid(USER)
    # What a user manager can still apply (its header): no privileges to gain, a
    # system-call filter (seccomp mode 2).
    assert _process_status(container, user_service.main_pid(), "Uid", "NoNewPrivs", "Seccomp") == \
        {"Uid": f"{uid}\t{uid}\t{uid}\t{uid}", "NoNewPrivs": "1", "Seccomp": "2"}
    saved = _eventually(lambda: _read_json(container.path(f"{home}/.local/state/jellyfin-watcher/state.json")),
                        WAIT, "no state.json in ~/.local/state/jellyfin-watcher")
    assert saved["mounts"][DISK_A] == DISK_A
    assert container.path(f"{home}/.local/state/jellyfin-watcher/state.json").stat().st_uid == uid

    media.movie(FOLDER_B, "New For The User (2024)")
    sent = user_service.wait_for(r"refresh sent: ", cursor)
    assert sent.endswith(f"changes under {FOLDER_B}"), sent
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    user_service.wait_for_status(r"^watching 2 of 2 roots · last refresh \d\d:\d\d \(sent\)$")
    _items_lost_none(jellyfin)
    assert len(jellyfin.refreshes) == 1
    assert jellyfin.api_key not in "\n".join(user_service.journal(cursor))


def test_user_unit_holds_while_a_disk_is_away_and_keeps_batches_over_reload_and_stop(
        user_service: Service, machine: Machine, jellyfin: JellyfinEmulator, media: _Cleanup) -> None:
    container = machine.container
    home = container.home(USER)
    cursor = user_service.cursor()
    user_service.start()
    user_service.wait_for(re.escape(f"watching 2 of 2 roots: {DISK_A}, {FOLDER_B}"), cursor)

    # A disk away: held, then refreshed once.
    machine.unmount_a()
    user_service.wait_for(re.escape(f"{DISK_A} is unmounted ("), cursor)
    media.movie(FOLDER_B, "User While A Is Away (2024)")
    user_service.wait_for(r"refresh suppressed: " + re.escape(f"{DISK_A} is unmounted"), cursor)
    assert jellyfin.refreshes == []
    mark = user_service.cursor()
    machine.mount_a()
    sent = user_service.wait_for(r"refresh sent: ", mark)
    assert sent.endswith(f"changes under {DISK_A}, {FOLDER_B}"), sent
    assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
    user_service.wait_for_status(r"^watching 2 of 2 roots · last refresh")

    # Reload: a batch pending under a long quiet period goes out once the new file shortens it.
    config = f"{home}/.config/jellyfin-watcher/config.toml"
    container.write(config, _config(jellyfin, machine, quiet_period=3600), owner=USER)
    mark = user_service.cursor()
    user_service.systemctl("reload", UNIT)
    user_service.wait_for(r"configuration reloaded", mark)
    media.movie(FOLDER_B, "User Before The Reload (2024)")
    user_service.wait_for_status(r"\d+ changes pending")
    container.write(config, _config(jellyfin, machine, quiet_period=1), owner=USER)
    pid = user_service.main_pid()
    mark = user_service.cursor()
    user_service.systemctl("reload", UNIT)
    user_service.wait_for(r"refresh sent: ", mark)
    assert len(jellyfin.wait_for_refreshes(2, WAIT)) == 2
    assert user_service.main_pid() == pid

    # Stop: within TimeoutStopSec, the pending batch saved in the state directory.
    container.write(config, _config(jellyfin, machine, quiet_period=3600), owner=USER)
    mark = user_service.cursor()
    user_service.systemctl("reload", UNIT)
    user_service.wait_for(r"configuration reloaded", mark)
    media.movie(FOLDER_B, "User Before The Stop (2024)")
    user_service.wait_for_status(r"\d+ changes pending")
    began = time.monotonic()
    user_service.systemctl("stop", UNIT)
    took = time.monotonic() - began
    assert took < 10, f"stop took {took:.1f} s"
    _assert_clean_stop(user_service, mark)
    user_service.wait_for(r"stopped; \d+ changes pending under " + re.escape(FOLDER_B), mark)
    saved = _read_json(container.path(f"{home}/.local/state/jellyfin-watcher/state.json"))
    assert saved is not None and saved["pending"]["roots"] == [FOLDER_B], saved
    _items_lost_none(jellyfin)
    assert len(jellyfin.refreshes) == 2


def test_user_unit_exposure_is_reported(user_service: Service, machine: Machine) -> None:
    # A user manager cannot apply most of the system unit's sandboxing (its header says which):
    # the score is reported, not held to the system unit's limit.
    user_service.start()
    analyzed = user_service.container.run("systemd-analyze", "--user", "security", "--no-pager", UNIT,
                                          user=USER, check=False)
    score = _exposure(analyzed.stdout)
    print(f"\n[systemd] {USER_UNIT_FILE.name} under a user manager: overall exposure {score:.1f} (reported only)")
    assert 0.0 <= score <= 10.0
