"""Errors, split by what the caller does next.

    WatcherError
    ├── ConfigError              bad configuration or usage: print one line, exit 2
    └── JellyfinError            the server did not take a request: exit 3; the daemon keeps the batch
        ├── ServerUnavailable    connection refused, timeout, 5xx: retry later
        │   └── NoAnswer         connected and asked, no answer within the timeout
        ├── RequestRejected      any other 4xx: our request is wrong; report it
        └── SetupError           the way to Jellyfin needs a fix by the user: say so once, retry later
            ├── KeyRejected      Jellyfin's own 401/403: the API key (or the login) is wrong
            ├── TLSFailure       the certificate is not trusted, has expired, names another host
            ├── Redirected       a 3xx: to https://, another address, a sign-in page, Jellyfin's base URL
            ├── ProxyRejected    a 401/403 from a proxy in front of Jellyfin, not from Jellyfin
            └── UnexpectedAnswer not JSON (an HTML page, often a login page) or JSON of the wrong shape

No message ever contains the API key, a token or a password.
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
    """Connection refused, timed out, or a 5xx answer: keep the batch and retry with backoff.

    ``status``: the HTTP status of a 5xx answer (None when there was no answer).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NoAnswer(ServerUnavailable):
    """The request was sent and no answer came within the timeout (a server stuck, perhaps on
    a hung mount of its own)."""


class RequestRejected(JellyfinError):
    """Jellyfin answered another 4xx: the request itself is wrong (a bug or a base-path problem).

    ``status``: the HTTP status.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SetupError(JellyfinError):
    """Something between the watcher and Jellyfin needs the user's fix (the URL, the key, the
    certificate, a proxy). Retrying is cheap and harmless, so the daemon keeps the batch,
    says it once and retries with backoff.

    ``path``: the API path (without base path) of the request that met the problem, for
    ``doctor``'s diagnosis; None when unknown.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class KeyRejected(SetupError):
    """Jellyfin itself answered 401 or 403: the API key is missing, revoked or wrong (or the
    user's login failed)."""


class TLSFailure(SetupError):
    """The TLS connection could not be set up or verified: a certificate from an authority
    this machine does not trust, an expired certificate, one for another host name, or
    ``https://`` to a plain-HTTP port."""


class Redirected(SetupError):
    """The answer was a redirect (3xx). It is never followed: requests drops the
    ``Authorization`` header on a redirect to another host or port, and turns a redirected
    POST into a GET. ``location``: where it points (absolute)."""

    def __init__(self, message: str, path: str | None = None, location: str = "") -> None:
        super().__init__(message, path)
        self.location = location


class ProxyRejected(SetupError):
    """A 401 or 403 that did not come from Jellyfin but from a proxy in front of it (it asks
    for its own sign-in, answers an HTML page, or Jellyfin's public endpoint is refused too):
    Jellyfin never saw the key."""


class UnexpectedAnswer(SetupError):
    """A 2xx answer that is not what Jellyfin sends: not JSON (an HTML page, often a login
    page of a proxy), or JSON of another shape than the endpoint's."""
