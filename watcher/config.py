"""Configuration: parsed and validated once into frozen dataclasses.

Sources, highest precedence first: command-line flags, environment (``JELLYFIN_URL``,
``JELLYFIN_API_KEY``, ``JELLYFIN_API_KEY_FILE``), the TOML file, defaults. The API key is
never taken from the command line (it would show in ``ps`` and in shell history): only
from the environment, a key file, a systemd credential or the configuration file.

Every error is a :class:`~watcher.errors.ConfigError` whose message names the file, the
key and what is expected, e.g. ``config.toml: watch.quiet_period: expected seconds ≥ 0,
got "abc"``.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from watcher.errors import ConfigError

logger = logging.getLogger(__name__)

APP_NAME = "jellyfin-watcher"

DEFAULT_QUIET_PERIOD = 30.0
"""Seconds without a relevant event after which a batch is due."""
DEFAULT_MAX_WAIT = 600.0
"""Seconds after a batch's first event after which it is due even if events keep coming."""
DEFAULT_PROBE_TIMEOUT = 5.0
"""Seconds a root's filesystem probe may take before the root counts as unresponsive."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds any one HTTP request to Jellyfin may take."""
DEFAULT_BACKOFF_MAX = 300.0
"""Upper bound, in seconds, of the delay between retries of a refresh that failed."""
DEFAULT_SETTLE = 10.0
"""Seconds a root that came back must stay healthy before it is watched again."""
DEFAULT_HEALTH_INTERVAL = 60.0
"""Seconds between periodic health checks (mount changes trigger one at once on Linux)."""
DEFAULT_POLL_INTERVAL = 60.0
"""Seconds between polling cycles of a root watched by polling."""
DEFAULT_NETWORK_FSTYPES: tuple[str, ...] = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "davfs",
    "fuse.sshfs",
    "fuse.rclone",
    "fuse.s3fs",
    "fuse.gvfsd-fuse",
    "fuse.smbnetfs",
)
"""Filesystem types (mount table) whose remote changes inotify cannot see: polled in mode auto."""
DEFAULT_LIST_FSTYPES: tuple[str, ...] = (
    "fuse.rclone",
    "fuse.s3fs",
    "fuse.goofys",
    "fuse.gcsfuse",
)
"""Filesystem types whose folder modification time does not follow the folder's contents
when they change on the server: a polling cycle lists every folder (``poll = "list"``) and
mode auto polls them. Sources: rclone mount (measured with ``rclone serve webdav``: a
folder's mtime never changes through the mount when files are added on the server); s3fs
(s3fs-fuse issue #2048: folder mtimes are fixed); goofys (kahing/goofys issue #219: the
parent's mtime is not updated); gcsfuse (docs/semantics.md: folders are object-name
prefixes, so adding an object changes no folder object)."""
MODES = ("auto", "events", "poll")
POLL_METHODS = ("mtime", "list")
"""``mtime``: each polling cycle stats the known folders and lists those whose mtime
changed; ``list``: each cycle lists every folder."""
FALLBACKS = ("poll", "none")
DEFAULT_LIBRARY_INTERVAL = 600.0
"""Seconds between re-reads of Jellyfin's library list (new libraries watched, removed ones dropped)."""
SCOPES = ("server", "library", "path")
GATES = ("all", "library")
SERVERS = ("jellyfin", "emby")
DEFAULT_LOG_LEVEL = "info"
LOG_FORMATS = ("text", "json")
SYSTEM_STATE_DIR = Path("/var/lib/jellyfin-watcher")
CREDENTIAL_NAME = "jellyfin-api-key"
"""File name of the API key in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

DEFAULT_IGNORE: tuple[str, ...] = (
    # Partial and temporary downloads.
    "*.part",
    "*.partial",
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

LOG_LEVELS = ("debug", "info", "warning", "error")


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
    mode: str = "auto"
    """``events`` (inotify), ``poll``, or ``auto``: poll network filesystems, events elsewhere."""
    poll_interval: float | None = None
    """Seconds between polling cycles; None: ``watch.poll_interval``."""
    fallback: str = "poll"
    """What to do when inotify cannot watch every folder: ``poll`` the root, or ``none``."""
    poll: str | None = None
    """How a polling cycle finds changes: ``mtime`` or ``list`` (:data:`POLL_METHODS`);
    None: ``list`` on the filesystem types of ``watch.list_fstypes``, else ``mtime``."""
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
class Config:
    """The effective configuration. Times are in seconds."""

    url: str | None = None
    api_key: Secret | None = None
    server: str = "jellyfin"
    username: str | None = None
    password: Secret | None = None
    verify: bool | str = True
    """TLS verification: True, False, or the path of a CA bundle (``ca_bundle``)."""
    library_interval: float = DEFAULT_LIBRARY_INTERVAL
    scope: str = "server"
    gate: str = "all"
    path_map: tuple[PathMapping, ...] = ()
    guard: bool = True
    """Predict removals before a refresh and refuse a mass removal."""
    max_removals: int = 20
    max_removal_share: float = 0.05
    """A fraction (0.05 = 5 %); the TOML key ``guard.max_share`` is in percent."""
    library_limits: tuple[tuple[str, int, float], ...] = ()
    """Per-library overrides: (library name, max_removals, max share as a fraction)."""
    guard_timeout: float = 60.0
    """Seconds the existence check of one library's files may take before the prediction
    counts as unresponsive."""
    roots: tuple[Root, ...] = ()
    quiet_period: float = DEFAULT_QUIET_PERIOD
    max_wait: float = DEFAULT_MAX_WAIT
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    backoff_max: float = DEFAULT_BACKOFF_MAX
    settle: float = DEFAULT_SETTLE
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    network_fstypes: tuple[str, ...] = DEFAULT_NETWORK_FSTYPES
    list_fstypes: tuple[str, ...] = DEFAULT_LIST_FSTYPES
    """Filesystem types whose polling cycle lists every folder (their folder mtimes lie)."""
    state_dir: Path = field(default_factory=lambda: default_state_dir({}))
    dry_run: bool = False
    log_level: str = DEFAULT_LOG_LEVEL
    log_format: str = "text"
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each value that did not come from the defaults was picked up (a flag, an
    environment variable, ``file: key``), by setting name."""

    def map_path(self, jellyfin_path: str) -> Path:
        """Translate a path as Jellyfin sees it to the path on this machine.

        The longest ``path_map`` prefix wins; unmapped paths are taken as they are.
        """
        return Path(_translate(jellyfin_path, [(m.jellyfin, m.local) for m in self.path_map]))

    def jellyfin_path(self, local_path: str) -> str:
        """The reverse of :meth:`map_path`: a local path as Jellyfin sees it."""
        return _translate(local_path, [(m.local, m.jellyfin) for m in self.path_map])

    def limits_for(self, library_name: str) -> tuple[int, float]:
        """(max removals, max share) for a library: its own limits or the defaults."""
        for name, count, share in self.library_limits:
            if name == library_name:
                return count, share
        return self.max_removals, self.max_removal_share

    def is_mapped(self, jellyfin_path: str) -> bool:
        """Whether some ``path_map`` entry covers ``jellyfin_path``."""
        return any(_within(jellyfin_path, m.jellyfin) for m in self.path_map)


