"""Jellyfin as it is deployed: HTTPS from a private CA, redirects, sign-in proxies, base paths, IPv6.

The real ``jellyfin-watcher`` (``check``, ``refresh``, ``doctor``, ``run``) against the Jellyfin
emulator serving HTTPS with certificates from ``trustme`` (a private CA), and against the small
real servers of :mod:`tests.jellyfin.proxies` in front of it. Each case asserts the exit code,
the one line a user reads, that the key is never called wrong when a proxy or a redirect is in
the way, and that nothing is lost (``removed == []``).

The environment of this machine sets ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``; requests
lets them override a session's ``verify`` (psf/requests issue 3829), so the tests set them to
another CA's bundle on purpose where the configuration must win.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import WatcherProcess, child_env, movie, run_cli, wait_until, write_config

from tests.jellyfin.emulator import JellyfinEmulator, Library
from tests.jellyfin.proxies import (
    AuthProxy,
    Canned,
    ForwardProxy,
    Redirector,
    ReverseProxy,
    SignInProxy,
)
from watcher.config import Secret
from watcher.core import answers
from watcher.core.answers import Answer
from watcher.edges.jellyfin import JellyfinClient, UserLogin
from watcher.errors import (
    JellyfinError,
    KeyRejected,
    ProxyRejected,
    Redirected,
    SetupError,
    TLSFailure,
    UnexpectedAnswer,
)

WAIT = 10.0
"""Deadline, seconds, for anything that is not itself a timing assertion."""

API_KEY = "tls-proxy-key-0123456789abcdef"

NGINX_401_SIGNS = ('it asks for Basic realm="Restricted" (WWW-Authenticate); '
                   'an HTML page "401 Authorization Required"; Server: nginx')
"""How the client describes nginx's ``auth_basic`` answer."""

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                    "http_proxy", "https_proxy", "all_proxy", "no_proxy")


# --- helpers ----------------------------------------------------------------------------------


def proxy_config(tmp_path: Path, url: str, *, roots: list[Path] | None = None, **jellyfin: Any) -> Path:
    """``tmp_path/config.toml`` for ``url``; ``jellyfin``: more keys of ``[jellyfin]``."""
    return write_config(tmp_path / "config.toml", {
        "state_dir": tmp_path / "state",
        "jellyfin": {"url": url, **{key: value if isinstance(value, bool) else str(value) for key, value in jellyfin.items()}},
        "watch": {"quiet_period": 0.5, "max_wait": 30, "probe_timeout": 2, "backoff_max": 1},
        "roots": [{"path": root} for root in roots or []],
    })


def environment(tmp_path: Path, bundle: Path | str | None = "keep", **extra: str) -> dict[str, str]:
    """The child's environment: the key, no proxy variables; ``bundle``: what
    ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` hold (``"keep"``: the machine's, ``None``: unset)."""
    env = child_env(api_key=API_KEY, home=tmp_path / "home")
    for name in _PROXY_VARIABLES:
        env.pop(name, None)
    if bundle is None:
        env.pop("REQUESTS_CA_BUNDLE", None)
        env.pop("CURL_CA_BUNDLE", None)
    elif bundle != "keep":
        env["REQUESTS_CA_BUNDLE"] = env["CURL_CA_BUNDLE"] = str(bundle)
    env.update(extra)
    return env


def server_context(ca: trustme.CA, *names: str, expired: bool = False) -> ssl.SSLContext:
    """A server-side TLS context with a certificate from ``ca`` for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    window: dict[str, datetime.datetime] = {}
    if expired:
        window = {"not_before": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                  "not_after": datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)}
    ca.issue_cert(*names, **window).configure_cert(context)
    return context


def error_line(completed: Any) -> str:
    """The one ``jellyfin-watcher: error:`` line of a one-shot command; fails on a traceback."""
    assert "Traceback" not in completed.stderr, completed.stderr
    [line] = [line for line in completed.stderr.splitlines() if line.startswith("jellyfin-watcher: error: ")]
    return line.removeprefix("jellyfin-watcher: error: ")


def emulator(root: Path, **options: Any) -> JellyfinEmulator:
    return JellyfinEmulator(api_key=API_KEY, libraries=[Library("Movies", [str(root)], realtime_monitor=False)],
                            **options)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def other_bundle(tmp_path: Path) -> Path:
    """A CA bundle that does not hold the private CA: what the environment variables name."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "movies"
    movie(folder, "Seed (2000)")
    return folder


# --- 1. HTTPS from a private CA ------------------------------------------------------------


