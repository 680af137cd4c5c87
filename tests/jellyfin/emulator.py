"""A Jellyfin 10.11 server emulator for tests: a real HTTP server on 127.0.0.1, harm included.

What it emulates, and from where (Jellyfin's OpenAPI spec and its server source,
``MediaBrowser.Controller/Entities/Folder.cs`` and the controllers in ``Jellyfin.Api``):

- the 19 operations of ``openapi-subset.json`` (Jellyfin 10.11.11's own OpenAPI spec, cut down by
  ``make_spec_subset.py``), with the real field names and status codes;
- the *harm*: a library scan deletes every item whose file is gone, except that a top-level
  library location which is missing or empty is skipped and keeps its items (Jellyfin >= 10.9,
  "Library folder … is inaccessible or empty, skipping"). Sub-folders have no such protection,
  so a disk unmounted below a location loses its items. Tests assert :attr:`removed` stays empty.
  The rules that differ between versions follow :attr:`JellyfinEmulator.version`
  (``MediaBrowser.Controller/Entities/Folder.cs`` of each release): before 10.9 nothing is
  skipped; 12.0 still skips an empty or unreadable location but removes the items of one that
  cannot be resolved at all (missing, or a file); before 12.0 the children of a sub-folder whose
  listing fails are removed, from 12.0 on they are kept;
- *the server's own view of the filesystem*: :attr:`JellyfinEmulator.server_paths` maps a prefix
  of Jellyfin's paths to the host folder the server really reads (its container's volume, the
  share as mounted on its own host). Every filesystem access of the server goes through it — the
  scan, ``GET /Environment/DirectoryContents``, ``POST /Environment/ValidatePath``, the clean-up
  task — so a view that differs from the watcher's does real harm. Without an entry, a path is
  read as it is. :attr:`JellyfinEmulator.unlistable` holds Jellyfin paths whose listing fails
  with an I/O error on the server only;
- backups (10.11+, ``Jellyfin.Api/Controllers/BackupController.cs`` and
  ``Jellyfin.Server.Implementations/FullSystemBackup/BackupService.cs``): ``POST /Backup/Create``
  answers only when the archive ``jellyfin-backup-yyyyMMddHHmmss.zip`` is written (after
  :attr:`JellyfinEmulator.backup_duration` seconds), fails (500) with less than 5,368,709,115
  bytes free (:attr:`JellyfinEmulator.backup_free_bytes`) and, from 12.0 on, while a library scan
  runs; ``GET /Backup`` lists the archives; ``POST /Backup/Restore`` restarts the server into one
  made by the same or an older version. Each archive keeps a snapshot of the items and of the
  collections and playlists, so a test can show what a restore brings back. Older servers answer
  404 (no such route);
- the "Clean up collections and playlists" task (``Key`` ``CleanCollectionsAndPlaylists``,
  ``Emby.Server.Implementations/ScheduledTasks/Tasks/CleanupCollectionAndPlaylistPathsTask.cs``,
  10.9 to 10.11, removed in 12.0), listed when :attr:`JellyfinEmulator.cleanup_task` is set, with
  its default ``StartupTrigger``. :meth:`JellyfinEmulator.restart` runs the start-up triggers: the
  task drops every collection and playlist entry whose file the server cannot see at that moment
  (:attr:`JellyfinEmulator.removed_links`, the harm);
- ``POST /Library/Refresh`` answers 204 at once and scans in a background thread; arriving while
  the ``RefreshLibrary`` task runs, it cancels that run and queues a new one
  (``TaskManager.CancelIfRunningAndQueue``), counted in :attr:`cancelled_scans`;
- authentication as Jellyfin 12.0 does it: only ``Authorization: MediaBrowser Token="…"``.
  The legacy forms that 10.11 still accepts (``X-Emby-Token``, ``X-MediaBrowser-Token``, the
  ``api_key`` query parameter, …) answer 401 and are recorded in :attr:`violations`.

Every request is checked against the spec with openapi-core (parameters, types and formats,
bodies against ``additionalProperties: false`` schemas) plus a check for undeclared query
parameters, which Jellyfin ignores but our client must not send. Every answer the emulator gives
on a status the spec declares is validated against the spec's response schema too; a mismatch is
an emulator bug and is recorded with the prefix ``"response:"``.

Deliberate strictness beyond real Jellyfin (each is a client bug worth catching):

- ``format: uuid`` parameters and body fields must be in the dashed form. Jellyfin also accepts
  32 hex digits, but the spec says uuid, so the client sends the dashed form;
- undeclared query parameters are a 400;
- the ``Emby`` authorization scheme (``Authorization: Emby Token=…``) is treated as legacy.

Typical use::

    with JellyfinEmulator(libraries=[Library("Movies", [str(movies)])]) as jellyfin:
        jellyfin.index()
        ...  # run the client against jellyfin.url with jellyfin.api_key
        assert jellyfin.wait_for_scans_idle(timeout=5)
        assert jellyfin.removed == [] and jellyfin.violations == []
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.validation.request.exceptions import SecurityValidationError
from werkzeug.datastructures import Headers, ImmutableMultiDict

logger = logging.getLogger(__name__)

SPEC_FILE = Path(__file__).with_name("openapi-subset.json")
"""The spec subset the emulator serves and checks against (see ``SOURCE.md``)."""

MEDIA_EXTENSIONS = frozenset(
    {".mkv", ".mp4", ".avi", ".m4v", ".mov", ".ts", ".webm", ".wmv",
     ".mp3", ".flac", ".m4a", ".ogg", ".opus"}
)
"""File extensions (lowercase) a scan turns into items."""

AUDIO_EXTENSIONS = frozenset({".mp3", ".flac", ".m4a", ".ogg", ".opus"})

REFRESH_LIBRARY_KEY = "RefreshLibrary"
"""``TaskInfo.Key`` of Jellyfin's library scan task (its ``Name`` is translated; match on ``Key``)."""

TICKS_PER_SECOND = 10_000_000
"""Jellyfin durations are .NET ticks of 100 ns."""

DEFAULT_SCAN_INTERVAL_TICKS = 12 * 3600 * TICKS_PER_SECOND
"""The library scan's default ``IntervalTrigger``: every 12 h (432000000000 ticks)."""

PRODUCT_NAME = "Jellyfin Server"
"""``PublicSystemInfo.ProductName``, and the JSON string ``/System/Ping`` answers."""

REDACTED = "<redacted>"

CLEANUP_TASK_KEY = "CleanCollectionsAndPlaylists"
"""``TaskInfo.Key`` of "Clean up collections and playlists" (10.9 to 10.11; gone in 12.0)."""

BACKUP_FREE_SPACE = 5_368_709_115
"""Bytes ``POST /Backup/Create`` needs free in the backup folder (``BackupService.CreateBackupAsync``'s
``FiveGigabyte``, which is 5 bytes short of 5 GiB)."""

BACKUP_ENGINE_VERSION = "0.2.0"
"""``BackupManifestDto.BackupEngineVersion`` of 10.11 (``BackupService._backupEngineVersion``)."""

SERVER_ERROR_TEXT = b"Error processing request."
"""The text/plain body of Jellyfin's ``ExceptionMiddleware`` outside development mode."""

_LEGACY_TOKEN_HEADERS = ("X-Emby-Token", "X-MediaBrowser-Token", "X-Emby-Authorization")
_LEGACY_TOKEN_QUERY = ("api_key", "apikey")  # compared lowercase
_AUTHENTICATE_BY_NAME_FIELDS = ("Client", "Device", "DeviceId", "Version")
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_JSON = "application/json; charset=utf-8"


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass
class Library:
    """A Jellyfin library ("virtual folder").

    Attributes:
        name: ``VirtualFolderInfo.Name``.
        locations: absolute local paths of the library's folders (``Locations``).
        item_id: ``ItemId`` of the library's collection folder: 32 hex digits, no dashes,
            as Jellyfin sends it.
        collection_type: ``CollectionType`` (``movies``, ``tvshows``, ``music``, …).
        realtime_monitor: ``LibraryOptions.EnableRealtimeMonitor``; set by
            ``POST /Library/VirtualFolders/LibraryOptions``.
    """

    name: str
    locations: list[str]
    item_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    collection_type: str = "movies"
    realtime_monitor: bool = True


@dataclass(frozen=True)
class Item:
    """A media item Jellyfin knows: one media file.

    Attributes:
        id: 32 hex digits, no dashes.
        path: absolute path of the file, as found by the scan.
        library: name of the :class:`Library` it belongs to.
    """

    id: str
    path: str
    library: str


