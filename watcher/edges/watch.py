"""Watching: watchdog observers on the roots, and the mount table.

Everything here runs on library threads and only hands off: each watchdog event, each
kernel queue overflow and each change of the mount table becomes one item on the service's
queue (a ``queue.SimpleQueue``, whose ``put`` is safe from any thread and from signal
handlers). Deciding what an item means is the decision core's job.

Each root has its own observer, hence its own inotify instance and threads: watchdog sets
up a recursive watch by walking the tree in the thread that schedules it, holding the
observer's lock, and on a FUSE mount that hangs mid-walk that thread blocks in the kernel;
with one observer per root a hung root holds up nothing but itself. A kernel queue
overflow is per inotify instance too, so it costs only its own root a "changed as a whole".

Facts this module depends on (watchdog 7.1, ``watchdog/observers/inotify.py`` and
``inotify_c.py``; inotify(7)):

* ``event_filter`` must be given: the default inotify mask includes open and
  close-no-write, loops forever re-walking large trees after a queue overflow, and would
  react to Jellyfin reading the files during its own scan.
* On a kernel queue overflow (``IN_Q_OVERFLOW``) watchdog calls ``on_queue_overflow`` of the
  watch group and delivers no event: events were lost, so the root counts as changed.
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
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from watcher.core.messages import EventsLost, FileEvent, MountsChanged
from watcher.core.union import translate

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

RECONCILE_WITHIN = 1.0
"""Seconds after a kernel queue overflow by which the watches are re-walked even if events
keep coming."""
RECONCILE_QUIET = 0.1
"""Seconds without an event after which the watches are re-walked after an overflow."""

MOUNTINFO = "/proc/self/mountinfo"


_KINDS = {"created": "created", "deleted": "deleted", "moved": "moved", "closed": "closed"}


class _Handler(FileSystemEventHandler):
    """Turns each watchdog event under ``root`` into a :class:`FileEvent` on the queue."""

    __slots__ = ("_put", "_root")

    def __init__(self, root: str, put: Callable[[object], None]) -> None:
        self._root = root
        self._put = put

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(event.event_type)
        if kind is None:
            return
        self._put(FileEvent(self._root, kind, os.fsdecode(event.src_path), os.fsdecode(event.dest_path or ""),
                            event.is_directory))

    def deliver(self, kind: str, path: str, is_directory: bool) -> None:
        """A creation, deletion or close at ``path``, without a watchdog event object."""
        self._put(FileEvent(self._root, kind, path, "", is_directory))


class _TranslatingHandler(FileSystemEventHandler):
    """Hands each event under ``counterpart`` (a root's folder on a mergerfs branch) to the
    queue as an event of ``root``, its paths as the pool shows them
    (``/mnt/disk1/movies/New/New.mkv`` → ``/pool/movies/New/New.mkv``): one batch, one
    refresh, whichever way a file arrived."""

    __slots__ = ("_counterpart", "_put", "_root")

    def __init__(self, root: str, counterpart: str, put: Callable[[object], None]) -> None:
        self._root = root
        self._counterpart = counterpart
        self._put = put

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(event.event_type)
        if kind is None:
            return
        source = translate(os.fsdecode(event.src_path), self._counterpart, self._root)
        destination = translate(os.fsdecode(event.dest_path), self._counterpart, self._root) if event.dest_path else ""
        self._put(FileEvent(self._root, kind, source, destination, event.is_directory))

    def deliver(self, kind: str, path: str, is_directory: bool) -> None:
        """A creation, deletion or close at ``path``, without a watchdog event object."""
        self._put(FileEvent(self._root, kind, translate(path, self._counterpart, self._root), "", is_directory))


class _OverflowHandler(logging.Handler):
    """Only where the reconciling observer cannot be used (a watchdog without the internals
    it builds on): watchdog's queue-overflow WARNING becomes an :class:`EventsLost` item."""

    def __init__(self, put: Callable[[object], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._put = put

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._put(EventsLost())


_limit_failures: dict[bytes, int] = {}
"""Per recursive watch (its root, as bytes): how many of its folders inotify refused a
watch with ENOSPC (``fs.inotify.max_user_watches`` reached) since it was set up. watchdog
skips such folders without a word; this is the evidence watch verification needs before it
blames the watch limit. Written on watchdog's threads, read on the loop's (one dict
operation each, atomic in CPython)."""

_reconciling_observer: Callable[[Callable[[], None]], BaseObserver] | None = None
"""On Linux with watchdog 7.1: makes an observer that reports a kernel queue overflow to
its callback and recovers from it without overflowing again (:class:`_ReconcilingWatchGroup`).
None elsewhere: watchdog's native observer is used."""

try:
    from watchdog.observers import inotify_c
    from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, ObservedWatch
    from watchdog.observers.inotify import (
        InotifyEmitter,
        InotifyObserver,
        InotifyWatchGroup,
    )
    from watchdog.observers.inotify_c import InotifyFD
    from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent
except Exception:  # not Linux: watchdog's inotify module cannot load
    pass
else:

    _IN = inotify_c.InotifyConstants
    _SIMPLE = _IN.IN_CREATE | _IN.IN_DELETE | _IN.IN_CLOSE_WRITE
    """A lone creation, deletion or close-after-write: what a storm of new files is made of."""
    _NOT_SIMPLE = (_IN.IN_MOVED_FROM | _IN.IN_MOVED_TO | _IN.IN_DELETE_SELF | _IN.IN_MOVE_SELF | _IN.IN_ATTRIB
                   | _IN.IN_MODIFY | _IN.IN_Q_OVERFLOW | _IN.IN_IGNORED | _IN.IN_OPEN | _IN.IN_CLOSE_NOWRITE)
    _SIMPLE_KINDS = {
        FileCreatedEvent: ("created", False), DirCreatedEvent: ("created", True),
        FileDeletedEvent: ("deleted", False), DirDeletedEvent: ("deleted", True),
        FileClosedEvent: ("closed", False),
    }

    class _Watch:
        """What watchdog 7.1 keeps per inotify watch (``inotify_c.Watch``: its mask and the
        callbacks of the watch groups using it), shared by every watch with the same mask
        and callbacks (one watch group: all of them) and never changed: :class:`_LeanInotifyFD`
        swaps a watch's entry instead. watchdog makes an object and a dict per watch: at
        100,000 folders about 30 MiB, here a few shared objects."""

        __slots__ = ("callbacks", "mask")

        def __init__(self, mask: int, callbacks: dict[Any, Any]) -> None:
            self.mask = mask
            self.callbacks = callbacks

        @property
        def is_used(self) -> bool:
            return bool(self.callbacks)

        def short_str(self) -> str:
            return f"<watch mask={self.mask:#x}>"

    class _LeanInotifyFD(InotifyFD):
        """watchdog's inotify instance (its reader thread), with two changes:

        * lean bookkeeping: each watch descriptor maps to a shared :class:`_Watch` (the
          methods that change a watch's callbacks are replaced; watchdog's others only read
          them);
        * the recovery after a kernel queue overflow (the watch groups' re-walk) runs once
          no event has come for :data:`RECONCILE_QUIET` seconds, or :data:`RECONCILE_WITHIN`
          seconds (four times the last re-walk's, if longer) after the overflow, instead of
          at once: in a storm of new files one overflow follows another, and a walk of the
          whole tree after each one kept the reader from draining the queue, which overflowed
          again (at 100,000 folders a walk takes about a second).
        """

        def __init__(self) -> None:
            super().__init__()
            self._shared: dict[tuple[Any, ...], _Watch] = {}
            self._single: dict[tuple[int, Any, int], _Watch] = {}
            """The shared watch of one callback (a new folder's), without building its key."""
            self._stale: dict[int, _ReconcilingWatchGroup] = {}
            self._stale_since = 0.0
            self.walked = 0.0
            """Seconds the last walk of the watched trees took (the set-up, a re-walk): in a
            storm that goes on, re-walks take at most a fifth of the reader's time."""
            self._peek = select.poll()  # events waiting, or the stop (watchdog's kill pipe)
            self._peek.register(self._inotify_fd, select.POLLIN)
            self._peek.register(self._kill_r, select.POLLIN)

        def _watch(self, mask: int, callbacks: dict[Any, Any]) -> _Watch:
            key = (mask, *sorted((callback_id, id(callback)) for callback_id, callback in callbacks.items()))
            watch = self._shared.get(key)
            if watch is None:
                watch = self._shared[key] = _Watch(mask, callbacks)
            return watch

        def add_watch(self, path: bytes, mask: int, callback_id: Any, callback: Any) -> int:
            """Watch ``path`` for ``callback``; returns the watch descriptor. Raises OSError.
            Called with ``self._lock`` held."""
            wd: int = inotify_c.inotify_add_watch(self._inotify_fd, path, mask)
            if wd == -1:
                InotifyFD._raise_error()
            watch = self._watch_for_wd.get(wd)  # type: ignore[call-overload]
            if watch is None:
                single = self._single.get((mask, callback_id, id(callback)))
                if single is None:
                    single = self._single[(mask, callback_id, id(callback))] = self._watch(mask, {callback_id: callback})
                self._watch_for_wd[wd] = single  # type: ignore[index,assignment]
            elif watch.callbacks.get(callback_id) is not callback:
                self._watch_for_wd[wd] = self._watch(watch.mask, {**watch.callbacks, callback_id: callback})  # type: ignore[index,assignment]
            return wd

        def _get_or_create_watch(self, path: bytes, mask: Any) -> Any:
            raise NotImplementedError("_LeanInotifyFD.add_watch replaces it")

        def _add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            return self.add_watch(path, mask, id_, callback)

        def _remove_callback(self, wd: Any, id_: Any) -> None:
            watch = self._watch_for_wd.get(wd)
            if watch is None:
                return
            if id_ in watch.callbacks:
                callbacks = {key: value for key, value in watch.callbacks.items() if key != id_}
                if callbacks:
                    self._watch_for_wd[wd] = self._watch(watch.mask, callbacks)  # type: ignore[assignment]
                    return
            elif watch.callbacks:
                return
            self._remove_watch(wd)
            if inotify_c.inotify_rm_watch(self._inotify_fd, wd) == -1:
                InotifyFD._raise_error(ignore_invalid_argument=True)

        def handle_event(self, event: Any) -> None:
            if event.mask & (_IN.IN_Q_OVERFLOW | _IN.IN_IGNORED):
                super().handle_event(event)
                return
            # watchdog copies a watch's callbacks under the lock; here they are never changed
            # in place (a dict look-up is atomic), so they are read as they are.
            watch = self._watch_for_wd.get(event.wd)
            if watch is not None:
                for callback in watch.callbacks.values():
                    callback.on_event(event)

        def mark_stale(self, group: _ReconcilingWatchGroup) -> None:
            """``group`` lost events: re-walk it once the queue is drained (reader thread)."""
            if not self._stale:
                self._stale_since = time.monotonic()
            self._stale[id(group)] = group

        def run(self) -> None:
            while self.should_keep_running():
                if self._stale:
                    left = self._stale_since + max(RECONCILE_WITHIN, 4 * self.walked) - time.monotonic()
                    if left <= 0 or not self._peek.poll(int(min(left, RECONCILE_QUIET) * 1000)):
                        groups, self._stale = list(self._stale.values()), {}
                        began = time.monotonic()
                        for group in groups:
                            group.reconcile()
                        self.walked = time.monotonic() - began
                        continue
                for event in self.read_events():
                    self.handle_event(event)

    class _ReconcilingWatchGroup(InotifyWatchGroup):
        """watchdog's recursive watch, with three of its private methods replaced (their
        bookkeeping is watchdog 7.1's own; :func:`_internals_present` checks it is there).

        * After a queue overflow it watches the folders it lost track of (made, or moved in,
          while events were lost) and drops the watches of folders that are gone, keeping
          every other watch: watchdog's own recovery removes them all first, and on a large
          tree their ``IN_IGNORED`` events overflow the queue again, forever. The re-walk
          waits for the queue to drain (:class:`_LeanInotifyFD`).
        * Registering a folder that is already watched (its creation event arrives after
          the walk of its parent, when a folder tree is copied in) updates the bookkeeping
          silently: watchdog warns, with the repr of the whole watch group in the message
          (every watched path: a megabyte per line on a large library).
        * The walk that sets the watches up lists each folder once with ``os.scandir``
          (watchdog's ``os.walk`` + ``os.path.islink`` costs an ``lstat`` more per folder).
        """

        on_overflow: Callable[[], None] = staticmethod(lambda: None)
        """Set by the emitter: called, on the reader's thread, when events were lost."""

        def on_event(self, event: Any) -> None:
            mask = event.mask
            if not mask & _SIMPLE or mask & (_NOT_SIMPLE | _IN.IN_ISDIR):
                super().on_event(event)
                return
            # A file's creation, deletion or close: watchdog's on_event without the branches
            # for moves and new folders that cannot apply.
            with self._lock:
                if not self.is_active:
                    return
                folder = self._active_callbacks_by_watch.get(event.wd)
                if folder is not None:
                    path = os.path.join(folder, event.name) if event.name else folder
                    self._move_event_grouper.put_event(PathedInotifyEvent(event, path))

        def on_queue_overflow(self) -> None:
            self.on_overflow()
            with self._lock:
                if not self.is_active:
                    return
                self._move_event_grouper.discard_pending_events()
                if self.is_recursive:
                    self._inotify_fd.mark_stale(self)  # type: ignore[attr-defined]

        def reconcile(self) -> None:
            """Watch the folders made while events were lost, forget those gone meanwhile
            (the overflow has counted the root as changed as a whole already)."""
            with self._lock:
                if not self.is_active:
                    return
                found = {self.path, *self._subfolders(self.path)}
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

        def _add_all_callbacks(self, path: bytes) -> None:
            if path == self.path and isinstance(self._inotify_fd, _LeanInotifyFD):
                # The set-up walk: how long a re-walk after an overflow will take, about.
                began = time.monotonic()
                self._add_all(path)
                self._inotify_fd.walked = max(self._inotify_fd.walked, time.monotonic() - began)
            else:
                self._add_all(path)

        def _add_all(self, path: bytes) -> None:
            is_dir = os.path.isdir(path)
            self._add_callback(path)
            if not (is_dir and self.is_recursive):
                return
            for folder in self._subfolders(path):
                self._add_callback(folder)

        def _subfolders(self, top: bytes) -> Iterator[bytes]:
            """Every folder below ``top``, depth first, without following symlinks unless
            the watch does. Each is yielded before it is looked at, so that a caller that
            watches it then hears of any sub-folder made from that moment on; it is listed
            only if it may have sub-folders (:meth:`_without_subfolders`). A folder gone
            meanwhile or unreadable is skipped, as watchdog's own walk skips it."""
            pending = [top]
            counted = self._subfolders_device()
            while pending:
                try:
                    with os.scandir(pending.pop()) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=self.follow_symlink):
                                yield entry.path
                                if not self._without_subfolders(entry.path, counted):
                                    pending.append(entry.path)
                except OSError:
                    continue

        def _subfolders_device(self) -> int | None:
            """:func:`_subfolders_counted` for the watched root, looked up once per watch
            group (new folders are walked on every creation: the mount table is not read
            each time). A folder on another device (a disk mounted below the root) is
            listed whatever its link count."""
            try:
                counted: int | None = self.__dict__["_subfolders_counted"]
            except KeyError:
                counted = self.__dict__["_subfolders_counted"] = _subfolders_counted(self.path)
            return counted

        def _without_subfolders(self, path: bytes, counted: int | None) -> bool:
            """Whether the folder ``path`` has no sub-folder, known from its link count
            alone (``counted``: the device on which a folder's link count is 2 + its number
            of sub-folders, see :func:`_subfolders_counted`): such a folder (most of a
            library's: an album's, a season's) need not be listed to find folders to watch."""
            if counted is None:
                return False
            try:
                status = os.stat(path, follow_symlinks=self.follow_symlink)
            except OSError:
                return False
            return status.st_nlink == 2 and status.st_dev == counted

        def _add_callback(self, path: bytes) -> None:
            inotify = self._inotify_fd
            try:
                with inotify._lock:
                    wd = inotify.add_watch(path, self.event_mask, self._id, self._callback)  # type: ignore[attr-defined]
            except OSError as error:
                # Folders may vanish or turn unreadable while the tree is walked; the root
                # itself must be watched or the caller told.
                if path == self.path:
                    raise
                if error.errno == errno.ENOSPC:
                    _limit_failures[self.path] = _limit_failures.get(self.path, 0) + 1
                return
            old = self._active_callbacks_by_watch.get(wd)
            if old is not None and old != path and self._active_callbacks_by_path.get(old) == wd:
                del self._active_callbacks_by_path[old]  # the folder was renamed
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

    class _ReconcilingEmitter(InotifyEmitter):
        """Builds a :class:`_ReconcilingWatchGroup`, and hands each wanted event straight to
        the handler of its watch (on this thread), instead of through the observer's queue
        and thread (watchdog's ``EventQueue``, which compares each event with the last one,
        and ``dispatch_events``): one thread and one queue less per event.

        A lone creation, deletion or close-after-write (what a storm of new files is made
        of) reaches a handler of this module as its kind and path
        (``deliver(kind, path, is_directory)``), without the two watchdog event objects
        ``build_and_queue_event`` makes for it (the second, the parent folder's
        ``DirModifiedEvent``, is not wanted); moves and everything else take watchdog's way.
        """

        def __init__(self, *args: Any, on_overflow: Callable[[], None],
                     deliveries: dict[str, FileSystemEventHandler], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._on_overflow = on_overflow
            handler = deliveries.get(self.watch.path)
            self._deliver = handler.on_any_event if handler is not None else None
            self._wanted = frozenset(self._event_filter or ())
            self._simple: Callable[[str, str, bool], None] | None = getattr(handler, "deliver", None)
            self._simple_kinds = frozenset(_SIMPLE_KINDS[cls] for cls in self._wanted if cls in _SIMPLE_KINDS)
            if DirModifiedEvent in self._wanted or not isinstance(self.watch.path, str):
                self._simple = None

        def on_thread_start(self) -> None:
            group = _ReconcilingWatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
            )
            group.on_overflow = self._on_overflow
            self._inotify = group

        def build_and_queue_event(self, event: Any, *, full_events: bool = False) -> None:
            simple = self._simple
            if simple is not None and isinstance(event, PathedInotifyEvent):
                mask = event.ev.mask
                if mask & _SIMPLE and not mask & _NOT_SIMPLE:
                    is_directory = bool(mask & _IN.IN_ISDIR)
                    kind = "created" if mask & _IN.IN_CREATE else "deleted" if mask & _IN.IN_DELETE else "closed"
                    if (kind, is_directory) in self._simple_kinds:
                        simple(kind, os.fsdecode(event.path), is_directory)
                    return  # a folder's close-after-write is no event in watchdog either
            super().build_and_queue_event(event, full_events=full_events)

        def queue_event(self, event: FileSystemEvent) -> None:
            if self._deliver is None:
                super().queue_event(event)
            elif event.__class__ in self._wanted:
                self._deliver(event)

    class _InotifyObserver(InotifyObserver):
        def __init__(self, on_overflow: Callable[[], None]) -> None:
            # InotifyObserver.__init__ with this module's inotify instance and emitter.
            self._inotify_fd = _LeanInotifyFD()
            self._inotify_fd.start()
            self._deliveries: dict[str, FileSystemEventHandler] = {}
            BaseObserver.__init__(self, _ReconcilingEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd,
                                  on_overflow=on_overflow, deliveries=self._deliveries)

        def schedule(self, event_handler: FileSystemEventHandler, path: str | Path, *, recursive: bool = False,
                     event_filter: list[type[FileSystemEvent]] | None = None, follow_symlink: bool = False) -> ObservedWatch:
            self._deliveries[str(path)] = event_handler
            return super().schedule(event_handler, path, recursive=recursive, event_filter=event_filter,
                                    follow_symlink=follow_symlink)

    def _internals_present() -> bool:
        """Whether this watchdog has the private parts the replacements build on (7.1 does);
        with another version the watcher falls back to watchdog's own observer."""
        group = ("_lock", "_move_event_grouper", "_active_callbacks_by_path", "_active_callbacks_by_watch",
                 "_remove_callbacks", "_inotify_fd", "_id", "_callback", "_add_all_callbacks")
        fields = getattr(InotifyWatchGroup, "__dataclass_fields__", {})
        return (
            all(name in fields or hasattr(InotifyWatchGroup, name) for name in group)
            and all(hasattr(InotifyFD, name) for name in ("_add_callback", "_remove_callback", "_remove_watch",
                                                            "_raise_error", "read_events", "handle_event"))
            and {"_watch_for_wd", "_inotify_fd", "_lock", "_kill_r"} <= set(InotifyFD.__init__.__code__.co_names)
            and hasattr(inotify_c, "inotify_add_watch") and hasattr(inotify_c, "inotify_rm_watch")
            and hasattr(InotifyEmitter, "get_event_mask_from_filter")
            and hasattr(InotifyObserver, "on_thread_stop")
        )

    if Observer is InotifyObserver and _internals_present():
        _reconciling_observer = _InotifyObserver


SUBFOLDERS_COUNTED = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
"""Filesystems on which a folder's link count is 2 plus its number of sub-folders (each
sub-folder's ``..`` links to it): Linux's ext2/3/4 (``ext4_inc_count``; with ``dir_nlink`` a
folder past 65,000 sub-folders counts 1, which reads as "unknown"), XFS and tmpfs
(``shmem_mkdir``). Not btrfs (always 1), not FUSE, NFS or SMB, whose counts come from
elsewhere: there every folder is listed. GNU find's ``-noleaf`` documents the same
convention."""


def _subfolders_counted(path: bytes) -> int | None:
    """The device of ``path`` (``st_dev``) when its filesystem is one of
    :data:`SUBFOLDERS_COUNTED` per ``/proc/self/mountinfo`` (field 3, ``major:minor``; the
    type after ``-``, proc(5)), else None. Never blocks on a hung mount: the tree is being
    walked anyway, and the mount table is read from memory."""
    try:
        device = os.stat(path).st_dev
        wanted = f"{os.major(device)}:{os.minor(device)}".encode()
        types = set()
        with open(MOUNTINFO, "rb") as mountinfo:
            for line in mountinfo:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and b"-" in fields:
                    types.add(os.fsdecode(fields[fields.index(b"-") + 1]))
    except (OSError, ValueError, IndexError):
        return None
    return device if types and types <= SUBFOLDERS_COUNTED else None


class RootWatcher:
    """Recursive watches on the roots, one watchdog observer each.

    :meth:`watch` and :meth:`unwatch` may block (a walk of a large tree, a hung mount): the
    daemon calls them on a worker. Use as a context manager, or call :meth:`stop`.
    """

    def __init__(self, put: Callable[[object], None]) -> None:
        self._put = put
        self._observers: dict[str, BaseObserver] = {}
        self._lock = threading.Lock()
        self._overflow: _OverflowHandler | None = None
        self._saved_level: int | None = None
        if _reconciling_observer is None:
            self._listen_for_overflows()

    def _listen_for_overflows(self) -> None:
        """Only with watchdog's native observer: its overflow is seen as a WARNING record
        (with a higher log level the logger would not even create it, so it is lowered
        until :meth:`stop`)."""
        self._overflow = _OverflowHandler(self._put)
        inotify_logger = logging.getLogger(INOTIFY_LOGGER)
        inotify_logger.addHandler(self._overflow)
        if not inotify_logger.isEnabledFor(logging.WARNING):
            self._saved_level = inotify_logger.level
            inotify_logger.setLevel(logging.WARNING)

    def start(self) -> None:
        """Nothing to start: each root's observer starts with its watch."""

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop every observer; waits at most ``timeout`` seconds in all. False if one did not
        stop in time: a watchdog thread is stuck on a hung mount and the events it was
        handling are lost. It is left behind (daemon threads).

        watchdog walks every new folder in its own thread (to watch it); on a FUSE mount whose
        daemon hangs that thread blocks in the kernel, holding the lock that
        ``observer.stop()`` needs, so the stops run on a helper thread."""
        if self._overflow is not None:
            inotify_logger = logging.getLogger(INOTIFY_LOGGER)
            inotify_logger.removeHandler(self._overflow)
            if self._saved_level is not None:
                inotify_logger.setLevel(self._saved_level)
                self._saved_level = None
        with self._lock:
            observers, self._observers = list(self._observers.values()), {}

        def stop_all() -> None:
            for observer in observers:
                observer.stop()
            for observer in observers:
                with contextlib.suppress(RuntimeError):
                    observer.join()

        stopper = threading.Thread(target=stop_all, name="watchdog-stop", daemon=True)
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
        with self._lock:
            return frozenset(self._observers)

    def watch(self, root: Path, counterparts: Sequence[str] = (), problems: list[str] | None = None,
              include_root: bool = True) -> str | None:
        """Watch ``root`` recursively (again, if it was watched), and its ``counterparts`` (its
        folders on a mergerfs pool's branches: inotify on the pool does not see files written
        straight to a branch, inotify on the branch does; mergerfs(1)). Returns None on
        success, else the reason the root could not be watched (e.g. ``"no such folder"``,
        ``"inotify watch limit reached"``); a counterpart that cannot be watched is added to
        ``problems`` (``"/mnt/disk1/movies: permission denied"``). ``include_root`` False:
        only the counterparts (a root that is polled). Blocks while watchdog walks the trees."""
        key = str(root)
        self.unwatch(root)
        _limit_failures.pop(os.fsencode(key), None)
        if _reconciling_observer is not None:
            observer = _reconciling_observer(lambda: self._put(EventsLost(key)))
        else:
            observer = Observer()
        observer.daemon = True
        observer.name = f"watch {key}"
        try:
            if include_root:
                observer.schedule(_Handler(key, self._put), key, recursive=True, event_filter=EVENT_FILTER)
            for folder in counterparts:
                try:
                    observer.schedule(_TranslatingHandler(key, folder, self._put), folder, recursive=True,
                                      event_filter=EVENT_FILTER)
                except OSError as error:
                    if problems is not None:
                        problems.append(f"{folder}: {error.strerror or error}")
            observer.start()
        except FileNotFoundError:
            problem: str | None = "no such folder"
        except PermissionError:
            problem = "permission denied"
        except OSError as error:
            if error.errno == errno.ENOSPC:  # from inotify_add_watch
                problem = "inotify watch limit reached: raise it with sysctl fs.inotify.max_user_watches=524288"
            else:
                problem = error.strerror or str(error)
        else:
            problem = None
        if problem is not None:
            _stop_quietly(observer)
            return problem
        with self._lock:
            self._observers[key] = observer
        return None

    @staticmethod
    def limit_failures(root: Path) -> int:
        """How many folders under ``root`` inotify refused a watch with ENOSPC (the watch
        limit) since ``root`` was last watched. Counted with the observer this module uses
        on Linux; 0 with watchdog's own observer, which keeps no such count."""
        return _limit_failures.get(os.fsencode(str(root)), 0)

    def unwatch(self, root: Path, timeout: float = 5.0) -> bool:
        """Stop watching ``root``, if it is watched; waits at most ``timeout`` seconds for
        its observer to stop (False if it did not: a thread stuck on a hung mount)."""
        with self._lock:
            observer = self._observers.pop(str(root), None)
        if observer is None:
            return True
        return _stop_quietly(observer, timeout)


def _stop_quietly(observer: BaseObserver, timeout: float = 5.0) -> bool:
    with contextlib.suppress(Exception):
        observer.stop()
    if observer.is_alive():
        observer.join(timeout)
    return not observer.is_alive()


class MountMonitor:
    """Puts :class:`MountsChanged` on the queue whenever the mount table changes, with the
    mount points whose lines changed (the decision core probes the roots only for changes
    that can concern them: on a busy machine, containers and test suites mount and unmount
    all the time, and each probe is a child process).

    ``/proc/self/mountinfo`` signals ``POLLPRI | POLLERR`` on every mount, umount, bind,
    remount and lazy umount in this mount namespace, and not otherwise (proc(5),
    ``/proc/[pid]/mountinfo``: "changes ... are signalled with POLLPRI"); it stays silent for a hung server. Linux only: elsewhere :meth:`start`
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
            lines = set(mountinfo.read().splitlines())
            poller = select.poll()
            poller.register(mountinfo.fileno(), select.POLLPRI | select.POLLERR)
            poller.register(self._wake_read, select.POLLIN)
            while True:
                ready = poller.poll()
                if any(descriptor == self._wake_read for descriptor, _ in ready):
                    return
                mountinfo.seek(0)
                now = set(mountinfo.read().splitlines())
                points = changed_mount_points(lines ^ now)
                lines = now
                self._queue.put(MountsChanged(points))


_ESCAPED = re.compile(rb"\\([0-7]{3})")


def changed_mount_points(lines: Iterable[bytes]) -> frozenset[str] | None:
    """The mount points (field 5) of ``/proc/self/mountinfo`` lines, their octal escapes
    (``\\040`` for a space, proc(5)) undone; None if a line cannot be read."""
    points = set()
    for line in lines:
        fields = line.split(b" ", 5)
        if len(fields) < 5:
            return None
        points.add(os.fsdecode(_ESCAPED.sub(lambda match: bytes([int(match.group(1), 8)]), fields[4])))
    return frozenset(points)
