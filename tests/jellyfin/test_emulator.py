"""Tests of the Jellyfin emulator itself: routing, spec checks, auth, the scan's harm, faults."""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.jellyfin import make_spec_subset
from tests.jellyfin.emulator import (
    _HANDLERS,
    CLEANUP_TASK_KEY,
    DEFAULT_SCAN_INTERVAL_TICKS,
    REFRESH_LIBRARY_KEY,
    SPEC_FILE,
    JellyfinEmulator,
    Library,
    _Reply,
    parse_authorization,
)

TIMEOUT = 5.0  # seconds, for every HTTP request and every wait


def authorization(token: str, **extra: str) -> dict[str, str]:
    """The header our client sends: ``MediaBrowser Token="…", Client="…", Version="…"``."""
    pairs = {"Token": token, "Client": "jellyfin-watcher", "Version": "0.1.0"} | extra
    return {"Authorization": "MediaBrowser " + ", ".join(f'{key}="{value}"' for key, value in pairs.items())}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def dashed(item_id: str) -> str:
    return str(uuid.UUID(item_id))


@pytest.fixture
def movies(tmp_path: Path) -> Path:
    """A library location with two films, one in a sub-folder that stands for a second disk."""
    location = tmp_path / "movies"
    touch(location / "Alien (1979)" / "Alien (1979).mkv")
    touch(location / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4")
    touch(location / "disk2" / "Brazil (1985)" / "poster.jpg")  # not media
    return location


@pytest.fixture
def music(tmp_path: Path) -> Path:
    location = tmp_path / "music"
    touch(location / "album" / "01.flac")
    return location


@pytest.fixture
def libraries(movies: Path, music: Path) -> list[Library]:
    return [Library("Movies", [str(movies)]), Library("Music", [str(music)], collection_type="music")]


@pytest.fixture
def jellyfin(libraries: list[Library]) -> Iterator[JellyfinEmulator]:
    with JellyfinEmulator(libraries=libraries, users={"admin": "secret"}) as emulator:
        emulator.index()
        yield emulator


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


class Client:
    """A few lines of a well-behaved client, so tests read as requests."""

    def __init__(self, jellyfin: JellyfinEmulator, http: requests.Session) -> None:
        self.jellyfin = jellyfin
        self.http = http

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = authorization(self.jellyfin.api_key if token is None else token) | kwargs.pop("headers", {})
        return self.http.request(method, self.jellyfin.url + path, headers=headers, timeout=TIMEOUT, **kwargs)

    def task(self, key: str = REFRESH_LIBRARY_KEY) -> dict[str, Any]:
        response = self.request("GET", "/ScheduledTasks")
        assert response.status_code == 200
        return next(task for task in response.json() if task["Key"] == key)


@pytest.fixture
def client(jellyfin: JellyfinEmulator, session: requests.Session) -> Client:
    return Client(jellyfin, session)


# ------------------------------------------------------------------------------------------------
# The spec subset
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (make_spec_subset.REPO_ROOT / make_spec_subset.DEFAULT_SOURCE).exists(),
                    reason="the full Jellyfin spec (../shared/jellyfin/openapi.json) is not here")
def test_subset_is_up_to_date() -> None:
    expected = make_spec_subset.render(make_spec_subset.REPO_ROOT / make_spec_subset.DEFAULT_SOURCE)
    assert SPEC_FILE.read_text(encoding="utf-8") == expected, "run tests/jellyfin/make_spec_subset.py"


def test_every_subset_operation_has_a_handler() -> None:
    assert set(_HANDLERS) == set(make_spec_subset.OPERATIONS)


# ------------------------------------------------------------------------------------------------
# Routing and spec checks
# ------------------------------------------------------------------------------------------------


