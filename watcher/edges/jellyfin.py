"""The Jellyfin HTTP API, as far as the watcher uses it.

Endpoints (Jellyfin 10.11.11's OpenAPI spec; the controllers in ``Jellyfin.Api/Controllers``):

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

The way to Jellyfin (see :mod:`watcher.core.answers` for the rules):

* TLS: ``verify`` (True, False or a CA bundle's path) is passed with every request, because
  requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's ``verify``
  (``Session.merge_environment_settings``; psf/requests issue 3829). The proxy variables
  (``HTTP(S)_PROXY``, ``NO_PROXY``) keep working: ``trust_env`` stays on.
* Redirects are never followed (requests drops the ``Authorization`` header on a redirect to
  another host or port and turns a redirected POST into a GET): a 3xx is :class:`Redirected`,
  naming where it points and the URL to configure.
* A 401/403 is :class:`KeyRejected` only if Jellyfin sent it: a ``WWW-Authenticate``
  challenge, an HTML page, or ``GET /System/Info/Public`` refused too mark a proxy
  (:class:`ProxyRejected`).
* An answer that is not JSON, or JSON of another shape, is :class:`UnexpectedAnswer`; nothing
  from requests or json escapes the client.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import socket
import ssl
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import Secret
from watcher.core.answers import (
    Answer,
    describe,
    empty_message,
    json_kind,
    not_json_message,
    proxy_rejected_message,
    proxy_signs,
    redirect_message,
    shape_message,
    tls_message,
)
from watcher.core.libraries import Library
from watcher.errors import (
    ConfigError,
    JellyfinError,
    KeyRejected,
    NoAnswer,
    ProxyRejected,
    Redirected,
    RequestRejected,
    ServerUnavailable,
    SetupError,
    TLSFailure,
    UnexpectedAnswer,
)

logger = logging.getLogger(__name__)

CLIENT_NAME = "jellyfin-watcher"
LIBRARY_SCAN_TASK_KEY = "RefreshLibrary"
TOKEN_FILE = "token.json"
PUBLIC_INFO_PATH = "/System/Info/Public"
"""The one endpoint Jellyfin never guards: a 401/403 there comes from a proxy."""
TRACE_HOPS = 10
"""Redirects :meth:`JellyfinClient.trace` follows at most."""

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
    # A TLS failure (an untrusted, expired or wrong-host certificate) is urllib3's "other"
    # kind of error: it does not pass with a retry, so it is raised at once.
    other=0,
    status=2,
    status_forcelist=(502, 503, 504),
    allowed_methods=None,
    backoff_factor=0.5,
    backoff_max=2.0,
    respect_retry_after_header=False,
    raise_on_status=False,
)


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
    request. ``verify``: TLS verification (True: the system's authorities, or the bundle
    ``REQUESTS_CA_BUNDLE`` names; False: none, with one WARNING logged here; or a CA bundle's
    path, which wins over the environment). ``server``: ``"jellyfin"`` or ``"emby"``.
    Methods raise :class:`~watcher.errors.JellyfinError` subclasses only; the constructor
    raises :class:`~watcher.errors.ConfigError` for a CA bundle that does not exist.
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
        if isinstance(verify, str) and not os.path.exists(verify):
            raise ConfigError(
                f"jellyfin.ca_bundle: {verify} does not exist: give the PEM file of the certificate authority "
                "that signed Jellyfin's certificate"
            )
        self.verify = verify
        if verify is False and self.url.lower().startswith("https:"):
            logger.warning(
                "TLS certificate verification is off (jellyfin.verify = false): anyone between this machine and "
                "%s can read the API key; prefer jellyfin.ca_bundle",
                self.url,
            )
        if verify is False:
            # Said once, above; urllib3 would warn on every request.
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
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
        info: dict[str, Any] = self._json("GET", PUBLIC_INFO_PATH, expect=dict, authenticate=False)
        return info

    def server_info(self) -> dict[str, Any]:
        """``GET /System/Info`` (needs a valid key): ``ServerName``, ``Version``, …"""
        info: dict[str, Any] = self._json("GET", "/System/Info", expect=dict)
        return info

    def libraries(self) -> list[Library]:
        """``GET /Library/VirtualFolders``: every library with its locations and options."""
        folders = self._json("GET", "/Library/VirtualFolders", expect=list)
        libraries = []
        for folder in folders:
            if not isinstance(folder, dict) or not isinstance(folder.get("Locations") or [], list) or not isinstance(
                folder.get("LibraryOptions") or {}, dict
            ):
                raise self._shape("GET", "/Library/VirtualFolders", "a library entry without that form", "VirtualFolderInfo objects")
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
        tasks = self._json("GET", "/ScheduledTasks", expect=list)
        return [task for task in tasks if isinstance(task, dict)]

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
        page: dict[str, Any] = self._json("GET", "/Items", expect=dict, params=params)
        if not isinstance(page.get("Items") or [], list):
            raise self._shape("GET", "/Items", f"{json_kind(page['Items'])} as Items", "a list")
        return page

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
        token = self._decode(response, "POST", "/Users/AuthenticateByName", dict).get("AccessToken")
        if not isinstance(token, str) or not token:
            raise self._shape("POST", "/Users/AuthenticateByName", "no AccessToken", "an AuthenticationResult")
        self._set_token(token)
        self._store_token(token)
        logger.info("logged in to %s as %s", self.url, self._login.username)

    def _cached_token(self) -> str | None:
        assert self._login is not None
        try:
            data = json.loads((self._login.cache_dir / TOKEN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
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

    def _json(self, method: str, path: str, expect: type | None = None, **kwargs: Any) -> Any:
        """The decoded JSON answer to ``method path``; with ``expect`` (``list`` or ``dict``),
        an answer of another type, or none, is :class:`UnexpectedAnswer`."""
        response = self._request(method, path, **kwargs)
        return self._decode(response, method, path, expect)

    def _decode(self, response: requests.Response, method: str, path: str, expect: type | None = None) -> Any:
        """Decode a 2xx answer as JSON. Raises :class:`UnexpectedAnswer` for an empty body
        (when ``expect`` is given), an HTML page, anything else that is not JSON, or a value
        that is not an ``expect``."""
        request = f"{method} {path}"
        if not response.content:
            if expect is None:
                return None
            raise UnexpectedAnswer(empty_message(self.url, request), path)
        answer = _answer(response)
        if answer.is_html:
            raise UnexpectedAnswer(not_json_message(self.url, request, answer), path)
        try:
            value = json.loads(response.content)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise UnexpectedAnswer(not_json_message(self.url, request, answer), path) from None
        if expect is not None and not isinstance(value, expect):
            raise self._shape(method, path, json_kind(value), "a list" if expect is list else "an object")
        return value

    def _shape(self, method: str, path: str, what: str, expected: str) -> UnexpectedAnswer:
        return UnexpectedAnswer(shape_message(self.url, f"{method} {path}", what, expected), path)

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
        """One request, no redirect followed, ``verify`` given explicitly (it wins over
        ``REQUESTS_CA_BUNDLE``). Returns a 2xx answer; raises a JellyfinError otherwise."""
        url = self.url + self._prefix + path
        what = f"{method} {path}"
        headers = dict(kwargs.pop("headers", None) or {})
        if not authenticate:
            # No token on unauthenticated calls (login, public info).
            headers.setdefault("Authorization", None)
            headers.setdefault("X-Emby-Token", None)
        response = self._transmit(method, url, path, headers=headers or None, **kwargs)
        status = response.status_code
        if 200 <= status < 300:
            return response
        answer = _answer(response)
        if 300 <= status < 400:
            raise Redirected(redirect_message(self.url, what, self._prefix + path, answer), path, answer.location or "")
        if status in (401, 403):
            raise self._refused(what, path, answer)
        if status >= 500:
            raise ServerUnavailable(f"Jellyfin answered HTTP {status} to {what}", status)
        hint = ""
        if status == 404:
            hint = ": is the URL right, including a reverse-proxy base path such as https://host/jellyfin?"
        raise RequestRejected(f"Jellyfin answered HTTP {status} to {what}{hint}", status)

    def _transmit(self, method: str, url: str, path: str, **kwargs: Any) -> requests.Response:
        """``session.request`` with the timeout, ``verify`` and no redirects; every failure
        to get an answer becomes :class:`ServerUnavailable` or :class:`TLSFailure`."""
        what = f"{method} {path}"
        try:
            return self.session.request(
                method, url, timeout=self.timeout, verify=self.verify, allow_redirects=False, **kwargs
            )
        except requests.exceptions.SSLError as error:
            raise TLSFailure(_tls_failure(url, self.verify, error), path) from None
        except requests.exceptions.ConnectTimeout:
            raise ServerUnavailable(f"no connection to {self.url} within {self.timeout:g} s: check the URL and port") from None
        except requests.exceptions.Timeout:
            raise NoAnswer(f"{what}: no answer from {self.url} within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError as error:
            if _closed_without_answer(error) and url.lower().startswith("http:"):
                raise ServerUnavailable(
                    f"the server at {self.url} closed the connection without answering {what}: if it serves HTTPS on "
                    "this port, use https://; otherwise it may be restarting"
                ) from None
            raise ServerUnavailable(
                f"cannot connect to Jellyfin at {self.url}: check the URL and port, and that Jellyfin is running"
            ) from None
        except (requests.exceptions.RequestException, OSError, ValueError) as error:
            raise ServerUnavailable(f"{what} to {self.url} failed: {_first_line(error)}") from None

    def _refused(self, what: str, path: str, answer: Answer) -> SetupError:
        """Who refused with 401/403: a proxy (its challenge or HTML page, or Jellyfin's public
        endpoint refused too) or Jellyfin itself (then the key is wrong)."""
        signs = proxy_signs(answer)
        if not signs and path != PUBLIC_INFO_PATH:
            public = self._public_answer()
            if public is None or _is_public_info(public):
                return KeyRejected(
                    f"Jellyfin at {self.url} rejected the API key (HTTP {answer.status}): make a new key in "
                    "Dashboard → API Keys and give it through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file",
                    path,
                )
            signs = (f"GET {PUBLIC_INFO_PATH}, which Jellyfin answers to anyone, got HTTP {public.status} too",)
        return ProxyRejected(proxy_rejected_message(self.url, what, answer, signs), path)

    def _public_answer(self) -> Answer | None:
        """The answer to an unauthenticated ``GET /System/Info/Public``; None if none came."""
        try:
            response = self._transmit(
                "GET", self.url + self._prefix + PUBLIC_INFO_PATH, PUBLIC_INFO_PATH,
                headers={"Authorization": None, "X-Emby-Token": None},
            )
        except SetupError:
            return None
        except ServerUnavailable:
            return None
        return _answer(response)

    def trace(self, path: str = PUBLIC_INFO_PATH) -> list[str]:
        """Follow the redirects of a ``GET path`` *without* the key or token, by hand, for at
        most :data:`TRACE_HOPS` answers: one line per answer (``"URL → HTTP 301 to URL"``),
        ending with the first answer that is not a redirect or with the failure. For
        ``doctor``; never raises."""
        url = self.url + self._prefix + path
        lines: list[str] = []
        seen: set[str] = set()
        for _ in range(TRACE_HOPS):
            seen.add(url)
            try:
                response = self._transmit("GET", url, path, headers={"Authorization": None, "X-Emby-Token": None})
            except (SetupError, ServerUnavailable) as error:
                lines.append(f"{url} → {error}")
                break
            answer = _answer(response)
            lines.append(f"{url} → {describe(answer)}")
            location = answer.location
            if not 300 <= answer.status < 400 or location is None or location in seen:
                break
            url = location
        return lines


def http_status(error: JellyfinError) -> int | None:
    """The HTTP status Jellyfin answered with, for an error raised on an answer (None for a
    connection failure or a timeout)."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def dashed(item_id: str) -> str:
    """``ItemId`` as Jellyfin lists it (32 hex digits) → the dashed UUID form the spec wants."""
    try:
        return str(uuid.UUID(item_id))
    except ValueError:
        return item_id


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else error.__class__.__name__