@pytest.mark.parametrize("environment_bundle", ["unset", "another CA"])
def test_ca_bundle_wins_over_the_environment(tmp_path: Path, ca: trustme.CA, ca_file: Path, other_bundle: Path,
                                             root: Path, environment_bundle: str) -> None:
    env = environment(tmp_path, None if environment_bundle == "unset" else other_bundle)
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1", "localhost")) as jellyfin:
        jellyfin.index()
        assert jellyfin.url.startswith("https://127.0.0.1:")
        config = proxy_config(tmp_path, jellyfin.url, ca_bundle=ca_file)
        check = run_cli("check", "--config", config, env=env)
        assert check.returncode == 0, check
        assert check.stdout.startswith(f"{root}: healthy")
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 0, refresh
        assert "refresh sent: " in refresh.stdout
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        assert jellyfin.wait_for_scans_idle(WAIT)
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_without_ca_bundle_the_environment_still_counts(tmp_path: Path, ca: trustme.CA, ca_file: Path,
                                                        root: Path) -> None:
    # The control for the test above: with no jellyfin.ca_bundle, REQUESTS_CA_BUNDLE decides.
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1")) as jellyfin:
        config = proxy_config(tmp_path, jellyfin.url)
        trusted = run_cli("check", "--config", config, env=environment(tmp_path, ca_file))
        assert trusted.returncode == 0, trusted
        untrusted = run_cli("check", "--config", config, env=environment(tmp_path, None))
        assert untrusted.returncode == 3, untrusted
        assert "is not signed by an authority this machine trusts" in error_line(untrusted)
    assert jellyfin.violations == []


def test_verify_false_works_with_one_warning(tmp_path: Path, ca: trustme.CA, other_bundle: Path, root: Path) -> None:
    with emulator(root, ssl_context=server_context(ca, "jellyfin.example")) as jellyfin:  # wrong host, unknown CA
        jellyfin.index()
        url = jellyfin.url
        config = proxy_config(tmp_path, url, verify=False)
        completed = run_cli("refresh", "--config", config, env=environment(tmp_path, other_bundle))
        assert completed.returncode == 0, completed
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        assert len(jellyfin.requests) >= 3  # the libraries, the guard's items, the refresh: no warning for each
        assert jellyfin.wait_for_scans_idle(WAIT)
    warnings = [line for line in completed.stderr.splitlines() if "WARNING" in line or "Warning" in line]
    assert len(warnings) == 1, completed.stderr
    assert warnings[0].endswith(
        f"WARNING TLS certificate verification is off (jellyfin.verify = false): anyone between this machine and "
        f"{url} can read the API key; prefer jellyfin.ca_bundle")
    assert "InsecureRequestWarning" not in completed.stderr
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_https_proxy_variable_is_honoured(tmp_path: Path, ca: trustme.CA, ca_file: Path, other_bundle: Path,
                                          root: Path) -> None:
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1")) as jellyfin, ForwardProxy() as proxy:
        jellyfin.index()
        config = proxy_config(tmp_path, jellyfin.url, ca_bundle=ca_file)
        destination = jellyfin.url.removeprefix("https://")
        through = run_cli("refresh", "--config", config,
                          env=environment(tmp_path, other_bundle, HTTPS_PROXY=proxy.url))
        assert through.returncode == 0, through
        assert proxy.destinations and set(proxy.destinations) == {destination}
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1

        carried = len(proxy.destinations)
        bypassed = run_cli("refresh", "--config", config,
                           env=environment(tmp_path, other_bundle, HTTPS_PROXY=proxy.url, NO_PROXY="127.0.0.1"))
        assert bypassed.returncode == 0, bypassed
        assert len(proxy.destinations) == carried  # NO_PROXY honoured too
        assert len(jellyfin.wait_for_refreshes(2, WAIT)) == 2
        assert jellyfin.wait_for_scans_idle(WAIT)
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_missing_ca_bundle_file_is_a_configuration_error(tmp_path: Path, root: Path) -> None:
    config = proxy_config(tmp_path, "https://127.0.0.1:8920", ca_bundle=tmp_path / "nowhere.pem")
    completed = run_cli("check", "--config", config, env=environment(tmp_path))
    assert completed.returncode == 2, completed
    assert error_line(completed) == (
        f"jellyfin.ca_bundle: {tmp_path / 'nowhere.pem'} does not exist: give the PEM file of the certificate "
        "authority that signed Jellyfin's certificate")


