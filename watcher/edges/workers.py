"""The executor: does what the decision core asks, on workers, and reports back on the queue.

The service loop must never wait: a watch walks a whole tree (seconds on a large library,
forever on a FUSE mount that hangs mid-walk), a probe or a listing may take its whole
deadline, a Jellyfin request its timeout. So every such job runs on a :class:`SerialWorker`
— a daemon thread taking jobs in order — and its result comes back as one queue item
(:mod:`watcher.core.messages`). Jobs of one root run in order on that root's worker (watch,
then unwatch, never the other way round); probes, verifications and Jellyfin requests each
have a worker of their own. Only log lines and the state file are written on the loop's
thread (a local file, written atomically).

A job that raises something unexpected answers :class:`JobCrashed` with the traceback: the
core logs it and retries; nothing a job does can end the daemon.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from watcher.config import Config, Root
from watcher.core.coverage import Coverage
from watcher.core.filters import IgnoreFilter
from watcher.core.health import Health
from watcher.core.libraries import needs_libraries, resolve_roots
from watcher.core.messages import (
    Action,
    AskScan,
    BackedUp,
    BackUp,
    CheckViews,
    CheckWrites,
    DropEvents,
    JobCrashed,
    JobFailed,
    Log,
    Predict,
    Predicted,
    Probe,
    Probed,
    ReadRoots,
    RootsRead,
    Save,
    ScanChecked,
    Send,
    SendDone,
    Unwatch,
    Verified,
    Verify,
    ViewsChecked,
    Watch,
    Watched,
    WritesChecked,
)
from watcher.core.scope import RefreshRequest
from watcher.edges.automount import MountHolder
from watcher.edges.probe import probe_roots
from watcher.edges.state import StateStore
from watcher.edges.verify import coverage
from watcher.edges.watch import RootWatcher
from watcher.errors import JellyfinError, WatcherError

if TYPE_CHECKING:
    from watcher.edges.jellyfin import JellyfinClient
    from watcher.edges.poll import RootPoller

# Imported by the jobs that use them, on their worker: polling, the open-file check and
# everything that talks to Jellyfin (the HTTP client) are not needed before the first watch.

logger = logging.getLogger("watcher.service")

VERIFY_TIMEOUT = 60.0
"""Seconds the listing of a root's folders (watch verification, a polling cycle) may take."""
IDLE = 5.0
"""Seconds a worker thread waits for another job before it ends."""
POLL_TIMEOUT_INTERVALS = 10
"""A polling cycle may take this many poll intervals (at least ``VERIFY_TIMEOUT``)."""

Reloader = Callable[[], tuple[Config, "JellyfinClient | None"]]
Put = Callable[[object], None]


class SerialWorker:
    """A daemon thread that runs jobs in the order given; each job's result (a queue item,
    or None) is put on the queue. The thread is started by the first job and ends after
    :data:`IDLE` seconds without one (a watcher at rest keeps no idle threads); :meth:`stop`
    ends it after the job under way (without waiting for it)."""

    def __init__(self, name: str, put: Put) -> None:
        self.name = name
        self._put = put
        self._jobs: SimpleQueue[tuple[str, Callable[[], object]] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: str, work: Callable[[], object]) -> None:
        """Run ``work`` after the jobs before it; ``job`` names it in a crash report."""
        with self._lock:
            self._jobs.put((job, work))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            try:
                entry = self._jobs.get(timeout=IDLE)
            except Empty:
                with self._lock:
                    if self._jobs.empty():  # submit() puts under the lock: nothing can slip in
                        self._thread = None
                        return
                continue
            if entry is None:
                return
            job, work = entry
            try:
                result = work()
            except Exception as error:  # reported to the core, which logs it and carries on
                result = JobCrashed(job, _one_line(error), traceback.format_exc())
            if result is not None:
                self._put(result)