def _within(path: str, folder: str) -> bool:
    path = path.rstrip("/") or "/"
    return folder == "/" or path == folder or path.startswith(folder + "/")


def _translate(path: str, pairs: list[tuple[str, str]]) -> str:
    """Replace the longest matching ``from`` prefix of ``path`` with its ``to``."""
    normal = os.path.normpath(path) if path else path
    best = max((pair for pair in pairs if _within(normal, pair[0])), key=lambda pair: len(pair[0]), default=None)
    if best is None:
        return normal
    rest = normal[len(best[0]) :].lstrip("/") if best[0] != "/" else normal.lstrip("/")
    return os.path.join(best[1], rest) if rest else best[1]


# --- Schema of the TOML file -------------------------------------------------------------

_TOP_KEYS = {"state_dir", "log_level", "log_format", "dry_run", "jellyfin", "watch", "refresh", "guard", "roots", "path_map"}
_GUARD_KEYS = {"enabled", "max_removals", "max_share", "timeout", "libraries"}
_LIBRARY_LIMIT_KEYS = {"max_removals", "max_share"}
_JELLYFIN_KEYS = {
    "url",
    "api_key",
    "api_key_file",
    "timeout",
    "server",
    "username",
    "password_file",
    "ca_bundle",
    "verify",
    "library_interval",
}
_REFRESH_KEYS = {"scope", "gate"}
_PATH_MAP_KEYS = {"jellyfin", "local"}
_WATCH_KEYS = {
    "quiet_period",
    "max_wait",
    "probe_timeout",
    "backoff_max",
    "settle",
    "health_interval",
    "poll_interval",
    "network_fstypes",
    "list_fstypes",
    "ignore",
    "default_ignore",
}
_ROOT_KEYS = {"path", "mount", "mode", "poll_interval", "fallback", "health_gate", "poll"}


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
    return next((path for path in candidates if path.is_file()), None)


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
    _check_keys(data, _TOP_KEYS, where, "")
    jellyfin = _table(data, "jellyfin", where)
    watch = _table(data, "watch", where)
    refresh = _table(data, "refresh", where)
    guard = _table(data, "guard", where)
    _check_keys(guard, _GUARD_KEYS, where, "guard.")
    _check_keys(jellyfin, _JELLYFIN_KEYS, where, "jellyfin.")
    _check_keys(refresh, _REFRESH_KEYS, where, "refresh.")
    _check_keys(watch, _WATCH_KEYS, where, "watch.")

    sources: dict[str, str] = {}

    def pick(flag: str, env: str | None, table: Mapping[str, Any], key: str) -> tuple[Any, str]:
        if flags.get(flag) is not None:
            value, source = flags[flag], f"--{flag.replace('_', '-')}"
        elif env is not None and environ.get(env):
            value, source = environ[env], env
        elif key in table:
            value, source = table[key], f"{where}: {_qualified(table, data, key)}"
        else:
            return None, ""
        sources[flag] = source
        return value, source

    url_value, url_source = pick("url", "JELLYFIN_URL", jellyfin, "url")
    url = None if url_value is None else _url(url_value, url_source)

    roots = _roots(flags.get("roots") or (), data.get("roots"), where)

    ignore_extra = _string_list(watch.get("ignore", []), f"{where}: watch.ignore")
    default_ignore = _bool(watch.get("default_ignore", True), f"{where}: watch.default_ignore")
    ignore = (DEFAULT_IGNORE if default_ignore else ()) + ignore_extra

    def seconds(flag: str, key: str, default: float, minimum: float = 0.0) -> float:
        value, source = pick(flag, None, watch, key)
        if value is None:
            return default
        return _seconds(value, source, minimum)

    quiet_period = seconds("quiet_period", "quiet_period", DEFAULT_QUIET_PERIOD)
    max_wait = seconds("max_wait", "max_wait", DEFAULT_MAX_WAIT)
    probe_timeout = seconds("probe_timeout", "probe_timeout", DEFAULT_PROBE_TIMEOUT, minimum=0.1)
    backoff_max = seconds("backoff_max", "backoff_max", DEFAULT_BACKOFF_MAX, minimum=1.0)
    settle = seconds("settle", "settle", DEFAULT_SETTLE)
    health_interval = seconds("health_interval", "health_interval", DEFAULT_HEALTH_INTERVAL, minimum=0.1)
    poll_interval = seconds("poll_interval", "poll_interval", DEFAULT_POLL_INTERVAL, minimum=0.1)
    network_fstypes = DEFAULT_NETWORK_FSTYPES
    if "network_fstypes" in watch:
        network_fstypes = _string_list(watch["network_fstypes"], f"{where}: watch.network_fstypes")
    list_fstypes = DEFAULT_LIST_FSTYPES
    if "list_fstypes" in watch:
        list_fstypes = _string_list(watch["list_fstypes"], f"{where}: watch.list_fstypes")
    request_timeout = DEFAULT_REQUEST_TIMEOUT
    if "timeout" in jellyfin:
        request_timeout = _seconds(jellyfin["timeout"], f"{where}: jellyfin.timeout", 1.0)

    state_value, state_source = pick("state_dir", None, data, "state_dir")
    if state_value is None:
        state_dir = default_state_dir(environ)
    else:
        state_dir = Path(_string(state_value, state_source)).expanduser()

    dry_value, dry_source = pick("dry_run", None, data, "dry_run")
    dry_run = bool(dry_value) if dry_source.startswith("--") else _bool(dry_value or False, dry_source)

    level_value, level_source = pick("log_level", None, data, "log_level")
    log_level = DEFAULT_LOG_LEVEL
    if level_value is not None:
        log_level = _string(level_value, level_source).lower()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"{level_source}: expected one of {', '.join(LOG_LEVELS)}, got {level_value!r}")

    format_value, format_source = pick("log_format", None, data, "log_format")
    log_format = "text"
    if format_value is not None:
        log_format = _string(format_value, format_source).lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"{format_source}: expected one of {', '.join(LOG_FORMATS)}, got {format_value!r}")

    def choice(table: Mapping[str, Any], section: str, key: str, choices: tuple[str, ...]) -> str:
        if key not in table:
            return choices[0]
        value = table[key]
        if not isinstance(value, str) or value.lower() not in choices:
            raise ConfigError(f"{where}: {section}.{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    scope = choice(refresh, "refresh", "scope", SCOPES)
    gate = choice(refresh, "refresh", "gate", GATES)
    if gate == "library" and scope == "server":
        raise ConfigError(
            f"{where}: refresh.gate = \"library\" needs refresh.scope = \"library\" or \"path\" "
            "(a server-wide refresh scans every library, so every root must be healthy)"
        )
    server = choice(jellyfin, "jellyfin", "server", SERVERS)
    max_removals = _count(guard.get("max_removals", 20), f"{where}: guard.max_removals")
    max_removal_share = _percent(guard.get("max_share", 5), f"{where}: guard.max_share")
    verify: bool | str = True
    if "verify" in jellyfin:
        verify = _bool(jellyfin["verify"], f"{where}: jellyfin.verify")
    if "ca_bundle" in jellyfin:
        if verify is False:
            raise ConfigError(f"{where}: jellyfin.ca_bundle and jellyfin.verify = false contradict each other; keep one")
        verify = str(Path(_string(jellyfin["ca_bundle"], f"{where}: jellyfin.ca_bundle")).expanduser())
    username = None
    password = None
    if "username" in jellyfin:
        username = _string(jellyfin["username"], f"{where}: jellyfin.username")
        if "password_file" not in jellyfin:
            raise ConfigError(f"{where}: jellyfin.username needs jellyfin.password_file (a file holding the password)")
    if "password_file" in jellyfin:
        if username is None:
            raise ConfigError(f"{where}: jellyfin.password_file needs jellyfin.username")
        source = f"{where}: jellyfin.password_file"
        password = _read_key_file(Path(_string(jellyfin["password_file"], source)).expanduser(), source, "password")
    library_interval = DEFAULT_LIBRARY_INTERVAL
    if "library_interval" in jellyfin:
        library_interval = _seconds(jellyfin["library_interval"], f"{where}: jellyfin.library_interval", 1.0)

    api_key, sources["api_key"] = _api_key(flags, environ, jellyfin, where)
    if roots and flags.get("roots"):
        sources["roots"] = "ROOT arguments"
    elif roots:
        sources["roots"] = f"{where}: [[roots]]"
    return Config(
        url=url,
        api_key=api_key,
        server=server,
        username=username,
        password=password,
        verify=verify,
        library_interval=library_interval,
        scope=scope,
        gate=gate,
        path_map=_path_map(data.get("path_map"), where),
        guard=_bool(guard.get("enabled", True), f"{where}: guard.enabled"),
        max_removals=max_removals,
        max_removal_share=max_removal_share,
        library_limits=_library_limits(guard.get("libraries", {}), where, max_removals, max_removal_share),
        guard_timeout=_seconds(guard.get("timeout", 60.0), f"{where}: guard.timeout", 0.1),
        roots=roots,
        quiet_period=quiet_period,
        max_wait=max_wait,
        probe_timeout=probe_timeout,
        request_timeout=request_timeout,
        backoff_max=backoff_max,
        settle=settle,
        health_interval=health_interval,
        ignore=ignore,
        poll_interval=poll_interval,
        network_fstypes=network_fstypes,
        list_fstypes=list_fstypes,
        state_dir=state_dir,
        dry_run=dry_run,
        log_level=log_level,
        log_format=log_format,
        config_file=config_file,
        sources={key: value for key, value in sources.items() if value},
    )


# --- Helpers -------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (check --config)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration file: {error}") from None


def _check_keys(table: Mapping[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if not unknown:
        return
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        name = f"{prefix}{key}" if key.isprintable() else repr(f"{prefix}{key}")
        described.append(f"{name}{hint}")
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(f"{where}: unknown key{plural} {', '.join(described)}; known: {', '.join(prefix + k for k in sorted(known))}")


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a table [{key}], got {_type_name(value)}")
    return value


def _qualified(table: Mapping[str, Any], data: Mapping[str, Any], key: str) -> str:
    for section in ("jellyfin", "watch"):
        if table is data.get(section):
            return f"{section}.{key}"
    return key


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _seconds(value: Any, source: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {_type_name(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {value!r}") from None
    if not number >= minimum or number == float("inf"):
        raise ConfigError(f"{source}: expected seconds ≥ {minimum:g}, got {value!r}")
    return number


def _bool(value: Any, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    return value


def _string(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: expected a non-empty string, got {_type_name(value)}")
    return value


def _string_list(value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{source}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _url(value: Any, source: str) -> str:
    text = _string(value, source).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{source}: expected an http:// or https:// URL such as http://localhost:8096, got {text!r}"
        )
    return text.rstrip("/")


def _tables(value: Any, name: str, keys: set[str], shape: str, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
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
        _check_keys(entry, keys, where, f"{name}[{index}].")
        yield source, entry


def _roots(from_flags: Sequence[str], from_file: Any, where: str) -> tuple[Root, ...]:
    if from_flags:
        return tuple(Root(Path(os.path.abspath(os.path.expanduser(path)))) for path in from_flags)
    roots = []
    for source, entry in _tables(from_file, "roots", _ROOT_KEYS, 'path = "..."', where):
        if "path" not in entry:
            raise ConfigError(f"{source}: missing key path (the library folder to watch)")
        path = Path(os.path.normpath(Path(_string(entry["path"], f"{source}.path")).expanduser()))
        if not path.is_absolute():
            raise ConfigError(f"{source}.path: expected an absolute path, got {str(path)!r}")
        mount = None
        if "mount" in entry:
            mount = Path(os.path.normpath(Path(_string(entry["mount"], f"{source}.mount")).expanduser()))
            if not mount.is_absolute():
                raise ConfigError(f"{source}.mount: expected an absolute path, got {str(mount)!r}")
            if not path.is_relative_to(mount):
                raise ConfigError(f"{source}.mount: {mount} does not contain the root {path}")
        mode = entry.get("mode", "auto")
        if mode not in MODES:
            raise ConfigError(f"{source}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        fallback = entry.get("fallback", "poll")
        if fallback not in FALLBACKS:
            raise ConfigError(f"{source}.fallback: expected one of {', '.join(FALLBACKS)}, got {fallback!r}")
        interval = None
        if "poll_interval" in entry:
            interval = _seconds(entry["poll_interval"], f"{source}.poll_interval", 0.1)
        health_gate = _bool(entry.get("health_gate", True), f"{source}.health_gate")
        poll = entry.get("poll")
        if poll is not None and poll not in POLL_METHODS:
            raise ConfigError(
                f"{source}.poll: expected one of {', '.join(POLL_METHODS)} (\"list\" where folder times do not follow "
                f"their contents, e.g. rclone), got {poll!r}"
            )
        roots.append(
            Root(path, mount, mode=mode, poll_interval=interval, fallback=fallback, health_gate=health_gate, poll=poll)
        )
    return tuple(roots)


def _count(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: expected a whole number of items ≥ 0, got {value!r}")
    return value


def _percent(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(f"{source}: expected a percentage from 0 to 100, got {value!r}")
    return float(value) / 100


def _library_limits(table: Any, where: str, count: int, share: float) -> tuple[tuple[str, int, float], ...]:
    """Per-library guard limits; a key left out takes the global value."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: guard.libraries: expected tables such as [guard.libraries.Movies]")
    limits = []
    for name, entry in table.items():
        source = f"{where}: guard.libraries.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: expected a table with max_removals and/or max_share")
        _check_keys(entry, _LIBRARY_LIMIT_KEYS, where, f"guard.libraries.{name}.")
        limits.append(
            (
                name,
                _count(entry["max_removals"], f"{source}.max_removals") if "max_removals" in entry else count,
                _percent(entry["max_share"], f"{source}.max_share") if "max_share" in entry else share,
            )
        )
    return tuple(limits)


def _path_map(entries: Any, where: str) -> tuple[PathMapping, ...]:
    mappings = []
    for source, entry in _tables(entries, "path_map", _PATH_MAP_KEYS, 'jellyfin = "..." and local = "..."', where):
        pair = []
        for key in ("jellyfin", "local"):
            if key not in entry:
                raise ConfigError(f"{source}: missing key {key}")
            value = _string(entry[key], f"{source}.{key}")
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
        return _read_key_file(Path(_string(jellyfin["api_key_file"], source)).expanduser(), source), source
    if "api_key" in jellyfin:
        value = jellyfin["api_key"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: jellyfin.api_key: expected the API key as a non-empty string")
        return Secret(value.strip()), f"{where}: jellyfin.api_key"
    return None, ""


def _read_key_file(path: Path, source: str, what: str = "API key") -> Secret:
    """Read a secret from a file; warn when other users can read it."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        if _looks_like_a_key(str(path)):
            # Someone gave the key itself where a file name belongs: do not echo it.
            raise ConfigError(f"{source}: expects the name of a file holding the {what}, not the {what} itself") from None
        raise ConfigError(f"{source}: {what} file {path} not found") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied reading the {what} file {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: {path} is a directory, expected a file holding the {what}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot read the {what} file {path}: {error.__class__.__name__}") from None
    if not text:
        raise ConfigError(f"{source}: the {what} file {path} is empty")
    if mode & 0o004:
        logger.warning("the %s file %s is readable by every user: chmod 600 %s", what, path, path)
    return Secret(text)


def _looks_like_a_key(text: str) -> bool:
    """Jellyfin API keys are 32 hex digits."""
    return len(text) == 32 and all(character in "0123456789abcdefABCDEF" for character in text)