@dataclass
class Refresh:
    """One accepted refresh request, and what the scan it caused did.

    Attributes:
        time: ``time.monotonic()`` when the request was received, in seconds.
        kind: ``"library"`` (``POST /Library/Refresh``), ``"item"``
            (``POST /Items/{itemId}/Refresh``) or ``"media-updated"``
            (``POST /Library/Media/Updated``).
        detail: ``()`` for ``"library"``; ``(item id,)`` (32 hex digits) for ``"item"``; the
            ``Path`` of every update, in order, for ``"media-updated"``.
        added: items the scan added (filled in when ``done``).
        removed: items the scan deleted (filled in when ``done``).
        cancelled: a later ``POST /Library/Refresh`` cancelled this scan, before it started or
            between two libraries (set when that request arrives).
        done: the scan has finished (or was cancelled).
    """

    time: float
    kind: str
    detail: tuple[str, ...] = ()
    added: int = 0
    removed: int = 0
    cancelled: bool = False
    done: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the emulator received.

    Attributes:
        time: ``time.monotonic()`` when it was received, in seconds.
        method: ``"GET"``, ``"POST"``, …
        path: the URL path as sent (base path included), without the query string.
        query: every query parameter, name → values in order (``api_key`` values redacted).
        headers: request headers, name → value; tokens in ``Authorization`` and the legacy
            token headers are replaced by ``"<redacted>"``.
        json: the parsed JSON body (``Pw`` redacted), or ``None`` without a JSON body.
        status: the status code the emulator answered.
    """

    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any
    status: int


@dataclass
class Backup:
    """One backup archive the server wrote (``POST /Backup/Create``).

    Attributes:
        file_name: ``jellyfin-backup-yyyyMMddHHmmss.zip`` (local time, to the second: two backups
            in one second write the same file, as in Jellyfin).
        path: where Jellyfin says it is (``BackupManifestDto.Path``).
        created: ``DateCreated`` (UTC).
        server_version: the version that wrote it; a restore needs the same or a newer one.
        options: ``Database``, ``Metadata``, ``Trickplay``, ``Subtitles``.
        items: the items Jellyfin held when it was written, by path: what a restore brings back.
        collections: the collections then (name → entry paths).
        playlists: the playlists then (name → entry paths).
    """

    file_name: str
    path: str
    created: datetime
    server_version: str
    options: dict[str, bool]
    items: dict[str, Item]
    collections: dict[str, list[str]]
    playlists: dict[str, list[str]]

    def manifest(self) -> dict[str, Any]:
        """The ``BackupManifestDto`` Jellyfin answers for it."""
        return {"ServerVersion": self.server_version, "BackupEngineVersion": BACKUP_ENGINE_VERSION,
                "DateCreated": self.created.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"), "Path": self.path,
                "Options": dict(self.options)}


# --------------------------------------------------------------------------------------------
# The spec: loaded once per process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    """One path template of the *full* spec, and which of its methods the subset serves."""

    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    served: frozenset[str]
    precedence: tuple[int, ...]  # per segment, see _segment_precedence; smaller wins


@dataclass(frozen=True)
class _Spec:
    document: dict[str, Any]
    request_app: OpenAPI
    response_app: OpenAPI
    routes: tuple[_Route, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)  # openapi-core is not documented thread-safe


def _is_guid(value: object) -> bool:
    """Jellyfin writes Guids as 32 hex digits; accept that and the dashed form in responses."""
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) in (32, 36)


@functools.cache
def _load_spec() -> _Spec:
    """Parse ``openapi-subset.json`` and build the openapi-core validators (about 0.3 s, once)."""
    document = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    request_app = OpenAPI.from_dict(document)  # validates the subset against OpenAPI 3.0
    # Jellyfin serializes Guids without dashes (format "N") although the spec says uuid; the 503
    # answer's Message header has the non-standard format "text", unknown to openapi-core.
    response_app = OpenAPI.from_dict(
        _without_allow_empty_value(document),
        config=Config(spec_validator_cls=None,
                      extra_format_validators={"uuid": _is_guid, "text": lambda value: isinstance(value, str)}),
    )
    routes = []
    for template, methods in document["x-all-paths"].items():
        segments = template.strip("/").split("/")
        regex = "".join(
            f"(?P<{part[1:-1]}>[^/]+?)" if part.startswith("{") else re.escape(part)
            for part in _TEMPLATE_PARTS.split(template) if part
        )
        routes.append(
            _Route(
                template=template,
                pattern=re.compile(regex + "/?", re.IGNORECASE),  # ASP.NET routing ignores case
                methods=frozenset(methods),
                served=frozenset(document["paths"].get(template, {})) & frozenset(_HTTP_METHODS),
                precedence=tuple(_segment_precedence(segment) for segment in segments),
            )
        )
    return _Spec(document, request_app, response_app, tuple(routes))


def _without_allow_empty_value(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` without ``allowEmptyValue`` in response headers.

    Every 503 answer of the spec declares its ``Retry-After`` and ``Message`` headers with
    ``allowEmptyValue``, which OpenAPI defines for query parameters only; openapi-core warns
    (``DeprecationWarning``) on each validation, and warnings are errors in this project.
    """
    copy: dict[str, Any] = json.loads(json.dumps(document))
    for path_item in copy["paths"].values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                for header in response.get("headers", {}).values():
                    header.pop("allowEmptyValue", None)
    return copy


_TEMPLATE_PARTS = re.compile(r"(\{[^/{}]+\})")


def _segment_precedence(segment: str) -> int:
    """ASP.NET route precedence of one segment: literal (0) before ``a.{b}`` (1) before ``{b}`` (2)."""
    if "{" not in segment:
        return 0
    return 2 if _TEMPLATE_PARTS.fullmatch(segment) else 1


class _SpecRequest:
    """An openapi-core ``Request`` (see ``openapi_core.protocols``) for one received request.

    ``path`` is the matched template filled with the request's values, so a request whose
    literal segments differ in case (which ASP.NET routing accepts) still finds its operation.
    """

    host_url = "http://localhost"  # the spec's only server

    def __init__(self, method: str, path: str, query: list[tuple[str, str]],
                 headers: Headers, body: bytes, content_type: str) -> None:
        self.method = method.lower()
        self.path = path
        self.body: bytes | None = body or None
        self.content_type = content_type
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=headers)


class _SpecResponse:
    """An openapi-core ``Response`` for one answer of the emulator."""

    def __init__(self, status_code: int, content_type: str, headers: dict[str, str], data: bytes) -> None:
        self.status_code = status_code
        self.content_type = content_type
        self.headers = Headers(headers)
        self.data = data


def _describe(error: BaseException) -> str:
    """Render an openapi-core validation error and its causes on one line.

    Schema errors are listed as ``location: message`` (each cut to 160 characters), in place
    of the exceptions that quote them; a cause already quoted by its wrapper is left out.
    """
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        schema_errors = getattr(current, "schema_errors", None)
        if schema_errors:
            texts = [f"{'/'.join(str(part) for part in schema_error.absolute_path) or '(value)'}: "
                     f"{schema_error.message}" for schema_error in schema_errors]
        else:
            texts = [str(current) or type(current).__name__]
        for text in texts:
            if "<ValidationError" not in text and not any(text in part for part in parts):
                parts.append(text if len(text) <= 160 else text[:159] + "…")
        current = current.__cause__ or current.__context__
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Authorization header
# --------------------------------------------------------------------------------------------

_AUTHORIZATION_PAIR = re.compile(r'\s*([^=,\s]+)\s*=\s*(?:"([^"]*)"|([^,]*))\s*(?:,|$)')


def parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    """Split ``MediaBrowser Token="k", Client="c"`` into ``("MediaBrowser", {"Token": "k", …})``.

    Values are URL-decoded as Jellyfin's ``AuthorizationContext`` does. A value without a
    scheme or without pairs gives an empty dict.
    """
    scheme, _, rest = value.strip().partition(" ")
    pairs: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _AUTHORIZATION_PAIR.match(rest, position)
        if match is None or match.end() == position:
            break
        quoted, bare = match.group(2), match.group(3)
        pairs[match.group(1)] = unquote_plus(quoted if quoted is not None else bare.strip())
        position = match.end()
    return scheme, pairs


def _redact_authorization(value: str) -> str:
    scheme, pairs = parse_authorization(value)
    if not pairs:
        return REDACTED
    shown = ", ".join(f'{key}="{REDACTED if key.lower() == "token" else item}"' for key, item in pairs.items())
    return f"{scheme} {shown}"


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: Any = None  # JSON value; None means no body
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = _JSON
    raw: bytes | None = None  # a non-JSON body


@dataclass
class _Call:
    """A request that passed routing, auth and the spec check, as handlers see it."""

    path_values: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    authorization: dict[str, str]
    received: float
    violations: list[str]  # a handler appends what Jellyfin rejects beyond the spec (its 400s)


