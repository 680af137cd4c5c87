"""Command line: ``jellyfin-watcher run | check | refresh | status | doctor | config``.

This module parses the arguments, loads the configuration, configures logging (the only
place that does) and hands over to the command's module in :mod:`watcher.commands`.
Exit codes: 0 ok; 1 suppressed or unhealthy; 2 usage or configuration error (one line on
stderr, no traceback); 3 Jellyfin unreachable or the key rejected.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from watcher import __version__
from watcher.commands.common import EXIT_CONFIG, EXIT_OK, EXIT_SERVER
from watcher.config import Config, LogFormat, LogLevel, default_config_file, load
from watcher.errors import ConfigError, JellyfinError

if TYPE_CHECKING:
    from watcher.edges.jellyfin import JellyfinClient

# Each command's module is imported when that command runs, and the HTTP client when a
# client is made (never in a dry run): the daemon's start-up, and so the time to its first
# watch, pays for neither the other commands nor what its first watch does not need.

logger = logging.getLogger("watcher")

class _Held(logging.Handler):
    """Keeps the records logged before logging is configured (a MemoryHandler without
    ``logging.handlers``, which the daemon does not need otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.buffer) < 1000:
            self.buffer.append(record)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False, allow_abbrev=False)
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
    common.add_argument("--log-level", choices=[level.value for level in LogLevel], help="default info")
    common.add_argument("--log-format", choices=[kind.value for kind in LogFormat], help="text (default) or json, one object per line")

    parser = _Parser(
        prog="jellyfin-watcher",
        description="Refresh Jellyfin's library when files change, and never while a library folder's storage is missing.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--api-key", dest="api_key_before_command", metavar="KEY", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("run", parents=[common], allow_abbrev=False, help="watch the roots and refresh Jellyfin when they change (the daemon)")
    check = commands.add_parser("check", parents=[common], allow_abbrev=False, help="print each root's health; exit 0 if all are healthy, 1 if not")
    check.add_argument("--predict", action="store_true", help="also ask Jellyfin which items a scan would remove, per library")
    check.add_argument("--relearn", action="store_true", help="forget the mount points learned for these roots and learn them anew (after removing a disk on purpose)")
    refresh = commands.add_parser("refresh", parents=[common], allow_abbrev=False, help="refresh once if every root is healthy (for cron); exit 0 refreshed, 1 suppressed")
    refresh.add_argument("--allow-removals", type=int, default=0, metavar="N", help="confirm a deliberate clean-up: let the loss guard pass up to N removed items, this once")
    status = commands.add_parser("status", parents=[common], allow_abbrev=False, help="show the running daemon's state; exit 0 healthy, 1 unhealthy or held back, 3 not running")
    status.add_argument("--json", action="store_true", help="print the status file as JSON")
    status.add_argument("--quiet", action="store_true", help="print nothing; exit code only (container health checks)")
    doctor = commands.add_parser("doctor", parents=[common], allow_abbrev=False, help="check Jellyfin's setup for the watcher; exit 0 good, 1 warnings, 3 unreachable")
    doctor.add_argument("--fix", action="store_true", help="turn Jellyfin's own real-time monitor and scheduled scan off, printing each change")
    configuration = commands.add_parser("config", parents=[common], allow_abbrev=False, help="show the effective configuration")
    configuration.add_argument("--print", action="store_true", required=True, help="print the effective configuration, API key masked")
    notify = commands.add_parser("notify", parents=[common], allow_abbrev=False, help="send a test notification to every notify URL; exit 0 all delivered, 1 not")
    notify.add_argument("--test", action="store_true", required=True, help="send a test message to every URL and print each result")
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
        # Loading may log (a key file readable by others): hold those records until logging
        # is set up in the configured format, instead of logging's bare last-resort output.
        early = _Held()
        logging.getLogger().addHandler(early)
        try:
            config = _load(arguments, environ)
        finally:
            logging.getLogger().removeHandler(early)
        _configure_logging(config.log_level, config.log_format, environ)
        for record in early.buffer:
            if logging.getLogger(record.name).isEnabledFor(record.levelno):
                logging.getLogger(record.name).handle(record)
        if arguments.command == "status":
            from watcher.commands.status import status

            return status(config, as_json=arguments.json, quiet=arguments.quiet)
        if arguments.command == "doctor":
            from watcher.commands.doctor import doctor

            return doctor(config, fix=arguments.fix)
        if arguments.command == "run":
            # The daemon's start-up makes many objects that live as long as it does and no
            # garbage: the cyclic collector is off until its loop begins (run() turns it on
            # again, with those objects frozen out of its later passes).
            gc.disable()
            try:
                from watcher.commands.run import run

                return run(config, reload=lambda: _reload(arguments, environ))
            finally:
                gc.enable()
        if arguments.command == "check":
            from watcher.commands.check import check

            return check(config, predict_removals=arguments.predict, relearn=arguments.relearn)
        if arguments.command == "refresh":
            from watcher.commands.refresh import refresh

            return refresh(config, allow_removals=arguments.allow_removals)
        if arguments.command == "notify":
            from watcher.commands.notify import run as notify_test

            return notify_test(config)
        from watcher.commands.config_print import print_config

        return print_config(config)
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
    from watcher.commands.common import client_for

    config = _load(arguments, environ)
    client = None if config.dry_run else client_for(config, "to refresh")
    _configure_logging(config.log_level, config.log_format, environ)
    return config, client


def _configure_logging(level: str, log_format: str, environ: Mapping[str, str]) -> None:
    """Log to stderr; no timestamps of our own under systemd (journald stamps each line).

    JSON lines carry ``time`` (omitted under journald), ``level``, ``logger``, ``message``.
    """
    journald = bool(environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

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
