"""Watching a mergerfs root's counterparts on the pool's branches.

inotify on a mergerfs pool sees the changes made through the pool, not those made on a
branch directly — a download client pointed at ``/mnt/disk1/movies`` instead of
``/pool/movies`` — while inotify on a branch sees both (mergerfs(1); FUSE passes no
notifications for changes behind its back). So beside the root's own watch, each folder on
a branch that holds the root's files (its *counterpart*) is watched recursively too, and
its events are handed to the service as events of the root, with their paths as the pool
shows them (``/mnt/disk1/movies/New/New.mkv`` → ``/pool/movies/New/New.mkv``): one batch,
one refresh, whichever way a file arrived.

Like :class:`watcher.watch.RootWatcher`: one watchdog observer (the same class, with the
same event filter), callbacks that only translate and hand off to the queue, and a kernel
queue overflow reported through the same WARNING (an ``EventsLost`` item).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Sequence
from queue import SimpleQueue
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch

from watcher import watch
from watcher.core.union import translate


class _TranslatingHandler(FileSystemEventHandler):
    """Hands each event on a branch to the queue as an event of the root."""

    __slots__ = ("_counterpart", "_put", "_root")

    def __init__(self, root: str, counterpart: str, queue: SimpleQueue[Any]) -> None:
        self._root = root
        self._counterpart = counterpart
        self._put = queue.put

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = translate(str(event.src_path), self._counterpart, self._root)
        destination = translate(str(event.dest_path), self._counterpart, self._root) if event.dest_path else ""
        self._put(watch.Change(self._root, dataclasses.replace(event, src_path=source, dest_path=destination)))


class BranchWatcher:
    """One watchdog observer for the counterparts of every mergerfs root.

    :meth:`watch` replaces the counterparts watched for a root; :meth:`unwatch` drops them.
    Use :meth:`start` and :meth:`stop` around it (stop waits at most ``timeout``).
    """

    def __init__(self, queue: SimpleQueue[Any]) -> None:
        self._queue = queue
        self._observer: BaseObserver = watch._observer_class()
        self._observer.daemon = True
        self._watches: dict[str, list[ObservedWatch]] = {}

    def start(self) -> None:
        self._observer.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the observer; False if a thread of it is stuck (on a hung mount) after ``timeout`` s."""

        def stop_observer() -> None:
            self._observer.stop()
            self._observer.join()

        stopper = threading.Thread(target=stop_observer, name="branch-watch-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        return not stopper.is_alive()

    def watch(self, root: str, counterparts: Sequence[str]) -> list[str]:
        """Watch ``counterparts`` (folders on branches) recursively for ``root`` instead of
        what was watched for it. Returns one line per counterpart that could not be
        watched (``"/mnt/disk1/movies: permission denied"``)."""
        self.unwatch(root)
        problems = []
        watches = []
        for folder in counterparts:
            try:
                watches.append(
                    self._observer.schedule(
                        _TranslatingHandler(root, folder, self._queue),
                        folder,
                        recursive=True,
                        event_filter=watch.EVENT_FILTER,
                    )
                )
            except OSError as error:
                problems.append(f"{folder}: {error.strerror or error}")
        if watches:
            self._watches[root] = watches
        return problems

    def unwatch(self, root: str) -> None:
        """Stop watching the counterparts of ``root``."""
        for observed in self._watches.pop(root, []):
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(observed)