@dataclass
class _ScanJob:
    refresh: Refresh
    libraries: tuple[str, ...] | None  # None: every library (the RefreshLibrary task)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Task:
    key: str
    name: str
    category: str
    description: str
    triggers: list[dict[str, Any]]
    id: str = ""
    last_result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = hashlib.md5(self.key.encode()).hexdigest()  # 32 hex digits, like Jellyfin's


def _utc_now() -> str:
    """Now in Jellyfin's date-time form, e.g. ``2025-01-31T12:00:00.1234567Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_media(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS


def _normalize_guid(value: str) -> str | None:
    """``"0123…-…"`` or 32 hex digits → 32 lowercase hex digits; ``None`` if not a Guid."""
    try:
        return uuid.UUID(value).hex
    except ValueError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.11.11"`` → ``(10, 11, 11)``; parts that are not numbers count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split(".")[:3])


@dataclass
class _ServerSide:
    """What the server sees and keeps beyond the library: its view of the filesystem, its
    backups, its collections and playlists, the clean-up task (see the module docstring)."""

    paths: dict[str, str] = field(default_factory=dict)
    unlistable: set[str] = field(default_factory=set)
    backup_path: str = "/var/lib/jellyfin/data/backups"
    backup_free_bytes: int = 100 * 2**30
    backup_duration: float = 0.0
    backups: list[Backup] = field(default_factory=list)
    cleanup_task: _Task | None = None
    collections: dict[str, list[str]] = field(default_factory=dict)
    playlists: dict[str, list[str]] = field(default_factory=dict)
    removed_links: list[tuple[str, str]] = field(default_factory=list)
    restore_failures: list[str] = field(default_factory=list)
    restarts: int = 0


_SERVER_SIDE_LOCK = threading.Lock()


class JellyfinEmulator:
    """A Jellyfin 10.11 server on ``127.0.0.1`` (see the module docstring for what it emulates).

    Args:
        api_key: the API key that authenticates (an administrator's). :attr:`api_key` may be
            changed at any time to make the client's key wrong.
        libraries: the libraries, in ``GET /Library/VirtualFolders`` order.
        base_path: Jellyfin's "Base URL" setting, e.g. ``"/jellyfin"``; only paths under it are
            served, everything else is redirected (302) to ``<base_path>/web/`` by a relative
            ``Location``, as Jellyfin's ``BaseUrlRedirectionMiddleware`` does.
        version: ``Version`` in ``/System/Info`` and ``/System/Info/Public``.
        users: user name → password, for ``POST /Users/AuthenticateByName``.
        scan_duration: seconds a ``POST /Library/Refresh`` scan stays ``Running`` before it
            scans (0: at once). A new ``POST /Library/Refresh`` in that time cancels it.

    Thread-safety: every public method may be called from any thread; the list and dict
    attributes return snapshots.
    """

    def __init__(self, api_key: str = "test-key-0123456789abcdef", libraries: list[Library] | None = None,
                 base_path: str = "", version: str = "10.11.11", users: dict[str, str] | None = None,
                 scan_duration: float = 0.0, ssl_context: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self.libraries: list[Library] = list(libraries or [])
        self.base_path = base_path.rstrip("/")
        self.version = version
        self.users: dict[str, str] = dict(users or {})
        self.scan_duration = scan_duration
        self.ssl_context = ssl_context
        """Serve HTTPS with this server-side context (e.g. ``trustme``'s ``configure_cert``)."""
        self.host = host
        """The address to listen on: ``127.0.0.1``, or ``::1`` for IPv6."""
        self.unreadable_folders: set[str] = set()
        """Folders Jellyfin's user may not list. The emulator scans as the test process (root
        reads everything), so a test that takes permissions away from Jellyfin's user says so
        here: like Jellyfin 10.11 (``EnumerationOptions.IgnoreInaccessible``), a scan skips
        them, and the items below them are removed."""
        self.server_id = uuid.uuid4().hex
        self.server_name = "jellyfin-emulator"
        self._spec = _load_spec()
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)
        self._items: dict[str, Item] = {}
        self._removed: list[Item] = []
        self._refreshes: list[Refresh] = []
        self._requests: list[RecordedRequest] = []
        self._violations: list[str] = []
        self._tokens: set[str] = set()
        self._library_options: dict[str, dict[str, Any]] = {}
        self._down = False
        self._failures: list[tuple[int, tuple[str, ...] | None]] = []  # one entry per request to fail
        self._scan_forced_running = False
        self._cancelled_scans = 0
        self._jobs: deque[_ScanJob] = deque()
        self._current_job: _ScanJob | None = None
        self._scanning_libraries: set[str] = set()
        self._stopping = False
        self._tasks = [
            _Task("DeleteCacheFiles", "Clean Cache Directory", "Maintenance",
                  "Deletes cache files no longer needed by the system.",
                  [{"Type": "IntervalTrigger", "IntervalTicks": 24 * 3600 * TICKS_PER_SECOND}]),
            _Task(REFRESH_LIBRARY_KEY, "Scan Media Library", "Library",
                  "Scans your media library for new files and refreshes metadata.",
                  [{"Type": "IntervalTrigger", "IntervalTicks": DEFAULT_SCAN_INTERVAL_TICKS}]),
            _Task("CleanLogFiles", "Clean Log Directory", "Maintenance",
                  "Deletes log files that are more than 3 days old.",
                  [{"Type": "IntervalTrigger", "IntervalTicks": 24 * 3600 * TICKS_PER_SECOND}]),
        ]
        self._server: _Server | None = None
        self._port: int | None = None
        self._server_thread: threading.Thread | None = None
        self._scan_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:PORT"`` (``https``, ``[::1]`` as set) + base path. Raises ``RuntimeError`` before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("JellyfinEmulator is not started")
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}{self.base_path}"

    def start(self) -> JellyfinEmulator:
        """Listen on a free port of :attr:`host` and serve in a thread; return ``self``."""
        if self._server is not None:
            raise RuntimeError("JellyfinEmulator is already started")
        self._stopping = False
        self._server = _Server(self)
        self._port = self._server.server_address[1]
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="jellyfin-emulator-http", daemon=True)
        self._scan_thread = threading.Thread(target=self._run_scans, name="jellyfin-emulator-scan", daemon=True)
        self._server_thread.start()
        self._scan_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, join every thread. Queued scans are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._condition:
            self._stopping = True
            for job in self._jobs:
                job.cancel.set()
            if self._current_job is not None:
                self._current_job.cancel.set()
            self._condition.notify_all()
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the connection threads
        for thread in (self._server_thread, self._scan_thread):
            if thread is not None:
                thread.join()
        self._server_thread = self._scan_thread = None
        self._port = None

    def __enter__(self) -> JellyfinEmulator:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- state, read by tests

    @property
    def items(self) -> dict[str, Item]:
        """Items Jellyfin knows, by path (a snapshot)."""
        with self._lock:
            return dict(self._items)

    @property
    def removed(self) -> list[Item]:
        """Every item a scan deleted, in order: the harm. Tests assert it stays empty."""
        with self._lock:
            return list(self._removed)

    @property
    def refreshes(self) -> list[Refresh]:
        """One :class:`Refresh` per accepted refresh request, in arrival order."""
        with self._lock:
            return list(self._refreshes)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in the order they were answered."""
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        """Every way a request broke the spec or Jellyfin's rules (and ``"response: …"`` emulator bugs)."""
        with self._lock:
            return list(self._violations)

    @property
    def cancelled_scans(self) -> int:
        """How many ``POST /Library/Refresh`` arrived while the ``RefreshLibrary`` task was Running."""
        with self._lock:
            return self._cancelled_scans

    def wait_for_refreshes(self, count: int, timeout: float) -> list[Refresh]:
        """Wait until at least ``count`` refresh requests were accepted, at most ``timeout`` seconds.

        Returns :attr:`refreshes` (shorter than ``count`` on timeout).
        """
        with self._condition:
            self._condition.wait_for(lambda: len(self._refreshes) >= count, timeout)
            return list(self._refreshes)

    def wait_for_scans_idle(self, timeout: float) -> bool:
        """Wait until no scan is queued or running, at most ``timeout`` seconds; ``False`` on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._jobs and self._current_job is None, timeout)

    # ---------------------------------------------------------------- control, used by tests

    def index(self) -> int:
        """Add an item for every media file under every location, deleting nothing.

        This is the library as it stood before the test. Returns the number of items added.
        """
        added = 0
        for library in self.libraries:
            for location in library.locations:
                files, _unreadable = self._server_walk(location)
                with self._lock:
                    added += self._add_items(library, files)
        return added

    def fail_next(self, status: int = 503, count: int = 1, paths: tuple[str, ...] | None = None) -> None:
        """Answer ``status`` to the next ``count`` requests (only to those whose path is in ``paths``).

        ``paths`` holds paths without the base path, concrete (``/Library/Refresh``) or templates
        (``/Items/{itemId}/Refresh``). A 503 carries ``Retry-After`` like Jellyfin's startup answer.
        """
        with self._lock:
            self._failures.extend([(status, paths)] * count)

    def set_down(self, down: bool) -> None:
        """While ``down``, every request answers 503 (the server is starting)."""
        with self._lock:
            self._down = down

    def set_scan_running(self, running: bool) -> None:
        """Show the ``RefreshLibrary`` task as ``Running`` (``True``) or as it really is (``False``)."""
        with self._lock:
            self._scan_forced_running = running

    # ---------------------------------------------------------------- the server's side

    @property
    def _server_side(self) -> _ServerSide:
        with _SERVER_SIDE_LOCK:
            state: _ServerSide | None = self.__dict__.get("_server_side_state")
            if state is None:
                state = self.__dict__["_server_side_state"] = _ServerSide()
            return state

    @property
    def server_paths(self) -> dict[str, str]:
        """Jellyfin's path prefix → the host folder the *server* reads for it (the live dict).

        ``{"/data": "/tmp/x/container-data"}`` makes Jellyfin's ``/data/movies`` read
        ``/tmp/x/container-data/movies``; the longest prefix wins; a path no prefix covers is
        read as it is. Change it before or between requests, not during one.
        """
        return self._server_side.paths

    @property
    def unlistable(self) -> set[str]:
        """Jellyfin paths whose listing fails with an I/O error in the server's view (the live
        set): a failing disk or share seen from the server only."""
        return self._server_side.unlistable

    @property
    def backup_free_bytes(self) -> int:
        """Free bytes in the server's backup folder (default 100 GiB)."""
        return self._server_side.backup_free_bytes

    @backup_free_bytes.setter
    def backup_free_bytes(self, value: int) -> None:
        self._server_side.backup_free_bytes = value

    @property
    def backup_duration(self) -> float:
        """Seconds ``POST /Backup/Create`` takes before it answers (default 0)."""
        return self._server_side.backup_duration

    @backup_duration.setter
    def backup_duration(self, value: float) -> None:
        self._server_side.backup_duration = value

    @property
    def backups(self) -> list[Backup]:
        """Every archive in the backup folder, oldest first (a snapshot)."""
        with self._lock:
            return list(self._server_side.backups)

    @property
    def cleanup_task(self) -> bool:
        """Whether "Clean up collections and playlists" is listed (with its ``StartupTrigger`` until
        someone changes it). Jellyfin 10.9 to 10.11 always have it; the emulator lists it only when
        asked, and never on 12.0 or later, where it is gone."""
        return self._server_side.cleanup_task is not None

    @cleanup_task.setter
    def cleanup_task(self, enabled: bool) -> None:
        with self._lock:
            if not enabled:
                self._server_side.cleanup_task = None
            elif self._server_side.cleanup_task is None:
                self._server_side.cleanup_task = _Task(
                    CLEANUP_TASK_KEY, "Clean up collections and playlists", "Maintenance",
                    "Removes items from collections and playlists that no longer exist.",
                    [{"Type": "StartupTrigger"}])

    @property
    def collections(self) -> dict[str, list[str]]:
        """Collections (box sets): name → the Jellyfin paths of their entries (the live dict)."""
        return self._server_side.collections

    @property
    def playlists(self) -> dict[str, list[str]]:
        """Playlists: name → the Jellyfin paths of their entries (the live dict)."""
        return self._server_side.playlists

    @property
    def removed_links(self) -> list[tuple[str, str]]:
        """(collection or playlist name, entry path) the clean-up task dropped, in order: the harm."""
        with self._lock:
            return list(self._server_side.removed_links)

    @property
    def restore_failures(self) -> list[str]:
        """Why each restore that was asked for did not happen (an archive of a newer version)."""
        with self._lock:
            return list(self._server_side.restore_failures)

    @property
    def restarts(self) -> int:
        """How many times the server "started" (:meth:`restart`, ``POST /Backup/Restore``)."""
        with self._lock:
            return self._server_side.restarts

    def restart(self) -> list[tuple[str, str]]:
        """Start the server again: run every task whose triggers include ``StartupTrigger``.

        Only the clean-up task does anything here: it drops each collection and playlist entry
        whose file or folder the server cannot see now. Returns what this start dropped.
        """
        with self._lock:
            self._server_side.restarts += 1
            task = self._listed_cleanup_task()
            if task is None or not any(trigger.get("Type") == "StartupTrigger" for trigger in task.triggers):
                return []
        return self._clean_up_links(task)

    def host_path(self, path: str) -> str:
        """The host path the server reads for its ``path`` (see :attr:`server_paths`)."""
        with self._lock:
            pairs = list(self._server_side.paths.items())
        best = max((pair for pair in pairs if _under(path, pair[0].rstrip(os.sep) or os.sep)),
                   key=lambda pair: len(pair[0]), default=None)
        if best is None:
            return path
        prefix = best[0].rstrip(os.sep)
        rest = path[len(prefix):].lstrip(os.sep)
        return os.path.join(best[1], rest) if rest else best[1]

    def _version(self) -> tuple[int, ...]:
        return version_tuple(self.version)

    def _listed_cleanup_task(self) -> _Task | None:
        """The clean-up task, if this server lists it (10.9 to 10.11, and asked for)."""
        if not (10, 9) <= self._version() < (12,):
            return None
        return self._server_side.cleanup_task

    def _all_tasks(self) -> list[_Task]:
        task = self._listed_cleanup_task()
        return [*self._tasks, task] if task is not None else list(self._tasks)

    def _clean_up_links(self, task: _Task) -> list[tuple[str, str]]:
        """Run "Clean up collections and playlists" once: ``File.Exists || Directory.Exists`` per entry."""
        started = _utc_now()
        dropped: list[tuple[str, str]] = []
        with self._lock:
            folders = [*self._server_side.collections.items(), *self._server_side.playlists.items()]
        for name, entries in folders:
            kept = []
            for path in list(entries):
                if os.path.exists(self.host_path(path)):
                    kept.append(path)
                else:
                    logger.info("Item in %s cannot be found at %s", name, path)
                    dropped.append((name, path))
            entries[:] = kept
        with self._lock:
            self._server_side.removed_links.extend(dropped)
            task.last_result = {"StartTimeUtc": started, "EndTimeUtc": _utc_now(), "Status": "Completed",
                                "Name": task.name, "Key": task.key, "Id": task.id}
        return dropped

    def _scan_running(self) -> bool:
        """``ILibraryManager.IsScanRunning``: a library scan is queued or running."""
        with self._lock:
            return self._task_running() or self._current_job is not None or bool(self._jobs)

    def _scan_rules(self) -> tuple[bool, bool, bool]:
        """(top-level guard, unresolvable location protected, children of a failed listing kept)
        for this version (``Folder.cs``: 10.9 added the guard; 12.0 changed the other two)."""
        version = self._version()
        return version >= (10, 9), version < (12,), version >= (12,)

    # ---------------------------------------------------------------- scanning

    def _library_task_jobs(self) -> list[_ScanJob]:
        """``POST /Library/Refresh`` jobs running or queued and not cancelled (the caller holds the lock)."""
        jobs = ([self._current_job] if self._current_job is not None else []) + list(self._jobs)
        return [job for job in jobs if job.libraries is None and not job.cancel.is_set()]

    def _task_running(self) -> bool:
        """The ``RefreshLibrary`` task's state is Running (the caller holds the lock).

        Jellyfin starts a queued task at once when it is idle, so a queued scan counts as running.
        """
        return self._scan_forced_running or bool(self._library_task_jobs())

    def _queue_scan(self, refresh: Refresh, libraries: tuple[str, ...] | None) -> None:
        """Record ``refresh`` and queue its scan (the caller holds the lock)."""
        self._refreshes.append(refresh)
        self._jobs.append(_ScanJob(refresh, libraries))
        self._condition.notify_all()

    def _run_scans(self) -> None:
        """The scan thread: run queued jobs one at a time until :meth:`stop`."""
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._stopping or bool(self._jobs))
                if self._stopping:
                    self._jobs.clear()
                    self._condition.notify_all()
                    return
                job = self._current_job = self._jobs.popleft()
            try:
                self._run_job(job)
            except Exception as error:  # an emulator bug must not kill the thread silently
                logger.exception("scan failed")
                self._record_bug(f"emulator: scan failed: {error!r}")
            finally:
                with self._condition:
                    job.refresh.done = True
                    self._current_job = None
                    self._condition.notify_all()

    def _run_job(self, job: _ScanJob) -> None:
        task = next(task for task in self._tasks if task.key == REFRESH_LIBRARY_KEY)
        started = _utc_now()
        if job.libraries is None and self.scan_duration > 0:
            job.cancel.wait(self.scan_duration)
        names = job.libraries if job.libraries is not None else tuple(library.name for library in self.libraries)
        for library in [library for library in self.libraries if library.name in names]:
            if job.cancel.is_set():  # Jellyfin's scan stops at its next cancellation check
                break
            added, removed = self._scan_library(library)
            job.refresh.added += added
            job.refresh.removed += removed
        if job.libraries is None:
            with self._lock:
                task.last_result = {
                    "StartTimeUtc": started, "EndTimeUtc": _utc_now(),
                    "Status": "Cancelled" if job.cancel.is_set() else "Completed",
                    "Name": task.name, "Key": task.key, "Id": task.id,
                }

    def _scan_library(self, library: Library) -> tuple[int, int]:
        """Scan ``library`` as Jellyfin does, through the server's view; return (items added, items deleted).

        A top-level location that is empty or unreadable is skipped and keeps its items (10.9+); one
        that cannot be resolved (missing, or a file) too, before 12.0 only. Under any other
        location, every item whose file the walk did not find is deleted; under a sub-folder whose
        listing failed, its items are kept from 12.0 on and deleted before.
        """
        guard, unresolvable_protected, failed_listing_kept = self._scan_rules()
        with self._lock:
            self._scanning_libraries.add(library.name)
        added = removed = 0
        try:
            for location in library.locations:
                state = self._location_state(location)
                if state != "accessible" and guard and (state == "inaccessible" or unresolvable_protected):
                    logger.warning("Library folder %s is inaccessible or empty, skipping", location)
                    continue
                files, unreadable = self._server_walk(location) if state == "accessible" else (set(), [])
                if not failed_listing_kept:
                    unreadable = []
                denied = set(self.unreadable_folders)
                files = {path for path in files if not any(_under(path, folder) for folder in denied)}
                with self._lock:
                    for item in [item for item in self._items.values()
                                 if item.library == library.name and _under(item.path, location)]:
                        if item.path in files or any(_under(item.path, folder) for folder in unreadable):
                            continue
                        del self._items[item.path]
                        self._removed.append(item)
                        removed += 1
                        logger.info("Removing item %s: %s is gone", item.id, item.path)
                    added += self._add_items(library, files)
        finally:
            with self._lock:
                self._scanning_libraries.discard(library.name)
        return added, removed

    def _location_state(self, location: str) -> str:
        """``"accessible"`` (a folder with entries), ``"inaccessible"`` (empty, unreadable, or its
        listing fails) or ``"unresolved"`` (missing, or not a folder), in the server's view."""
        host = self.host_path(location)
        if location in self.unlistable:
            return "inaccessible"
        try:
            with os.scandir(host) as entries:
                return "accessible" if next(entries, None) is not None else "inaccessible"
        except (FileNotFoundError, NotADirectoryError):
            return "unresolved"
        except OSError:
            return "inaccessible"

    def _server_walk(self, location: str) -> tuple[set[str], list[str]]:
        """:func:`_walk` through the server's view: Jellyfin paths of the media files under
        ``location``, and of the sub-folders whose listing failed."""
        host = self.host_path(location).rstrip(os.sep) or os.sep
        with self._lock:
            failing = {self.host_path(path).rstrip(os.sep) for path in self._server_side.unlistable}
        files, unreadable = _walk(host, failing)

        def back(path: str) -> str:
            rest = path[len(host):].lstrip(os.sep)
            return os.path.join(location, rest) if rest else location

        return {back(path) for path in files}, [back(path) for path in unreadable]

    def _add_items(self, library: Library, files: Iterable[str]) -> int:
        """Add an item for each path in ``files`` not yet known (the caller holds the lock)."""
        added = 0
        for path in sorted(files):
            if path not in self._items:
                self._items[path] = Item(uuid.uuid4().hex, path, library.name)
                added += 1
        return added

    # ---------------------------------------------------------------- request handling

    def _record_bug(self, message: str) -> None:
        """Record an emulator bug in :attr:`violations`, so the test that met it fails."""
        with self._condition:
            self._violations.append(message)
            self._condition.notify_all()

    def _handle(self, method: str, target: str, header_pairs: list[tuple[str, str]], body: bytes) -> _Reply:
        """Answer one request: route, check, inject faults, dispatch, self-validate, record."""
        received = time.monotonic()
        split = urlsplit(target)
        raw_path = split.path
        query_pairs = parse_qsl(split.query, keep_blank_values=True)
        headers = Headers(header_pairs)
        content_type = (headers.get("Content-Type") or "").lower()
        body_json = _parse_json(body) if body else None
        violations: list[str] = []

        reply, route, spec_request, call = self._check(
            method, raw_path, query_pairs, headers, body, body_json, content_type, received, violations)
        injected = self._injected_status(raw_path, route)
        if injected is not None:
            reply = _error_reply(injected)
        elif reply is None:
            assert route is not None and call is not None
            reply = getattr(self, _HANDLERS[route.template, method.lower()])(call)
        response_errors = (self._check_response(route, method, spec_request, reply)
                           if spec_request is not None and route is not None else [])

        with self._condition:
            self._violations.extend(f"{method} {raw_path}: {violation}" for violation in violations)
            self._violations.extend(f"response: {method} {raw_path}: {error}" for error in response_errors)
            self._requests.append(RecordedRequest(
                time=received, method=method, path=raw_path,
                query=_redacted_query(query_pairs), headers=_redacted_headers(header_pairs),
                json=_redacted_body(body_json), status=reply.status))
            self._condition.notify_all()
        return reply

    def _injected_status(self, raw_path: str, route: _Route | None) -> int | None:
        """503 while down, else the status of the first :meth:`fail_next` entry this request matches."""
        with self._lock:
            if self._down:
                return 503
            path = self._strip_base_path(raw_path)
            for position, (status, paths) in enumerate(self._failures):
                if paths is None or path in paths or (route is not None and route.template in paths):
                    del self._failures[position]
                    return status
        return None

    def _strip_base_path(self, raw_path: str) -> str | None:
        """The path below the base path, or ``None`` if the request is outside it."""
        if not self.base_path:
            return raw_path
        if raw_path.lower() == self.base_path.lower():
            return "/"
        if raw_path.lower().startswith(self.base_path.lower() + "/"):
            return raw_path[len(self.base_path):]
        return None

    def _route(self, path: str, method: str) -> tuple[_Route | None, dict[str, str], int]:
        """Match ``path`` against every path of the full spec the way ASP.NET routing does.

        Returns (route, path values, status): status 404 (no path matches), 405 (no matching path
        has ``method``), or 0 with the most specific matching route that has it.
        """
        candidates = [(route, match) for route in self._spec.routes
                      if (match := route.pattern.fullmatch(path)) is not None]
        if not candidates:
            return None, {}, 404
        with_method = [(route, match) for route, match in candidates if method in route.methods]
        if not with_method:
            return min(candidates, key=lambda pair: pair[0].precedence)[0], {}, 405
        route, match = min(with_method, key=lambda pair: pair[0].precedence)
        return route, match.groupdict(), 0

    def _check(self, method: str, raw_path: str, query_pairs: list[tuple[str, str]], headers: Headers,
               body: bytes, body_json: Any, content_type: str, received: float, violations: list[str],
               ) -> tuple[_Reply | None, _Route | None, _SpecRequest | None, _Call | None]:
        """Route, authenticate and check one request against the spec.

        Returns (an error reply or ``None``, the route, the openapi-core request, the call for
        the handler); appends to ``violations``.
        """
        lower_method = method.lower()
        path = self._strip_base_path(raw_path)
        if path is None:  # BaseUrlRedirectionMiddleware: to <base URL>/web/, relative to the request
            target = posixpath.relpath(self.base_path + "/web", posixpath.dirname(raw_path) or "/") + "/"
            return _Reply(302, headers={"Location": target}), None, None, None
        route, path_values, status = self._route(path, lower_method)
        if status:
            return _error_reply(status), route, None, None
        assert route is not None
        if lower_method not in route.served:
            violations.append(f"{method} {route.template} is a Jellyfin operation the emulator does not serve")
            return _error_reply(501), route, None, None
        operation = self._spec.document["paths"][route.template][lower_method]

        authorization, auth_status = self._authenticate(operation, headers, query_pairs, violations)

        # Query parameters: undeclared ones are a violation; arrays may also be comma-separated,
        # as Jellyfin's CommaDelimitedArrayModelBinder accepts.
        declared = {parameter["name"]: parameter for parameter in operation.get("parameters", [])
                    if parameter["in"] == "query"}
        spec_query: list[tuple[str, str]] = []
        undeclared = [name for name, _ in query_pairs
                      if name not in declared and name.lower() not in _LEGACY_TOKEN_QUERY]
        violations.extend(f"undeclared query parameter {name!r}" for name in undeclared)
        for name, value in query_pairs:
            if name not in declared:
                continue  # reported above, or as legacy authentication
            if declared[name].get("schema", {}).get("type") == "array":
                spec_query.extend((name, part) for part in value.split(",") if part)
            else:
                spec_query.append((name, value))
        concrete = _TEMPLATE_PARTS.sub(lambda match: path_values[match.group(1)[1:-1]], route.template)
        spec_request = _SpecRequest(method, concrete, spec_query, headers, body, content_type)
        with self._spec.lock:
            result = self._spec.request_app.unmarshal_request(spec_request)
        errors = [error for error in result.errors
                  if not isinstance(error, SecurityValidationError)]  # auth: _authenticate
        for error in errors:
            violations.append(f"spec: {_describe(error)}")
        if auth_status:
            return _error_reply(auth_status), route, spec_request, None
        if errors or undeclared:
            media_type_missing = any(isinstance(error.__cause__, MediaTypeNotFound) for error in errors)
            return _validation_reply(415 if media_type_missing else 400, violations), route, spec_request, None
        query: dict[str, list[str]] = {}
        for name, value in spec_query:
            query.setdefault(name, []).append(value)
        values = {name: unquote(value) for name, value in path_values.items()}
        call = _Call(values, query, body_json, authorization, received, violations)
        return None, route, spec_request, call

    def _authenticate(self, operation: dict[str, Any], headers: Headers, query_pairs: list[tuple[str, str]],
                      violations: list[str]) -> tuple[dict[str, str], int]:
        """Parse the ``Authorization`` header; return (its pairs, 401 or 0).

        Legacy forms are violations on every request and a 401 where auth is required.
        """
        legacy = [f"legacy authentication: header {name}" for name in _LEGACY_TOKEN_HEADERS if name in headers]
        legacy += [f"legacy authentication: query parameter {name}" for name, _ in query_pairs
                   if name.lower() in _LEGACY_TOKEN_QUERY]
        value = headers.get("Authorization")
        scheme, pairs = parse_authorization(value) if value is not None else ("", {})
        if value is not None and scheme.lower() != "mediabrowser":
            legacy.append(f"legacy authentication: Authorization scheme {scheme!r}, expected MediaBrowser")
        secured = bool(operation.get("security"))
        if secured and value is not None and scheme.lower() == "mediabrowser" and "Token" not in pairs:
            legacy.append("legacy authentication: Authorization: MediaBrowser without Token")
        violations.extend(legacy)
        if not secured:
            return pairs, 0
        if value is None and not legacy:
            violations.append("missing Authorization header")
        if legacy or value is None:
            return pairs, 401
        with self._lock:
            valid = pairs.get("Token") == self.api_key or pairs.get("Token") in self._tokens
        return pairs, 0 if valid else 401  # a wrong key is not a violation

    def _check_response(self, route: _Route, method: str, spec_request: _SpecRequest, reply: _Reply) -> list[str]:
        """Validate ``reply`` against the spec, if the operation declares its status."""
        operation = self._spec.document["paths"][route.template].get(method.lower(), {})
        if str(reply.status) not in operation.get("responses", {}):
            return []
        data = _encode(reply)
        response = _SpecResponse(reply.status, reply.content_type if data else "", reply.headers, data)
        with self._spec.lock:
            result = self._spec.response_app.unmarshal_response(spec_request, response)
        return [_describe(error) for error in result.errors]

    # ---------------------------------------------------------------- operations

    def _library_by_id(self, value: str) -> Library | None:
        item_id = _normalize_guid(value)
        return next((library for library in self.libraries if library.item_id == item_id), None)

    def _options(self, library: Library) -> dict[str, Any]:
        """``LibraryOptions`` of ``library``: as last set by the client, else Jellyfin's defaults."""
        with self._lock:
            options = dict(self._library_options.get(library.name) or {
                "Enabled": True, "EnablePhotos": True, "EnableRealtimeMonitor": library.realtime_monitor,
                "EnableLUFSScan": True, "EnableChapterImageExtraction": False,
                "ExtractChapterImagesDuringLibraryScan": False, "EnableTrickplayImageExtraction": False,
                "ExtractTrickplayImagesDuringLibraryScan": False,
                "PathInfos": [{"Path": location} for location in library.locations],
                "SaveLocalMetadata": False, "EnableInternetProviders": True,
                "EnableAutomaticSeriesGrouping": False, "EnableEmbeddedTitles": False,
                "EnableEmbeddedExtrasTitles": False, "EnableEmbeddedEpisodeInfos": False,
                "AutomaticRefreshIntervalDays": 0, "SeasonZeroDisplayName": "Specials",
                "DisabledLocalMetadataReaders": [], "DisabledSubtitleFetchers": [],
                "SubtitleFetcherOrder": [], "SkipSubtitlesIfEmbeddedSubtitlesPresent": False,
                "SkipSubtitlesIfAudioTrackMatches": False, "RequirePerfectSubtitleMatch": True,
                "SaveSubtitlesWithMedia": True, "AutomaticallyAddToCollection": False,
                "AllowEmbeddedSubtitles": "AllowAll", "TypeOptions": [],
            })
        options["EnableRealtimeMonitor"] = library.realtime_monitor
        return options

    def _get_virtual_folders(self, call: _Call) -> _Reply:
        with self._lock:
            scanning = set(self._scanning_libraries)
        return _Reply(200, [
            {"Name": library.name, "Locations": list(library.locations), "CollectionType": library.collection_type,
             "LibraryOptions": self._options(library), "ItemId": library.item_id,
             "RefreshStatus": "Active" if library.name in scanning else "Idle"}
            for library in self.libraries])

    def _post_library_refresh(self, call: _Call) -> _Reply:
        with self._condition:
            if self._task_running():  # TaskManager.CancelIfRunningAndQueue
                self._cancelled_scans += 1
                for job in self._library_task_jobs():
                    job.cancel.set()
                    job.refresh.cancelled = True
            self._queue_scan(Refresh(call.received, "library"), None)
        return _Reply(204)

    def _task_info(self, task: _Task) -> dict[str, Any]:
        with self._lock:
            running = task.key == REFRESH_LIBRARY_KEY and self._task_running()
            info: dict[str, Any] = {
                "Name": task.name, "State": "Running" if running else "Idle", "Id": task.id,
                "Triggers": [dict(trigger) for trigger in task.triggers], "Description": task.description,
                "Category": task.category, "IsHidden": False, "Key": task.key,
            }
            if running:
                info["CurrentProgressPercentage"] = 0.0
            if task.last_result is not None:
                info["LastExecutionResult"] = dict(task.last_result)
        return info

    def _get_scheduled_tasks(self, call: _Call) -> _Reply:
        hidden = call.query.get("isHidden")
        tasks = [self._task_info(task) for task in self._all_tasks()]
        if hidden is not None:
            tasks = [task for task in tasks if task["IsHidden"] == (hidden[-1].lower() == "true")]
        return _Reply(200, tasks)

    def _find_task(self, call: _Call) -> _Task | None:
        return next((task for task in self._all_tasks() if task.id == call.path_values["taskId"]), None)

    def _get_scheduled_task(self, call: _Call) -> _Reply:
        task = self._find_task(call)
        return _not_found() if task is None else _Reply(200, self._task_info(task))

    def _post_task_triggers(self, call: _Call) -> _Reply:
        task = self._find_task(call)
        if task is None:
            return _not_found()
        with self._lock:
            task.triggers = [dict(trigger) for trigger in call.body]
        return _Reply(204)

    def _public_info(self) -> dict[str, Any]:
        return {"LocalAddress": self.url, "ServerName": self.server_name, "Version": self.version,
                "ProductName": PRODUCT_NAME, "OperatingSystem": "", "Id": self.server_id,
                "StartupWizardCompleted": True}

    def _get_public_system_info(self, call: _Call) -> _Reply:
        return _Reply(200, self._public_info())

    def _get_system_info(self, call: _Call) -> _Reply:
        return _Reply(200, self._public_info() | {
            "OperatingSystemDisplayName": "", "PackageName": "emulator", "HasPendingRestart": False,
            "IsShuttingDown": False, "SupportsLibraryMonitor": True,
            "WebSocketPortNumber": self._port or 0, "CompletedInstallations": [],
            "CanSelfRestart": True, "CanLaunchWebBrowser": False, "CastReceiverApplications": [],
            "HasUpdateAvailable": False, "EncoderLocation": "System", "SystemArchitecture": "X64",
        })

    def _ping(self, call: _Call) -> _Reply:
        return _Reply(200, PRODUCT_NAME)

    def _post_item_refresh(self, call: _Call) -> _Reply:
        library = self._library_by_id(call.path_values["itemId"])
        item_id = _normalize_guid(call.path_values["itemId"]) or ""
        with self._condition:
            known_item = any(item.id == item_id for item in self._items.values())
            if library is None and not known_item:
                return _not_found()
            refresh = Refresh(call.received, "item", (item_id,))
            if library is not None:
                self._queue_scan(refresh, (library.name,))
            else:  # a media item: a metadata refresh, nothing to scan
                refresh.done = True
                self._refreshes.append(refresh)
                self._condition.notify_all()
        return _Reply(204)

    def _post_media_updated(self, call: _Call) -> _Reply:
        updates = call.body.get("Updates") or []
        paths = [update.get("Path") for update in updates]
        if any(not path for path in paths):
            call.violations.append("an update without Path (Jellyfin answers 400)")
            return _validation_reply(400, call.violations)
        names = tuple(library.name for library in self.libraries
                      if any(_under(path, location) for path in paths for location in library.locations))
        with self._condition:
            self._queue_scan(Refresh(call.received, "media-updated", tuple(paths)), names)
        return _Reply(204)

    def _get_items(self, call: _Call) -> _Reply:
        def flag(name: str) -> bool:
            return call.query.get(name, ["false"])[-1].lower() == "true"

        fields = set(call.query.get("fields", []))
        parent = call.query.get("parentId", [None])[-1]
        types = set(call.query.get("includeItemTypes", []))
        recursive = flag("recursive")
        library = self._library_by_id(parent) if parent else None
        with self._lock:
            items = sorted(self._items.values(), key=lambda item: item.path)
        entries: list[dict[str, Any]]
        if parent is None and not recursive:  # the user's root: the libraries
            entries = [{"Name": library.name, "ServerId": self.server_id, "Id": library.item_id,
                        "Type": "CollectionFolder", "IsFolder": True, "CollectionType": library.collection_type}
                       | ({"Path": library.locations[0]} if "Path" in fields and library.locations else {})
                       for library in self.libraries]
        else:
            if parent is not None:
                chosen = [item for item in items if library is not None and item.library == library.name and (
                    recursive or any(os.path.dirname(item.path) == location.rstrip(os.sep)
                                     for location in library.locations))]
            else:
                chosen = items
            entries = [self._item_dto(item, fields) for item in chosen]
        if types:
            entries = [entry for entry in entries if entry["Type"] in types]
        start = int(call.query.get("startIndex", ["0"])[-1])
        limit = call.query.get("limit")
        page = entries[start:] if limit is None else entries[start:start + int(limit[-1])]
        return _Reply(200, {"Items": page, "TotalRecordCount": len(entries), "StartIndex": start})

    def _item_dto(self, item: Item, fields: set[str]) -> dict[str, Any]:
        library = next((library for library in self.libraries if library.name == item.library), None)
        extension = os.path.splitext(item.path)[1].lower()
        if extension in AUDIO_EXTENSIONS:
            kind = "Audio"
        elif library is not None and library.collection_type == "movies":
            kind = "Movie"
        elif library is not None and library.collection_type == "tvshows":
            kind = "Episode"
        else:
            kind = "Video"
        dto: dict[str, Any] = {"Name": os.path.splitext(os.path.basename(item.path))[0],
                               "ServerId": self.server_id, "Id": item.id, "Type": kind, "IsFolder": False,
                               "MediaType": "Audio" if kind == "Audio" else "Video"}
        if "Path" in fields:
            dto["Path"] = item.path
        return dto

    def _post_library_options(self, call: _Call) -> _Reply:
        library = self._library_by_id(call.body.get("Id") or "")
        if library is None:
            return _not_found()
        options = dict(call.body.get("LibraryOptions") or {})
        with self._lock:
            self._library_options[library.name] = options  # Jellyfin replaces the options wholesale
            library.realtime_monitor = bool(options.get("EnableRealtimeMonitor", False))
        return _Reply(204)

    def _post_authenticate_by_name(self, call: _Call) -> _Reply:
        missing = [name for name in _AUTHENTICATE_BY_NAME_FIELDS if not call.authorization.get(name)]
        if missing:
            call.violations.append(f"Authorization lacks {', '.join(missing)} (Jellyfin answers 400)")
            return _validation_reply(400, call.violations)
        user_name, password = call.body.get("Username"), call.body.get("Pw")
        if not user_name or user_name not in self.users or self.users[user_name] != (password or ""):
            return _Reply(401, raw=b"Error processing request.", content_type="text/plain")
        token = uuid.uuid4().hex
        user_id = hashlib.md5(user_name.encode()).hexdigest()
        with self._lock:
            self._tokens.add(token)
        return _Reply(200, {
            "User": {"Name": user_name, "ServerId": self.server_id, "Id": user_id, "HasPassword": bool(password),
                     "HasConfiguredPassword": bool(password), "HasConfiguredEasyPassword": False,
                     "EnableAutoLogin": False},
            "SessionInfo": {"Id": uuid.uuid4().hex, "UserId": user_id, "UserName": user_name,
                            "Client": call.authorization["Client"], "DeviceName": call.authorization["Device"],
                            "DeviceId": call.authorization["DeviceId"],
                            "ApplicationVersion": call.authorization["Version"], "IsActive": True,
                            "ServerId": self.server_id},
            "AccessToken": token, "ServerId": self.server_id,
        })

    # ---------------------------------------------------------------- the server's filesystem and backups

    def _get_directory_contents(self, call: _Call) -> _Reply:
        """``EnvironmentController.GetDirectoryContents`` through the server's view.

        A missing folder (or a file) throws DirectoryNotFoundException: 404. An unreadable one lists
        as empty (``EnumerationOptions.IgnoreInaccessible``). Another I/O error: 500. Entries are
        sorted by full path; each is a ``FileSystemEntryInfo`` with the path as Jellyfin sees it.
        A hung mount makes the request hang, as it does Jellyfin's.
        """
        path = call.query["path"][-1]
        include_files = call.query.get("includeFiles", ["false"])[-1].lower() == "true"
        include_directories = call.query.get("includeDirectories", ["false"])[-1].lower() == "true"
        if path in self.unlistable:
            return _server_error()
        try:
            with os.scandir(self.host_path(path)) as scanned:
                entries = list(scanned)
        except (FileNotFoundError, NotADirectoryError):
            return _Reply(404, raw=SERVER_ERROR_TEXT, content_type="text/plain")
        except PermissionError:
            entries = []
        except OSError:
            return _server_error()
        listed = []
        for entry in entries:
            try:
                is_directory = entry.is_dir()
            except OSError:
                is_directory = False
            if (is_directory and include_directories) or (not is_directory and include_files):
                name = os.fsencode(entry.name).decode("utf-8", "replace")  # as .NET decodes file names
                listed.append({"Name": name, "Path": os.path.join(path, name),
                               "Type": "Directory" if is_directory else "File"})
        return _Reply(200, sorted(listed, key=lambda entry: entry["Path"]))

    def _post_validate_path(self, call: _Call) -> _Reply:
        """``EnvironmentController.ValidatePath``: 204 when the path exists as asked, else 404."""
        body = call.body or {}
        path = body.get("Path")
        host = self.host_path(path) if path else ""
        is_file = body.get("IsFile")
        if is_file is not None:
            found = os.path.isfile(host) if is_file else os.path.isdir(host)
            return _Reply(204) if found else _not_found()
        if not (host and (os.path.isfile(host) or os.path.isdir(host))):
            return _not_found()
        if body.get("ValidateWritable"):
            probe = os.path.join(host, str(uuid.uuid4()))
            try:
                with open(probe, "w", encoding="utf-8"):
                    pass
            except OSError:
                return _server_error()
            finally:
                if os.path.exists(probe):
                    os.remove(probe)
        return _Reply(204)

    def _has_backups(self) -> bool:
        return self._version() >= (10, 11)

    def _post_backup_create(self, call: _Call) -> _Reply:
        """``BackupService.CreateBackupAsync``: refuse during a scan (12.0), need 5 GiB, write, answer."""
        if not self._has_backups():
            return _Reply(404)
        if self._version() >= (12,) and self._scan_running():
            logger.warning("Cannot create a backup while a library scan is running.")
            return _server_error()
        if self.backup_free_bytes < BACKUP_FREE_SPACE:
            return _server_error()
        deadline = time.monotonic() + self.backup_duration
        with self._condition:  # the archive is written meanwhile; stop() ends the wait
            self._condition.wait_for(lambda: self._stopping or time.monotonic() >= deadline,
                                     max(0.0, self.backup_duration))
        body = call.body or {}
        options = {"Metadata": bool(body.get("Metadata", False)), "Trickplay": bool(body.get("Trickplay", False)),
                   "Subtitles": bool(body.get("Subtitles", False)), "Database": bool(body.get("Database", True))}
        created = datetime.now(UTC)
        file_name = f"jellyfin-backup-{created.astimezone():%Y%m%d%H%M%S}.zip"
        with self._condition:
            state = self._server_side
            backup = Backup(file_name, f"{state.backup_path}/{file_name}", created, self.version, options,
                            dict(self._items), {name: list(entries) for name, entries in state.collections.items()},
                            {name: list(entries) for name, entries in state.playlists.items()})
            state.backups[:] = [*(old for old in state.backups if old.file_name != file_name), backup]
            self._condition.notify_all()
        logger.info("Backup created: %s", backup.path)
        return _Reply(200, backup.manifest())

    def _get_backups(self, call: _Call) -> _Reply:
        if not self._has_backups():
            return _Reply(404)
        return _Reply(200, [backup.manifest() for backup in self.backups])

    def _post_backup_restore(self, call: _Call) -> _Reply:
        """``StartRestoreBackup``: 404 without the archive; else the server restarts into it.

        The restore happens at the next start (before this answer, here): an archive of a newer
        version is refused then (:attr:`restore_failures`) and the server starts as it was.
        """
        if not self._has_backups():
            return _not_found()
        name = os.path.basename(str((call.body or {}).get("ArchiveFileName") or ""))
        backup = next((backup for backup in self.backups if backup.file_name == name), None)
        if backup is None:
            return _not_found()
        with self._condition:
            state = self._server_side
            if version_tuple(backup.server_version) > self._version():
                state.restore_failures.append(
                    f"The loaded archive '{backup.path}' is made for a newer version of Jellyfin "
                    f"({backup.server_version}) and cannot be loaded in this version.")
            else:
                self._items = dict(backup.items)
                state.collections.clear()
                state.collections.update({name: list(entries) for name, entries in backup.collections.items()})
                state.playlists.clear()
                state.playlists.update({name: list(entries) for name, entries in backup.playlists.items()})
            self._condition.notify_all()
        self.restart()
        return _Reply(204)


