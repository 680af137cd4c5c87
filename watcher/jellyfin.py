"""The Jellyfin HTTP API, as far as the watcher uses it.

Endpoints (Jellyfin 10.11 OpenAPI spec; FACTS.md "Jellyfin server API"):

* ``GET /Library/VirtualFolders``: the libraries and their folders (``Locations``).
* ``GET /ScheduledTasks``: the library scan is the task with ``Key == "RefreshLibrary"``.
* ``POST /Library/Refresh``: scan every library. It *cancels a running scan and queues a new
  one* (``TaskManager.CancelIfRunningAndQueue``), so callers check the task first.
* ``GET /System/Info``: needs a valid key; used to test it.

Authentication is the header ``Authorization: MediaBrowser Token="…", Client=…, Version=…``,
the only form Jellyfin 12.0 still accepts (legacy ``X-Emby-Token`` and ``api_key`` are off
there). The key never appears in a URL, a log line or an exception message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from watcher import __version__
from watcher.config import Secret
from watcher.errors import KeyRejected, RequestRejected, ServerUnavailable

logger = logging.getLogger(__name__)

CLIENT_NAME = "jellyfin-watcher"
LIBRARY_SCAN_TASK_KEY = "RefreshLibrary"

# Quick retries inside one call, for a connection reset or a server that is starting
# (every Jellyfin operation may answer 503 while it starts). Longer outages are the
# caller's business: the daemon keeps the batch and backs off.
TRANSIENT_RETRY = Retry(
    total=2,
    connect=2,
    read=0,
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
    the folders as Jellyfin sees them."""

    name: str
    item_id: str
    locations: tuple[str, ...]
    collection_type: str | None = None


class JellyfinClient:
    """A ``requests.Session`` bound to one server and key.

    ``url``: the server's base URL (a reverse-proxy prefix included), no trailing slash.
    ``timeout``: seconds, for every request. Methods raise :class:`ServerUnavailable`,
    :class:`KeyRejected` or :class:`RequestRejected`.
    """

    def __init__(self, url: str, api_key: Secret, timeout: float, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        adapter = HTTPAdapter(max_retries=TRANSIENT_RETRY)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Authorization"] = (
            f'MediaBrowser Token="{api_key.reveal()}", Client="{CLIENT_NAME}", Version="{__version__}"'
        )
        self.session.headers["User-Agent"] = f"{CLIENT_NAME}/{__version__}"

    def close(self) -> None:
        self.session.close()

    def server_info(self) -> dict[str, Any]:
        """``GET /System/Info`` (needs a valid key): ``ServerName``, ``Version``, …"""
        info = self._request("GET", "/System/Info").json()
        return info if isinstance(info, dict) else {}

    def libraries(self) -> list[Library]:
        """``GET /Library/VirtualFolders``: every library with its locations."""
        folders = self._request("GET", "/Library/VirtualFolders").json()
        libraries = []
        for folder in folders if isinstance(folders, list) else []:
            libraries.append(
                Library(
                    name=str(folder.get("Name") or ""),
                    item_id=str(folder.get("ItemId") or ""),
                    locations=tuple(str(location) for location in folder.get("Locations") or ()),
                    collection_type=folder.get("CollectionType"),
                )
            )
        return libraries

    def library_scan_running(self) -> bool:
        """Whether the "Scan Media Library" task (``Key == "RefreshLibrary"``) is running.

        ``GET /ScheduledTasks``; matched on ``Key`` because ``Name`` is translated.
        """
        tasks = self._request("GET", "/ScheduledTasks").json()
        for task in tasks if isinstance(tasks, list) else []:
            if task.get("Key") == LIBRARY_SCAN_TASK_KEY:
                return task.get("State") in ("Running", "Cancelling")
        return False

    def refresh_library(self) -> None:
        """``POST /Library/Refresh``: scan all libraries. Any 2xx is success."""
        self._request("POST", "/Library/Refresh")

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url + path
        what = f"{method} {path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ServerUnavailable(
                f"TLS failure talking to {self.url} ({_first_line(error)}): check the certificate"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise ServerUnavailable(f"no connection to {self.url} within {self.timeout:g} s: check the URL and port") from None
        except requests.exceptions.Timeout:
            raise ServerUnavailable(f"{what}: no answer from {self.url} within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError:
            raise ServerUnavailable(f"cannot connect to Jellyfin at {self.url}: check the URL and port, and that Jellyfin is running") from None
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
        hint = ": is the URL right, including a reverse-proxy base path such as /jellyfin?" if status == 404 else ""
        raise RequestRejected(f"Jellyfin answered HTTP {status} to {what}{hint}")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else error.__class__.__name__
