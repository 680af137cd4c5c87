"""Command line: ``jellyfin-watcher run | check | refresh [ROOT ...]``.

Exit codes: 0 ok; 1 suppressed or unhealthy; 2 usage or configuration error (one line on
stderr, no traceback); 3 Jellyfin unreachable or the key rejected. Only this module
configures logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from watcher import __version__
from watcher.config import LOG_LEVELS, Config, Root, default_config_file, load
from watcher.errors import ConfigError, JellyfinError
from watcher.health import Health, probe_roots
from watcher.jellyfin import JellyfinClient
from watcher.service import SCAN_RUNNING_RECHECK, Service
from watcher.state import StateStore

logger = logging.getLogger("watcher")

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2
EXIT_SERVER = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("roots", nargs="*", metavar="ROOT", help="library folders to watch (default: every location of every Jellyfin library)")
    common.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $JELLYFIN_WATCHER_CONFIG, ~/.config/jellyfin-watcher/config.toml or /etc/jellyfin-watcher/config.toml if present)")
    common.add_argument("--url", help="Jellyfin's URL, e.g. http://localhost:8096 (env JELLYFIN_URL)")
    common.add_argument("--api-key-file", metavar="FILE", help="file holding the API key (or env JELLYFIN_API_KEY; never on the command line)")
    common.add_argument("--api-key", dest="api_key_on_command_line", metavar="KEY", help=argparse.SUPPRESS)
    common.add_argument("--quiet-period", type=str, metavar="SECONDS", help="refresh after this long without changes (default 30)")
    common.add_argument("--max-wait", type=str, metavar="SECONDS", help="refresh at the latest this long after the first change (default 600)")
    common.add_argument("--probe-timeout", type=str, metavar="SECONDS", help="a root that does not answer within this long is unresponsive (default 5)")
    common.add_argument("--state-dir", metavar="DIR", help="where state is kept (default: per-user state dir; /var/lib/jellyfin-watcher for root)")
    common.add_argument("--dry-run", action="store_true", default=None, help="never contact Jellyfin; log the refresh that would be sent")
    common.add_argument("--log-level", choices=LOG_LEVELS, help="default info")

    parser = _Parser(
        prog="jellyfin-watcher",
        description="Refresh Jellyfin's library when files change, and never while a library folder's storage is missing.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--api-key", dest="api_key_before_command", metavar="KEY", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("run", parents=[common], allow_abbrev=False, help="watch the roots and refresh Jellyfin when they change (the daemon)")
    commands.add_parser("check", parents=[common], allow_abbrev=False, help="print each root's health; exit 0 if all are healthy, 1 if not")
    commands.add_parser("refresh", parents=[common], allow_abbrev=False, help="refresh once if every root is healthy (for cron); exit 0 refreshed, 1 suppressed")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    environ = os.environ if environ is None else environ
    try:
        try:
            arguments = _parser().parse_args(argv)
        except SystemExit as exit:  # --help and --version
            return exit.code if isinstance(exit.code, int) else EXIT_OK
        if arguments.api_key_on_command_line is not None or arguments.api_key_before_command is not None:
            raise ConfigError(
                "--api-key is not accepted: a key on the command line shows in ps and shell history; "
                "use JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file"
            )
        config_file = Path(arguments.config) if arguments.config else default_config_file(environ)
        config = load(config_file, _flags(arguments), environ)
        _configure_logging(config.log_level, environ)
        command = {"run": _run, "check": _check, "refresh": _refresh}[arguments.command]
        return command(config)
    except ConfigError as error:
        _print_error(error)
        return EXIT_CONFIG
    except JellyfinError as error:
        _print_error(error)
        return EXIT_SERVER
    except KeyboardInterrupt:
        return 130


def _print_error(error: Exception) -> None:
    """One line on stderr, whatever the message holds (a path may contain a newline)."""
    line = " ".join(str(error).splitlines())
    print(f"jellyfin-watcher: error: {line}", file=sys.stderr)


def _flags(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "url": arguments.url,
        "api_key_file": arguments.api_key_file,
        "roots": arguments.roots,
        "quiet_period": arguments.quiet_period,
        "max_wait": arguments.max_wait,
        "probe_timeout": arguments.probe_timeout,
        "state_dir": arguments.state_dir,
        "dry_run": arguments.dry_run,
        "log_level": arguments.log_level,
    }


def _configure_logging(level: str, environ: Mapping[str, str]) -> None:
    # journald stamps every line itself.
    fmt = "%(levelname)s %(message)s" if environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # urllib3 logs each of its quick retries (jellyfin.TRANSIENT_RETRY) as a WARNING with its
    # internals; the failure that matters is reported once, by us, when the retries run out.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _client(config: Config, needed_for: str) -> JellyfinClient:
    if config.url is None:
        raise ConfigError(f"no Jellyfin URL, needed {needed_for}: give --url, set JELLYFIN_URL or jellyfin.url in the config")
    if config.api_key is None:
        raise ConfigError(
            f"no API key, needed {needed_for}: make one in Jellyfin's Dashboard → API Keys and give it "
            "through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file"
        )
    return JellyfinClient(config.url, config.api_key, config.request_timeout)


def _roots_from_jellyfin(config: Config, client: JellyfinClient) -> tuple[Root, ...]:
    """Every location of every library, mapped to local paths."""
    roots: dict[Path, Root] = {}
    for library in client.libraries():
        for location in library.locations:
            path = config.map_path(location)
            roots.setdefault(path, Root(path))
    if not roots:
        raise ConfigError("Jellyfin has no library folders: add a library in Jellyfin, or give ROOT arguments")
    return tuple(roots.values())


def _resolve_roots(config: Config, client: JellyfinClient | None) -> tuple[Root, ...]:
    if config.roots:
        return config.roots
    if client is None:
        raise ConfigError(
            "no roots to watch: give ROOT arguments or [[roots]] in the config "
            "(in dry-run mode the watcher does not ask Jellyfin for its libraries)"
        )
    return _roots_from_jellyfin(config, client)


def _probe(config: Config, roots: Sequence[Root]) -> list[Health]:
    """Probe ``roots``; a root that is a file is a usage error."""
    saved = StateStore(config.state_dir).load()
    expected = {Path(path): Path(mount) for path, mount in saved.mounts.items()}
    results = probe_roots(roots, expected, config.probe_timeout)
    for health in results:
        if health.is_file:
            raise ConfigError(f"root {health.root.path} is a file, not a folder: give the library's folder")
    return results


def _check(config: Config) -> int:
    client = None if config.roots or config.dry_run else _client(config, "to read the libraries")
    roots = _resolve_roots(config, client)
    results = _probe(config, roots)
    for health in results:
        print(_check_line(health))
    return EXIT_OK if all(health.healthy for health in results) else EXIT_UNHEALTHY


def _check_line(health: Health) -> str:
    if health.healthy:
        where = f"on {health.mount_point}" if health.mount_point else ""
        if health.fstype:
            where += f" ({health.fstype})"
        return f"{health.root.path}: healthy ({where})" if where else f"{health.root.path}: healthy"
    return f"{health.root.path}: {health.state} ({health.reason})"


def _refresh(config: Config) -> int:
    client = None if config.dry_run else _client(config, "to refresh")
    roots = _resolve_roots(config, client)
    results = _probe(config, roots)
    unhealthy = [health for health in results if not health.healthy]
    if unhealthy:
        for health in unhealthy:
            print(f"refresh suppressed: {health.describe()}")
        return EXIT_UNHEALTHY
    _learn_mounts(config, results)
    if client is None:
        print("dry run: would send POST /Library/Refresh")
        return EXIT_OK
    deadline = time.monotonic() + config.max_wait
    while client.library_scan_running():
        if time.monotonic() >= deadline:
            print(f"refresh suppressed: a library scan was still running after {config.max_wait:g} s; not interrupting it")
            return EXIT_UNHEALTHY
        time.sleep(min(SCAN_RUNNING_RECHECK, max(0.0, deadline - time.monotonic())))
    client.refresh_library()
    print(f"refresh sent: POST {config.url}/Library/Refresh")
    return EXIT_OK


def _learn_mounts(config: Config, results: Sequence[Health]) -> None:
    store = StateStore(config.state_dir)
    saved = store.load()
    learned = {
        str(health.root.path): str(health.mount_point)
        for health in results
        if health.root.mount is None and health.mount_point is not None and str(health.root.path) not in saved.mounts
    }
    if learned:
        saved.mounts.update(learned)
        store.save(saved)


def _run(config: Config) -> int:
    client = None if config.dry_run else _client(config, "to refresh")
    if config.roots:
        _probe(config, config.roots)
    elif client is None:
        _resolve_roots(config, client)  # raises: nothing to watch
    if config.dry_run:
        logger.info("dry run: Jellyfin is never contacted")
    service = Service(
        config,
        resolve_roots=lambda: _resolve_roots(config, client),
        client=client,
        store=StateStore(config.state_dir),
    )

    def stop(signum: int, frame: object) -> None:
        service.request_stop()

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if client is not None:
            client.close()
    return EXIT_OK