@pytest.mark.parametrize("given", ["https:// to an HTTP port", "http:// to an HTTPS port"])
def test_the_wrong_scheme_is_named(tmp_path: Path, ca: trustme.CA, root: Path, given: str) -> None:
    context = server_context(ca, "127.0.0.1") if given.startswith("http:") else None
    with emulator(root, ssl_context=context) as jellyfin:
        url = jellyfin.url.replace("https:", "http:") if context else jellyfin.url.replace("http:", "https:")
        completed = run_cli("check", "--config", proxy_config(tmp_path, url), env=environment(tmp_path))
        assert completed.returncode == 3, completed
        if context is None:
            assert re.fullmatch(
                rf"TLS failure talking to {re.escape(url)} \((wrong version number|record layer failure|packet length "
                rf"too long)\): does {re.escape(url)} speak plain HTTP\? then use http://", error_line(completed))
        else:
            assert error_line(completed) == (
                f"the server at {url} closed the connection without answering GET /Library/VirtualFolders: if it "
                "serves HTTPS on this port, use https://; otherwise it may be restarting")
    assert jellyfin.refreshes == []


# --- 2. every case that stops the watcher, with each one-shot command ------------------------


@dataclass
class Case:
    """A deployment problem: the URL the watcher is given, extra configuration, and the
    message (``request`` is ``"GET /System/Info/Public"`` for doctor's first question)."""

    url: str
    jellyfin: JellyfinEmulator
    message: Callable[[str], str]
    settings: dict[str, Any]


def _cases(name: str, stack: contextlib.ExitStack, ca: trustme.CA, ca_file: Path, root: Path) -> Case:
    def tls(context: ssl.SSLContext) -> JellyfinEmulator:
        return stack.enter_context(emulator(root, ssl_context=context))

    if name == "private CA missing":
        jellyfin = tls(server_context(ca, "127.0.0.1"))
        return Case(jellyfin.url, jellyfin, lambda request: (
            f"the TLS certificate of {jellyfin.url} is not signed by an authority this machine trusts (unable to get "
            "local issuer certificate): set jellyfin.ca_bundle to the PEM file of the certificate authority that "
            "signed it, or jellyfin.verify = false to accept any certificate"), {})
    if name == "wrong host":
        jellyfin = tls(server_context(ca, "jellyfin.example"))
        return Case(jellyfin.url, jellyfin, lambda request: (
            f"the TLS certificate of {jellyfin.url} is not valid for 127.0.0.1 (it names other hosts): set "
            "jellyfin.url to a host name the certificate names, or give the server a certificate for 127.0.0.1"),
            {"ca_bundle": ca_file})
    if name == "expired":
        jellyfin = tls(server_context(ca, "127.0.0.1", expired=True))
        return Case(jellyfin.url, jellyfin, lambda request: (
            f"the TLS certificate of {jellyfin.url} has expired: renew it on the server (jellyfin.verify = false "
            "would accept it, and any other certificate too)"), {"ca_bundle": ca_file})
    if name == "301 to https":
        jellyfin = tls(server_context(ca, "127.0.0.1"))
        redirector = stack.enter_context(Redirector(jellyfin.url, 301))
        return Case(redirector.url, jellyfin, lambda request: (
            f"the server at {redirector.url} answers {request} with a redirect (HTTP 301) to "
            f"{jellyfin.url}{request.split()[1]}: set jellyfin.url to {jellyfin.url}; a redirect would drop the "
            "API key"), {"ca_bundle": ca_file})
    if name == "302 to a sign-in page":
        jellyfin = stack.enter_context(emulator(root))
        sso = stack.enter_context(SignInProxy(jellyfin.url, "redirect"))
        return Case(sso.url, jellyfin, lambda request: (
            f"the server at {sso.url} answers {request} with a redirect (HTTP 302) to a sign-in page at "
            f"{sso.url}/login: a single sign-on proxy stands between the watcher and Jellyfin; let the watcher reach "
            "Jellyfin directly (set jellyfin.url to Jellyfin's own address), or exempt Jellyfin's API paths from "
            "sign-in"), {})
    assert name == "proxy 401"
    jellyfin = stack.enter_context(emulator(root))
    proxy = stack.enter_context(AuthProxy(jellyfin.url, 401))
    return Case(proxy.url, jellyfin, lambda request: (
        f"a proxy in front of Jellyfin at {proxy.url} refused {request} (HTTP 401: {NGINX_401_SIGNS}): "
        "Jellyfin never saw the API key, so do not replace it; let the watcher reach Jellyfin directly, or exempt "
        "Jellyfin's API paths from the proxy's sign-in"), {})


CASES = ["private CA missing", "wrong host", "expired", "301 to https", "302 to a sign-in page", "proxy 401"]