_HANDLERS: dict[tuple[str, str], str] = {
    ("/Library/VirtualFolders", "get"): "_get_virtual_folders",
    ("/Library/Refresh", "post"): "_post_library_refresh",
    ("/ScheduledTasks", "get"): "_get_scheduled_tasks",
    ("/ScheduledTasks/{taskId}", "get"): "_get_scheduled_task",
    ("/ScheduledTasks/{taskId}/Triggers", "post"): "_post_task_triggers",
    ("/System/Info/Public", "get"): "_get_public_system_info",
    ("/System/Info", "get"): "_get_system_info",
    ("/System/Ping", "get"): "_ping",
    ("/System/Ping", "post"): "_ping",
    ("/Items/{itemId}/Refresh", "post"): "_post_item_refresh",
    ("/Library/Media/Updated", "post"): "_post_media_updated",
    ("/Items", "get"): "_get_items",
    ("/Library/VirtualFolders/LibraryOptions", "post"): "_post_library_options",
    ("/Users/AuthenticateByName", "post"): "_post_authenticate_by_name",
    ("/Environment/DirectoryContents", "get"): "_get_directory_contents",
    ("/Environment/ValidatePath", "post"): "_post_validate_path",
    ("/Backup/Create", "post"): "_post_backup_create",
    ("/Backup", "get"): "_get_backups",
    ("/Backup/Restore", "post"): "_post_backup_restore",
}
"""(path template, method) → handler method name; one entry per operation of the subset."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _walk(location: str, failing: set[str] | frozenset[str] = frozenset()) -> tuple[set[str], list[str]]:
    """Every media file under ``location``, and the sub-folders that could not be listed.

    Follows symlinks to folders but enters each real folder once (no symlink loops). A folder in
    ``failing`` fails to list as if its disk answered with an I/O error.
    """
    files: set[str] = set()
    unreadable: list[str] = []
    seen: set[tuple[int, int]] = set()

    def visit(folder: str) -> Iterator[os.DirEntry[str]]:
        try:
            if folder.rstrip(os.sep) in failing:
                raise OSError(5, "Input/output error", folder)
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                return
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            unreadable.append(folder)
            return
        yield from listed

    pending = [os.path.normpath(location)]
    while pending:
        for entry in visit(pending.pop()):
            try:
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.is_file() and _is_media(entry.name):
                    files.add(entry.path)
            except OSError:
                continue
    return files, unreadable


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _encode(reply: _Reply) -> bytes:
    if reply.raw is not None:
        return reply.raw
    if reply.body is None:
        return b""
    return json.dumps(reply.body, separators=(",", ":")).encode()


def _error_reply(status: int) -> _Reply:
    """An answer without content; 503 looks like Jellyfin's "server is starting" answer."""
    if status == 503:
        return _Reply(503, raw=b"<html><body>Jellyfin Server is starting</body></html>",
                      content_type="text/html; charset=utf-8",
                      headers={"Retry-After": "5", "Message": "Server is starting"})
    return _Reply(status)


