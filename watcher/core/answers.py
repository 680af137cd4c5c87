"""What an HTTP answer says about the way to Jellyfin: pure rules and the messages they give.

Nothing here does I/O; :mod:`watcher.jellyfin` gathers the facts (status, headers, the start
of the body, the TLS verification result) and raises the errors these messages go into.

What Jellyfin itself sends (10.11, ``jellyfin/jellyfin`` at tag ``v10.11.9``), so that a
proxy's answer can be told from Jellyfin's:

* every API answer is JSON (``application/json``); ASP.NET's own errors are
  ``application/problem+json`` (``ProblemDetails``);
* a missing or unknown token gets **401 with an empty body and no** ``WWW-Authenticate``
  header: ``Jellyfin.Api/Auth/CustomAuthenticationHandler.cs`` answers ``NoResult`` or
  ``Fail``, and ASP.NET's default challenge only sets the status; a token without the
  rights gets 403, empty too (the default forbid);
* an exception mapped to 401/403 (a failed ``POST /Users/AuthenticateByName``) is
  ``text/plain`` ``Error processing request.`` (``Jellyfin.Api/Middleware/ExceptionMiddleware.cs``);
* a path outside its Base URL is redirected (302) to ``<base URL>/web/``
  (``Jellyfin.Api/Middleware/BaseUrlRedirectionMiddleware.cs``, ``DefaultRedirectPath``
  ``web/`` in ``Emby.Server.Implementations/ConfigurationOptions.cs``);
* ``GET /System/Info/Public`` never needs authentication.

A proxy's sign-in (nginx ``auth_basic``, Traefik ``basicAuth``, Authelia, Authentik,
oauth2-proxy) shows as a ``WWW-Authenticate`` challenge, an HTML page, or a redirect to a
login page.

TLS verification results are OpenSSL's ``X509_V_ERR_*`` codes
(``include/openssl/x509_vfy.h.in``; ``openssl-verify(1)`` lists them with their texts).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit, urlunsplit

JELLYFIN_ERROR_TEXT = b"Error processing request."
"""The body of Jellyfin's answers to exceptions (``ExceptionMiddleware``), 401 at a failed login."""

SIGN_IN_WORDS = re.compile(
    r"log-?in|sign-?in|sign_in|auth|sso|oauth|oidc|saml|outpost|/cas/|[?&](rd|redirect|redirect_uri|return_to|returnurl)=",
    re.IGNORECASE,
)
"""What the address of a single sign-on proxy's login page holds (Authelia ``/?rd=…``,
Authentik ``/outpost.goauthentik.io/start``, oauth2-proxy ``/oauth2/sign_in``, …)."""

JELLYFIN_WEB_PATHS = ("/web", "/web/", "/web/index.html", "/api-docs/swagger")
"""Where Jellyfin redirects a path outside its Base URL (``DefaultRedirectPath``: ``web/``,
or ``api-docs/swagger`` without the web client)."""

TITLE_LENGTH = 80
"""Characters of an HTML page's title quoted in a message."""

# OpenSSL's verification results (x509_vfy.h)
X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64
_UNTRUSTED = frozenset({
    2,  # unable to get issuer certificate
    18,  # self-signed certificate
    19,  # self-signed certificate in certificate chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
})


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, as far as a diagnosis needs it.

    ``url``: the absolute URL requested. ``headers``: names in lower case. ``body``: the
    body or its first few kilobytes.
    """

    url: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case (``""`` if none)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def location(self) -> str | None:
        """The ``Location`` header resolved against :attr:`url`, or None."""
        location = self.headers.get("location")
        return urljoin(self.url, location.strip()) if location and location.strip() else None

    @property
    def is_html(self) -> bool:
        start = self.body.lstrip()[:15].lower()
        return self.content_type in ("text/html", "application/xhtml+xml") or start.startswith((b"<!doctype html", b"<html"))

    @property
    def is_json(self) -> bool:
        return self.content_type == "application/json" or self.content_type.endswith("+json")

    @property
    def title(self) -> str | None:
        """The HTML page's ``<title>``, on one line and cut to :data:`TITLE_LENGTH`; None if none."""
        return page_title(self.body) if self.is_html else None


class _TitleParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inside = False
        self.done = False
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and not self.done:
            self.inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.inside:
            self.inside, self.done = False, True

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.parts.append(data)


def page_title(body: bytes) -> str | None:
    """The ``<title>`` of an HTML page, whitespace collapsed, at most :data:`TITLE_LENGTH`
    characters (cut with "…"); None if it has none."""
    parser = _TitleParser()
    parser.feed(body.decode("utf-8", "replace"))
    parser.close()
    text = " ".join(html.unescape("".join(parser.parts)).split())
    if not text:
        return None
    return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1] + "…"