@pytest.mark.parametrize("command", ["check", "refresh", "doctor"])
@pytest.mark.parametrize("name", CASES)
def test_each_problem_exits_3_with_its_message(tmp_path: Path, ca: trustme.CA, ca_file: Path, root: Path,
                                               name: str, command: str) -> None:
    with contextlib.ExitStack() as stack:
        case = _cases(name, stack, ca, ca_file, root)
        config = proxy_config(tmp_path, case.url, **case.settings)
        completed = run_cli(command, "--config", config, env=environment(tmp_path))
        assert completed.returncode == 3, completed
        if command == "doctor":
            assert completed.stdout.startswith(f"✗ {case.message('GET /System/Info/Public')}\n"), completed.stdout
            assert "Traceback" not in completed.stderr
        else:  # check and refresh ask for the libraries first
            assert error_line(completed) == case.message("GET /Library/VirtualFolders")
        assert "rejected the API key" not in completed.stdout + completed.stderr
        # Nothing reached Jellyfin with the key (doctor's diagnosis asks without it).
        assert all("Authorization" not in request.headers for request in case.jellyfin.requests)
        assert case.jellyfin.refreshes == [] and case.jellyfin.violations == []


def test_doctor_shows_the_redirect_chain(tmp_path: Path, ca: trustme.CA, ca_file: Path, root: Path) -> None:
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1")) as jellyfin, \
            Redirector(jellyfin.url, 308) as second, Redirector(second.url, 301) as first:
        config = proxy_config(tmp_path, first.url, ca_bundle=ca_file)
        completed = run_cli("doctor", "--config", config, env=environment(tmp_path))
        assert completed.returncode == 3, completed
        assert completed.stdout == (
            f"✗ the server at {first.url} answers GET /System/Info/Public with a redirect (HTTP 301) to "
            f"{second.url}/System/Info/Public: set jellyfin.url to {second.url}; a redirect would drop the API key\n"
            "  redirect chain of GET /System/Info/Public, asked without the API key:\n"
            f"    {first.url}/System/Info/Public → HTTP 301 to {second.url}/System/Info/Public\n"
            f"    {second.url}/System/Info/Public → HTTP 308 to {jellyfin.url}/System/Info/Public\n"
            f"    {jellyfin.url}/System/Info/Public → HTTP 200, JSON: Jellyfin Server 10.11.11\n")
    assert jellyfin.violations == []


def test_doctor_shows_the_sign_in_page_and_the_proxy_answer(tmp_path: Path, root: Path) -> None:
    with emulator(root) as jellyfin, SignInProxy(jellyfin.url, "redirect") as sso, AuthProxy(jellyfin.url) as proxy:
        completed = run_cli("doctor", "--config", proxy_config(tmp_path, sso.url), env=environment(tmp_path))
        assert completed.returncode == 3, completed
        lines = completed.stdout.splitlines()
        login = f"{sso.url}/login?rd={sso.url.replace(':', '%3A').replace('/', '%2F')}%2FSystem%2FInfo%2FPublic"
        assert lines[1:] == [
            "  redirect chain of GET /System/Info/Public, asked without the API key:",
            f"    {sso.url}/System/Info/Public → HTTP 302 to {login}",
            f'    {login} → HTTP 200 (an HTML page "Sign in - Authelia"; Server: nginx)',
        ]
        completed = run_cli("doctor", "--config", proxy_config(tmp_path, proxy.url), env=environment(tmp_path))
        assert completed.returncode == 3, completed
        assert completed.stdout.splitlines()[1:] == [
            "  what answers GET /System/Info/Public, asked without the API key:",
            f"    {proxy.url}/System/Info/Public → HTTP 401 ({NGINX_401_SIGNS})",
        ]
    assert jellyfin.requests == []


# --- 3. other answers from proxies, told apart from Jellyfin's ----------------------------------


def test_sign_in_page_answered_with_200(tmp_path: Path, root: Path) -> None:
    with emulator(root) as jellyfin, SignInProxy(jellyfin.url, "page") as sso:
        completed = run_cli("check", "--config", proxy_config(tmp_path, sso.url), env=environment(tmp_path))
        assert completed.returncode == 3, completed
        assert error_line(completed) == (
            f'the server at {sso.url} answered GET /Library/VirtualFolders with an HTML page ("Sign in - Authelia"), '
            "not JSON: is a login proxy in front of Jellyfin? let the watcher reach Jellyfin directly, or exempt "
            "Jellyfin's API paths from sign-in")
    assert jellyfin.requests == []


