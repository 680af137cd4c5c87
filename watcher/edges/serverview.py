"""Both views of the roots: this machine's listing in a child process, Jellyfin's through its API.

The comparison itself is pure (:mod:`watcher.core.serverview`); this module does the I/O:

* this machine's side: every folder listed in one child process under a deadline, one thread per
  folder, like every probe (a hung share makes its listing ``unresponsive``, never "empty");
* Jellyfin's side: ``GET /Environment/DirectoryContents`` per folder, one at a time, each with its
  own deadline. A request that does not answer in time counts as Jellyfin being stuck itself
  (a hung mount on its side); the folders after it are not asked.

Names are compared as text: undecodable bytes become U+FFFD here, as .NET decodes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from watcher.config import Config
from watcher.core.filters import IgnoreFilter
from watcher.core.health import Health
from watcher.core.serverview import (
    Comparison,
    Kind,
    Listing,
    RootView,
    Target,
    compare,
    targets,
)
from watcher.edges.child import run_child
from watcher.edges.jellyfin import JellyfinClient, http_status
from watcher.errors import KeyRejected, NoAnswer, RequestRejected, ServerUnavailable

# argv[1]: seconds of the in-flight window; argv[2:]: folders. One JSON line per folder:
# {"index", "kind": "listed"|"missing"|"failed", "names": [...], "recent": [...], "error"}.
_LISTING_PROGRAM = r"""
import json, os, sys, threading, time
lock = threading.Lock()
window = float(sys.argv[1])
def emit(index, **result):
    result["index"] = index
    line = json.dumps(result) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()
def text(name):
    return name.decode("utf-8", "replace")
def listing(index, path):
    now = time.time()
    try:
        with os.scandir(os.fsencode(path)) as scanned:
            entries = list(scanned)
    except (FileNotFoundError, NotADirectoryError):
        return emit(index, kind="missing")
    except OSError as error:
        return emit(index, kind="failed", error=error.strerror or str(error))
    names, recent = [], []
    for entry in entries:
        names.append(text(entry.name))
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if now - status.st_mtime < window:
            recent.append(text(entry.name))
    emit(index, kind="listed", names=names, recent=recent)
threads = [threading.Thread(target=listing, args=(i, p), daemon=True) for i, p in enumerate(sys.argv[2:])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def local_listings(paths: Sequence[str], in_flight: float, timeout: float,
                   stop: threading.Event | None = None) -> list[Listing]:
    """This machine's listing of each of ``paths``, in order; one not in by ``timeout`` seconds
    is ``unresponsive``. ``in_flight``: seconds within which a changed entry counts as recent."""
    if not paths:
        return []
    lines, _ = run_child(_LISTING_PROGRAM, [f"{in_flight:g}", *paths], timeout, stop)
    answers = {int(str(line["index"])): line for line in lines}
    listings = []
    for index in range(len(paths)):
        answer = answers.get(index)
        if answer is None:
            listings.append(Listing(Kind.UNRESPONSIVE, detail=f"{timeout:g} s"))
        elif answer["kind"] == "listed":
            listings.append(Listing(Kind.LISTED, _names(answer.get("names")), _names(answer.get("recent"))))
        elif answer["kind"] == "missing":
            listings.append(Listing(Kind.MISSING))
        else:
            listings.append(Listing(Kind.FAILED, detail=str(answer.get("error") or "")))
    return listings


def server_listing(client: JellyfinClient, path: str, timeout: float) -> Listing:
    """Jellyfin's listing of ``path`` within ``timeout`` seconds.

    404 is ``missing``, 500 ``failed`` (an I/O error on Jellyfin's side), no answer in time
    ``unresponsive``. Raises JellyfinError for anything else (the key rejected, connection
    refused, the server starting): the caller keeps the batch and retries, as for any request.
    """
    viewer = client.with_timeout(timeout)
    try:
        entries = viewer.directory_contents(path)
    except KeyRejected:
        raise
    except NoAnswer:
        return Listing(Kind.UNRESPONSIVE, detail=f"{timeout:g} s")
    except (RequestRejected, ServerUnavailable) as error:
        status = http_status(error)
        if status == 404:
            return Listing(Kind.MISSING)
        if status == 500:
            return Listing(Kind.FAILED, detail="HTTP 500: an I/O error on Jellyfin's side")
        raise
    return Listing(Kind.LISTED, frozenset(str(entry.get("Name") or "") for entry in entries) - {""})


def compare_views(
    client: JellyfinClient,
    targets: Sequence[Target],
    timeout: float,
    in_flight: float,
    changed_folders: Iterable[str] = (),
    ignored: Callable[[str], bool] = lambda name: False,
    stop: threading.Event | None = None,
) -> tuple[Comparison, ...]:
    """List every target on both sides and compare (:func:`watcher.core.serverview.compare`).

    This machine's listing runs in its child process while Jellyfin is asked. Requests: one
    ``GET /Environment/DirectoryContents`` per target, none after one that got no answer.
    Raises JellyfinError (see :func:`server_listing`).
    """
    changed = tuple(changed_folders)
    here: list[Listing] = []
    lister = threading.Thread(
        target=lambda: here.extend(local_listings([target.local for target in targets], in_flight, timeout, stop)),
        name="list-roots", daemon=True)
    lister.start()
    servers: list[Listing] = []
    try:
        for target in targets:
            stuck = any(server.kind is Kind.UNRESPONSIVE for server in servers)
            if stuck or (stop is not None and stop.is_set()):
                servers.append(Listing(Kind.NOT_ASKED))
            else:
                servers.append(server_listing(client, target.jellyfin, timeout))
    finally:
        lister.join()  # run_child returns within its deadline
    return tuple(compare(target, server, local, changed, ignored, in_flight)
                 for target, server, local in zip(targets, servers, here, strict=True))


def check_roots(
    client: JellyfinClient,
    config: Config,
    healths: Iterable[Health],
    changed_folders: Iterable[str] = (),
    stop: threading.Event | None = None,
) -> tuple[Comparison, ...]:
    """Compare Jellyfin's view with this machine's for each healthy root of ``healths`` and each
    mount point below it, with the configuration's path map, deadline, in-flight window and
    ignore list. Raises JellyfinError (see :func:`server_listing`)."""
    views = [
        RootView(str(health.root.path), None if health.mount_point is None else str(health.mount_point),
                 tuple(health.mounts_below), health.root.health_gate)
        for health in healths
        if health.healthy
    ]
    ignore = IgnoreFilter(config.watch.ignore)
    return compare_views(client, targets(views, config.jellyfin_path), config.server_view.timeout,
                         config.server_view.in_flight, changed_folders, lambda name: ignore("", name), stop)


def _names(value: object) -> frozenset[str]:
    return frozenset(str(name) for name in value) if isinstance(value, list) else frozenset()