def _answer(response: requests.Response) -> Answer:
    """The parts of ``response`` a diagnosis looks at (:class:`watcher.core.answers.Answer`)."""
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Answer(response.url or "", response.status_code, headers, response.content)


def _is_public_info(answer: Answer) -> bool:
    """True if ``answer`` is Jellyfin's (or Emby's) ``PublicSystemInfo``: JSON with a ``Version``."""
    if answer.status != 200 or answer.is_html:
        return False
    try:
        info = json.loads(answer.body)
    except (ValueError, RecursionError):
        return False
    return isinstance(info, dict) and "Version" in info


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps (``__cause__``, ``__context__``, urllib3's
    ``reason``, exceptions among its ``args``), breadth first, each once."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        pending += [
            item for item in (current.__cause__, current.__context__, reason, *current.args)
            if isinstance(item, BaseException)
        ]


def _closed_without_answer(error: BaseException) -> bool:
    """True if a connection was made and then closed before any answer (what a TLS port does
    to a plain-HTTP request): ``http.client.RemoteDisconnected`` or a reset, in the chain."""
    return any(isinstance(cause, (http.client.RemoteDisconnected, ConnectionResetError)) for cause in _causes(error))


def _tls_failure(url: str, verify: bool | str, error: BaseException) -> str:
    """The message for a failed TLS connection, from the ``ssl`` exception that requests and
    urllib3 wrap (its ``verify_code`` is OpenSSL's verification result), if there is one."""
    found: ssl.SSLError | None = None
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return tls_message(url, verify, cause.verify_code, str(cause.verify_message))
        if isinstance(cause, ssl.SSLError) and found is None:
            found = cause
    if found is not None and found.reason:
        return tls_message(url, verify, None, str(found.reason).lower().replace("_", " "))
    return tls_message(url, verify, None, _first_line(error))