@pytest.mark.parametrize(("proxy", "signs"), [
    (lambda upstream: SignInProxy(upstream, "forbidden"),
     'an HTML page "Sign in - Authelia"; Server: nginx'),  # oauth2-proxy's sign-in page
    (lambda upstream: AuthProxy(upstream, 403), 'an HTML page "403 Forbidden"; Server: nginx'),
    (lambda upstream: AuthProxy(upstream, 401, bare=True),
     "GET /System/Info/Public, which Jellyfin answers to anyone, got HTTP 401 too"),
], ids=["sign-in 403", "allow-list 403", "bare 401"])
def test_proxy_refusals_are_not_called_a_rejected_key(tmp_path: Path, root: Path, proxy: Any, signs: str) -> None:
    with emulator(root) as jellyfin, proxy(jellyfin.url) as front:
        completed = run_cli("check", "--config", proxy_config(tmp_path, front.url), env=environment(tmp_path))
        assert completed.returncode == 3, completed
        status = 401 if "401" in signs else 403
        assert error_line(completed) == (
            f"a proxy in front of Jellyfin at {front.url} refused GET /Library/VirtualFolders (HTTP {status}: {signs}): "
            "Jellyfin never saw the API key, so do not replace it; let the watcher reach Jellyfin directly, or exempt "
            "Jellyfin's API paths from the proxy's sign-in")
    assert jellyfin.requests == []


@pytest.mark.parametrize("through", ["directly", "through a reverse proxy"])
def test_jellyfins_own_401_is_a_rejected_key(tmp_path: Path, root: Path, through: str) -> None:
    with emulator(root, base_path="/jellyfin") as jellyfin, \
            ReverseProxy(jellyfin.url.removesuffix("/jellyfin"), "/jellyfin") as proxy:
        url = jellyfin.url if through == "directly" else proxy.url + "/jellyfin"
        env = environment(tmp_path)
        env["JELLYFIN_API_KEY"] = "wrong-key-0123456789abcdef"
        completed = run_cli("check", "--config", proxy_config(tmp_path, url), env=env)
        assert completed.returncode == 3, completed
        assert error_line(completed) == (
            f"Jellyfin at {url} rejected the API key (HTTP 401): make a new key in Dashboard → API Keys and give it "
            "through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file")
        # Told apart by Jellyfin's empty 401 and its public endpoint answering.
        assert [(request.path, request.status) for request in jellyfin.requests] == [
            ("/jellyfin/Library/VirtualFolders", 401), ("/jellyfin/System/Info/Public", 200)]
    assert jellyfin.violations == []


# --- 4. base paths and IPv6 ---------------------------------------------------------------------


def test_base_path_behind_an_https_reverse_proxy(tmp_path: Path, ca: trustme.CA, ca_file: Path, root: Path) -> None:
    with emulator(root, base_path="/jellyfin") as jellyfin, \
            ReverseProxy(jellyfin.url.removesuffix("/jellyfin"), "/jellyfin",
                         ssl_context=server_context(ca, "localhost")) as proxy:
        jellyfin.index()
        url = proxy.url.replace("127.0.0.1", "localhost") + "/jellyfin"
        config = proxy_config(tmp_path, url, ca_bundle=ca_file)
        env = environment(tmp_path)
        check = run_cli("check", "--config", config, env=env)  # the roots come from Jellyfin, through the proxy
        assert check.returncode == 0, check
        assert check.stdout.startswith(f"{root}: healthy")
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 0, refresh
        assert [request.path for request in jellyfin.requests if request.method == "POST"] == ["/jellyfin/Library/Refresh"]
        assert jellyfin.wait_for_scans_idle(WAIT)

        without = proxy_config(tmp_path, url.removesuffix("/jellyfin"), ca_bundle=ca_file)
        missing = run_cli("check", "--config", without, env=env)
        assert missing.returncode == 3, missing
        assert error_line(missing) == (
            "Jellyfin answered HTTP 404 to GET /Library/VirtualFolders: is the URL right, including a reverse-proxy "
            "base path such as https://host/jellyfin?")
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_jellyfins_base_url_redirect_names_the_url(tmp_path: Path, root: Path) -> None:
    # Jellyfin with a Base URL redirects every other path to <base URL>/web/ (a relative Location).
    with emulator(root, base_path="/jellyfin") as jellyfin:
        without = jellyfin.url.removesuffix("/jellyfin")
        for command in ("check", "refresh", "doctor"):
            completed = run_cli(command, "--config", proxy_config(tmp_path, without), env=environment(tmp_path))
            assert completed.returncode == 3, completed
            request = "GET /System/Info/Public" if command == "doctor" else "GET /Library/VirtualFolders"
            message = (
                f"the server at {without} answers {request} with a redirect (HTTP 302) to {without}/jellyfin/web/: "
                f"Jellyfin's Base URL (Dashboard → Networking) is /jellyfin; set jellyfin.url to {jellyfin.url}")
            shown = completed.stdout.splitlines()[0].removeprefix("✗ ") if command == "doctor" else error_line(completed)
            assert shown == message
    assert jellyfin.refreshes == [] and jellyfin.violations == []


