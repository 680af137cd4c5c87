"""Delivering notices through apprise, never in the daemon's way.

Apprise (https://github.com/caronc/apprise) speaks to about a hundred services (ntfy,
Gotify, Pushover, Discord, Telegram, Matrix, e-mail, Home Assistant, JSON webhooks), one
URL each. The daemon only enqueues (:meth:`Sender.send` returns at once); a worker thread
delivers each notice to every URL, each delivery on a thread of its own that the worker
waits for at most ``timeout`` seconds (apprise's own connect and read timeouts are set a
second beyond that, so that the thread then ends by itself). A delivery still running when its deadline passes is left to end by itself
and its URL is skipped until it has: a hanging service costs one thread, never a delay.

Failures are logged once per URL and kind of failure (WARNING), not per attempt; a
delivery that works again is logged once (INFO). Nothing logged shows a URL: they hold
tokens. Only their masked form (:func:`watcher.config.masked_url`) is shown. Apprise's
own log records can hold whole URLs, so its logger is kept from propagating to ours.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

from watcher.config import Secret, masked_url
from watcher.core.notices import Notice

logger = logging.getLogger(__name__)

STOP_WAIT = 0.5
"""Seconds :meth:`Sender.stop` waits for the worker (notices still queued are dropped)."""
POLL = 0.5
"""Seconds the worker waits on its queue between looks at the stop flag."""
GRACE = 1.0
"""Seconds apprise's own connect and read timeouts are set beyond the delivery deadline:
the deadline decides (and says "no answer"), then the delivery thread ends by itself."""

_FAILURES = {
    "timeout": "no answer within {timeout:g} s",
    "refused": "the service did not accept it, or could not be reached",
    "unknown": "apprise does not know this kind of URL (see https://github.com/caronc/apprise/wiki)",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery: ``label`` names the URL (masked); ``failure`` is None
    when delivered, else what went wrong in words."""

    label: str
    failure: str | None


class _Service:
    """One URL: its apprise plugin (None if apprise does not know the URL), its label, and
    the delivery thread still running past its deadline, if any."""

    def __init__(self, number: int, url: Secret, timeout: float) -> None:
        self.label = f"notification URL {number} ({masked_url(url.reveal())})"
        self.plugin = _instantiate(url, timeout)
        self.running: threading.Thread | None = None
        self.failure: str | None = None
        """The kind of the last failure logged (None: the last delivery worked)."""

    def start(self, notice: Notice) -> tuple[threading.Thread, dict[str, Any]]:
        """Deliver ``notice`` on a new daemon thread; the dict gets ``ok`` or ``error``."""
        outcome: dict[str, Any] = {}
        plugin = self.plugin

        def deliver() -> None:
            try:
                import apprise

                outcome["ok"] = bool(
                    plugin.notify(
                        body=notice.body,
                        title=notice.title,
                        notify_type=apprise.NotifyType(notice.level),
                        body_format=apprise.NotifyFormat.TEXT,
                    )
                )
            except Exception as error:
                outcome["error"] = error.__class__.__name__

        thread = threading.Thread(target=deliver, name="notification-delivery", daemon=True)
        thread.start()
        self.running = thread
        return thread, outcome


def _instantiate(url: Secret, timeout: float) -> Any:
    """Apprise's plugin for ``url``, its socket timeouts set just past ``timeout``
    (``timeout + GRACE``); None if apprise does not know the URL.

    Apprise loads its plugins on first use; some import modules deprecated in newer
    Pythons (``imghdr``): those warnings are apprise's, not ours, and must not turn into
    errors under ``-W error``.
    """
    _quiet_apprise()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        plugin = apprise.Apprise.instantiate(url.reveal())
    if not plugin:
        return None
    for name in ("socket_connect_timeout", "socket_read_timeout"):  # apprise's URLBase attributes
        if isinstance(getattr(plugin, name, None), (int, float)):
            setattr(plugin, name, timeout + GRACE)
    return plugin


def _quiet_apprise() -> None:
    """Apprise logs to the logger ``apprise``; its debug lines show URLs with their tokens
    and it logs every failed attempt. Keep its records out of the watcher's log."""
    logging.getLogger("apprise").propagate = False