def describe(answer: Answer) -> str:
    """``answer`` on one line, for ``doctor``: ``"HTTP 301 to https://…"``, ``"HTTP 200 JSON:
    Jellyfin Server 10.11.11"``, ``"HTTP 401, an HTML page "…" (it asks for Basic …)"``."""
    text = f"HTTP {answer.status}"
    if 300 <= answer.status < 400:
        return f"{text} to {answer.location}" if answer.location else f"{text} without a Location"
    signs = proxy_signs(answer)
    if answer.is_json:
        text += ", JSON"
        product = _product(answer.body)
        if product:
            text += f": {product}"
    elif answer.body.strip() and not answer.is_html:
        text += f", {answer.content_type or 'no content type'} ({len(answer.body)} bytes)"
    elif not answer.body.strip():
        text += ", empty"
    return text + (f" ({'; '.join(signs)})" if signs else "")


def _product(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and "Version" in value:
        return f"{value.get('ProductName') or 'server'} {value['Version']}"
    return None


# --- who answered a 401/403 ---------------------------------------------------------------


def proxy_signs(answer: Answer) -> tuple[str, ...]:
    """What marks a 401/403 ``answer`` as a proxy's rather than Jellyfin's, as short phrases
    (empty: it looks like Jellyfin's own). Jellyfin never sends ``WWW-Authenticate`` and never
    an HTML page on its API (see the module docstring)."""
    signs = []
    challenge = answer.headers.get("www-authenticate")
    if challenge:
        signs.append(f"it asks for {_one_line(challenge)} (WWW-Authenticate)")
    if answer.is_html:
        title = answer.title
        signs.append(f'an HTML page "{title}"' if title else "an HTML page")
    if signs and answer.headers.get("server"):
        signs.append(f"Server: {_one_line(answer.headers['server'])}")
    return tuple(signs)


def looks_like_jellyfin_error(answer: Answer) -> bool:
    """True if a 4xx ``answer`` has the form of Jellyfin's own: no challenge, and an empty
    body, ``Error processing request.`` or JSON."""
    if proxy_signs(answer):
        return False
    body = answer.body.strip()
    return not body or body == JELLYFIN_ERROR_TEXT or answer.is_json


def proxy_rejected_message(base_url: str, request: str, answer: Answer, signs: tuple[str, ...]) -> str:
    """A proxy in front of Jellyfin refused ``request`` (``"GET /System/Info"``)."""
    why = "; ".join(signs) if signs else "Jellyfin's public endpoint /System/Info/Public is refused too"
    return (
        f"a proxy in front of Jellyfin at {base_url} refused {request} (HTTP {answer.status}: {why}): "
        "Jellyfin never saw the API key, so do not replace it; let the watcher reach Jellyfin directly, "
        "or exempt Jellyfin's API paths from the proxy's sign-in"
    )


# --- redirects ------------------------------------------------------------------------------


def redirect_message(base_url: str, request: str, endpoint: str, answer: Answer) -> str:
    """A redirect answered ``request`` (``"GET /System/Info"``) sent to ``base_url`` +
    ``endpoint`` (the path below the base URL, e.g. ``/System/Info``): where it points and
    what to do."""
    head = f"the server at {base_url} answers {request} with a redirect (HTTP {answer.status})"
    location = answer.location
    if location is None:
        return f"{head} without a Location: set jellyfin.url to the address Jellyfin itself answers on"
    suggested = suggested_url(endpoint, location)
    if suggested is not None:
        return f"{head} to {location}: set jellyfin.url to {suggested}; a redirect would drop the API key"
    base_path = jellyfin_base_path(answer.url, location)
    if base_path is not None:
        origin = _origin(location)
        return (
            f"{head} to {location}: Jellyfin's Base URL (Dashboard → Networking) is {base_path or '/'}; "
            f"set jellyfin.url to {origin}{base_path}"
        )
    if is_sign_in(location):
        return (
            f"{head} to a sign-in page at {_without_query(location)}: a single sign-on proxy stands between the "
            "watcher and Jellyfin; let the watcher reach Jellyfin directly (set jellyfin.url to Jellyfin's own "
            "address), or exempt Jellyfin's API paths from sign-in"
        )
    return (
        f"{head} to {location}, which is not Jellyfin's API: set jellyfin.url to the address Jellyfin itself "
        "answers on; a redirect would drop the API key"
    )


def suggested_url(endpoint: str, location: str) -> str | None:
    """The base URL at which ``location`` serves the same ``endpoint`` (a redirect to
    ``https://``, another port or host, or a base path added), or None if it points elsewhere."""
    parts = urlsplit(location)
    path = parts.path.rstrip("/")
    wanted = endpoint.rstrip("/")
    if not wanted or not path.lower().endswith(wanted.lower()):
        return None
    return urlunsplit((parts.scheme, parts.netloc, path[: len(path) - len(wanted)], "", ""))


def jellyfin_base_path(requested: str, location: str) -> str | None:
    """The Base URL Jellyfin's own redirect reveals (``"/jellyfin"``), or None if
    ``location`` is not such a redirect (same origin, to ``<base>/web/``)."""
    if _origin(requested) != _origin(location):
        return None
    path = urlsplit(location).path
    for suffix in JELLYFIN_WEB_PATHS:
        if path.lower().endswith(suffix):
            return path[: len(path) - len(suffix)].rstrip("/")
    return None


def is_sign_in(location: str) -> bool:
    """True if ``location`` looks like a sign-in page (see :data:`SIGN_IN_WORDS`)."""
    parts = urlsplit(location)
    return bool(SIGN_IN_WORDS.search(f"{parts.netloc}{parts.path}?{parts.query}"))


# --- bodies ---------------------------------------------------------------------------------


def not_json_message(base_url: str, request: str, answer: Answer) -> str:
    """A 2xx answer to ``request`` whose body is not JSON."""
    if answer.is_html:
        title = answer.title
        page = f'an HTML page ("{title}")' if title else "an HTML page"
        return (
            f"the server at {base_url} answered {request} with {page}, not JSON: is a login proxy in front of "
            "Jellyfin? let the watcher reach Jellyfin directly, or exempt Jellyfin's API paths from sign-in"
        )
    kind = answer.content_type or "no content type"
    return (
        f"the server at {base_url} answered {request} with {kind} ({len(answer.body)} bytes), not JSON: "
        "is jellyfin.url the address of Jellyfin?"
    )


def empty_message(base_url: str, request: str) -> str:
    return f"the server at {base_url} answered {request} with an empty body, not JSON: is jellyfin.url the address of Jellyfin?"


def shape_message(base_url: str, request: str, what: str, expected: str) -> str:
    """Jellyfin's JSON answer to ``request`` holds ``what`` (e.g. ``"an object"``) where the
    API has ``expected``."""
    return (
        f"the server at {base_url} answered {request} with JSON of another shape ({what} where {expected} was "
        "expected): is jellyfin.url the address of Jellyfin, and jellyfin.server right?"
    )


def json_kind(value: object) -> str:
    """``"a list"``, ``"an object"``, ``"a string"``, … for a decoded JSON value."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


# --- TLS ------------------------------------------------------------------------------------


def tls_message(url: str, verify: bool | str, code: int | None, reason: str) -> str:
    """The TLS connection to ``url`` failed: ``code`` is OpenSSL's verification result (None
    when the handshake failed otherwise), ``reason`` its text; ``verify`` the setting in force
    (True: the system's authorities, or a CA bundle's path)."""
    origin = _origin(url)
    host = urlsplit(url).hostname or origin
    if code == X509_V_ERR_CERT_HAS_EXPIRED:
        return (
            f"the TLS certificate of {origin} has expired: renew it on the server "
            "(jellyfin.verify = false would accept it, and any other certificate too)"
        )
    if code == X509_V_ERR_CERT_NOT_YET_VALID:
        return f"the TLS certificate of {origin} is not valid yet: check the clocks of this machine and of the server"
    if code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
        return (
            f"the TLS certificate of {origin} is not valid for {host} (it names other hosts): set jellyfin.url to a "
            f"host name the certificate names, or give the server a certificate for {host}"
        )
    if code in _UNTRUSTED:
        authority = (
            f"the certificate authority in jellyfin.ca_bundle ({verify})" if isinstance(verify, str)
            else "an authority this machine trusts"
        )
        return (
            f"the TLS certificate of {origin} is not signed by {authority} ({reason}): set jellyfin.ca_bundle to the "
            "PEM file of the certificate authority that signed it, or jellyfin.verify = false to accept any certificate"
        )
    hint = ""
    if re.search(r"wrong version number|record layer failure|packet length too long|http request", reason, re.IGNORECASE):
        hint = f": does {origin} speak plain HTTP? then use http://"
    return f"TLS failure talking to {origin} ({reason}){hint}"


# --- helpers --------------------------------------------------------------------------------


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