def test_unknown_path_is_404_and_known_path_with_other_method_is_405(
        client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("GET", "/No/Such/Path").status_code == 404
    assert client.request("GET", "/Library/Refresh").status_code == 405
    assert client.request("DELETE", "/System/Ping").status_code == 405
    assert jellyfin.violations == []


def test_operation_outside_the_subset_is_501_and_a_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("GET", "/Users").status_code == 501
    assert jellyfin.violations == ["GET /Users: GET /Users is a Jellyfin operation the emulator does not serve"]


def test_routing_prefers_literal_segments_and_ignores_case(client: Client, jellyfin: JellyfinEmulator) -> None:
    # /Items/{itemId}/Refresh must not swallow anything, and ASP.NET routing ignores case.
    assert client.request("POST", "/library/refresh").status_code == 204
    assert client.request("GET", "/system/info/public").status_code == 200
    assert jellyfin.violations == []


def test_undeclared_query_parameter_is_400_and_a_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    response = client.request("GET", "/ScheduledTasks", params={"isHidden": "false", "includeDisabled": "true"})
    assert response.status_code == 400
    assert jellyfin.violations == ["GET /ScheduledTasks: undeclared query parameter 'includeDisabled'"]


def test_ill_typed_query_parameter_is_400_and_a_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("GET", "/ScheduledTasks", params={"isHidden": "maybe"}).status_code == 400
    assert len(jellyfin.violations) == 1 and "isHidden" in jellyfin.violations[0]


def test_item_id_without_dashes_is_a_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    library_id = jellyfin.libraries[0].item_id
    assert client.request("POST", f"/Items/{library_id}/Refresh").status_code == 400
    assert len(jellyfin.violations) == 1 and "itemId" in jellyfin.violations[0]
    assert jellyfin.refreshes == []


@pytest.mark.parametrize("body", [
    {"Updates": [{"Path": "/x", "UpdateType": "Created", "Extra": 1}]},  # additionalProperties: false
    {"Updates": "/x"},                                                    # wrong type
])
def test_body_not_matching_the_schema_is_400_and_a_violation(
        client: Client, jellyfin: JellyfinEmulator, body: dict[str, Any]) -> None:
    assert client.request("POST", "/Library/Media/Updated", json=body).status_code == 400
    assert len(jellyfin.violations) == 1 and jellyfin.violations[0].startswith("POST /Library/Media/Updated: spec:")
    assert jellyfin.refreshes == []


def test_missing_required_body_is_400_and_a_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("POST", "/Library/Media/Updated",
                          headers={"Content-Type": "application/json"}).status_code == 400
    assert len(jellyfin.violations) == 1


def test_update_without_path_is_400_as_jellyfin_answers(client: Client, jellyfin: JellyfinEmulator) -> None:
    response = client.request("POST", "/Library/Media/Updated", json={"Updates": [{"UpdateType": "Created"}]})
    assert response.status_code == 400
    assert len(jellyfin.violations) == 1 and "without Path" in jellyfin.violations[0]


# ------------------------------------------------------------------------------------------------
# Authentication
# ------------------------------------------------------------------------------------------------


def test_parse_authorization() -> None:
    assert parse_authorization('MediaBrowser Token="k", Client="jellyfin-watcher", Version="1.0"') == (
        "MediaBrowser", {"Token": "k", "Client": "jellyfin-watcher", "Version": "1.0"})
    assert parse_authorization('MediaBrowser Client="a%20b",Device=box') == (
        "MediaBrowser", {"Client": "a b", "Device": "box"})


@pytest.mark.parametrize("headers, params, expected", [
    ({"X-Emby-Token": "KEY"}, {}, "legacy authentication: header X-Emby-Token"),
    ({"X-MediaBrowser-Token": "KEY"}, {}, "legacy authentication: header X-MediaBrowser-Token"),
    ({}, {"api_key": "KEY"}, "legacy authentication: query parameter api_key"),
    ({"Authorization": 'MediaBrowser Client="jellyfin-watcher", Version="0.1.0"'}, {},
     "legacy authentication: Authorization: MediaBrowser without Token"),
    ({"Authorization": 'Emby Token="KEY"'}, {}, "legacy authentication: Authorization scheme 'Emby', expected MediaBrowser"),
])
def test_legacy_authentication_is_401_and_a_violation(
        jellyfin: JellyfinEmulator, session: requests.Session,
        headers: dict[str, str], params: dict[str, str], expected: str) -> None:
    headers = {name: value.replace("KEY", jellyfin.api_key) for name, value in headers.items()}
    params = {name: value.replace("KEY", jellyfin.api_key) for name, value in params.items()}
    response = session.post(jellyfin.url + "/Library/Refresh", headers=headers, params=params, timeout=TIMEOUT)
    assert response.status_code == 401
    assert jellyfin.violations == [f"POST /Library/Refresh: {expected}"]
    assert jellyfin.refreshes == []
    recorded = jellyfin.requests[-1]
    assert jellyfin.api_key not in repr(recorded)  # keys are redacted


def test_missing_authorization_is_401_and_a_violation(jellyfin: JellyfinEmulator, session: requests.Session) -> None:
    assert session.get(jellyfin.url + "/Library/VirtualFolders", timeout=TIMEOUT).status_code == 401
    assert jellyfin.violations == ["GET /Library/VirtualFolders: missing Authorization header"]


def test_wrong_key_is_401_without_violation(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("POST", "/Library/Refresh", token="wrong").status_code == 401
    assert client.request("POST", "/Library/Refresh").status_code == 204
    jellyfin.api_key = "rotated"  # the client's key is now wrong
    assert client.request("POST", "/Library/Refresh", token="test-key-0123456789abcdef").status_code == 401
    assert jellyfin.violations == []
    assert len(jellyfin.refreshes) == 1


def test_public_endpoints_need_no_key(jellyfin: JellyfinEmulator, session: requests.Session) -> None:
    public = session.get(jellyfin.url + "/System/Info/Public", timeout=TIMEOUT)
    assert public.status_code == 200
    assert public.json()["ProductName"] == "Jellyfin Server" and public.json()["Version"] == "10.11.11"
    assert session.get(jellyfin.url + "/System/Ping", timeout=TIMEOUT).json() == "Jellyfin Server"
    assert session.post(jellyfin.url + "/System/Ping", timeout=TIMEOUT).json() == "Jellyfin Server"
    assert jellyfin.violations == []


def test_authenticate_by_name(jellyfin: JellyfinEmulator, session: requests.Session) -> None:
    device = {"Client": "jellyfin-watcher", "Device": "host", "DeviceId": "id-1", "Version": "0.1.0"}
    header = {"Authorization": "MediaBrowser " + ", ".join(f'{key}="{value}"' for key, value in device.items())}
    url = jellyfin.url + "/Users/AuthenticateByName"
    bad = session.post(url, json={"Username": "admin", "Pw": "nope"}, headers=header, timeout=TIMEOUT)
    assert bad.status_code == 401
    good = session.post(url, json={"Username": "admin", "Pw": "secret"}, headers=header, timeout=TIMEOUT)
    assert good.status_code == 200
    token = good.json()["AccessToken"]
    assert session.post(jellyfin.url + "/Library/Refresh", headers=authorization(token),
                        timeout=TIMEOUT).status_code == 204
    assert jellyfin.violations == []
    assert jellyfin.requests[0].json == {"Username": "admin", "Pw": "<redacted>"}

    incomplete = {"Authorization": 'MediaBrowser Client="jellyfin-watcher", Version="0.1.0"'}
    assert session.post(url, json={"Username": "admin", "Pw": "secret"}, headers=incomplete,
                        timeout=TIMEOUT).status_code == 400
    assert jellyfin.violations == [
        "POST /Users/AuthenticateByName: Authorization lacks Device, DeviceId (Jellyfin answers 400)"]


# ------------------------------------------------------------------------------------------------
# Responses: shaped as the spec says, validated by the emulator itself
# ------------------------------------------------------------------------------------------------


def test_normal_endpoints_answer_valid_responses(client: Client, jellyfin: JellyfinEmulator) -> None:
    movies = jellyfin.libraries[0]
    folders = client.request("GET", "/Library/VirtualFolders")
    assert folders.status_code == 200
    assert folders.headers["Content-Type"].startswith("application/json")
    first = folders.json()[0]
    assert first["Name"] == "Movies" and first["Locations"] == movies.locations
    assert first["ItemId"] == movies.item_id and len(first["ItemId"]) == 32
    assert first["CollectionType"] == "movies" and first["RefreshStatus"] == "Idle"
    assert first["LibraryOptions"]["EnableRealtimeMonitor"] is True
    assert first["LibraryOptions"]["PathInfos"] == [{"Path": movies.locations[0]}]

    task = client.task()
    assert task["Name"] == "Scan Media Library" and task["State"] == "Idle" and task["IsHidden"] is False
    assert task["Triggers"] == [{"Type": "IntervalTrigger", "IntervalTicks": DEFAULT_SCAN_INTERVAL_TICKS}]
    assert client.request("GET", f"/ScheduledTasks/{task['Id']}").json() == task
    assert client.request("GET", "/ScheduledTasks/0123").status_code == 404

    info = client.request("GET", "/System/Info").json()
    assert info["SupportsLibraryMonitor"] is True and info["Id"] == jellyfin.server_id

    items = client.request("GET", "/Items", params={
        "parentId": dashed(movies.item_id), "recursive": "true", "fields": ["Path"],
        "includeItemTypes": "Movie", "startIndex": 0, "limit": 1})
    body = items.json()
    assert body["TotalRecordCount"] == 2 and body["StartIndex"] == 0 and len(body["Items"]) == 1
    assert body["Items"][0]["Path"] in jellyfin.items and body["Items"][0]["Type"] == "Movie"
    roots = client.request("GET", "/Items").json()["Items"]
    assert [(root["Name"], root["Type"]) for root in roots] == [("Movies", "CollectionFolder"),
                                                               ("Music", "CollectionFolder")]

    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert client.request("POST", f"/Items/{dashed(movies.item_id)}/Refresh",
                          params={"metadataRefreshMode": "Default"}).status_code == 204
    assert client.request("POST", "/Library/Media/Updated", json={
        "Updates": [{"Path": movies.locations[0] + "/New", "UpdateType": "Created"}]}).status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert client.task()["LastExecutionResult"]["Status"] == "Completed"
    assert jellyfin.violations == []
    assert jellyfin.removed == []


def test_a_response_that_breaks_the_spec_is_recorded(
        client: Client, jellyfin: JellyfinEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jellyfin, "_get_public_system_info", lambda call: _Reply(200, {"Version": 11}))
    assert client.request("GET", "/System/Info/Public").status_code == 200
    [violation] = jellyfin.violations
    assert violation.startswith("response: GET /System/Info/Public: ") and "Version" in violation


def test_library_options_and_triggers_are_updated(client: Client, jellyfin: JellyfinEmulator) -> None:
    movies = jellyfin.libraries[0]
    options = client.request("GET", "/Library/VirtualFolders").json()[0]["LibraryOptions"]
    response = client.request("POST", "/Library/VirtualFolders/LibraryOptions", json={
        "Id": dashed(movies.item_id), "LibraryOptions": options | {"EnableRealtimeMonitor": False}})
    assert response.status_code == 204
    assert movies.realtime_monitor is False
    assert client.request("GET", "/Library/VirtualFolders").json()[0]["LibraryOptions"] == (
        options | {"EnableRealtimeMonitor": False})
    assert client.request("POST", "/Library/VirtualFolders/LibraryOptions", json={
        "Id": str(uuid.uuid4()), "LibraryOptions": options}).status_code == 404

    task_id = client.task()["Id"]
    assert client.request("POST", f"/ScheduledTasks/{task_id}/Triggers", json=[]).status_code == 204
    assert client.task()["Triggers"] == []
    assert jellyfin.violations == []


# ------------------------------------------------------------------------------------------------
# The scan and its harm
# ------------------------------------------------------------------------------------------------


def test_index_adds_every_media_file_without_refreshing(jellyfin: JellyfinEmulator, movies: Path) -> None:
    assert sorted(jellyfin.items) == sorted([
        str(movies / "Alien (1979)" / "Alien (1979).mkv"),
        str(movies / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4"),
        str(Path(jellyfin.libraries[1].locations[0]) / "album" / "01.flac"),
    ])
    assert all(len(item.id) == 32 for item in jellyfin.items.values())
    assert jellyfin.refreshes == []


def test_scan_adds_new_files(client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    new = touch(movies / "Cube (1997)" / "Cube (1997).webm")
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert str(new) in jellyfin.items
    [refresh] = jellyfin.refreshes
    assert (refresh.kind, refresh.detail, refresh.added, refresh.removed, refresh.done) == ("library", (), 1, 0, True)


def test_scan_deletes_items_whose_files_are_gone_below_a_location(
        client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    # A second disk mounted at movies/disk2 is gone: the folder is there, empty. Nothing protects it.
    shutil.rmtree(movies / "disk2")
    (movies / "disk2").mkdir()
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert [item.path for item in jellyfin.removed] == [str(movies / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4")]
    assert jellyfin.refreshes[0].removed == 1


@pytest.mark.parametrize("gone", ["empty", "missing", "a file"])
def test_scan_skips_an_inaccessible_or_empty_location_and_keeps_its_items(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, gone: str,
        caplog: pytest.LogCaptureFixture) -> None:
    before = jellyfin.items
    shutil.rmtree(movies)
    if gone == "empty":
        movies.mkdir()
    elif gone == "a file":
        movies.write_bytes(b"")
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert jellyfin.removed == []
    assert jellyfin.items == before
    assert f"Library folder {movies} is inaccessible or empty, skipping" in caplog.messages


def test_a_stray_file_in_a_location_does_not_protect_it(
        client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    shutil.rmtree(movies)
    touch(movies / ".stray")  # the mount point still holds a file while its disk is gone
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert len(jellyfin.removed) == 2


def test_item_refresh_rescans_that_library_only(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, music: Path) -> None:
    (music / "album" / "01.flac").unlink()
    touch(movies / "Dune (2021).mkv")
    movies_id = jellyfin.libraries[0].item_id
    assert client.request("POST", f"/Items/{dashed(movies_id)}/Refresh").status_code == 204
    assert client.request("POST", f"/Items/{uuid.uuid4()}/Refresh").status_code == 404
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    [refresh] = jellyfin.refreshes
    assert (refresh.kind, refresh.detail, refresh.added, refresh.removed) == ("item", (movies_id,), 1, 0)
    assert jellyfin.removed == []  # the music library was not scanned
    assert jellyfin.violations == []


def test_media_updated_scans_the_library_holding_the_path(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, music: Path) -> None:
    (music / "album" / "01.flac").unlink()
    new = touch(movies / "Dune (2021)" / "Dune (2021).mkv")
    response = client.request("POST", "/Library/Media/Updated",
                              json={"Updates": [{"Path": str(new.parent), "UpdateType": "Created"}]})
    assert response.status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    [refresh] = jellyfin.refreshes
    assert (refresh.kind, refresh.detail, refresh.added) == ("media-updated", (str(new.parent),), 1)
    assert jellyfin.removed == []


def test_scan_survives_a_symlink_loop(client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    (movies / "Alien (1979)" / "loop").symlink_to(movies, target_is_directory=True)
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert jellyfin.refreshes[0].added == 0 and jellyfin.removed == []


def test_wait_for_refreshes_returns_short_on_timeout(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert jellyfin.wait_for_refreshes(1, timeout=0.05) == []
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert [refresh.kind for refresh in jellyfin.wait_for_refreshes(1, TIMEOUT)] == ["library"]


# ------------------------------------------------------------------------------------------------
# Scan task state and cancellation
# ------------------------------------------------------------------------------------------------


def test_refresh_while_scan_running_cancels_it(client: Client, jellyfin: JellyfinEmulator) -> None:
    jellyfin.set_scan_running(True)
    assert client.task()["State"] == "Running"
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.cancelled_scans == 1
    jellyfin.set_scan_running(False)
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert client.task()["State"] == "Idle"
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert jellyfin.cancelled_scans == 1
    assert jellyfin.violations == []


def test_a_slow_scan_is_cancelled_and_restarted(libraries: list[Library], session: requests.Session) -> None:
    with JellyfinEmulator(libraries=libraries, scan_duration=60) as jellyfin:
        client = Client(jellyfin, session)
        assert client.request("POST", "/Library/Refresh").status_code == 204
        assert client.task()["State"] == "Running"
        assert client.request("POST", "/Library/Refresh").status_code == 204
        assert jellyfin.cancelled_scans == 1
        first, second = jellyfin.refreshes
        assert first.cancelled and not second.cancelled
        # stop() interrupts the second scan's wait; nothing hangs.


# ------------------------------------------------------------------------------------------------
# Fault injection
# ------------------------------------------------------------------------------------------------


def test_fail_next_answers_the_given_status_to_matching_requests(client: Client, jellyfin: JellyfinEmulator) -> None:
    jellyfin.fail_next(503, count=2, paths=("/Library/Refresh",))
    assert client.request("GET", "/System/Ping").status_code == 200  # not a matching path
    first = client.request("POST", "/Library/Refresh")
    assert first.status_code == 503 and first.headers["Retry-After"] == "5"
    assert client.request("POST", "/Library/Refresh").status_code == 503
    assert client.request("POST", "/Library/Refresh").status_code == 204
    jellyfin.fail_next(500)
    assert client.request("GET", "/System/Info/Public").status_code == 500
    assert client.request("GET", "/System/Info/Public").status_code == 200
    assert [refresh.kind for refresh in jellyfin.refreshes] == ["library"]
    assert jellyfin.violations == []


def test_set_down_answers_503_to_everything(client: Client, jellyfin: JellyfinEmulator) -> None:
    jellyfin.set_down(True)
    assert client.request("GET", "/System/Info/Public").status_code == 503
    assert client.request("POST", "/Library/Refresh").status_code == 503
    jellyfin.set_down(False)
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert [request.status for request in jellyfin.requests] == [503, 503, 204]
    assert len(jellyfin.refreshes) == 1
    assert jellyfin.violations == []


# ------------------------------------------------------------------------------------------------
# Base path, recording, lifecycle
# ------------------------------------------------------------------------------------------------


def test_base_path(libraries: list[Library], session: requests.Session) -> None:
    with JellyfinEmulator(libraries=libraries, base_path="/jellyfin") as jellyfin:
        assert jellyfin.url.endswith("/jellyfin")
        root = jellyfin.url[: -len("/jellyfin")]
        assert session.get(jellyfin.url + "/System/Info/Public", timeout=TIMEOUT).status_code == 200
        outside = session.get(root + "/System/Info/Public", timeout=TIMEOUT, allow_redirects=False)
        assert (outside.status_code, outside.headers["Location"]) == (302, "../../jellyfin/web/")
        assert session.post(jellyfin.url + "/Library/Refresh", headers=authorization(jellyfin.api_key),
                            timeout=TIMEOUT).status_code == 204
        assert [request.path for request in jellyfin.requests] == [
            "/jellyfin/System/Info/Public", "/System/Info/Public", "/jellyfin/Library/Refresh"]
        assert jellyfin.violations == []


def test_requests_are_recorded_with_the_token_redacted(client: Client, jellyfin: JellyfinEmulator) -> None:
    client.request("GET", "/ScheduledTasks", params={"isHidden": "false"})
    [recorded] = jellyfin.requests
    assert (recorded.method, recorded.path, recorded.query, recorded.status) == (
        "GET", "/ScheduledTasks", {"isHidden": ["false"]}, 200)
    assert recorded.headers["Authorization"] == (
        'MediaBrowser Token="<redacted>", Client="jellyfin-watcher", Version="0.1.0"')


def test_stop_joins_every_thread(libraries: list[Library]) -> None:
    before = set(threading.enumerate())
    jellyfin = JellyfinEmulator(libraries=libraries).start()
    with requests.Session() as http:  # a keep-alive connection left open
        assert http.get(jellyfin.url + "/System/Ping", timeout=TIMEOUT).status_code == 200
        jellyfin.stop()
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(RuntimeError):
        _ = jellyfin.url


# ------------------------------------------------------------------------------------------------
# The server's own view of the filesystem
# ------------------------------------------------------------------------------------------------


def contents(client: Client, path: str, files: bool = True, directories: bool = True) -> requests.Response:
    return client.request("GET", "/Environment/DirectoryContents", params={
        "path": path, "includeFiles": str(files).lower(), "includeDirectories": str(directories).lower()})


def test_directory_contents_lists_a_folder_as_the_server_sees_it(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, tmp_path: Path) -> None:
    touch(movies / "notes.txt")
    listed = contents(client, str(movies))
    assert listed.status_code == 200
    assert listed.json() == [  # sorted by full path, files and folders alike
        {"Name": "Alien (1979)", "Path": str(movies / "Alien (1979)"), "Type": "Directory"},
        {"Name": "disk2", "Path": str(movies / "disk2"), "Type": "Directory"},
        {"Name": "notes.txt", "Path": str(movies / "notes.txt"), "Type": "File"},
    ]
    assert [entry["Name"] for entry in contents(client, str(movies), files=False).json()] == ["Alien (1979)", "disk2"]
    assert [entry["Name"] for entry in contents(client, str(movies), directories=False).json()] == ["notes.txt"]
    assert contents(client, str(movies), files=False, directories=False).json() == []  # Jellyfin's defaults

    # Through the server's view: Jellyfin's /data is this test's movies folder.
    jellyfin.server_paths["/data"] = str(movies)
    assert contents(client, "/data/disk2").json() == [
        {"Name": "Brazil (1985)", "Path": "/data/disk2/Brazil (1985)", "Type": "Directory"}]

    missing = contents(client, "/data/no such folder")
    assert (missing.status_code, missing.text) == (404, "Error processing request.")  # DirectoryNotFoundException
    assert contents(client, "/data/notes.txt").status_code == 404
    jellyfin.unlistable.add("/data/disk2")
    assert contents(client, "/data/disk2").status_code == 500  # an IOException
    assert jellyfin.violations == []


def test_validate_path(client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    jellyfin.server_paths["/data"] = str(movies)
    touch(movies / "notes.txt")

    def validate(**body: Any) -> int:
        return client.request("POST", "/Environment/ValidatePath", json=body).status_code

    assert validate(Path="/data/disk2") == 204
    assert validate(Path="/data/disk2", IsFile=False) == 204
    assert validate(Path="/data/disk2", IsFile=True) == 404
    assert validate(Path="/data/notes.txt", IsFile=True) == 204
    assert validate(Path="/data/gone") == 404
    assert validate(Path="/data", ValidateWritable=True) == 204
    assert sorted(path.name for path in movies.iterdir()) == ["Alien (1979)", "disk2", "notes.txt"]  # cleaned up
    assert jellyfin.violations == []


def test_a_container_without_the_disk_loses_its_items_in_a_scan(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, tmp_path: Path) -> None:
    # The host has the second disk under movies/disk2; Jellyfin's container was started before it
    # was mounted and, without rslave propagation, still sees the bare mount point there.
    container = tmp_path / "container-view"
    touch(container / "Alien (1979)" / "Alien (1979).mkv")
    (container / "disk2").mkdir()
    jellyfin.server_paths[str(movies)] = str(container)
    assert contents(client, str(movies / "disk2")).json() == []
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert [item.path for item in jellyfin.removed] == [str(movies / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4")]


@pytest.mark.parametrize(("version", "lost"), [("10.8.13", 2), ("10.11.11", 0), ("12.0.0", 2)])
def test_a_location_that_cannot_be_resolved(libraries: list[Library], movies: Path, session: requests.Session,
                                            version: str, lost: int) -> None:
    # Before 10.9 nothing is protected; 10.9-10.11 skip it; 12.0 no longer protects a library path
    # that cannot be resolved at all.
    with JellyfinEmulator(libraries=libraries, version=version) as jellyfin:
        jellyfin.index()
        shutil.rmtree(movies)
        assert Client(jellyfin, session).request("POST", "/Library/Refresh").status_code == 204
        assert jellyfin.wait_for_scans_idle(TIMEOUT)
        assert len(jellyfin.removed) == lost


@pytest.mark.parametrize(("version", "lost"), [("10.8.13", 2), ("10.11.11", 0), ("12.0.0", 0)])
def test_an_empty_location(libraries: list[Library], movies: Path, session: requests.Session,
                           version: str, lost: int) -> None:
    with JellyfinEmulator(libraries=libraries, version=version) as jellyfin:
        jellyfin.index()
        shutil.rmtree(movies)
        movies.mkdir()
        assert Client(jellyfin, session).request("POST", "/Library/Refresh").status_code == 204
        assert jellyfin.wait_for_scans_idle(TIMEOUT)
        assert len(jellyfin.removed) == lost


@pytest.mark.parametrize(("version", "lost"), [("10.11.11", 1), ("12.0.0", 0)])
def test_a_sub_folder_whose_listing_fails(libraries: list[Library], movies: Path, session: requests.Session,
                                          version: str, lost: int) -> None:
    # 10.11 treats the children of a folder whose listing throws as removed; 12.x keeps them.
    with JellyfinEmulator(libraries=libraries, version=version) as jellyfin:
        jellyfin.index()
        jellyfin.unlistable.add(str(movies / "disk2"))
        assert Client(jellyfin, session).request("POST", "/Library/Refresh").status_code == 204
        assert jellyfin.wait_for_scans_idle(TIMEOUT)
        assert [item.path for item in jellyfin.removed] == [
            str(movies / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4")][:lost]


# ------------------------------------------------------------------------------------------------
# Backups
# ------------------------------------------------------------------------------------------------


def test_backup_create_list_and_restore(client: Client, jellyfin: JellyfinEmulator, movies: Path) -> None:
    jellyfin.collections["Favourites"] = [str(movies / "Alien (1979)" / "Alien (1979).mkv")]
    created = client.request("POST", "/Backup/Create", json={})
    assert created.status_code == 200
    manifest = created.json()
    assert manifest["Options"] == {"Database": True, "Metadata": False, "Trickplay": False, "Subtitles": False}
    assert manifest["ServerVersion"] == "10.11.11" and manifest["BackupEngineVersion"] == "0.2.0"
    [backup] = jellyfin.backups
    assert re.fullmatch(r"jellyfin-backup-\d{14}\.zip", backup.file_name)
    assert manifest["Path"] == backup.path and backup.path.endswith("/" + backup.file_name)
    assert client.request("GET", "/Backup").json() == [manifest]
    assert set(backup.items) == set(jellyfin.items)

    # Removals after the backup, then a restore brings the items and the collection back.
    shutil.rmtree(movies)
    touch(movies / "Cube (1997).mkv")
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT) and len(jellyfin.removed) == 2
    jellyfin.collections["Favourites"].clear()
    restored = client.request("POST", "/Backup/Restore", json={"ArchiveFileName": backup.file_name})
    assert restored.status_code == 204
    assert set(jellyfin.items) == set(backup.items)
    assert jellyfin.collections["Favourites"] == [str(movies / "Alien (1979)" / "Alien (1979).mkv")]
    assert jellyfin.restarts == 1
    assert client.request("POST", "/Backup/Restore", json={"ArchiveFileName": "nope.zip"}).status_code == 404
    assert client.request("POST", "/Backup/Create", json={"Metadata": True}).json()["Options"]["Metadata"] is True
    assert jellyfin.violations == []


def test_backup_needs_5_gib_free(client: Client, jellyfin: JellyfinEmulator) -> None:
    jellyfin.backup_free_bytes = 5_368_709_114
    refused = client.request("POST", "/Backup/Create", json={})
    assert (refused.status_code, refused.text) == (500, "Error processing request.")
    jellyfin.backup_free_bytes = 5_368_709_115
    assert client.request("POST", "/Backup/Create", json={}).status_code == 200
    assert len(jellyfin.backups) == 1


def test_backup_answers_when_the_archive_is_written(client: Client, jellyfin: JellyfinEmulator) -> None:
    jellyfin.backup_duration = 0.3
    before = time.monotonic()
    assert client.request("POST", "/Backup/Create", json={}).status_code == 200
    assert time.monotonic() - before >= 0.3
    assert len(jellyfin.backups) == 1


@pytest.mark.parametrize(("version", "status"), [("10.11.11", 200), ("12.0.0", 500)])
def test_backup_during_a_scan(libraries: list[Library], session: requests.Session, version: str, status: int) -> None:
    with JellyfinEmulator(libraries=libraries, version=version, scan_duration=60) as jellyfin:
        client = Client(jellyfin, session)
        assert client.request("POST", "/Library/Refresh").status_code == 204
        assert client.request("POST", "/Backup/Create", json={}).status_code == status


def test_older_servers_have_no_backups(libraries: list[Library], session: requests.Session) -> None:
    with JellyfinEmulator(libraries=libraries, version="10.10.7") as jellyfin:
        client = Client(jellyfin, session)
        assert client.request("POST", "/Backup/Create", json={}).status_code == 404
        assert client.request("GET", "/Backup").status_code == 404
        assert jellyfin.violations == []


def test_a_newer_archive_is_not_restored(client: Client, jellyfin: JellyfinEmulator) -> None:
    assert client.request("POST", "/Backup/Create", json={}).status_code == 200
    jellyfin.version = "10.11.10"  # the server was downgraded
    [backup] = jellyfin.backups
    before = jellyfin.items
    shutil.rmtree(Path(jellyfin.libraries[1].locations[0]))
    (Path(jellyfin.libraries[1].locations[0]) / "other").mkdir(parents=True)
    assert client.request("POST", "/Library/Refresh").status_code == 204
    assert jellyfin.wait_for_scans_idle(TIMEOUT)
    assert client.request("POST", "/Backup/Restore", json={"ArchiveFileName": backup.file_name}).status_code == 204
    assert len(jellyfin.items) == len(before) - 1
    [failure] = jellyfin.restore_failures
    assert "made for a newer version of Jellyfin (10.11.11)" in failure


# ------------------------------------------------------------------------------------------------
# "Clean up collections and playlists" at start-up
# ------------------------------------------------------------------------------------------------


def test_the_startup_clean_up_drops_entries_the_server_cannot_see(
        client: Client, jellyfin: JellyfinEmulator, movies: Path, tmp_path: Path) -> None:
    alien = str(movies / "Alien (1979)" / "Alien (1979).mkv")
    brazil = str(movies / "disk2" / "Brazil (1985)" / "Brazil (1985).mp4")
    jellyfin.collections["Sci-fi"] = [alien, brazil]
    jellyfin.playlists["Tonight"] = [brazil]
    assert CLEANUP_TASK_KEY not in [task["Key"] for task in client.request("GET", "/ScheduledTasks").json()]
    jellyfin.cleanup_task = True
    task = client.task(CLEANUP_TASK_KEY)
    assert (task["Name"], task["Triggers"]) == ("Clean up collections and playlists", [{"Type": "StartupTrigger"}])

    # At boot the second disk is not mounted yet, as the server sees it.
    (tmp_path / "booting").mkdir()
    jellyfin.server_paths[str(movies / "disk2")] = str(tmp_path / "booting")
    assert jellyfin.restart() == [("Sci-fi", brazil), ("Tonight", brazil)]
    assert jellyfin.collections == {"Sci-fi": [alien]} and jellyfin.playlists == {"Tonight": []}
    assert client.task(CLEANUP_TASK_KEY)["LastExecutionResult"]["Status"] == "Completed"

    # Without its start-up trigger, a start drops nothing.
    jellyfin.collections["Sci-fi"].append(brazil)
    assert client.request("POST", f"/ScheduledTasks/{task['Id']}/Triggers", json=[]).status_code == 204
    assert jellyfin.restart() == []
    assert jellyfin.removed_links == [("Sci-fi", brazil), ("Tonight", brazil)]
    assert jellyfin.violations == []


def test_12_0_has_no_clean_up_task(libraries: list[Library], session: requests.Session) -> None:
    with JellyfinEmulator(libraries=libraries, version="12.0.0") as jellyfin:
        jellyfin.cleanup_task = True
        jellyfin.collections["Sci-fi"] = ["/gone.mkv"]
        keys = [task["Key"] for task in Client(jellyfin, session).request("GET", "/ScheduledTasks").json()]
        assert CLEANUP_TASK_KEY not in keys
        assert jellyfin.restart() == []