def _no_ipv6_loopback() -> str | None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        return f"no IPv6 loopback (::1) here: {error}"
    return None


@pytest.mark.skipif(_no_ipv6_loopback() is not None, reason=str(_no_ipv6_loopback()))
def test_ipv6_url(tmp_path: Path, root: Path) -> None:
    with emulator(root, host="::1") as jellyfin:
        jellyfin.index()
        assert jellyfin.url.startswith("http://[::1]:")
        config = proxy_config(tmp_path, jellyfin.url)
        env = environment(tmp_path)
        check = run_cli("check", "--config", config, env=env)
        assert check.returncode == 0, check
        refresh = run_cli("refresh", "--config", config, env=env)
        assert refresh.returncode == 0, refresh
        assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
        assert jellyfin.wait_for_scans_idle(WAIT)
    assert jellyfin.removed == [] and jellyfin.violations == []


# --- 5. the daemon keeps the batch and retries ------------------------------------------------


def test_daemon_keeps_the_batch_until_the_ca_is_configured(tmp_path: Path, ca: trustme.CA, ca_file: Path,
                                                           other_bundle: Path, root: Path) -> None:
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1")) as jellyfin:
        jellyfin.index()
        config = proxy_config(tmp_path, jellyfin.url, roots=[root])
        with WatcherProcess(["--config", config], environment(tmp_path, other_bundle)) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(root, "New (2024)")
            failed = watcher.wait_for_line(r"is not signed by an authority this machine trusts", WAIT)
            assert re.search(r"; keeping \d+ changes and watching on$", failed), failed
            assert " ERROR " in failed
            proxy_config(tmp_path, jellyfin.url, roots=[root], ca_bundle=ca_file)
            mark = watcher.mark()
            watcher.send_signal(signal.SIGHUP)
            watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            assert watcher.terminate(WAIT) == 0
            assert watcher.lines[-1].endswith("stopped; no changes pending"), watcher.output
        assert watcher.count("is not signed by an authority") == 1  # said once, however many retries
        assert jellyfin.wait_for_scans_idle(WAIT)
    assert len(jellyfin.items) == 2
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_daemon_retries_until_the_proxy_lets_it_through(tmp_path: Path, root: Path) -> None:
    with emulator(root) as jellyfin, AuthProxy(jellyfin.url, 401) as proxy:
        jellyfin.index()
        config = proxy_config(tmp_path, proxy.url, roots=[root])
        with WatcherProcess(["--config", config], environment(tmp_path)) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            movie(root, "New (2024)")
            failed = watcher.wait_for_line(r"a proxy in front of Jellyfin", WAIT)
            assert " ERROR " in failed and re.search(r"keeping \d+ changes", failed), failed
            # It retries (backoff_max = 1 s): the proxy sees the same request again.
            first = proxy.requests[0][1]
            wait_until(lambda: len([path for _, path in proxy.requests if path == first]) >= 3, WAIT)
            assert jellyfin.refreshes == []
            proxy.exempt = True  # the administrator exempts Jellyfin's API paths from sign-in
            watcher.wait_for_line(r"refresh sent: ", WAIT)
            assert len(jellyfin.wait_for_refreshes(1, WAIT)) == 1
            assert watcher.terminate(WAIT) == 0
        assert watcher.count("a proxy in front of Jellyfin") == 1
        assert "rejected the API key" not in watcher.output
        assert jellyfin.wait_for_scans_idle(WAIT)
    assert jellyfin.removed == [] and jellyfin.violations == []


def test_daemon_with_verify_false_warns_once(tmp_path: Path, ca: trustme.CA, root: Path) -> None:
    with emulator(root, ssl_context=server_context(ca, "127.0.0.1")) as jellyfin:
        jellyfin.index()
        config = proxy_config(tmp_path, jellyfin.url, roots=[root], verify=False)
        with WatcherProcess(["--config", config], environment(tmp_path)) as watcher:
            watcher.wait_for_line(r"watching 1 of 1 roots", WAIT)
            for index in range(2):
                mark = watcher.mark()
                movie(root, f"New {index} (2024)")
                watcher.wait_for_line(r"refresh sent: ", WAIT, start=mark)
                assert jellyfin.wait_for_scans_idle(WAIT)
            assert watcher.terminate(WAIT) == 0
        assert watcher.count(r"WARNING TLS certificate verification is off") == 1
        assert watcher.count(r"Warning|WARNING") == 1, watcher.output
        assert len(jellyfin.refreshes) == 2
    assert jellyfin.removed == [] and jellyfin.violations == []


