"""``jellyfin-watcher notify --test``: send a test message to every notification URL.

One line per URL, its secret parts masked (:func:`watcher.config.masked_url`), saying
whether the service took the message. Exit 0 when every URL did, 1 otherwise, 2 when no
URL is configured. It waits at most ``notify.timeout`` seconds in all: the deliveries run
at once, each on a thread of its own (:func:`watcher.edges.notifications.deliver`).
"""

from __future__ import annotations

import socket

from watcher.config import NOTIFY_CREDENTIAL_NAME, NOTIFY_URLS_VARIABLE, Config
from watcher.core.notices import trial_notice
from watcher.edges.notifications import deliver
from watcher.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1


def run(config: Config) -> int:
    """Send the test message; print one result line per URL; return the exit code.

    Raises ConfigError when no notification URL is configured.
    """
    if not config.notify.urls:
        raise ConfigError(
            "no notification URLs to test: set notify.urls or notify.urls_file in the configuration, "
            f"{NOTIFY_URLS_VARIABLE}, or the systemd credential {NOTIFY_CREDENTIAL_NAME}"
        )
    outcomes = deliver(config.notify.urls, trial_notice(socket.gethostname()), config.notify.timeout)
    for outcome in outcomes:
        print(f"{outcome.label}: " + ("delivered" if outcome.failure is None else f"failed: {outcome.failure}"))
    return EXIT_OK if all(outcome.failure is None for outcome in outcomes) else EXIT_FAILED
