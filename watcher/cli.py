"""Command line: ``jellyfin-watcher run | check | refresh [ROOT ...]``.

Exit codes: 0 ok; 1 suppressed or unhealthy; 2 usage or configuration error (one line on
stderr, no traceback); 3 Jellyfin unreachable or the key rejected. Only this module
configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from watcher import __version__
from pythonjsonlogger.json import JsonFormatter

from watcher import status as status_file
from watcher.config import LOG_FORMATS, LOG_LEVELS, Config, Root, default_config_file, load
from watcher.errors import ConfigError, JellyfinError
from watcher.health import Health, probe_roots
from watcher.jellyfin import JellyfinClient
from watcher.service import SCAN_RUNNING_RECHECK, Service
from watcher.notify import Notifier
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
    common.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json, one object per line")

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
    status = commands.add_parser("status", parents=[common], allow_abbrev=False, help="show the running daemon's state; exit 0 healthy, 1 unhealthy or held back, 3 not running")
    status.add_argument("--json", action="store_true", help="print the status file as JSON")
    status.add_argument("--quiet", action="store_true", help="print nothing; exit code only (container health checks)")
    configuration = commands.add_parser("config", parents=[common], allow_abbrev=False, help="show the effective configuration")
    configuration.add_argument("--print", action="store_true", required=True, help="print the effective configuration, API key masked")
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
        config = _load(arguments, environ)
        _configure_logging(config.log_level, config.log_format, environ)
        if arguments.command == "status":
            return _status(config, as_json=arguments.json, quiet=arguments.quiet)
        if arguments.command == "run":
            return _run(config, reload=lambda: _reload(arguments, environ))
        command = {"check": _check, "refresh": _refresh, "config": _print_config}[arguments.command]
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
        "log_format": arguments.log_format,
    }


def _load(arguments: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    config_file = Path(arguments.config) if arguments.config else default_config_file(environ)
    return load(config_file, _flags(arguments), environ)


def _reload(arguments: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Config, JellyfinClient | None]:
    """SIGHUP: the same command line and environment, the configuration file read again."""
    config = _load(arguments, environ)
    return config, None if config.dry_run else _client(config, "to refresh")


def _configure_logging(level: str, log_format: str, environ: Mapping[str, str]) -> None:
    """Log to stderr; no timestamps of our own under systemd (journald stamps each line).

    JSON lines carry ``time`` (omitted under journald), ``level``, ``logger``, ``message``.
    """
    journald = bool(environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        fields = "{levelname}{name}{message}" if journald else "{asctime}{levelname}{name}{message}"
        formatter = JsonFormatter(
            fields,
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    else:
        formatter = logging.Formatter("%(levelname)s %(message)s" if journald else "%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
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


def _run(config: Config, reload: Callable[[], tuple[Config, JellyfinClient | None]] | None = None) -> int:
    client = None if config.dry_run else _client(config, "to refresh")
    if config.roots:
        _probe(config, config.roots)
    elif client is None:
        _resolve_roots(config, client)  # raises: nothing to watch
    if config.dry_run:
        logger.info("dry run: Jellyfin is never contacted")
    holder = {"client": client}

    def reloaded() -> tuple[Config, JellyfinClient | None]:
        assert reload is not None
        new_config, new_client = reload()
        holder["client"] = new_client
        return new_config, new_client

    notifier = Notifier(os.environ)
    service = Service(
        config,
        resolve_roots=lambda current: _resolve_roots(current, holder["client"]),
        client=client,
        store=StateStore(config.state_dir),
        reload=reloaded if reload is not None else None,
        notifier=notifier,
    )

    def stop(signum: int, frame: object) -> None:
        service.request_stop()

    def hangup(signum: int, frame: object) -> None:
        service.request_reload()

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    try:
        service.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        notifier.close()
        if holder["client"] is not None:
            holder["client"].close()
    return EXIT_OK


def _status(config: Config, as_json: bool, quiet: bool) -> int:
    document = status_file.read(config.state_dir)
    if document is None or not status_file.daemon_running(document):
        if not quiet:
            where = config.state_dir / status_file.STATUS_FILE
            if document is None:
                print(f"not running: no status file at {where} (is the daemon using --state-dir {config.state_dir}?)")
            else:
                print(f"not running: pid {document.get('pid')} is gone; status file {where} is stale")
        return EXIT_SERVER
    if as_json and not quiet:
        print(json.dumps(document, indent=1, sort_keys=True))
    elif not quiet:
        print(status_file.render(document))
    return EXIT_UNHEALTHY if status_file.needs_attention(document) else EXIT_OK


def _print_config(config: Config) -> int:
    """The effective configuration as TOML-like lines, the key masked."""
    print(f"# effective configuration ({config.config_file or 'no configuration file'})")
    print(f"state_dir = {json.dumps(str(config.state_dir))}")
    print(f"log_level = {json.dumps(config.log_level)}")
    print(f"log_format = {json.dumps(config.log_format)}")
    print(f"dry_run = {str(config.dry_run).lower()}")
    print("\n[jellyfin]")
    print(f"url = {json.dumps(config.url) if config.url else '# not set'}")
    print(f"api_key = {json.dumps('********') if config.api_key else '# not set'}")
    print(f"timeout = {config.request_timeout:g}")
    print("\n[watch]")
    for name in ("quiet_period", "max_wait", "probe_timeout", "backoff_max", "settle", "health_interval"):
        print(f"{name} = {getattr(config, name):g}")
    print(f"ignore = {json.dumps(list(config.ignore))}")
    for root in config.roots:
        print("\n[[roots]]")
        print(f"path = {json.dumps(str(root.path))}")
        if root.mount is not None:
            print(f"mount = {json.dumps(str(root.mount))}")
    if not config.roots:
        print("\n# roots: every location of every Jellyfin library")
    return EXIT_OK