# --- 6. no requests or json exception escapes the client -----------------------------------------

WRONG_FIELDS = b'[{"Name": "Movies", "Locations": "/media", "Key": "x", "Items": 3}]'
_PAGE = b"<!DOCTYPE html><html><head><title>Portal</title></head><body>hi</body></html>"


@pytest.mark.parametrize(("body", "content_type", "expected"), [
    (_PAGE, "text/html", 'an HTML page ("Portal"), not JSON: is a login proxy in front of Jellyfin?'),
    (_PAGE, "application/json", 'an HTML page ("Portal"), not JSON'),  # a mislabelled page
    (b"hello", "text/plain", "with text/plain (5 bytes), not JSON"),
    (b"{not json", "application/json", "with application/json (9 bytes), not JSON"),
    (b"\xff\xfe\x00", "application/json", "with application/json (3 bytes), not JSON"),
    (b"[" * 100_000, "application/json", "not JSON"),
    (b"", "application/json", "with an empty body, not JSON"),
    (b'"a string"', "application/json", "JSON of another shape (a string where"),
    (b"[1, 2]", "application/json", "JSON of another shape"),
    (b"{}", "application/json", "JSON of another shape"),
    (WRONG_FIELDS, "application/json", "JSON of another shape"),
    (b'{"Items": 3, "AccessToken": 7}', "application/json", ""),
], ids=["html", "html as json", "text", "broken json", "bad utf-8", "deep", "empty", "string", "numbers", "object",
        "wrong fields", "wrong items"])
@pytest.mark.parametrize("method", ["public_info", "server_info", "libraries", "scheduled_tasks", "items", "login"])
def test_every_answer_that_is_not_jellyfins_is_a_jellyfin_error(tmp_path: Path, method: str, body: bytes,
                                                                content_type: str, expected: str) -> None:
    with Canned(200, body, content_type) as server:
        credentials: Secret | UserLogin = Secret(API_KEY)
        if method == "login":
            credentials = UserLogin("alice", Secret("pw"), tmp_path / "state")
        client = JellyfinClient(server.url, credentials, timeout=5)
        calls: dict[str, Callable[[], object]] = {
            "public_info": client.public_info, "server_info": client.server_info, "libraries": client.libraries,
            "scheduled_tasks": client.scheduled_tasks, "login": client.login,
            "items": lambda: client.items("0" * 32, 0, 10, ["Movie"]),
        }
        try:
            calls[method]()
        except UnexpectedAnswer as error:
            assert expected in str(error)
            assert str(error).startswith(f"the server at {server.url} answered ")
        else:  # only where the answer fits the endpoint well enough
            assert (method, body) in {
                ("public_info", b"{}"), ("server_info", b"{}"), ("items", b"{}"),
                ("scheduled_tasks", b"[1, 2]"), ("scheduled_tasks", WRONG_FIELDS),
                ("public_info", b'{"Items": 3, "AccessToken": 7}'), ("server_info", b'{"Items": 3, "AccessToken": 7}'),
            }, (method, body)
        finally:
            client.close()


def test_login_answered_by_a_sign_in_page(tmp_path: Path) -> None:
    with SignInProxy("http://127.0.0.1:9", "page") as sso:
        client = JellyfinClient(sso.url, UserLogin("alice", Secret("pw"), tmp_path / "state"), timeout=5)
        with pytest.raises(UnexpectedAnswer, match=re.escape("answered POST /Users/AuthenticateByName with an HTML page")):
            client.libraries()  # logs in first
        client.close()


def test_a_redirected_post_is_not_followed(root: Path) -> None:
    with emulator(root) as jellyfin, Redirector(jellyfin.url, 307) as redirector:
        client = JellyfinClient(redirector.url, Secret(API_KEY), timeout=5)
        with pytest.raises(Redirected) as raised:
            client.refresh_library()
        client.close()
        assert raised.value.location == f"{jellyfin.url}/Library/Refresh"
        assert str(raised.value) == (
            f"the server at {redirector.url} answers POST /Library/Refresh with a redirect (HTTP 307) to "
            f"{jellyfin.url}/Library/Refresh: set jellyfin.url to {jellyfin.url}; a redirect would drop the API key")
    assert jellyfin.requests == [] and redirector.requests == [("POST", "/Library/Refresh")]


def test_errors_are_split_by_what_the_caller_does_next() -> None:
    for kind in (KeyRejected, TLSFailure, Redirected, ProxyRejected, UnexpectedAnswer):
        assert issubclass(kind, JellyfinError)
    assert all(issubclass(kind, SetupError) for kind in (KeyRejected, TLSFailure, Redirected, ProxyRejected,
                                                          UnexpectedAnswer))
    header = Path(sys.modules["watcher.errors"].__file__ or "").read_text(encoding="utf-8").split('"""')[1]
    for kind in ("SetupError", "KeyRejected", "TLSFailure", "Redirected", "ProxyRejected", "UnexpectedAnswer"):
        assert f"── {kind}" in header  # the tree at the top of the module is current


