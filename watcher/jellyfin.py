"""The Jellyfin HTTP API, as far as the watcher uses it.

Endpoints (Jellyfin 10.11 OpenAPI spec; FACTS.md "Jellyfin server API"):

* ``GET /System/Info/Public`` (no auth): server name and version. ``GET /System/Info``
  needs a valid key: used to test it.
* ``GET /Library/VirtualFolders``: the libraries, their folders (``Locations``), ``ItemId``
  (32 hex digits) and ``LibraryOptions`` (``EnableRealtimeMonitor``).
* ``GET /ScheduledTasks``: the library scan is the task with ``Key == "RefreshLibrary"``
  (its ``Name`` is translated).
* ``POST /Library/Refresh``: scan every library. It *cancels a running scan and queues a
  new one* (``TaskManager.CancelIfRunningAndQueue``), so callers check the task first.
* ``POST /Items/{itemId}/Refresh`` on a library: rescans that library's folders only.
  ``itemId`` is ``format: uuid``: sent in the dashed form.
* ``POST /Library/Media/Updated``: hands paths to Jellyfin's own library monitor, which
  ignores ``UpdateType`` and waits its ``LibraryMonitorDelay`` (60 s by default).
* ``POST /Library/VirtualFolders/LibraryOptions``, ``POST /ScheduledTasks/{id}/Triggers``:
  used by ``doctor --fix``.
* ``POST /Users/AuthenticateByName``: log in with a user name and password; the header
  must carry ``Client``, ``Device``, ``DeviceId`` and ``Version`` or the server answers 400.
* ``GET /Environment/DirectoryContents``: a folder as Jellyfin sees it (the server's view).
* ``POST /Backup/Create``, ``GET /Backup`` (10.11+): a backup before removals.

Authentication is the header ``Authorization: MediaBrowser Token="…", Client=…, Version=…``,
the only form Jellyfin 12.0 still accepts. Emby (``server = "emby"``) serves the same
endpoints under ``/emby``, takes ``X-Emby-Token`` and answers 200 where Jellyfin answers 204.
The key, token and password never appear in a URL, a log line or an exception message.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import Secret
from watcher.errors import (
    JellyfinError,
    KeyRejected,
    RequestRejected,
    ServerUnavailable,
)

logger = logging.getLogger(__name__)

CLIENT_NAME = "jellyfin-watcher"
LIBRARY_SCAN_TASK_KEY = "RefreshLibrary"
TOKEN_FILE = "token.json"

LIBRARY_REFRESH_PARAMETERS = {
    "metadataRefreshMode": "Default",
    "imageRefreshMode": "Default",
    "replaceAllMetadata": "false",
    "replaceAllImages": "false",
    "regenerateTrickplay": "false",
}
"""What the Dashboard's "Scan library" sends for one library: find new and removed files,
fetch metadata and images only where missing, replace nothing."""

# Quick retries inside one call, for a connection reset or a server that is starting
# (every Jellyfin operation may answer 503 while it starts). Longer outages are the
# caller's business: the daemon keeps the batch and backs off.
TRANSIENT_RETRY = Retry(
    total=2,
    connect=2,
    # False, not 0: no retry either, but a read timeout is raised as itself. With 0 urllib3
    # wraps it in MaxRetryError, which requests turns into ConnectionError, and a server that
    # accepted the request but did not answer was reported as "cannot connect".
    read=False,
    status=2,
    status_forcelist=(502, 503, 504),
    allowed_methods=None,
    backoff_factor=0.5,
    backoff_max=2.0,
    respect_retry_after_header=False,
    raise_on_status=False,
)


@dataclass(frozen=True, slots=True)
class Library:
    """A Jellyfin library ("virtual folder"): ``item_id`` is 32 hex digits, ``locations``
    the folders as Jellyfin sees them, ``options`` its ``LibraryOptions`` object."""

    name: str
    item_id: str
    locations: tuple[str, ...]
    collection_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def realtime_monitor(self) -> bool:
        return bool(self.options.get("EnableRealtimeMonitor"))


@dataclass(frozen=True, slots=True)
class UserLogin:
    """Log in as a user instead of using an API key; the token is cached in ``cache_dir``."""

    username: str
    password: Secret
    cache_dir: Path


class JellyfinClient:
    """A ``requests.Session`` bound to one server and one way of authenticating.

    ``url``: the server's base URL (a reverse-proxy prefix included), no trailing slash.
    ``credentials``: an API key, or a :class:`UserLogin`. ``timeout``: seconds, for every
    request. ``verify``: TLS verification (True, False or a CA bundle path).
    ``server``: ``"jellyfin"`` or ``"emby"``. Methods raise :class:`ServerUnavailable`,
    :class:`KeyRejected` or :class:`RequestRejected`.
    """

    def __init__(
        self,
        url: str,
        credentials: Secret | UserLogin,
        timeout: float,
        verify: bool | str = True,
        server: str = "jellyfin",
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.server = server
        self._prefix = "/emby" if server == "emby" else ""
        self._login = credentials if isinstance(credentials, UserLogin) else None
        self.session = session or requests.Session()
        self.session.verify = verify
        adapter = HTTPAdapter(max_retries=TRANSIENT_RETRY)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"{CLIENT_NAME}/{__version__}"
        if isinstance(credentials, Secret):
            self._set_token(credentials.reveal())
        elif self._login is not None:
            cached = self._cached_token()
            if cached:
                self._set_token(cached)

    def close(self) -> None:
        self.session.close()

    # --- endpoints ---------------------------------------------------------------------

    def public_info(self) -> dict[str, Any]:
        """``GET /System/Info/Public`` (no auth): ``ServerName``, ``Version``, ``Id``."""
        info = self._request("GET", "/System/Info/Public", authenticate=False).json()
        return info if isinstance(info, dict) else {}

    def server_info(self) -> dict[str, Any]:
        """``GET /System/Info`` (needs a valid key): ``ServerName``, ``Version``, …"""
        info = self._json("GET", "/System/Info")
        return info if isinstance(info, dict) else {}

    def libraries(self) -> list[Library]:
        """``GET /Library/VirtualFolders``: every library with its locations and options."""
        folders = self._json("GET", "/Library/VirtualFolders")
        libraries = []
        for folder in folders if isinstance(folders, list) else []:
            libraries.append(
                Library(
                    name=str(folder.get("Name") or ""),
                    item_id=str(folder.get("ItemId") or ""),
                    locations=tuple(str(location) for location in folder.get("Locations") or ()),
                    collection_type=folder.get("CollectionType"),
                    options=dict(folder.get("LibraryOptions") or {}),
                )
            )
        return libraries

    def scheduled_tasks(self) -> list[dict[str, Any]]:
        """``GET /ScheduledTasks``: ``TaskInfo`` objects."""
        tasks = self._json("GET", "/ScheduledTasks")
        return [task for task in tasks if isinstance(task, dict)] if isinstance(tasks, list) else []

    def library_scan_task(self) -> dict[str, Any] | None:
        """The "Scan Media Library" task (``Key == "RefreshLibrary"``), or None."""
        return next((task for task in self.scheduled_tasks() if task.get("Key") == LIBRARY_SCAN_TASK_KEY), None)

    def library_scan_running(self) -> bool:
        """Whether the library scan task is running (or being cancelled)."""
        task = self.library_scan_task()
        return task is not None and task.get("State") in ("Running", "Cancelling")

    def items(self, parent_id: str, start_index: int, limit: int, include_item_types: Sequence[str]) -> dict[str, Any]:
        """``GET /Items`` below ``parent_id`` (recursive) with their ``Path``: one page of a
        ``BaseItemDtoQueryResult`` (``Items``, ``TotalRecordCount``, ``StartIndex``)."""
        params = {
            "parentId": parent_id,
            "recursive": "true",
            "fields": "Path",
            "includeItemTypes": ",".join(include_item_types),
            "startIndex": str(start_index),
            "limit": str(limit),
            "enableUserData": "false",
            "enableImages": "false",
        }
        page = self._json("GET", "/Items", params=params)
        return page if isinstance(page, dict) else {}

    def refresh_library(self) -> None:
        """``POST /Library/Refresh``: scan all libraries. Any 2xx is success."""
        self._request("POST", "/Library/Refresh")

    def refresh_item(self, item_id: str) -> None:
        """``POST /Items/{itemId}/Refresh`` with :data:`LIBRARY_REFRESH_PARAMETERS`."""
        self._request("POST", f"/Items/{dashed(item_id)}/Refresh", params=LIBRARY_REFRESH_PARAMETERS)

    def media_updated(self, paths: Sequence[str]) -> None:
        """``POST /Library/Media/Updated`` with one update per path (as Jellyfin sees it)."""
        updates = [{"Path": path, "UpdateType": "Modified"} for path in paths]
        self._request("POST", "/Library/Media/Updated", json={"Updates": updates})

    def set_library_options(self, item_id: str, options: dict[str, Any]) -> None:
        """``POST /Library/VirtualFolders/LibraryOptions``: replace a library's options."""
        self._request("POST", "/Library/VirtualFolders/LibraryOptions", json={"Id": dashed(item_id), "LibraryOptions": options})

    def set_triggers(self, task_id: str, triggers: list[dict[str, Any]]) -> None:
        """``POST /ScheduledTasks/{taskId}/Triggers``: replace a task's triggers (``[]``: none)."""
        self._request("POST", f"/ScheduledTasks/{task_id}/Triggers", json=triggers)

    def with_timeout(self, timeout: float) -> JellyfinClient:
        """This client with another per-request ``timeout`` (seconds), sharing its session, token
        and login: a listing that must answer quickly, a backup that may take minutes."""
        other = copy.copy(self)
        other.timeout = timeout
        return other

    def directory_contents(self, path: str) -> list[dict[str, Any]]:
        """``GET /Environment/DirectoryContents`` (administrator): the files and folders in
        ``path`` as Jellyfin sees it, each a ``FileSystemEntryInfo`` (``Name``, ``Path``, ``Type``).

        Jellyfin answers 404 for a folder it cannot find (``DirectoryNotFoundException`` in
        ``Jellyfin.Api/Middleware/ExceptionMiddleware.cs``), an empty list for one it may not
        read (``EnumerationOptions.IgnoreInaccessible``) and 500 for another I/O error
        (``EnvironmentController.GetDirectoryContents``). Raises JellyfinError.
        """
        params = {"path": path, "includeFiles": "true", "includeDirectories": "true"}
        entries = self._json("GET", "/Environment/DirectoryContents", params=params)
        return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []

    def backups(self) -> list[dict[str, Any]]:
        """``GET /Backup`` (10.11+, administrator): a ``BackupManifestDto`` per archive in
        Jellyfin's backup folder (``Path``, ``DateCreated``, ``ServerVersion``, ``Options``)."""
        archives = self._json("GET", "/Backup")
        return [archive for archive in archives if isinstance(archive, dict)] if isinstance(archives, list) else []

    def create_backup(self, contents: Sequence[str]) -> dict[str, Any]:
        """``POST /Backup/Create`` (10.11+, administrator) with a ``BackupOptionsDto`` holding
        ``contents`` (``database``, ``metadata``, ``trickplay``, ``subtitles``) and nothing else.

        Jellyfin answers only once ``jellyfin-backup-yyyyMMddHHmmss.zip`` is written, so call it on
        a client with a long timeout (:meth:`with_timeout`). It answers 500 when the backup folder
        has less than 5 GiB free and, on 12.0, while a library scan runs
        (``BackupService.CreateBackupAsync``). Returns the archive's ``BackupManifestDto``.
        Raises JellyfinError.
        """
        options = {name.capitalize(): name in contents for name in ("database", "metadata", "trickplay", "subtitles")}
        manifest = self._json("POST", "/Backup/Create", json=options)
        return manifest if isinstance(manifest, dict) else {}

    # --- authentication ----------------------------------------------------------------

    def _set_token(self, token: str) -> None:
        self.session.headers.pop("Authorization", None)
        self.session.headers.pop("X-Emby-Token", None)
        if self.server == "emby":
            self.session.headers["X-Emby-Token"] = token
        else:
            self.session.headers["Authorization"] = (
                f'MediaBrowser Token="{token}", Client="{CLIENT_NAME}", Version="{__version__}"'
            )

    def login(self) -> None:
        """``POST /Users/AuthenticateByName`` with the configured user; caches the token
        (mode 0600). Raises KeyRejected on a wrong user name or password."""
        assert self._login is not None
        device = socket.gethostname() or "jellyfin-watcher"
        device_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{device}:{self._login.cache_dir}").hex
        header = f'MediaBrowser Client="{CLIENT_NAME}", Device="{device}", DeviceId="{device_id}", Version="{__version__}"'
        headers = {"X-Emby-Authorization" if self.server == "emby" else "Authorization": header}
        body = {"Username": self._login.username, "Pw": self._login.password.reveal()}
        try:
            response = self._request("POST", "/Users/AuthenticateByName", authenticate=False, json=body, headers=headers)
        except KeyRejected:
            raise KeyRejected(
                f"Jellyfin at {self.url} rejected the login of user {self._login.username!r}: check jellyfin.username "
                "and the password file"
            ) from None
        token = response.json().get("AccessToken") if response.content else None
        if not isinstance(token, str) or not token:
            raise RequestRejected(f"Jellyfin at {self.url} answered the login without an access token")
        self._set_token(token)
        self._store_token(token)
        logger.info("logged in to %s as %s", self.url, self._login.username)

    def _cached_token(self) -> str | None:
        assert self._login is not None
        try:
            data = json.loads((self._login.cache_dir / TOKEN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("url") == self.url and data.get("username") == self._login.username:
            token = data.get("token")
            return token if isinstance(token, str) and token else None
        return None

    def _store_token(self, token: str) -> None:
        assert self._login is not None
        path = self._login.cache_dir / TOKEN_FILE
        try:
            self._login.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump({"url": self.url, "username": self._login.username, "token": token}, file)
            os.chmod(path, 0o600)
        except OSError as error:
            logger.warning("cannot cache the access token in %s: %s", path, error.strerror or error)

    # --- transport ---------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else None

    def _request(self, method: str, path: str, authenticate: bool = True, **kwargs: Any) -> requests.Response:
        if authenticate and self._login is not None and not self._has_token():
            self.login()
        try:
            return self._send(method, path, authenticate, **kwargs)
        except KeyRejected:
            if not (authenticate and self._login is not None):
                raise
            self.login()  # the cached token expired or was revoked: once more, with a new one
            return self._send(method, path, authenticate, **kwargs)

    def _has_token(self) -> bool:
        return "Authorization" in self.session.headers or "X-Emby-Token" in self.session.headers

    def _send(self, method: str, path: str, authenticate: bool, **kwargs: Any) -> requests.Response:
        url = self.url + self._prefix + path
        what = f"{method} {path}"
        headers = dict(kwargs.pop("headers", None) or {})
        if not authenticate:
            # No token on unauthenticated calls (login, public info).
            headers.setdefault("Authorization", None)  # type: ignore[arg-type]
            headers.setdefault("X-Emby-Token", None)  # type: ignore[arg-type]
        try:
            response = self.session.request(method, url, timeout=self.timeout, headers=headers or None, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ServerUnavailable(
                f"TLS failure talking to {self.url} ({_first_line(error)}): set jellyfin.ca_bundle to your "
                "certificate authority's file, or jellyfin.verify = false for a self-signed certificate"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise ServerUnavailable(f"no connection to {self.url} within {self.timeout:g} s: check the URL and port") from None
        except requests.exceptions.Timeout:
            raise ServerUnavailable(f"{what}: no answer from {self.url} within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError:
            raise ServerUnavailable(
                f"cannot connect to Jellyfin at {self.url}: check the URL and port, and that Jellyfin is running"
            ) from None
        except requests.exceptions.RequestException as error:
            raise ServerUnavailable(f"{what} to {self.url} failed: {_first_line(error)}") from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status in (401, 403):
            raise KeyRejected(
                f"Jellyfin at {self.url} rejected the API key (HTTP {status}): make a new key in "
                "Dashboard → API Keys and give it through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file"
            )
        if status >= 500:
            raise ServerUnavailable(f"Jellyfin answered HTTP {status} to {what}")
        hint = ""
        if status == 404:
            hint = ": is the URL right, including a reverse-proxy base path such as https://host/jellyfin?"
        raise RequestRejected(f"Jellyfin answered HTTP {status} to {what}{hint}")


def http_status(error: JellyfinError) -> int | None:
    """The HTTP status Jellyfin answered with, for an error raised on an answer (None for a
    connection failure or a timeout)."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    found = re.search(r"\bHTTP (\d{3})\b", str(error))
    return int(found.group(1)) if found else None


def dashed(item_id: str) -> str:
    """``ItemId`` as Jellyfin lists it (32 hex digits) → the dashed UUID form the spec wants."""
    try:
        return str(uuid.UUID(item_id))
    except ValueError:
        return item_id


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else error.__class__.__name__