def deliver(urls: Sequence[Secret], notice: Notice, timeout: float) -> list[Outcome]:
    """Send ``notice`` to every URL at once; wait at most ``timeout`` seconds in all.
    Returns one :class:`Outcome` per URL, in order. Never raises for a failed delivery."""
    services = [_Service(number, url, timeout) for number, url in enumerate(urls, start=1)]
    started = [(service, service.start(notice) if service.plugin is not None else None) for service in services]
    deadline = time.monotonic() + timeout
    outcomes = []
    for service, attempt in started:
        if attempt is None:
            outcomes.append(Outcome(service.label, _FAILURES["unknown"]))
            continue
        thread, result = attempt
        _wait(thread, deadline)
        outcomes.append(Outcome(service.label, _failure_text(thread, result, timeout)))
    return outcomes


def _wait(thread: threading.Thread, deadline: float, stop: threading.Event | None = None) -> None:
    """Wait for ``thread`` until ``deadline`` (a ``time.monotonic()`` reading) or ``stop``."""
    while thread.is_alive() and (stop is None or not stop.is_set()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        thread.join(min(remaining, 0.05))


def _failure_kind(thread: threading.Thread, result: dict[str, Any]) -> str | None:
    if thread.is_alive():
        return "timeout"
    if "error" in result:
        return f"error:{result['error']}"
    return None if result.get("ok") else "refused"


def _failure_text(thread: threading.Thread, result: dict[str, Any], timeout: float) -> str | None:
    kind = _failure_kind(thread, result)
    if kind is None:
        return None
    if kind.startswith("error:"):
        return f"apprise raised {kind.split(':', 1)[1]}"
    return _FAILURES[kind].format(timeout=timeout)


class Sender:
    """Delivers notices to ``urls`` from a worker thread; ``timeout``: seconds one delivery
    to one URL may take. With no URLs it does nothing (and never imports apprise)."""

    def __init__(self, urls: Sequence[Secret], timeout: float) -> None:
        self.urls = tuple(urls)
        self.timeout = timeout
        self._queue: SimpleQueue[Notice | None] = SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def start(self) -> None:
        if self.urls and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
            self._thread.start()

    def send(self, notices: Iterable[Notice]) -> None:
        """Queue ``notices`` for delivery; returns at once."""
        if self._thread is None:
            return
        for notice in notices:
            self._queue.put(notice)

    def stop(self, wait: float = STOP_WAIT) -> None:
        """End the worker, waiting at most ``wait`` seconds; undelivered notices are dropped."""
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(wait)
            self._thread = None

    def _run(self) -> None:
        services = [_Service(number, url, self.timeout) for number, url in enumerate(self.urls, start=1)]
        for service in services:
            if service.plugin is None:
                logger.error("%s: %s; it is left out", service.label, _FAILURES["unknown"])
        services = [service for service in services if service.plugin is not None]
        while not self._stop.is_set():
            try:
                notice = self._queue.get(timeout=POLL)
            except Empty:
                continue
            if notice is None:
                break
            logger.debug("sending notice: %s", notice.title)
            attempts = []
            for service in services:
                if service.running is not None and service.running.is_alive():
                    self._report(service, "timeout")  # still stuck on an earlier notice: skipped
                    continue
                attempts.append((service, *service.start(notice)))
            deadline = time.monotonic() + self.timeout
            for service, thread, result in attempts:
                _wait(thread, deadline, self._stop)
                if self._stop.is_set():
                    return
                self._report(service, _failure_kind(thread, result))

    def _report(self, service: _Service, kind: str | None) -> None:
        """Log a failure once per URL and kind; log once when delivery works again."""
        if kind is None:
            if service.failure:
                logger.info("%s: notices are delivered again", service.label)
            service.failure = None
            return
        if kind == service.failure:
            return
        service.failure = kind
        text = f"apprise raised {kind.split(':', 1)[1]}" if kind.startswith("error:") else _FAILURES[kind]
        logger.warning(
            "%s: a notice was not delivered: %s (logged once; check it with jellyfin-watcher notify --test)",
            service.label,
            text.format(timeout=self.timeout),
        )