# --- 7. the rules, as a table -------------------------------------------------------------------


@pytest.mark.parametrize(("location", "expected"), [
    ("https://jf.example/System/Info",
     "to https://jf.example/System/Info: set jellyfin.url to https://jf.example; a redirect would drop the API key"),
    ("http://jf.example:8096/System/Info/", "set jellyfin.url to http://jf.example:8096;"),
    ("/jellyfin/System/Info", "set jellyfin.url to http://jf.example/jellyfin;"),
    ("https://auth.example/?rd=http%3A%2F%2Fjf.example%2FSystem%2FInfo",
     "to a sign-in page at https://auth.example/: a single sign-on proxy"),
    ("/outpost.goauthentik.io/start?rd=x", "to a sign-in page at http://jf.example/outpost.goauthentik.io/start:"),
    ("/oauth2/sign_in", "to a sign-in page at http://jf.example/oauth2/sign_in:"),
    ("../jellyfin/web/",
     "Jellyfin's Base URL (Dashboard → Networking) is /jellyfin; set jellyfin.url to http://jf.example/jellyfin"),
    ("http://jf.example/somewhere/else", "to http://jf.example/somewhere/else, which is not Jellyfin's API"),
    (None, "with a redirect (HTTP 302) without a Location"),
])
def test_redirect_messages(location: str | None, expected: str) -> None:
    headers = {"location": location} if location is not None else {}
    answer = Answer("http://jf.example/System/Info", 302, headers)
    message = answers.redirect_message("http://jf.example", "GET /System/Info", "/System/Info", answer)
    assert message.startswith("the server at http://jf.example answers GET /System/Info with a redirect (HTTP 302)")
    assert expected in message


@pytest.mark.parametrize(("code", "verify", "expected"), [
    (20, True, "is not signed by an authority this machine trusts (why): set jellyfin.ca_bundle"),
    (19, "/etc/ca.pem", "is not signed by the certificate authority in jellyfin.ca_bundle (/etc/ca.pem) (why)"),
    (18, True, "or jellyfin.verify = false to accept any certificate"),
    (10, True, "has expired: renew it on the server"),
    (9, True, "is not valid yet: check the clocks"),
    (62, True, "is not valid for jf.example (it names other hosts)"),
    (64, True, "is not valid for jf.example"),
    (None, True, "TLS failure talking to https://jf.example:8920 (why)"),
])
def test_tls_messages(code: int | None, verify: bool | str, expected: str) -> None:
    assert expected in answers.tls_message("https://jf.example:8920/jellyfin", verify, code, "why")


def test_plain_http_port_given_as_https() -> None:
    assert answers.tls_message("https://jf.example:8096", True, None, "wrong version number").endswith(
        ": does https://jf.example:8096 speak plain HTTP? then use http://")


@pytest.mark.parametrize(("status", "headers", "body", "jellyfins"), [
    (401, {}, b"", True),  # CustomAuthenticationHandler: no body, no challenge
    (401, {"content-type": "text/plain"}, b"Error processing request.", True),  # ExceptionMiddleware
    (400, {"content-type": "application/problem+json"}, b'{"title": "x"}', True),
    (401, {"www-authenticate": 'Basic realm="x"'}, b"", False),
    (401, {"www-authenticate": "Bearer"}, b'{"error": "x"}', False),
    (403, {"content-type": "text/html"}, b"<html><title>Forbidden</title></html>", False),
    (403, {}, b"<!DOCTYPE html><html></html>", False),
    (401, {"content-type": "text/plain"}, b"Unauthorized", False),
])
def test_jellyfins_own_refusals_are_told_from_a_proxys(status: int, headers: dict[str, str], body: bytes,
                                                        jellyfins: bool) -> None:
    assert answers.looks_like_jellyfin_error(Answer("http://jf/x", status, headers, body)) is jellyfins


@pytest.mark.parametrize(("body", "title"), [
    (b"<html><head><title>Sign in &amp; go</title></head></html>", "Sign in & go"),
    (b"<TITLE>\n  Login\n  page </TITLE>", "Login page"),
    (b"<html><body>no title</body></html>", None),
    (b"<title>" + b"x" * 200 + b"</title>", "x" * 79 + "…"),
])
def test_page_title(body: bytes, title: str | None) -> None:
    assert answers.page_title(body) == title