def _server_error() -> _Reply:
    """What Jellyfin's ``ExceptionMiddleware`` answers to an exception it does not map (500)."""
    return _Reply(500, raw=SERVER_ERROR_TEXT, content_type="text/plain")


def _not_found() -> _Reply:
    return _Reply(404, {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.5", "title": "Not Found",
                        "status": 404})


def _validation_reply(status: int, reasons: list[str]) -> _Reply:
    """ASP.NET's ValidationProblemDetails answer."""
    return _Reply(status, {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
                           "title": "One or more validation errors occurred.", "status": status,
                           "errors": {"request": reasons}}, content_type="application/problem+json; charset=utf-8")


def _redacted_query(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for name, value in pairs:
        query.setdefault(name, []).append(REDACTED if name.lower() in _LEGACY_TOKEN_QUERY else value)
    return query


def _redacted_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in pairs:
        if name.lower() in ("authorization", "x-emby-authorization"):
            value = _redact_authorization(value)
        elif name.lower() in ("x-emby-token", "x-mediabrowser-token"):
            value = REDACTED
        headers[name] = value
    return headers


def _redacted_body(body: Any) -> Any:
    if isinstance(body, dict) and "Pw" in body:
        return body | {"Pw": REDACTED}
    return body


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class ClosingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP(S) server whose :meth:`server_close` joins the connection threads.

    Keep-alive connections are tracked so :meth:`close_connections` can end them at stop; a
    connection that fails outside a handler (a refused TLS handshake) is logged, not printed.
    The emulator, the proxies in front of it and the tests' own servers build on it.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed: %r", client_address, sys.exc_info()[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so its thread ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Server(ClosingHTTPServer):
    def __init__(self, emulator: JellyfinEmulator) -> None:
        self.emulator = emulator
        super().__init__((emulator.host, 0), _Handler)
        if emulator.ssl_context is not None:  # each handshake runs in its connection's thread
            self.socket = emulator.ssl_context.wrap_socket(self.socket, server_side=True,
                                                           do_handshake_on_connect=False)


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to :meth:`JellyfinEmulator._handle` and writes its answer."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session expects
    timeout = 10  # seconds an idle keep-alive connection may stay open
    server_version = "Kestrel"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.server.emulator._handle(self.command, self.path, list(self.headers.items()), body)
        except Exception as error:  # an emulator bug: answer 500 and make the test fail
            logger.exception("handling %s %s failed", self.command, self.path)
            self.server.emulator._record_bug(f"emulator: {self.command} {self.path} failed: {error!r}")
            reply = _Reply(500)
        data = _encode(reply)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", reply.content_type)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


__all__ = [
    "BACKUP_FREE_SPACE", "CLEANUP_TASK_KEY", "DEFAULT_SCAN_INTERVAL_TICKS", "MEDIA_EXTENSIONS", "PRODUCT_NAME",
    "REFRESH_LIBRARY_KEY", "SPEC_FILE", "Backup", "Item", "JellyfinEmulator", "Library", "RecordedRequest", "Refresh",
    "parse_authorization", "version_tuple",
]
