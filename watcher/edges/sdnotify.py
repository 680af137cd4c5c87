"""systemd's service notification protocol (``sd_notify``), in a few lines.

Protocol (sd_notify(3)): one ``AF_UNIX`` datagram of newline-separated ``KEY=VALUE``
assignments to the socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace). ``READY=1`` ends start-up for ``Type=notify``; ``STATUS=`` is shown by
``systemctl status``; ``WATCHDOG=1`` is the keep-alive expected every ``$WATCHDOG_USEC``
microseconds when ``WatchdogSec=`` is set (``$WATCHDOG_PID``, if set, must be our pid).

Why not a library: ``systemd-python`` needs libsystemd and a compiler to install, and
``sdnotify`` has had no release since 2017 and hides every socket error; the protocol
itself is one ``sendto``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd; does nothing when not started by systemd."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_interval: float | None = None
        """Seconds between keep-alives (half of ``WatchdogSec=``), or None when not asked."""
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines, e.g. ``notify(READY="1", STATUS="watching 2 roots")``.

        Returns False (after one DEBUG line) when there is no socket or sending failed:
        notification is best effort and never stops the watcher.
        """
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in assignments.items()).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self._address)
        except OSError as error:
            logger.debug("sd_notify to %s failed: %s", self._address.lstrip("\0"), error)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
