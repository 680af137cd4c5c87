"""The daemon's loop: events → batch → health gate → refresh.

One loop on the calling thread. It is the only place that reads the clock: it takes each
item from the queue (watchdog events, mount-table changes, the results of work done on
workers, signals), feeds it to the decision core (:class:`~watcher.core.machine.Core`) with
the time, and hands the actions the core returns to the executor
(:class:`~watcher.edges.workers.Executor`), which runs anything that can block on a worker.
So the loop never waits on a filesystem or on Jellyfin: it sleeps until the next thing the
core has to do, or until an item arrives — no polling while idle — and a stop is served at
once in every state.

After each round it writes the status file (``status``) and ``STATUS=`` when what they show
changed, and feeds systemd's watchdog.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from watcher.config import Config
from watcher.core.health import Health
from watcher.core.machine import Core, daemon_view, snapshot
from watcher.core.messages import (
    Action,
    Exit,
    Probe,
    Probed,
    Ready,
    Reload,
    SendDone,
    Stop,
    Tick,
)
from watcher.core.notices import Notices, Policy
from watcher.core.refresher import listed
from watcher.edges import statusfile as status_file
from watcher.edges.notifications import Sender
from watcher.edges.sdnotify import Notifier
from watcher.edges.signals import SignalWaker
from watcher.edges.state import StateStore
from watcher.edges.watch import MountMonitor
from watcher.edges.workers import Executor, Reloader
from watcher.errors import ConfigError
from watcher.presentation import document, signature, status_line

if TYPE_CHECKING:
    from watcher.edges.jellyfin import JellyfinClient

logger = logging.getLogger(__name__)

STATUS_COUNT_INTERVAL = 5.0
"""Seconds between status-file updates that only change the pending change count."""
SEND_GRACE = 0.8
"""Seconds a stop waits for the answer to a refresh under way (else the batch stays pending)."""
MAX_SLEEP = 3600.0
"""Seconds the loop sleeps at most with nothing to do (an item wakes it at once)."""
FIRST_PROBE_FRESH = 2.0
"""Seconds for which the probe ``run`` makes before the loop starts answers the core's first
probe (it checked that no root is a file; the roots need not be probed twice in a row)."""
ROUND = 2000
"""Queue items taken in one round before the core decides and the status is written: a
storm of events is handled in rounds, not one decision per event."""


@dataclass(slots=True)
class _Published:
    signature: tuple[Any, ...] = ()
    changes: int | None = None
    written_at: float = -1e9
    status_line: str = ""


class Service:
    """The watcher daemon.

    ``client`` is None in dry-run mode. ``reload`` (for SIGHUP) returns a new configuration
    and client, or raises ConfigError. ``clock`` returns seconds (monotonic). ``notifier``
    talks to systemd (READY, STATUS, WATCHDOG). ``first_probe``: the roots' health just
    probed by the caller, which answers the core's first probe if the roots are the same and
    it comes within :data:`FIRST_PROBE_FRESH` seconds. :meth:`run` raises ConfigError when
    the roots cannot be resolved at start (nothing to watch).
    """

    def __init__(
        self,
        config: Config,
        client: JellyfinClient | None,
        store: StateStore,
        clock: Callable[[], float] = time.monotonic,
        reload: Reloader | None = None,
        notifier: Notifier | None = None,
        first_probe: Sequence[Health] = (),
    ) -> None:
        self.config = config
        self._first_probe = tuple(first_probe)
        self._first_probe_at = clock()
        self._client = client
        self._store = store
        self._clock = clock
        self._reload = reload
        self._notifier = notifier or Notifier({})
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._stop = threading.Event()
        self._published = _Published()
        self._started = status_file.process_start_time()
        self._next_keepalive = float("inf")
        self.core: Core | None = None
        self._notices = Notices(Policy(config.notify.after, config.notify.rate_limit), socket.gethostname())
        self._sender = Sender(config.notify.urls, config.notify.timeout)

    # --- control, safe from signal handlers and other threads ------------------------

    def request_stop(self) -> None:
        """Ask the loop to end; returns at once. Safe in a signal handler."""
        self._stop.set()
        self._queue.put(Stop())

    def request_reload(self) -> None:
        """Ask the loop to read the configuration again. Safe in a signal handler."""
        self._queue.put(Reload())

    @property
    def refreshes(self) -> int:
        return 0 if self.core is None else self.core.refreshes

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Watch until :meth:`request_stop`; the pending batch is saved on the way out."""
        core = self.core = Core(self.config, self._store.load(), dry_run=self._client is None)
        executor = Executor(self.config, self._client, self._store, self._queue.put, self._stop, self._reload)
        monitor = MountMonitor(self._queue)
        monitor.start()
        waker = SignalWaker(self._queue.put, Tick()) if threading.current_thread() is threading.main_thread() else None
        if waker is not None:
            waker.start()
        self._sender.start()
        if self._notifier.watchdog_interval:
            self._next_keepalive = self._clock()
        exit_message = ""
        try:
            exit_message = self._execute(executor, core.start(self._clock()))
            if not exit_message:
                exit_message = self._loop(core, executor)
        finally:
            self._notifier.notify(STOPPING="1")
            monitor.stop()
            if waker is not None:
                waker.stop()
            self._sender.stop()
            stopped = executor.close()
            self._finish_sending(core, executor)
            if core.started:
                self._execute(executor, core.stop(self._clock(), events_lost=not stopped))
                self._publish(core, self._clock(), force=True)
                batch = core.pending
                if batch is None:
                    logger.info("stopped; no changes pending")
                else:
                    logger.info(
                        "stopped; %d changes pending under %s, saved in %s and refreshed after restart",
                        batch.changes,
                        listed(batch.roots),
                        self._store.path,
                    )
        if exit_message:
            raise ConfigError(exit_message)

    def _loop(self, core: Core, executor: Executor) -> str:
        """Rounds of: wait for an item (or the core's wake-up), feed it and every item
        already queued to the core, execute what it returns. Returns the message of an
        :class:`Exit`, or "" on a stop."""
        while not self._stop.is_set():
            timeout = min(core.wake_at, self._next_keepalive, self._notices.wake_at) - self._clock()
            try:
                item: object = self._queue.get(timeout=min(max(0.0, timeout), MAX_SLEEP))
            except Empty:
                item = Tick()
            actions: list[Action] = []
            for _ in range(ROUND):
                if isinstance(item, Stop):
                    return ""
                actions += core.handle(self._clock(), item)
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    break
            else:
                self._queue.put(item)  # the rest waits for the next round
            now = self._clock()
            actions += core.advance(now)
            message = self._execute(executor, actions)
            if message:
                return message
            self._keepalive()
            self._publish(core, self._clock())
            self._notify(core, self._clock())
        return ""

    def _notify(self, core: Core, now: float) -> None:
        """Hand the notices due now (:mod:`watcher.core.notices`) to the sender (which never
        blocks: a slow or failing service delays nothing here)."""
        config = core.config
        if (config.notify.urls, config.notify.timeout) != (self._sender.urls, self._sender.timeout):
            self._sender.stop()  # reloaded with other URLs
            self._sender = Sender(config.notify.urls, config.notify.timeout)
            self._sender.start()
        self._notices.policy = Policy(config.notify.after, config.notify.rate_limit)
        if self._sender.enabled:
            self._sender.send(self._notices.update(now, daemon_view(core, now)))

    def _finish_sending(self, core: Core, executor: Executor) -> None:
        """A refresh under way when the stop came: wait a moment for its answer, so that a
        refresh Jellyfin took is not counted as pending (and sent again after a restart).
        Other items are dropped: the loop is over."""
        deadline = self._clock() + SEND_GRACE
        while core.sending is not None:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - self._clock()))
            except Empty:
                return
            if isinstance(item, SendDone):
                for action in core.handle(self._clock(), item):
                    if not isinstance(action, (Ready, Exit)):
                        executor.execute(action)

    def _execute(self, executor: Executor, actions: list[Action]) -> str:
        for action in actions:
            match action:
                case Ready():
                    assert self.core is not None
                    self._publish(self.core, self._clock(), force=True)
                    self._notifier.notify(READY="1", STATUS=self._published.status_line)
                case Exit(message=message):
                    return message
                case Probe(started_at=started_at, roots=roots) if self._first_probe:
                    first, self._first_probe = self._first_probe, ()
                    if roots == tuple(health.root for health in first) and \
                            self._clock() - self._first_probe_at <= FIRST_PROBE_FRESH:
                        self._queue.put(Probed(started_at, first))
                    else:
                        executor.execute(action)
                case _:
                    executor.execute(action)
        return ""

    def _keepalive(self) -> None:
        """Send WATCHDOG=1 if one is due."""
        now = self._clock()
        if now >= self._next_keepalive:
            self._notifier.notify(WATCHDOG="1")
            self._next_keepalive = now + (self._notifier.watchdog_interval or float("inf"))

    def _publish(self, core: Core, now: float, force: bool = False) -> None:
        """Write the status file and send STATUS= when the state changed (a change of the
        pending count alone is written at most every few seconds)."""
        shown = snapshot(core, now)
        mark = (signature(shown), self._stop.is_set())
        changes = None if shown.pending is None else shown.pending.changes
        count_due = changes != self._published.changes and now - self._published.written_at >= STATUS_COUNT_INTERVAL
        if not force and mark == self._published.signature and not count_due:
            return
        self._published.signature = mark
        self._published.changes = changes
        self._published.written_at = now
        status = document(shown, time.time() - now, os.getpid(), self._started)
        try:
            status_file.write(core.config.state_dir, status)
        except OSError as error:
            logger.debug("cannot write the status file: %s", error)
        line = status_line(status)
        if line != self._published.status_line:
            self._published.status_line = line
            self._notifier.notify(STATUS=line)
