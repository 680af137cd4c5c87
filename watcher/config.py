"""Configuration: parsed and validated once into frozen section objects.

Sources, highest precedence first: command-line flags, environment (``JELLYFIN_URL``,
``JELLYFIN_API_KEY``, ``JELLYFIN_API_KEY_FILE``, ``JELLYFIN_WATCHER_NOTIFY_URLS``, systemd
credentials), the TOML file, defaults. The API key is never taken from the command line (it
would show in ``ps`` and in shell history).

The file's sections are value objects (:class:`JellyfinSettings`, :class:`WatchSettings`, …)
whose fields carry their own schema — TOML key, parser, flag, environment variable, what it
means — so that loading, the unknown-key check, ``config --print`` and the documentation test
all read one description. Fixed choices are enums (``refresh.scope`` is a :class:`Scope`).

Every error is a :class:`~watcher.errors.ConfigError` whose message names the file, the key
and what is expected, e.g. ``config.toml: watch.quiet_period: expected seconds ≥ 0, got
"abc"``.
"""

from __future__ import annotations

import difflib
import enum
import json
import logging
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from watcher.errors import ConfigError
from watcher.paths import within

logger = logging.getLogger(__name__)

APP_NAME = "jellyfin-watcher"
SYSTEM_STATE_DIR = Path("/var/lib/jellyfin-watcher")
CREDENTIAL_NAME = "jellyfin-api-key"
"""File name of the API key in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""
NOTIFY_CREDENTIAL_NAME = "jellyfin-watcher-notify-urls"
"""File name of the notification URLs in ``$CREDENTIALS_DIRECTORY`` (one per line)."""
NOTIFY_URLS_VARIABLE = "JELLYFIN_WATCHER_NOTIFY_URLS"
"""Environment variable holding notification URLs, separated by white space."""

DEFAULT_NETWORK_FSTYPES: tuple[str, ...] = (
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "davfs",
    "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gvfsd-fuse", "fuse.smbnetfs",
)
"""Filesystem types (mount table) whose remote changes inotify cannot see: polled in mode auto."""
DEFAULT_LIST_FSTYPES: tuple[str, ...] = ("fuse.rclone", "fuse.s3fs", "fuse.goofys", "fuse.gcsfuse")
"""Filesystem types whose folder modification time does not follow the folder's contents
when they change on the server: a polling cycle lists every folder (``poll = "list"``) and
mode auto polls them. Sources: rclone mount (measured with ``rclone serve webdav``: a
folder's mtime never changes through the mount when files are added on the server); s3fs
(s3fs-fuse issue #2048: folder mtimes are fixed); goofys (kahing/goofys issue #219: the
parent's mtime is not updated); gcsfuse (docs/semantics.md: folders are object-name
prefixes, so adding an object changes no folder object)."""
BACKUP_CONTENTS = ("database", "metadata", "trickplay", "subtitles")
"""Keys of ``[backup]`` naming what an archive holds (``BackupOptionsDto``: Database, Metadata,
Trickplay, Subtitles)."""

DEFAULT_IGNORE: tuple[str, ...] = (
    # Partial and temporary downloads.
    "*.part",
    "*.partial",
    "*.partial~",  # Sonarr and Radarr copy through <name>.partial~ ...
    "*.backup~",  # ... and keep the replaced file as <name>.backup~
    "*.!qB",
    "*.!ut",
    "*.crdownload",
    "*.aria2",
    "*.filepart",
    "*.tmp",
    # Hidden files and folders, NAS and desktop litter.
    ".*",
    "@eaDir",
    "#recycle",
    "#snapshot",
    "$RECYCLE.BIN",
    "lost+found",
    "Thumbs.db",
    "desktop.ini",
    # What Jellyfin writes next to the media itself.
    "*.nfo",
    "poster.*",
    "*-poster.*",
    "fanart.*",
    "*-fanart.*",
    "backdrop*.*",
    "banner.*",
    "logo.*",
    "clearart.*",
    "clearlogo.*",
    "landscape.*",
    "disc.*",
    "folder.*",
    "thumb.*",
    "*-thumb.jpg",
    "*.trickplay",
    "extrafanart",
    "metadata",
)
"""Patterns matched (case-insensitively, shell-style) against every component of a path
below a root; an event whose every path has a matching component is ignored."""


# --- fixed choices ----------------------------------------------------------------------------


class Choice(enum.StrEnum):
    """A fixed choice: compares equal to its TOML spelling."""


class ServerKind(Choice):
    JELLYFIN = "jellyfin"
    EMBY = "emby"


class Scope(Choice):
    """What one refresh asks Jellyfin to scan (:mod:`watcher.core.scope`)."""

    SERVER = "server"
    LIBRARY = "library"
    PATH = "path"


class Gate(Choice):
    """Which roots must be healthy for a refresh (:mod:`watcher.core.gate`)."""

    ALL = "all"
    LIBRARY = "library"


class GuardWhen(Choice):
    """When the loss guard predicts: before every refresh, or after removals only."""

    ALWAYS = "always"
    REMOVALS = "removals"


class Mode(Choice):
    """How a root is watched: ``events`` (inotify), ``poll``, or ``auto`` (poll network
    filesystems, events elsewhere)."""

    AUTO = "auto"
    EVENTS = "events"
    POLL = "poll"


class PollMethod(Choice):
    """How a polling cycle finds changes: ``mtime`` (list the folders whose modification time
    changed) or ``list`` (list every folder: where folder times do not follow their contents)."""

    MTIME = "mtime"
    LIST = "list"


class Fallback(Choice):
    """What to do when inotify cannot watch every folder of a root: ``poll`` it, or ``none``."""

    POLL = "poll"
    NONE = "none"


class LogLevel(Choice):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(Choice):
    TEXT = "text"
    JSON = "json"


# --- values -----------------------------------------------------------------------------------


class Secret:
    """A string that never shows itself: ``repr``/``str`` print ``********``.

    Call :meth:`reveal` where the value is really needed (the HTTP header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Root:
    """A library folder on disk that is watched and health-checked.

    ``path`` is absolute but not resolved (resolving touches the filesystem, which may hang).
    ``mount`` is the mount point the root must live on; None means: learn it the first time
    the root is seen healthy.
    """

    path: Path
    mount: Path | None = None
    library_id: str | None = None
    """Jellyfin's ``ItemId`` of the library this root belongs to (32 hex digits), if known."""
    library_name: str | None = None
    mode: Mode = Mode.AUTO
    poll_interval: float | None = None
    """Seconds between polling cycles; None: ``watch.poll_interval``."""
    fallback: Fallback = Fallback.POLL
    poll: PollMethod | None = None
    """None: ``list`` on the filesystem types of ``watch.list_fstypes``, else ``mtime``."""
    health_gate: bool = True
    """False: this root's health is reported but never holds a refresh back (the loss
    guard still applies)."""


@dataclass(frozen=True, slots=True)
class PathMapping:
    """``jellyfin``: a folder as Jellyfin sees it (e.g. inside its container); ``local``: the
    same folder on this machine. Both normalised, without a trailing slash."""

    jellyfin: str
    local: str


@dataclass(frozen=True, slots=True)
class LibraryLimits:
    """The loss guard's limits for one library (``[guard.libraries.NAME]``)."""

    name: str
    max_removals: int
    max_share: float
    """A fraction (0.05 = 5 %)."""


# --- parsers: (value from TOML or a flag, where it came from) -> the typed value ----------------

_T = TypeVar("_T")
Parser = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def seconds(minimum: float = 0.0) -> Parser:
    def parse(value: Any, source: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {_type_name(value)}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {value!r}") from None
        if not number >= minimum or number == float("inf"):
            raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {value!r}")
        return number

    return parse


def boolean(value: Any, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    return value


def string(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: expected a non-empty string, got {_type_name(value)}")
    return value


def strings(value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{source}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def count(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: expected a whole number of items ≥ 0, got {value!r}")
    return value


def percent(value: Any, source: str) -> float:
    """A percentage in the file, a fraction in the program (5 → 0.05)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(f"{source}: expected a percentage from 0 to 100, got {value!r}")
    return float(value) / 100


def choice(kind: type[Choice]) -> Parser:
    def parse(value: Any, source: str) -> Choice:
        names = [member.value for member in kind]
        if not isinstance(value, str) or value.lower() not in names:
            raise ConfigError(f"{source}: expected one of {', '.join(names)}, got {value!r}")
        return kind(value.lower())

    return parse


def url(value: Any, source: str) -> str:
    text = string(value, source).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{source}: expected an http:// or https:// URL such as http://localhost:8096, got {text!r}")
    return text.rstrip("/")


def path(value: Any, source: str) -> Path:
    return Path(string(value, source)).expanduser()


# --- the schema: each setting's field carries its description -------------------------------------


@dataclass(frozen=True, slots=True)
class Describe:
    """One setting's schema: its TOML ``key``, ``parse``r, command-line ``flag`` and
    ``env``ironment variable (if any), what it means (``doc``); ``custom``: loaded and shown
    by hand (a secret, several keys); ``keys``: the TOML keys a custom setting reads; ``show``:
    its value as TOML for ``config --print``."""

    key: str
    parse: Parser | None = None
    doc: str = ""
    flag: str | None = None
    env: str | None = None
    custom: bool = False
    keys: tuple[str, ...] = ()
    show: Callable[[Any], list[str]] | None = None


def setting(default: Any, parse: Parser | None, doc: str, *, key: str = "", flag: str | None = None,
            env: str | None = None, custom: bool = False, keys: tuple[str, ...] = (),
            show: Callable[[Any], list[str]] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A section field with its schema (:class:`Describe`; ``key`` defaults to the field's name)."""
    describe = Describe(key, parse, doc, flag, env, custom, keys, show)
    if factory is not None:
        return field(default_factory=factory, metadata={"describe": describe})
    return field(default=default, metadata={"describe": describe})


def described(section: type[Any]) -> Iterator[tuple[Field[Any], Describe]]:
    """Each field of ``section`` with its schema (the key filled in)."""
    for item in fields(section):
        describe: Describe | None = item.metadata.get("describe")
        if describe is not None:
            yield item, replace(describe, key=describe.key or item.name)


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return json.dumps([str(item) for item in value], ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def _masked(value: Any) -> list[str]:
    return [f"= {json.dumps('********')}"] if value is not None else []


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JellyfinSettings:
    """``[jellyfin]``: where the server is and how to talk to it."""

    url: str | None = setting(None, url, "Jellyfin's URL, http:// or https://, with the reverse-proxy prefix if any",
                              flag="url", env="JELLYFIN_URL")
    api_key: Secret | None = setting(None, None, "the API key (Dashboard → API Keys)", custom=True,
                                     keys=("api_key", "api_key_file"), show=_masked)
    server: ServerKind = setting(ServerKind.JELLYFIN, choice(ServerKind), "emby for an Emby server (best effort)")
    username: str | None = setting(None, string, "log in as this user instead of using an API key (needs password_file)")
    password: Secret | None = setting(None, None, "that user's password", custom=True, keys=("password_file",),
                                      show=_masked)
    verify: bool | str = setting(True, None, "TLS verification: true, false, or a CA bundle (ca_bundle)", custom=True,
                                 keys=("verify", "ca_bundle"),
                                 show=lambda value: ([f"ca_bundle = {toml_value(value)}"] if isinstance(value, str)
                                                     else [f"verify = {toml_value(value)}"]))
    timeout: float = setting(30.0, seconds(1.0), "seconds for each HTTP request")
    library_interval: float = setting(600.0, seconds(1.0), "seconds between re-reads of Jellyfin's libraries")


@dataclass(frozen=True, slots=True)
class RefreshSettings:
    """``[refresh]``: what a refresh scans, and which roots must be healthy for it."""

    scope: Scope = setting(Scope.SERVER, choice(Scope), "server, library or path")
    gate: Gate = setting(Gate.ALL, choice(Gate), "all, or library (with scope library or path)")


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """``[guard]``: the loss guard (:mod:`watcher.guard`)."""

    enabled: bool = setting(True, boolean, "predict what a scan would remove and refuse a mass removal")
    when: GuardWhen = setting(GuardWhen.ALWAYS, choice(GuardWhen),
                              "always: before every refresh; removals: only after a deletion, a move or an unmount")
    max_removals: int = setting(20, count, "refuse when more than this many items would go …")
    max_share: float = setting(0.05, percent, "… and more than this share of a library (percent in the file)",
                               show=lambda value: [f"max_share = {value * 100:g}"])
    timeout: float = setting(60.0, seconds(0.1), "seconds the existence check of one library's files may take")
    libraries: tuple[LibraryLimits, ...] = setting((), None, "per-library limits: [guard.libraries.NAME]", custom=True,
                                                   keys=("libraries",), show=lambda value: [])

    def limits_for(self, library_name: str) -> tuple[int, float]:
        """(max removals, max share as a fraction) for a library: its own limits or the defaults."""
        for limits in self.libraries:
            if limits.name == library_name:
                return limits.max_removals, limits.max_share
        return self.max_removals, self.max_share


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """``[watch]``: watching, debouncing, probing, polling."""

    quiet_period: float = setting(30.0, seconds(), "seconds without a relevant change before a batch is due",
                                  flag="quiet_period")
    max_wait: float = setting(600.0, seconds(), "seconds after a batch's first change when it is due at the latest",
                              flag="max_wait")
    probe_timeout: float = setting(5.0, seconds(0.1), "seconds a root's probe may take before it is unresponsive",
                                   flag="probe_timeout")
    backoff_max: float = setting(300.0, seconds(1.0), "upper bound of the delay between retries of a failed refresh")
    settle: float = setting(10.0, seconds(), "seconds a root that came back must stay healthy before it is watched again")
    health_interval: float = setting(60.0, seconds(0.1), "seconds between periodic health checks of every root")
    max_write_wait: float = setting(3600.0, seconds(), "seconds a file still being written may hold its batch back")
    poll_interval: float = setting(60.0, seconds(0.1), "seconds between polling cycles of a polled root")
    network_fstypes: tuple[str, ...] = setting(DEFAULT_NETWORK_FSTYPES, strings,
                                               "filesystem types polled in mode auto (remote changes unseen by inotify)")
    list_fstypes: tuple[str, ...] = setting(DEFAULT_LIST_FSTYPES, strings,
                                            "filesystem types whose polling lists every folder (folder times lie)")
    ignore: tuple[str, ...] = setting(DEFAULT_IGNORE, None, "patterns of paths to ignore", custom=True,
                                      keys=("ignore", "default_ignore"),
                                      show=lambda value: [f"ignore = {toml_value(value)}"])


@dataclass(frozen=True, slots=True)
class ServerViewSettings:
    """``[server_view]``: Jellyfin's view of the roots, compared before each refresh."""

    enabled: bool = setting(True, boolean, "compare Jellyfin's view of each root with this machine's (off for Emby)")
    timeout: float = setting(15.0, seconds(0.1), "seconds one listing may take (longer: unresponsive, held)")
    in_flight: float = setting(60.0, seconds(), "seconds a new entry here may still be missing from Jellyfin's view")


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """``[backup]``: a Jellyfin backup (10.11+) before a refresh that removes items."""

    enabled: bool = setting(True, boolean, "ask Jellyfin for a backup before a refresh that removes items")
    min_removals: int = setting(10, count, "a refresh predicted to remove at least this many items gets a backup first")
    timeout: float = setting(1800.0, seconds(1.0), "seconds the backup may take")
    hold_on_failure: bool = setting(True, boolean, "a failed backup holds the refresh")
    contents: tuple[str, ...] = setting(("database",), None, "what the archive holds", custom=True, keys=BACKUP_CONTENTS,
                                        show=lambda value: [f"{name} = {toml_value(name in value)}"
                                                            for name in BACKUP_CONTENTS])


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """``[notify]``: notifications through apprise URLs (they hold tokens: secrets)."""

    urls: tuple[Secret, ...] = setting((), None, "apprise URLs", custom=True, keys=("urls", "urls_file"),
                                       show=lambda value: [f"urls = {json.dumps([masked_url(u.reveal()) for u in value])}"]
                                       if value else [])
    after: float = setting(900.0, seconds(), "seconds a held refresh or an unreachable Jellyfin lasts before it is sent")
    rate_limit: float = setting(3600.0, seconds(), "seconds between two notifications of the same kind")
    timeout: float = setting(10.0, seconds(0.5), "seconds one delivery to one URL may take")


SECTIONS: dict[str, type[Any]] = {
    "jellyfin": JellyfinSettings,
    "refresh": RefreshSettings,
    "guard": GuardSettings,
    "watch": WatchSettings,
    "server_view": ServerViewSettings,
    "backup": BackupSettings,
    "notify": NotifySettings,
}
"""The file's tables, in the order ``config --print`` shows them."""

ROOT_KEYS = ("path", "mount", "mode", "poll_interval", "fallback", "poll", "health_gate")
PATH_MAP_KEYS = ("jellyfin", "local")
LIBRARY_LIMIT_KEYS = ("max_removals", "max_share")


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration: the file's sections, the roots and path map, and the
    top-level settings. Times are in seconds."""

    jellyfin: JellyfinSettings = field(default_factory=JellyfinSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    server_view: ServerViewSettings = field(default_factory=ServerViewSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    roots: tuple[Root, ...] = ()
    path_map: tuple[PathMapping, ...] = ()
    state_dir: Path = setting(SYSTEM_STATE_DIR, path, "pending batch, learned mount points, status", flag="state_dir")
    """Loading puts :func:`default_state_dir` here when none is configured."""
    dry_run: bool = setting(False, boolean, "never contact Jellyfin; log the refresh that would be sent", flag="dry_run")
    log_level: LogLevel = setting(LogLevel.INFO, choice(LogLevel), "debug, info, warning or error", flag="log_level")
    log_format: LogFormat = setting(LogFormat.TEXT, choice(LogFormat), "text, or json: one object per line",
                                    flag="log_format")
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each setting that did not come from the defaults was picked up (a flag, an
    environment variable, ``file: key``), by dotted key (``watch.quiet_period``)."""

    def map_path(self, jellyfin_path: str) -> Path:
        """Translate a path as Jellyfin sees it to the path on this machine.

        The longest ``path_map`` prefix wins; unmapped paths are taken as they are.
        """
        return Path(_translate(jellyfin_path, [(m.jellyfin, m.local) for m in self.path_map]))

    def jellyfin_path(self, local_path: str) -> str:
        """The reverse of :meth:`map_path`: a local path as Jellyfin sees it."""
        return _translate(local_path, [(m.local, m.jellyfin) for m in self.path_map])

    def is_mapped(self, jellyfin_path: str) -> bool:
        """Whether some ``path_map`` entry covers ``jellyfin_path``."""
        return any(within(jellyfin_path, m.jellyfin) for m in self.path_map)


def _translate(path_text: str, pairs: list[tuple[str, str]]) -> str:
    """Replace the longest matching ``from`` prefix of ``path_text`` with its ``to``."""
    normal = os.path.normpath(path_text) if path_text else path_text
    best = max((pair for pair in pairs if within(normal, pair[0])), key=lambda pair: len(pair[0]), default=None)
    if best is None:
        return normal
    rest = normal[len(best[0]) :].lstrip("/") if best[0] != "/" else normal.lstrip("/")
    return os.path.join(best[1], rest) if rest else best[1]


def known_keys() -> dict[str, tuple[str, ...]]:
    """Every key the file may hold, by table (``""``: the top level; ``roots``, ``path_map``,
    ``guard.libraries.*``: the keys of each entry)."""
    keys: dict[str, tuple[str, ...]] = {}
    for name, section in SECTIONS.items():
        keys[name] = tuple(key for _, describe in described(section) for key in (describe.keys or (describe.key,)))
    keys[""] = (*(describe.key for _, describe in described(Config)), *SECTIONS, "roots", "path_map")
    keys["roots"] = ROOT_KEYS
    keys["path_map"] = PATH_MAP_KEYS
    keys["guard.libraries.*"] = LIBRARY_LIMIT_KEYS
    return keys


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """The state directory when none is configured.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; the first entry if several),
    else ``/var/lib/jellyfin-watcher`` for root, else the per-user state directory
    (``~/.local/state/jellyfin-watcher`` on Linux, via platformdirs).
    """
    from_systemd = environ.get("STATE_DIRECTORY", "")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def default_config_file(environ: Mapping[str, str]) -> Path | None:
    """``$JELLYFIN_WATCHER_CONFIG``, else the first existing of the per-user config file
    (``~/.config/jellyfin-watcher/config.toml``) and ``/etc/jellyfin-watcher/config.toml``."""
    if environ.get("JELLYFIN_WATCHER_CONFIG"):
        return Path(environ["JELLYFIN_WATCHER_CONFIG"])
    candidates = (
        Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml",
        Path("/etc") / APP_NAME / "config.toml",
    )
    return next((candidate for candidate in candidates if candidate.is_file()), None)


# --- loading ----------------------------------------------------------------------------------


def load(
    config_file: Path | None,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Config:
    """Build the effective configuration.

    ``flags`` holds the command-line values that were given (absent or None: not given):
    ``url``, ``api_key_file``, ``roots`` (list of str), ``quiet_period``, ``max_wait``,
    ``probe_timeout``, ``state_dir``, ``dry_run``, ``log_level``, ``log_format``.

    Raises ConfigError naming the file and key for anything malformed, unknown or unreadable.
    """
    data: dict[str, Any] = {}
    where = "configuration"
    if config_file is not None:
        where = str(config_file)
        data = _read_toml(config_file)
    keys = known_keys()
    _check_keys(data, set(keys[""]), where, "")
    tables = {name: _table(data, name, where) for name in SECTIONS}
    for name, table in tables.items():
        _check_keys(table, set(keys[name]), where, f"{name}.")
    sources: dict[str, str] = {}

    def generic(section: type[_T], table: Mapping[str, Any], prefix: str, defaults: Mapping[str, Any] = {}) -> _T:
        values: dict[str, Any] = {}
        for item, describe in described(section):
            if describe.custom:
                continue
            dotted = f"{prefix}{describe.key}"
            if describe.flag is not None and flags.get(describe.flag) is not None:
                value, source = flags[describe.flag], f"--{describe.flag.replace('_', '-')}"
            elif describe.env is not None and environ.get(describe.env):
                value, source = environ[describe.env], describe.env
            elif describe.key in table:
                value, source = table[describe.key], f"{where}: {dotted}"
            else:
                if item.name in defaults:
                    values[item.name] = defaults[item.name]
                continue
            assert describe.parse is not None
            values[item.name] = describe.parse(value, source)
            sources[dotted] = source
        return section(**values)

    jellyfin_table = tables["jellyfin"]
    api_key, sources["jellyfin.api_key"] = _api_key(flags, environ, jellyfin_table, where)
    jellyfin = replace(
        generic(JellyfinSettings, jellyfin_table, "jellyfin."),
        api_key=api_key,
        verify=_verify(jellyfin_table, where),
        password=_password(jellyfin_table, where),
    )
    refresh = generic(RefreshSettings, tables["refresh"], "refresh.")
    if refresh.gate is Gate.LIBRARY and refresh.scope is Scope.SERVER:
        raise ConfigError(
            f"{where}: refresh.gate = \"library\" needs refresh.scope = \"library\" or \"path\" "
            "(a server-wide refresh scans every library, so every root must be healthy)"
        )
    guard = generic(GuardSettings, tables["guard"], "guard.")
    guard = replace(guard, libraries=_library_limits(tables["guard"].get("libraries", {}), where, guard))
    watch = replace(generic(WatchSettings, tables["watch"], "watch."), ignore=_ignore(tables["watch"], where))
    # Emby: its folder listing is untested here, so the check is off unless asked for.
    server_view = generic(ServerViewSettings, tables["server_view"], "server_view.",
                          {"enabled": jellyfin.server is not ServerKind.EMBY})
    backup = replace(generic(BackupSettings, tables["backup"], "backup."),
                     contents=_backup_contents(tables["backup"], where))
    urls, sources["notify.urls"] = _notify_urls(environ, tables["notify"], where)
    notify = replace(generic(NotifySettings, tables["notify"], "notify."), urls=urls)
    top = generic(Config, data, "")
    if "state_dir" not in sources:
        top = replace(top, state_dir=default_state_dir(environ))
    roots = _roots(flags.get("roots") or (), data.get("roots"), where)
    if roots and flags.get("roots"):
        sources["roots"] = "ROOT arguments"
    elif roots:
        sources["roots"] = f"{where}: [[roots]]"
    return replace(
        top,
        jellyfin=jellyfin,
        refresh=refresh,
        guard=guard,
        watch=watch,
        server_view=server_view,
        backup=backup,
        notify=notify,
        roots=roots,
        path_map=_path_map(data.get("path_map"), where),
        config_file=config_file,
        sources={key: value for key, value in sources.items() if value},
    )


# --- config --print: generated from the schema ---------------------------------------------------


def print_lines(config: Config) -> list[str]:
    """The effective configuration as TOML lines, every setting of every table, secrets
    masked, each value that did not come from the defaults followed by where it was picked
    up (``# from --quiet-period``)."""

    def origin(dotted: str) -> str:
        return f"  # from {config.sources[dotted]}" if dotted in config.sources else ""

    def shown(value: Any, describe: Describe, dotted: str) -> list[str]:
        if value is None and describe.show is None:
            return [f"# {describe.key}: not set"]
        if describe.show is None:
            return [f"{describe.key} = {toml_value(value)}{origin(dotted)}"]
        lines = describe.show(value)
        if describe.show is _masked:
            return [f"{describe.key} {lines[0]}{origin(dotted)}"] if lines else [f"# {describe.key}: not set"]
        if not lines:
            return [] if describe.key != "urls" else [f"# {describe.key}: not set (no notifications)"]
        return [lines[0] + origin(dotted), *lines[1:]]

    lines = [f"# effective configuration ({config.config_file or 'no configuration file'})"]
    for item, describe in described(Config):
        lines += shown(getattr(config, item.name), describe, describe.key)
    for name in SECTIONS:
        section = getattr(config, name)
        lines += ["", f"[{name}]"]
        for item, describe in described(type(section)):
            lines += shown(getattr(section, item.name), describe, f"{name}.{describe.key}")
        if name == "guard":
            for limits in section.libraries:
                lines += ["", f"[guard.libraries.{json.dumps(limits.name)}]", f"max_removals = {limits.max_removals}",
                          f"max_share = {limits.max_share * 100:g}"]
    for mapping in config.path_map:
        lines += ["", "[[path_map]]", f"jellyfin = {toml_value(mapping.jellyfin)}", f"local = {toml_value(mapping.local)}"]
    if not config.roots:
        lines += ["", "# roots: every location of every Jellyfin library"]
    elif "roots" in config.sources:
        lines += ["", f"# roots{origin('roots')}"]
    for root in config.roots:
        lines += ["", "[[roots]]", f"path = {toml_value(str(root.path))}"]
        defaults = Root(root.path)
        for name in ROOT_KEYS[1:]:
            value = getattr(root, name)
            if value is not None and value != getattr(defaults, name):
                lines.append(f"{name} = {toml_value(str(value) if isinstance(value, Path) else value)}")
    return lines


# --- helpers ------------------------------------------------------------------------------------


def _read_toml(config_path: Path) -> dict[str, Any]:
    try:
        with config_path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: configuration file not found (check --config)") from None
    except PermissionError:
        raise ConfigError(f"{config_path}: permission denied reading the configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{config_path}: is a directory, expected a TOML configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{config_path}: not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_path}: cannot read the configuration file: {error}") from None


def _check_keys(table: Mapping[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if not unknown:
        return
    described_keys = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        name = f"{prefix}{key}" if key.isprintable() else repr(f"{prefix}{key}")
        described_keys.append(f"{name}{hint}")
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(
        f"{where}: unknown key{plural} {', '.join(described_keys)}; known: {', '.join(prefix + k for k in sorted(known))}"
    )


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a table [{key}], got {_type_name(value)}")
    return value


def _verify(jellyfin: Mapping[str, Any], where: str) -> bool | str:
    """TLS verification: ``jellyfin.verify`` (true/false) or ``jellyfin.ca_bundle`` (a path)."""
    verify: bool | str = True
    if "verify" in jellyfin:
        verify = boolean(jellyfin["verify"], f"{where}: jellyfin.verify")
    if "ca_bundle" in jellyfin:
        if verify is False:
            raise ConfigError(f"{where}: jellyfin.ca_bundle and jellyfin.verify = false contradict each other; keep one")
        verify = str(Path(string(jellyfin["ca_bundle"], f"{where}: jellyfin.ca_bundle")).expanduser())
    return verify


def _password(jellyfin: Mapping[str, Any], where: str) -> Secret | None:
    if "username" in jellyfin and "password_file" not in jellyfin:
        raise ConfigError(f"{where}: jellyfin.username needs jellyfin.password_file (a file holding the password)")
    if "password_file" not in jellyfin:
        return None
    if "username" not in jellyfin:
        raise ConfigError(f"{where}: jellyfin.password_file needs jellyfin.username")
    source = f"{where}: jellyfin.password_file"
    return _read_key_file(Path(string(jellyfin["password_file"], source)).expanduser(), source, "password")


def _ignore(watch: Mapping[str, Any], where: str) -> tuple[str, ...]:
    extra = strings(watch.get("ignore", []), f"{where}: watch.ignore")
    default_ignore = boolean(watch.get("default_ignore", True), f"{where}: watch.default_ignore")
    return (DEFAULT_IGNORE if default_ignore else ()) + extra


def _tables(value: Any, name: str, keys: Sequence[str], shape: str, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The entries of a ``[[name]]`` array of tables, each checked for unknown keys, with
    the ``source`` prefix its error messages use (``config.toml: roots[2]``)."""
    if value is None:
        return
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {name}: expected [[{name}]] tables with {shape}, got {_type_name(value)}")
    for index, entry in enumerate(value, start=1):
        source = f"{where}: {name}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: expected a table with {shape}, got {_type_name(entry)}")
        _check_keys(entry, set(keys), where, f"{name}[{index}].")
        yield source, entry


def _roots(from_flags: Sequence[str], from_file: Any, where: str) -> tuple[Root, ...]:
    if from_flags:
        return tuple(Root(Path(os.path.abspath(os.path.expanduser(root)))) for root in from_flags)
    roots = []
    for source, entry in _tables(from_file, "roots", ROOT_KEYS, 'path = "..."', where):
        if "path" not in entry:
            raise ConfigError(f"{source}: missing key path (the library folder to watch)")
        root = Path(os.path.normpath(Path(string(entry["path"], f"{source}.path")).expanduser()))
        if not root.is_absolute():
            raise ConfigError(f"{source}.path: expected an absolute path, got {str(root)!r}")
        mount = None
        if "mount" in entry:
            mount = Path(os.path.normpath(Path(string(entry["mount"], f"{source}.mount")).expanduser()))
            if not mount.is_absolute():
                raise ConfigError(f"{source}.mount: expected an absolute path, got {str(mount)!r}")
            if not root.is_relative_to(mount):
                raise ConfigError(f"{source}.mount: {mount} does not contain the root {root}")
        mode = choice(Mode)(entry.get("mode", "auto"), f"{source}.mode")
        fallback = choice(Fallback)(entry.get("fallback", "poll"), f"{source}.fallback")
        interval = seconds(0.1)(entry["poll_interval"], f"{source}.poll_interval") if "poll_interval" in entry else None
        poll = None
        if "poll" in entry:
            value = entry["poll"]
            if not isinstance(value, str) or value not in [method.value for method in PollMethod]:
                raise ConfigError(
                    f"{source}.poll: expected one of mtime, list (\"list\" where folder times do not follow "
                    f"their contents, e.g. rclone), got {value!r}"
                )
            poll = PollMethod(value)
        health_gate = boolean(entry.get("health_gate", True), f"{source}.health_gate")
        roots.append(Root(root, mount, mode=mode, poll_interval=interval, fallback=fallback, poll=poll,
                          health_gate=health_gate))
    return tuple(roots)


def _library_limits(table: Any, where: str, guard: GuardSettings) -> tuple[LibraryLimits, ...]:
    """Per-library guard limits; a key left out takes the global value."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: guard.libraries: expected tables such as [guard.libraries.Movies]")
    limits = []
    for name, entry in table.items():
        source = f"{where}: guard.libraries.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: expected a table with max_removals and/or max_share")
        _check_keys(entry, set(LIBRARY_LIMIT_KEYS), where, f"guard.libraries.{name}.")
        limits.append(
            LibraryLimits(
                name,
                count(entry["max_removals"], f"{source}.max_removals") if "max_removals" in entry else guard.max_removals,
                percent(entry["max_share"], f"{source}.max_share") if "max_share" in entry else guard.max_share,
            )
        )
    return tuple(limits)


def _backup_contents(table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """What a backup archive holds: ``backup.database`` (default true) and ``backup.metadata``,
    ``backup.trickplay``, ``backup.subtitles`` (default false)."""
    chosen = tuple(
        name for name in BACKUP_CONTENTS if boolean(table.get(name, name == "database"), f"{where}: backup.{name}")
    )
    if not chosen:
        raise ConfigError(f"{where}: backup: every part is false; keep backup.database = true, or set backup.enabled = false")
    return chosen


def _path_map(entries: Any, where: str) -> tuple[PathMapping, ...]:
    mappings = []
    for source, entry in _tables(entries, "path_map", PATH_MAP_KEYS, 'jellyfin = "..." and local = "..."', where):
        pair = []
        for key in PATH_MAP_KEYS:
            if key not in entry:
                raise ConfigError(f"{source}: missing key {key}")
            value = string(entry[key], f"{source}.{key}")
            if not value.startswith("/"):
                raise ConfigError(f"{source}.{key}: expected an absolute path, got {value!r}")
            pair.append(os.path.normpath(value))
        mappings.append(PathMapping(*pair))
    return tuple(mappings)


def _api_key(flags: Mapping[str, Any], environ: Mapping[str, str], jellyfin: Mapping[str, Any], where: str) -> tuple[Secret | None, str]:
    """The API key: --api-key-file, $JELLYFIN_API_KEY, $JELLYFIN_API_KEY_FILE, the systemd
    credential, then jellyfin.api_key_file / jellyfin.api_key in the file."""
    if flags.get("api_key_file"):
        return _read_key_file(Path(flags["api_key_file"]), "--api-key-file"), "--api-key-file"
    if environ.get("JELLYFIN_API_KEY"):
        value = environ["JELLYFIN_API_KEY"].strip()
        if not value:
            raise ConfigError("JELLYFIN_API_KEY: set but blank; expected the API key, or unset it")
        return Secret(value), "JELLYFIN_API_KEY"
    if environ.get("JELLYFIN_API_KEY_FILE"):
        return _read_key_file(Path(environ["JELLYFIN_API_KEY_FILE"]), "JELLYFIN_API_KEY_FILE"), "JELLYFIN_API_KEY_FILE"
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return _read_key_file(Path(credentials) / CREDENTIAL_NAME, "systemd credential"), "systemd credential"
    if "api_key_file" in jellyfin and "api_key" in jellyfin:
        raise ConfigError(f"{where}: jellyfin.api_key and jellyfin.api_key_file are both set; keep one")
    if "api_key_file" in jellyfin:
        source = f"{where}: jellyfin.api_key_file"
        return _read_key_file(Path(string(jellyfin["api_key_file"], source)).expanduser(), source), source
    if "api_key" in jellyfin:
        value = jellyfin["api_key"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: jellyfin.api_key: expected the API key as a non-empty string")
        return Secret(value.strip()), f"{where}: jellyfin.api_key"
    return None, ""


def _notify_urls(environ: Mapping[str, str], notify: Mapping[str, Any], where: str) -> tuple[tuple[Secret, ...], str]:
    """The notification URLs: $JELLYFIN_WATCHER_NOTIFY_URLS (separated by white space), the
    systemd credential, then notify.urls_file (one per line, ``#`` comments) or notify.urls.
    Each is checked for the shape ``scheme://…`` only; whether apprise knows the scheme is
    found out when it is used. No message ever shows a URL: they hold tokens."""
    if environ.get(NOTIFY_URLS_VARIABLE, "").strip():
        return _checked_urls(environ[NOTIFY_URLS_VARIABLE].split(), NOTIFY_URLS_VARIABLE), NOTIFY_URLS_VARIABLE
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / NOTIFY_CREDENTIAL_NAME).is_file():
        source = "systemd credential"
        text = _read_key_file(Path(credentials) / NOTIFY_CREDENTIAL_NAME, source, "notification URL").reveal()
        return _checked_urls(_url_lines(text), source), source
    if "urls_file" in notify and "urls" in notify:
        raise ConfigError(f"{where}: notify.urls and notify.urls_file are both set; keep one")
    if "urls_file" in notify:
        source = f"{where}: notify.urls_file"
        text = _read_key_file(Path(string(notify["urls_file"], source)).expanduser(), source, "notification URL").reveal()
        return _checked_urls(_url_lines(text), source), source
    if "urls" in notify:
        source = f"{where}: notify.urls"
        value = notify["urls"]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{source}: expected a list of apprise URLs such as [\"ntfy://ntfy.sh/TOPIC\"], got {_type_name(value)}")
        return _checked_urls([item.strip() for item in value], source), source
    return (), ""


def _url_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _checked_urls(urls: Sequence[str], source: str) -> tuple[Secret, ...]:
    for number, value in enumerate(urls, start=1):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", value):
            # The value is not shown: it may well hold a token.
            raise ConfigError(
                f"{source}: URL {number}: expected an apprise URL such as ntfy://ntfy.sh/TOPIC or "
                "json://host:port/path (scheme://..., no spaces); the value is not shown, it may hold a token"
            )
    return tuple(Secret(value) for value in urls)


def masked_url(value: str) -> str:
    """``value`` (a URL) with its secret parts masked, to be shown: the scheme, and the host
    (and port) when it looks like a host name or an address; user, password, path and query
    become ``****``. Apprise puts tokens anywhere (``tgram://BOTTOKEN/CHAT``,
    ``pover://USER@TOKEN``, ``ntfy://ntfy.sh/TOPIC``, where the topic is the secret), so
    anything that is not plainly a host is hidden:
    ``json://user:pw@127.0.0.1:8080/hook/abc`` → ``json://****@127.0.0.1:8080/****``.
    """
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(?:([^/?#@]*)@)?([^/?#]*)(.*)", value.strip(), flags=re.DOTALL)
    if match is None:
        return "****"
    scheme, user, host, rest = match.groups()
    shown = host if re.fullmatch(r"(localhost|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:\d+)?", host) else "****"
    return f"{scheme}://{'****@' if user is not None else ''}{shown}{'/****' if rest.strip('/') else ''}"


def _read_key_file(key_path: Path, source: str, what: str = "API key") -> Secret:
    """Read a secret from a file; warn when other users can read it."""
    try:
        text = key_path.read_text(encoding="utf-8").strip()
        mode = key_path.stat().st_mode
    except FileNotFoundError:
        if _looks_like_a_key(str(key_path)):
            # Someone gave the key itself where a file name belongs: do not echo it.
            raise ConfigError(f"{source}: expects the name of a file holding the {what}, not the {what} itself") from None
        raise ConfigError(f"{source}: {what} file {key_path} not found") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied reading the {what} file {key_path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: {key_path} is a directory, expected a file holding the {what}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot read the {what} file {key_path}: {error.__class__.__name__}") from None
    if not text:
        raise ConfigError(f"{source}: the {what} file {key_path} is empty")
    if mode & 0o004:
        logger.warning("the %s file %s is readable by every user: chmod 600 %s", what, key_path, key_path)
    return Secret(text)


def _looks_like_a_key(text: str) -> bool:
    """Jellyfin API keys are 32 hex digits."""
    return len(text) == 32 and all(character in "0123456789abcdefABCDEF" for character in text)
