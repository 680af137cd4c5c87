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
* After an overflow watchdog 7.1 rebuilds a recursive watch by removing every watch and
  adding them again. Each removal queues an ``IN_IGNORED`` event: a tree of more folders than
  ``fs.inotify.max_queued_events`` (16384 by default) overflows the queue again, and again
  (measured on 20,000 folders: 406 overflows, 229 s of CPU, the refresh 320 s late). On Linux
  the observer here reconciles instead (:class:`_ReconcilingWatchGroup`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable
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


_limit_failures: dict[bytes, int] = {}
"""Per recursive watch (its root, as bytes): how many of its folders inotify refused a
watch with ENOSPC (``fs.inotify.max_user_watches`` reached) since it was set up. watchdog
skips such folders without a word; this is the evidence watch verification needs before it
blames the watch limit. Written on watchdog's threads, read on the loop's (one dict
operation each, atomic in CPython)."""

_observer_class: Callable[[], BaseObserver] = Observer
"""watchdog's native observer; on Linux one that recovers from a kernel queue overflow
without overflowing it again (:class:`_ReconcilingWatchGroup`)."""

try:
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyFD
except Exception:  # not Linux: watchdog's inotify module cannot load
    pass
else:

    class _ReconcilingWatchGroup(InotifyWatchGroup):
        """watchdog's recursive watch, with two of its private methods replaced (their
        bookkeeping is watchdog 7.1's own; :func:`_internals_present` checks it is there).

        * After a queue overflow it watches the folders it lost track of (made, or moved in,
          while events were lost) and drops the watches of folders that are gone, keeping
          every other watch: watchdog's own recovery removes them all first, and on a large
          tree their ``IN_IGNORED`` events overflow the queue again, forever.
        * Registering a folder that is already watched (its creation event arrives after
          the walk of its parent, when a folder tree is copied in) updates the bookkeeping
          silently: watchdog warns, with the repr of the whole watch group in the message
          (every watched path: a megabyte per line on a large library).
        """

        def on_queue_overflow(self) -> None:
            with self._lock:
                if not self.is_active:
                    return
                self._move_event_grouper.discard_pending_events()
                if not self.is_recursive:
                    return
                found = {self.path}
                pending = [self.path]
                while pending:  # os.walk + islink, as watchdog walks, costs a third more
                    try:
                        with os.scandir(pending.pop()) as entries:
                            for entry in entries:
                                if entry.is_dir(follow_symlinks=self.follow_symlink):
                                    found.add(entry.path)
                                    pending.append(entry.path)
                    except OSError:  # gone meanwhile, or unreadable: not watchable either
                        continue
                by_path, by_watch = self._active_callbacks_by_path, self._active_callbacks_by_watch
                gone = []
                for path in [path for path in by_path if path not in found]:
                    if by_watch.get(by_path[path]) == path:
                        gone.append(by_path[path])  # moved or deleted while events were lost
                    else:
                        del by_path[path]  # an old name of a watch known under its new one
                if gone:
                    self._remove_callbacks(gone)
                for path in found - by_path.keys():
                    self._add_callback(path)  # a folder that vanished meanwhile is skipped

        def _add_callback(self, path: bytes) -> None:
            inotify = self._inotify_fd
            try:
                with inotify._lock:
                    watch = inotify._get_or_create_watch(path, self.event_mask)
                    watch.callbacks[self._id] = self._callback
            except OSError as error:
                # Folders may vanish or turn unreadable while the tree is walked; the root
                # itself must be watched or the caller told.
                if path == self.path:
                    raise
                if error.errno == errno.ENOSPC:
                    _limit_failures[self.path] = _limit_failures.get(self.path, 0) + 1
                return
            old = self._active_callbacks_by_watch.get(watch.wd)
            if old is not None and old != path and self._active_callbacks_by_path.get(old) == watch.wd:
                del self._active_callbacks_by_path[old]  # the folder was renamed
            self._active_callbacks_by_path[path] = watch.wd
            self._active_callbacks_by_watch[watch.wd] = path

    class _ReconcilingEmitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            self._inotify = _ReconcilingWatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
            )

    class _InotifyObserver(InotifyObserver):
        def __init__(self) -> None:
            super().__init__()
            self._emitter_class = _ReconcilingEmitter

    def _internals_present() -> bool:
        """Whether this watchdog has the private parts the replacements build on (7.1 does);
        with another version the watcher falls back to watchdog's own observer."""
        group = ("_lock", "_move_event_grouper", "_active_callbacks_by_path", "_active_callbacks_by_watch",
                 "_remove_callbacks", "_inotify_fd", "_id", "_callback")
        fields = getattr(InotifyWatchGroup, "__dataclass_fields__", {})
        return (
            all(name in fields or hasattr(InotifyWatchGroup, name) for name in group)
            and hasattr(InotifyFD, "_get_or_create_watch")
            and hasattr(InotifyEmitter, "get_event_mask_from_filter")
        )

    if Observer is InotifyObserver and _internals_present():
        _observer_class = _InotifyObserver


class RootWatcher:
    """One watchdog observer; every root is a recursive watch on it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, queue: SimpleQueue[Any]) -> None:
        self._queue = queue
        self._observer: BaseObserver = _observer_class()
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

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the observer; waits at most ``timeout`` seconds. False if it did not stop
        in time: a watchdog thread is stuck on a hung mount and the events it was handling
        are lost. It is left behind (a daemon thread).

        watchdog walks every new folder in its own thread (os.walk, to watch it); on a FUSE
        mount whose daemon hangs that thread blocks in the kernel, holding the lock that
        ``observer.stop()`` needs, so the stop itself runs on a helper thread."""
        inotify_logger = logging.getLogger(INOTIFY_LOGGER)
        inotify_logger.removeHandler(self._overflow)
        if self._saved_level is not None:
            inotify_logger.setLevel(self._saved_level)
            self._saved_level = None

        def stop_observer() -> None:
            self._observer.stop()
            self._observer.join()

        stopper = threading.Thread(target=stop_observer, name="watchdog-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        return not stopper.is_alive()

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
        _limit_failures.pop(os.fsencode(key), None)
        try:
            watch = self._observer.schedule(
                _Handler(key, self._queue), key, recursive=True, event_filter=EVENT_FILTER
            )
        except FileNotFoundError:
            return "no such folder"
        except PermissionError:
            return "permission denied"
        except OSError as error:
            if error.errno == errno.ENOSPC:  # from inotify_add_watch
                return "inotify watch limit reached: raise it with sysctl fs.inotify.max_user_watches=524288"
            return error.strerror or str(error)
        self._watches[key] = watch
        return None

    @staticmethod
    def limit_failures(root: Path) -> int:
        """How many folders under ``root`` inotify refused a watch with ENOSPC (the watch
        limit) since ``root`` was last watched. Counted with the observer this module uses
        on Linux; 0 with watchdog's own observer, which keeps no such count."""
        return _limit_failures.get(os.fsencode(str(root)), 0)

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
