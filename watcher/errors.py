"""Errors, split by what the caller does next.

    WatcherError
    ├── ConfigError            bad configuration or usage: print one line, exit 2
    └── JellyfinError          the server did not take a request
        ├── ServerUnavailable  connection refused, timeout, 5xx: keep the batch, retry later
        ├── KeyRejected        401/403: the API key is wrong; keep the batch, tell the user
        └── RequestRejected    any other 4xx: our request is wrong; keep the batch, report it

No message ever contains the API key.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error this package raises on purpose; ``str()`` is the user-facing line."""


class ConfigError(WatcherError):
    """The configuration or the command line is wrong; the message names the key and the fix.

    Exit code 2.
    """


class JellyfinError(WatcherError):
    """A request to Jellyfin did not succeed.

    Exit code 3 for one-shot commands; the daemon keeps the batch.
    """


class ServerUnavailable(JellyfinError):
    """Connection refused, timed out, or a 5xx answer: keep the batch and retry with backoff."""


class KeyRejected(JellyfinError):
    """Jellyfin answered 401 or 403: the API key is missing, revoked or wrong."""


class RequestRejected(JellyfinError):
    """Jellyfin answered another 4xx: the request itself is wrong (a bug or a base-path problem)."""
