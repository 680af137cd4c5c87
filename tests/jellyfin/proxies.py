"""What stands in front of Jellyfin where it is deployed: small real HTTP(S) servers on 127.0.0.1.

Each one listens on a free port, serves every connection in its own thread (a TLS handshake
included), and on :meth:`stop` shuts its open connections and joins every thread. Their
answers copy what the real software sends to a client without a session cookie:

* :class:`Redirector`: a server block that only redirects (nginx ``return 301
  https://$host$request_uri``; Caddy's automatic HTTPS answers 308), to the same path at
  another base URL;
* :class:`SignInProxy`: single sign-on in front of Jellyfin (Authelia, Authentik,
  oauth2-proxy): a 302 to its login page, or the login page itself with 200 or 403;
* :class:`AuthProxy`: a proxy asking for its own credentials: nginx ``auth_basic`` (401,
  ``WWW-Authenticate: Basic realm="…"`` and nginx's HTML error page) or an IP allow-list (403
  and an HTML page);
* :class:`ReverseProxy`: a reverse proxy publishing Jellyfin under a base path (nginx
  ``location /jellyfin { proxy_pass http://127.0.0.1:8096; }`` with Jellyfin's Base URL set to
  ``/jellyfin``), nginx's HTML 404 page elsewhere;
* :class:`ForwardProxy`: an outgoing HTTP proxy (``HTTPS_PROXY``) tunnelling ``CONNECT`` and
  forwarding absolute-URI requests; it records every destination it carried.

:class:`SignInProxy` and :class:`AuthProxy` forward to their upstream once :attr:`exempt` is
set: the administrator exempted Jellyfin's API paths, or the watcher now has a way through.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from tests.jellyfin.emulator import ClosingHTTPServer

logger = logging.getLogger(__name__)

NGINX_401 = (b"<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
             b"<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")
NGINX_403 = (b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
             b"<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
NGINX_404 = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
             b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
SIGN_IN_PAGE = (b"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in - Authelia</title>"
                b"</head><body><div id=\"root\">Sign in to continue to jellyfin</div></body></html>\n")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-authenticate"})


class _Server(ClosingHTTPServer):
    def __init__(self, front: _Front, host: str, context: ssl.SSLContext | None) -> None:
        self.front = front
        super().__init__((host, 0), _Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10
    server_version = "nginx"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _serve(self) -> None:
        self.server.front.serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_CONNECT = _serve

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "text/html") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class _Front:
    """A server in front of Jellyfin: subclasses answer in :meth:`serve`."""

    def __init__(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        """Every request received: ``(method, path)``."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT``, no trailing slash."""
        assert self._server is not None, "not started"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self._server.server_address[1]}"

    def start(self) -> _Front:
        self._server = _Server(self, self.host, self.ssl_context)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def record(self, handler: _Handler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path))

    def serve(self, handler: _Handler) -> None:
        raise NotImplementedError