class Executor:
    """Executes the core's actions.

    ``client``: None in dry-run mode. ``reload``: reads the configuration again and makes a
    new client (SIGHUP); it may raise ConfigError. ``stop``: set when the daemon stops, so
    that probes and listings end at once.
    """

    def __init__(
        self,
        config: Config,
        client: JellyfinClient | None,
        store: StateStore,
        put: Put,
        stop: threading.Event,
        reload: Reloader | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self._store = store
        self._put = put
        self._stop = stop
        self._reload = reload
        self.watcher = RootWatcher(put)
        self._pollers: dict[str, RootPoller] = {}
        self._holds = MountHolder()
        self._root_workers: dict[str, SerialWorker] = {}
        self._probes = SerialWorker("probe", put)
        self._verifier = SerialWorker("verify-watches", put)
        self._server = SerialWorker("jellyfin", put)
        self._files = SerialWorker("open-files", put)

    # --- dispatch ----------------------------------------------------------------------

    def execute(self, action: Action) -> None:
        """Start ``action`` (or do it, for a log line or the state file); never blocks on a
        filesystem or the network."""
        match action:
            case Log(level=level, message=message, details=details):
                logger.log(level, "%s", message)
                if details:
                    logger.debug("%s", details)
            case Save(state=state):
                self._store.save(state)
            case Probe():
                self._probes.submit("Probe", lambda: self._probe(action))
            case Watch():
                self._root_worker(action.root).submit("Watch", lambda: self._watch(action))
            case Unwatch(root=root):
                self._root_worker(root).submit("Unwatch", lambda: self._unwatch(root))
            case DropEvents(root=root, counterparts=counterparts):
                self._root_worker(root).submit("DropEvents", lambda: self._drop_events(root, counterparts))
            case Verify(root=root, ticket=ticket, fuse=on_fuse):
                self._verifier.submit("Verify", lambda: self._verify(root, ticket, on_fuse))
            case CheckWrites(paths=paths):
                self._files.submit("CheckWrites", lambda: self._check_writes(paths))
            case ReadRoots(purpose=purpose):
                self._server.submit("ReadRoots", lambda: self._read_roots(purpose))
            case AskScan():
                self._server.submit("AskScan", self._ask_scan)
            case Predict(library_ids=library_ids):
                self._server.submit("Predict", lambda: self._predict(library_ids))
            case CheckViews(healths=healths, changed_folders=folders):
                self._server.submit("CheckViews", lambda: self._check_views(healths, folders))
            case BackUp(removals=removals):
                self._server.submit("BackUp", lambda: self._back_up(removals))
            case Send(batch=batch, requests=requests):
                self._server.submit("Send", lambda: self._send(batch, requests))
            case _:
                raise TypeError(f"the executor cannot do {action!r}")

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the pollers, the watches and the workers; waits at most ``timeout`` seconds
        for watching to stop. False if it did not (a thread stuck on a hung mount)."""
        for poller in list(self._pollers.values()):
            poller.stop(0.5)
        self._pollers.clear()
        self._holds.close()
        stopped = self.watcher.stop(timeout)
        for worker in [*self._root_workers.values(), self._probes, self._verifier, self._server, self._files]:
            worker.stop()
        return stopped

    def _root_worker(self, root: Root) -> SerialWorker:
        key = str(root.path)
        worker = self._root_workers.get(key)
        if worker is None:
            worker = self._root_workers[key] = SerialWorker(f"watch {key}", self._put)
        return worker

    # --- jobs (each runs on a worker) ----------------------------------------------------

    def _probe(self, probe: Probe) -> Probed:
        learned = probe.learned
        results = probe_roots(
            probe.roots,
            learned.expected_mounts(),
            self.config.watch.probe_timeout,
            self._stop,
            learned.expected_below(),
            learned.expected_branches(),
        )
        return Probed(probe.started_at, tuple(results))

    def _watch(self, watch: Watch) -> Watched:
        key = str(watch.root.path)
        self._holds.hold(key, watch.automounts)
        if watch.mode == "poll":
            old = self._pollers.pop(key, None)
            if old is not None:
                old.stop()
            if not watch.keep_events:
                self.watcher.unwatch(watch.root.path)
            # A cycle lists a share folder by folder (on rclone with its cache expired, one
            # request to the server each): minutes on a large library. A hung share is the
            # health probe's to report; the cycle's deadline only ends a child that is stuck.
            timeout = max(self.config.watch.probe_timeout, VERIFY_TIMEOUT, POLL_TIMEOUT_INTERVALS * watch.poll_interval)
            from watcher.edges.poll import RootPoller

            poller = RootPoller(watch.root.path, watch.poll_interval, timeout, IgnoreFilter(self.config.watch.ignore).regex,
                                self._put, watch.poll_method)
            self._pollers[key] = poller
            poller.start()
            if watch.counterparts and not watch.keep_events:
                self._drop_events(watch.root, watch.counterparts)
            return Watched(key, watch.ticket)
        old = self._pollers.pop(key, None)
        if old is not None:
            old.stop()
        problems: list[str] = []
        problem = self.watcher.watch(watch.root.path, watch.counterparts, problems)
        for line in problems:
            logger.warning("cannot watch %s of %s's pool: files written there directly are missed", line, key)
        return Watched(key, watch.ticket, problem)

    def _unwatch(self, root: Root) -> None:
        poller = self._pollers.pop(str(root.path), None)
        if poller is not None:
            poller.stop()
        self.watcher.unwatch(root.path)
        self._holds.release(str(root.path))

    def _drop_events(self, root: Root, counterparts: tuple[str, ...]) -> None:
        self.watcher.unwatch(root.path)
        if counterparts:
            problems: list[str] = []
            self.watcher.watch(root.path, counterparts, problems, include_root=False)
            for line in problems:
                logger.warning("cannot watch %s of %s's pool: files written there directly are missed", line, root.path)

    def _verify(self, root: Root, ticket: int, on_fuse: bool) -> Verified:
        timeout = max(self.config.watch.probe_timeout, VERIFY_TIMEOUT)
        try:
            [result] = coverage([root.path], timeout, self._stop, [on_fuse], [self.watcher.limit_failures(root.path)],
                                IgnoreFilter(self.config.watch.ignore).regex)
        except Exception:  # READY waits for the verification: a bug must not leave it running
            logger.exception("watch verification of %s failed", root.path)
            result = Coverage(root.path, 0, 0, complete=False)
        return Verified(str(root.path), ticket, result)

    def _check_writes(self, paths: tuple[str, ...]) -> WritesChecked:
        from watcher.edges.writes import check_writes

        checks, complete = check_writes(paths, stop=self._stop)
        return WritesChecked(checks, complete)

    def _read_roots(self, purpose: str) -> RootsRead | JobFailed:
        config, client = self.config, self.client
        try:
            if purpose == "reload":
                if self._reload is None:
                    return JobFailed("ReadRoots", WatcherError("reloading is not possible here"), purpose)
                config, client = self._reload()
            libraries = client.libraries() if client is not None and needs_libraries(config, False) else None
            roots, warnings = resolve_roots(config, libraries)
        except WatcherError as error:
            if purpose == "reload" and client is not self.client and client is not None:
                client.close()
            return JobFailed("ReadRoots", error, purpose)
        for message in warnings:
            logger.warning("%s", message)
        if purpose == "reload":
            if self.client is not None and self.client is not client:
                self.client.close()
            self.config, self.client = config, client
            return RootsRead(purpose, roots, config)
        return RootsRead(purpose, roots)

    def _ask_scan(self) -> ScanChecked | JobFailed:
        client = self._need_client()
        try:
            return ScanChecked(client.library_scan_running())
        except JellyfinError as error:
            return JobFailed("AskScan", error)

    def _predict(self, library_ids: frozenset[str] | None) -> Predicted | JobFailed:
        from watcher.edges.predict import predict

        client = self._need_client()
        config = self.config
        try:
            libraries = client.libraries()
            if library_ids is not None:
                libraries = [library for library in libraries if library.item_id in library_ids]
            return Predicted(
                tuple(
                    predict(client, library, lambda path: str(config.map_path(path)), config.guard.timeout, self._stop)
                    for library in libraries
                )
            )
        except JellyfinError as error:
            return JobFailed("Predict", error)

    def _check_views(self, healths: tuple[Health, ...], folders: frozenset[str]) -> ViewsChecked | JobFailed:
        from watcher.edges.serverview import check_roots

        client = self._need_client()
        try:
            return ViewsChecked(check_roots(client, self.config, healths, folders, self._stop))
        except JellyfinError as error:
            return JobFailed("CheckViews", error)

    def _back_up(self, removals: int) -> BackedUp:
        from watcher.edges.backup import BackupUnavailable, create_backup

        client = self._need_client()
        config = self.config
        try:
            archive = create_backup(client, config.backup.contents, config.backup.timeout, config.jellyfin.server)
        except BackupUnavailable as error:
            return BackedUp(removals, unavailable=str(error))
        except JellyfinError as error:
            return BackedUp(removals, failure=error)
        return BackedUp(removals, archive=archive)

    def _send(self, batch: Any, requests: tuple[RefreshRequest, ...]) -> SendDone:
        client = self._need_client()
        sent: list[RefreshRequest] = []
        try:
            for request in requests:
                send(client, request)
                sent.append(request)
        except JellyfinError as error:
            return SendDone(batch, requests, tuple(sent), error=error)
        except Exception as error:
            logger.debug("sending the refresh failed", exc_info=True)
            return SendDone(batch, requests, tuple(sent), crash=_one_line(error))
        return SendDone(batch, requests, tuple(sent))

    def _need_client(self) -> JellyfinClient:
        if self.client is None:
            raise RuntimeError("no Jellyfin client (dry run)")
        return self.client


def send(client: JellyfinClient, request: RefreshRequest) -> None:
    """Send one planned refresh request. Raises JellyfinError."""
    if request.kind == "server":
        client.refresh_library()
    elif request.kind == "library":
        assert request.library_id is not None
        client.refresh_item(request.library_id)
    else:
        client.media_updated(request.paths)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__
