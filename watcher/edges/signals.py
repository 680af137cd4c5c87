"""Waking the loop when a signal arrives, whichever thread the kernel handed it to.

Python runs signal handlers in the main thread only, between two bytecodes (``signal``
module docs, "Signals and threads"). A signal sent to the process goes to any one of its
threads that does not block it (signal(7)); when that is not the main thread, the handler's
flag is set but the main thread sleeps on in its queue wait until the wait's timeout, which
may be a whole health interval. Python's own C-level handler also writes the signal's number
to the *wakeup fd* (``signal.set_wakeup_fd``), from whatever thread it ran on: a thread
blocked on that fd puts an item on the loop's queue, the main thread wakes, and the handler
runs at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable


class SignalWaker:
    """While started, every signal that has a Python handler wakes the loop: ``put`` is
    called with ``item`` (from this object's own thread). Start and stop it on the main
    thread (``signal.set_wakeup_fd`` may only be called there)."""

    def __init__(self, put: Callable[[object], None], item: object) -> None:
        self._put = put
        self._item = item
        self._read, self._write = os.pipe()
        self._stop_read, self._stop_write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="signal-waker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._previous is not None:
            signal.set_wakeup_fd(self._previous)
            self._previous = None
        if self._thread is not None:
            os.write(self._stop_write, b"x")
            self._thread.join(1.0)
            self._thread = None
        for descriptor in (self._read, self._write, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(descriptor)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._read, self._stop_read], [], [])
            if self._stop_read in ready:
                return
            with contextlib.suppress(OSError):
                os.read(self._read, 512)
            self._put(self._item)