def forward(handler: _Handler, upstream: str, context: ssl.SSLContext | None = None) -> None:
    """Pass ``handler``'s request to ``upstream`` (``http(s)://host:port``), path unchanged, as
    nginx's ``proxy_pass`` does (``Host`` set to the upstream's), and its answer back."""
    parts = urlsplit(upstream)
    assert parts.hostname is not None and parts.port is not None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = handler.body()
    headers = {name: value for name, value in handler.headers.items() if name.lower() not in _HOP_BY_HOP}
    headers["Host"] = parts.netloc
    try:
        connection.request(handler.command, handler.path, body=body or None, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        passed = {name: value for name, value in answer.getheaders()
                  if name.lower() not in _HOP_BY_HOP | {"content-length", "content-type", "server", "date"}}
        handler.reply(answer.status, data, passed, answer.getheader("Content-Type") or "text/plain")
    except OSError:
        handler.reply(502, b"<html><head><title>502 Bad Gateway</title></head></html>")
    finally:
        connection.close()


class Redirector(_Front):
    """Answers every request with ``status`` and ``Location: <target><the same path and query>``."""

    def __init__(self, target: str, status: int = 301, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target.rstrip("/")
        self.status = status

    def serve(self, handler: _Handler) -> None:
        self.record(handler)
        handler.body()
        handler.reply(self.status, b"<html><head><title>Moved</title></head></html>",
                      {"Location": self.target + handler.path})


class _Guarded(_Front):
    """A proxy that refuses the watcher (:meth:`refuse`) in front of ``upstream``, and
    forwards everything once :attr:`exempt` is set."""

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream = upstream
        self.exempt = False

    def serve(self, handler: _Handler) -> None:
        self.record(handler)
        if self.exempt:
            forward(handler, self.upstream)
            return
        handler.body()
        self.refuse(handler)

    def refuse(self, handler: _Handler) -> None:
        raise NotImplementedError


class SignInProxy(_Guarded):
    """Single sign-on in front of ``upstream``. Without a session (always, for the watcher):
    ``mode="redirect"``: 302 to ``<own URL>/login?rd=<the URL asked for>`` (Authelia); ``"page"``:
    the sign-in page with 200; ``"forbidden"``: the sign-in page with 403 (oauth2-proxy).
    ``GET /login`` is the sign-in page. With :attr:`exempt` set, everything is forwarded."""

    def __init__(self, upstream: str, mode: str = "redirect", **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self.mode = mode

    def refuse(self, handler: _Handler) -> None:
        if urlsplit(handler.path).path == "/login" or self.mode == "page":
            handler.reply(200, SIGN_IN_PAGE, content_type="text/html; charset=utf-8")
        elif self.mode == "forbidden":
            handler.reply(403, SIGN_IN_PAGE, content_type="text/html; charset=utf-8")
        else:
            handler.reply(302, b"", {"Location": f"{self.url}/login?rd={quote(self.url + handler.path, safe='')}"})


class AuthProxy(_Guarded):
    """A proxy with its own access control in front of ``upstream``: ``status=401``, nginx
    ``auth_basic`` (the watcher's ``Authorization: MediaBrowser …`` is not Basic); ``status=403``,
    an allow-list. ``bare``: the status alone, no challenge and no page (as Jellyfin answers).
    With :attr:`exempt` set, everything is forwarded."""

    def __init__(self, upstream: str, status: int = 401, bare: bool = False, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self.status = status
        self.bare = bare

    def refuse(self, handler: _Handler) -> None:
        if self.bare:
            handler.reply(self.status)
        elif self.status == 401:
            handler.reply(401, NGINX_401, {"WWW-Authenticate": 'Basic realm="Restricted"'})
        else:
            handler.reply(403, NGINX_403)


class Canned(_Front):
    """Answers every request with the same ``status``, ``body`` and ``content_type``: a server
    that is not Jellyfin, or an answer of another shape than Jellyfin's."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.status = status
        self.canned = body
        self.content_type = content_type

    def serve(self, handler: _Handler) -> None:
        self.record(handler)
        handler.body()
        handler.reply(self.status, self.canned, content_type=self.content_type)


class ReverseProxy(_Front):
    """Publishes ``upstream`` under ``prefix``: requests whose path starts with it go there
    unchanged; anything else gets nginx's 404 page. ``upstream_context``: for an https upstream."""

    def __init__(self, upstream: str, prefix: str = "/jellyfin", upstream_context: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream = upstream
        self.prefix = prefix.rstrip("/")
        self.upstream_context = upstream_context

    def serve(self, handler: _Handler) -> None:
        self.record(handler)
        path = urlsplit(handler.path).path
        if path == self.prefix or path.startswith(self.prefix + "/"):
            forward(handler, self.upstream, self.upstream_context)
            return
        handler.body()
        handler.reply(404, NGINX_404)


class ForwardProxy(_Front):
    """An outgoing proxy: ``CONNECT host:port`` opens a tunnel; ``GET http://…`` is forwarded.
    :attr:`destinations` lists every ``host:port`` it carried traffic to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.destinations: list[str] = []

    def serve(self, handler: _Handler) -> None:
        self.record(handler)
        if handler.command == "CONNECT":
            self._tunnel(handler)
            return
        parts = urlsplit(handler.path)
        if not parts.scheme:
            handler.reply(400, b"<html><head><title>400 Bad Request</title></head></html>")
            return
        with self.lock:
            self.destinations.append(parts.netloc)
        handler.path = parts.path + (f"?{parts.query}" if parts.query else "")
        forward(handler, f"{parts.scheme}://{parts.netloc}")

    def _tunnel(self, handler: _Handler) -> None:
        host, _, port = handler.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except (OSError, ValueError):
            handler.reply(502, b"")
            return
        with self.lock:
            self.destinations.append(handler.path)
        handler.send_response(200, "Connection established")
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True
        client = handler.connection
        try:
            peers = {client: upstream, upstream: client}
            while True:
                readable, _, _ = select.select(list(peers), [], [], 10)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[source].sendall(data)
        except OSError:
            return
        finally:
            upstream.close()


__all__ = ["AuthProxy", "Canned", "ForwardProxy", "Redirector", "ReverseProxy", "SignInProxy", "forward"]
