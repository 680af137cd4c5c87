"""Watching: watchdog observers on the roots, and the mount table.

Everything here runs on library threads and only hands off: each watchdog event, each
kernel queue overflow and each change of the mount table becomes one item on the service's
queue (a ``queue.SimpleQueue``, whose ``put`` is safe from any thread and from signal
handlers). Deciding what an item means is the service's job.

Facts this module depends on (FACTS.md, "watchdog 7.1"):

* ``event_filter`` must be given: the default inotify mask includes open and
  close-no-write, loops forever re-walking large trees after a queue overflow, and would
  react to Jellyfin reading the files during its own scan.
* On a kernel queue overflow watchdog logs a WARNING on ``watchdog.observers.inotify_c`` and
  delivers no event: events were lost, so every root counts as changed.
* Re-watching a path needs ``unschedule()`` then ``schedule()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

logger = logging.getLogger(__name__)

EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
]
"""Created, deleted, moved and closed-after-write: what can change what Jellyfin finds."""

INOTIFY_LOGGER = "watchdog.observers.inotify_c"
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True, slots=True)
class Change:
    """A watchdog event under ``root`` (its configured path, as a string)."""

    root: str
    event: FileSystemEvent


@dataclass(frozen=True, slots=True)
class EventsLost:
    """The kernel's event queue overflowed: changes under any root may have been missed."""


@dataclass(frozen=True, slots=True)
class MountsChanged:
    """Something was mounted, unmounted or remounted in this mount namespace."""


class _Handler(FileSystemEventHandler):
    __slots__ = ("_root", "_put")

    def __init__(self, root: str, queue: SimpleQueue[Any]) -> None:
        self._root = root
        self._put = queue.put

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._put(Change(self._root, event))


class _OverflowHandler(logging.Handler):
    """Turns watchdog's queue-overflow WARNING into an :class:`EventsLost` item."""

    def __init__(self, queue: SimpleQueue[Any]) -> None:
        super().__init__(level=logging.WARNING)
        self._put = queue.put

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._put(EventsLost())


class RootWatcher:
    """One watchdog observer; every root is a recursive watch on it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, queue: SimpleQueue[Any]) -> None:
        self._queue = queue
        self._observer: BaseObserver = Observer()
        self._observer.daemon = True
        self._watches: dict[str, ObservedWatch] = {}
        self._overflow = _OverflowHandler(queue)
        self._saved_level: int | None = None

    def start(self) -> None:
        inotify_logger = logging.getLogger(INOTIFY_LOGGER)
        inotify_logger.addHandler(self._overflow)
        # The overflow is only seen as a WARNING record: with a higher log level
        # (--log-level error) the logger would not even create it and lost events would go
        # unnoticed. The level is restored in stop().
        if not inotify_logger.isEnabledFor(logging.WARNING):
            self._saved_level = inotify_logger.level
            inotify_logger.setLevel(logging.WARNING)
        self._observer.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the observer; waits at most ``timeout`` seconds (a thread stuck on a hung
        mount is left behind: it is a daemon thread)."""
        inotify_logger = logging.getLogger(INOTIFY_LOGGER)
        inotify_logger.removeHandler(self._overflow)
        if self._saved_level is not None:
            inotify_logger.setLevel(self._saved_level)
            self._saved_level = None
        self._observer.stop()
        self._observer.join(timeout)

    def __enter__(self) -> RootWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._watches)

    def watch(self, root: Path) -> str | None:
        """Watch ``root`` recursively (again, if it was watched). Returns None on success,
        else the reason it could not be watched (e.g. ``"no such folder"``,
        ``"inotify watch limit reached"``)."""
        key = str(root)
        self.unwatch(root)
        try:
            watch = self._observer.schedule(
                _Handler(key, self._queue), key, recursive=True, event_filter=EVENT_FILTER
            )
        except FileNotFoundError:
            return "no such folder"
        except PermissionError:
            return "permission denied"
        except OSError as error:
            if error.errno == 28:  # ENOSPC from inotify_add_watch
                return "inotify watch limit reached: raise it with sysctl fs.inotify.max_user_watches=524288"
            return error.strerror or str(error)
        self._watches[key] = watch
        return None

    def unwatch(self, root: Path) -> None:
        """Stop watching ``root``, if it is watched."""
        watch = self._watches.pop(str(root), None)
        if watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)


class MountMonitor:
    """Puts :class:`MountsChanged` on the queue whenever the mount table changes.

    ``/proc/self/mountinfo`` signals ``POLLPRI | POLLERR`` on every mount, umount, bind,
    remount and lazy umount in this mount namespace, and not otherwise (FACTS.md, "psutil
    and mounts"); it stays silent for a hung server. Linux only: elsewhere :meth:`start`
    does nothing and the periodic health check is the only source. The thread blocks in
    ``poll()`` with no timeout and is woken for stopping through a pipe.
    """

    def __init__(self, queue: SimpleQueue[Any], path: str = MOUNTINFO) -> None:
        self._queue = queue
        self._path = path
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = os.pipe()

    @property
    def available(self) -> bool:
        return hasattr(select, "poll") and os.path.exists(self._path)

    def start(self) -> None:
        if not self.available:
            logger.debug("%s not available: mount changes are seen by the periodic health check only", self._path)
            return
        self._thread = threading.Thread(target=self._run, name="mount-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_write, b"x")
            self._thread.join(1.0)
            self._thread = None
        for descriptor in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(descriptor)

    def _run(self) -> None:
        with open(self._path, "rb") as mountinfo:
            mountinfo.read()
            poller = select.poll()
            poller.register(mountinfo.fileno(), select.POLLPRI | select.POLLERR)
            poller.register(self._wake_read, select.POLLIN)
            while True:
                ready = poller.poll()
                if any(descriptor == self._wake_read for descriptor, _ in ready):
                    return
                mountinfo.seek(0)
                mountinfo.read()
                self._queue.put(MountsChanged())
