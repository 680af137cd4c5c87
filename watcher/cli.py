"""Command line: ``jellyfin-watcher run | check | refresh [ROOT ...]``.

Exit codes: 0 ok; 1 suppressed or unhealthy; 2 usage or configuration error (one line on
stderr, no traceback); 3 Jellyfin unreachable or the key rejected. Only this module
configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pythonjsonlogger.json import JsonFormatter

from watcher import __version__
from watcher import status as status_file
from watcher.config import (
    DEFAULT_LIBRARY_INTERVAL,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    Root,
    Secret,
    default_config_file,
    load,
)
from watcher.debounce import Batch
from watcher.doctor import doctor as run_doctor
from watcher.errors import ConfigError, JellyfinError
from watcher.guard import Limits, Prediction
from watcher.guard import predict as predict_removals
from watcher.health import Health, State, branch_lines, probe_roots
from watcher.jellyfin import JellyfinClient, Library, UserLogin
from watcher.notify import Notifier
from watcher.scope import plan
from watcher.service import SCAN_RUNNING_RECHECK, Service, send
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
        early = logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL + 1)
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
            return _status(config, as_json=arguments.json, quiet=arguments.quiet)
        if arguments.command == "doctor":
            return run_doctor(config, _client(config, "to check Jellyfin"), fix=arguments.fix)
        if arguments.command == "run":
            return _run(config, reload=lambda: _reload(arguments, environ))
        if arguments.command == "check":
            return _check(config, predict=arguments.predict, relearn=arguments.relearn)
        if arguments.command == "refresh":
            return _refresh(config, allow_removals=arguments.allow_removals)
        return _print_config(config)
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
    client = None if config.dry_run else _client(config, "to refresh")
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
    credentials: Secret | UserLogin
    if config.api_key is not None:
        credentials = config.api_key
    elif config.username is not None and config.password is not None:
        credentials = UserLogin(config.username, config.password, config.state_dir)
    else:
        raise ConfigError(
            f"no API key, needed {needed_for}: make one in Jellyfin's Dashboard → API Keys and give it "
            "through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file (or set jellyfin.username "
            "and jellyfin.password_file)"
        )
    return JellyfinClient(config.url, credentials, config.request_timeout, verify=config.verify, server=config.server)


def _roots_from_jellyfin(config: Config, libraries: Sequence[Library]) -> tuple[Root, ...]:
    """Every location of every library, mapped to local paths."""
    roots: dict[Path, Root] = {}
    for library in libraries:
        for location in library.locations:
            path = config.map_path(location)
            roots.setdefault(path, Root(path, library_id=library.item_id, library_name=library.name))
    if not roots:
        raise ConfigError("Jellyfin has no library folders: add a library in Jellyfin, or give ROOT arguments")
    return tuple(roots.values())


def _with_libraries(config: Config, roots: Sequence[Root], libraries: Sequence[Library]) -> tuple[Root, ...]:
    """Configured roots, each tagged with the library whose (mapped) location holds it or
    lies inside it; a root matching no library, or the folders of several libraries (a
    refresh of one would miss the others' changes), stays untagged (server-wide refreshes)."""
    tagged = []
    for root in roots:
        matches = [
            library
            for library in libraries
            if any(
                root.path == local or root.path.is_relative_to(local) or local.is_relative_to(root.path)
                for local in (config.map_path(location) for location in library.locations)
            )
        ]
        if len({library.item_id for library in matches}) == 1:
            tagged.append(replace(root, library_id=matches[0].item_id, library_name=matches[0].name))
            continue
        if matches:
            names = ", ".join(library.name for library in matches)
            logger.warning(
                "%s holds folders of several Jellyfin libraries (%s): it can only be refreshed with a server-wide scan",
                root.path,
                names,
            )
        else:
            logger.warning("%s is in no Jellyfin library: it can only be refreshed with a server-wide scan", root.path)
        tagged.append(root)
    return tuple(tagged)


def _resolve_roots(config: Config, client: JellyfinClient | None) -> tuple[Root, ...]:
    """The roots: configured ones (tagged with their libraries when the refresh scope needs
    them), else every location of every Jellyfin library."""
    if config.roots:
        if client is None or config.scope == "server":
            return config.roots
        return _with_libraries(config, config.roots, client.libraries())
    if client is None:
        raise ConfigError(
            "no roots to watch: give ROOT arguments or [[roots]] in the config "
            "(in dry-run mode the watcher does not ask Jellyfin for its libraries)"
        )
    return _roots_from_jellyfin(config, client.libraries())


def _probe(config: Config, roots: Sequence[Root]) -> list[Health]:
    """Probe ``roots``; a root that is a file is a usage error."""
    saved = StateStore(config.state_dir).load()
    results = probe_roots(
        roots,
        saved.expected_mounts(),
        config.probe_timeout,
        expected_below=saved.expected_below(),
        expected_branches=saved.expected_branches(),
    )
    for health in results:
        if health.is_file:
            raise ConfigError(f"root {health.root.path} is a file, not a folder: give the library's folder")
    return results


def _check(config: Config, predict: bool = False, relearn: bool = False) -> int:
    needs_server = predict or not config.roots
    client = _client(config, "to read the libraries") if needs_server and not config.dry_run else None
    roots = _resolve_roots(config, client)
    if relearn:
        _forget_mounts(config, roots)
    results = _probe(config, roots)
    if relearn:
        _learn_mounts(config, [health for health in results if health.healthy])
    for health in results:
        print(_check_line(health, config))
        for line in branch_lines(health):
            print(f"  {line}")
    code = EXIT_OK if all(health.healthy for health in results) else EXIT_UNHEALTHY
    if predict and client is not None:
        for prediction in _predictions(config, client, client.libraries()):
            count, share = config.limits_for(prediction.library.name)
            verdict = "refused" if prediction.refused(Limits(count, share)) else "ok"
            print(
                f"library {prediction.library.name}: {prediction.items} items, "
                f"{'?' if prediction.unresponsive else prediction.missing} with missing files: {verdict}"
                + (f" ({prediction.describe()})" if verdict == "refused" else "")
            )
            if verdict == "refused":
                code = EXIT_UNHEALTHY
    return code


def _predictions(config: Config, client: JellyfinClient, libraries: Sequence[Library]) -> list[Prediction]:
    timeout = config.guard_timeout
    return [predict_removals(client, library, lambda path: str(config.map_path(path)), timeout) for library in libraries]


def _forget_mounts(config: Config, roots: Sequence[Root]) -> None:
    store = StateStore(config.state_dir)
    saved = store.load()
    for root in roots:
        saved.forget(str(root.path))
    store.save(saved)


def _check_line(health: Health, config: Config) -> str:
    unmapped = config.jellyfin_path(str(health.root.path)) == str(health.root.path)
    if health.state is State.MISSING and health.root.library_id is not None and unmapped:
        return (
            f"{health.root.path}: missing (no such folder here; if Jellyfin runs in a container, map its path "
            f'to this machine\'s: [[path_map]] jellyfin = "{health.root.path}" local = "/the/same/folder/here")'
        )
    if health.healthy:
        where = f"on {health.mount_point}" if health.mount_point else ""
        if health.fstype:
            where += f" ({health.fstype})"
        return f"{health.root.path}: healthy ({where})" if where else f"{health.root.path}: healthy"
    return f"{health.root.path}: {health.state} ({health.reason})"


def _refresh(config: Config, allow_removals: int = 0) -> int:
    """One-shot: refresh (in the configured scope) if the roots pass the gate and the loss
    guard; ``allow_removals`` lets a confirmed clean-up of up to that many items through."""
    client = None if config.dry_run else _client(config, "to refresh")
    roots = _resolve_roots(config, client)
    results = _probe(config, roots)
    blocked = {str(health.root.path): health for health in results if not health.healthy and health.root.health_gate}
    everything = Batch(frozenset(str(root.path) for root in roots), len(roots), 0.0, 0.0, whole_roots=frozenset(str(root.path) for root in roots))
    requests = plan(everything, {str(root.path): root for root in roots}, config.scope, config.jellyfin_path)
    if blocked and (config.gate == "all" or any(request.kind == "server" for request in requests)):
        for health in blocked.values():
            print(f"refresh suppressed: {health.describe()}")
        return EXIT_UNHEALTHY
    library_of = {str(root.path): root.library_id for root in roots}
    blocked_libraries = {library_of[key] for key in blocked}
    if client is not None and config.guard:
        refused = False
        wanted = {library_of[key] for key in library_of if key not in blocked}
        libraries = [
            library
            for library in client.libraries()
            if config.scope == "server" or None in wanted or library.item_id in wanted
        ]
        for prediction in _predictions(config, client, libraries):
            count, share = config.limits_for(prediction.library.name)
            if prediction.refused(Limits(count, share), allowed=allow_removals):
                print(f"refresh refused: {prediction.describe()}")
                if prediction.hint:
                    print(f"  {prediction.hint}")
                refused = True
            elif prediction.missing and prediction.missing <= allow_removals:
                print(f"removals allowed: {prediction.describe()}")
        if refused:
            return EXIT_UNHEALTHY
    _learn_mounts(config, [health for health in results if health.healthy])
    suppressed = False
    for request in requests:
        if any(library_of[key] in blocked_libraries for key in request.roots):
            reasons = "; ".join(blocked[key].describe() for key in blocked if library_of[key] == request.library_id)
            print(f"refresh suppressed: {request.describe()}: {reasons}")
            suppressed = True
            continue
        if client is None:
            print(f"dry run: would send {request.describe()}")
            continue
        if request.kind == "server" and not _wait_for_scan(config, client):
            return EXIT_UNHEALTHY
        send(client, request)
        print(f"refresh sent: {request.describe()}")
    return EXIT_UNHEALTHY if suppressed else EXIT_OK


def _wait_for_scan(config: Config, client: JellyfinClient) -> bool:
    """Wait (up to max_wait) for a running library scan to end: posting would cancel it."""
    deadline = time.monotonic() + config.max_wait
    while client.library_scan_running():
        if time.monotonic() >= deadline:
            print(f"refresh suppressed: a library scan was still running after {config.max_wait:g} s; not interrupting it")
            return False
        time.sleep(min(SCAN_RUNNING_RECHECK, max(0.0, deadline - time.monotonic())))
    return True


def _learn_mounts(config: Config, results: Sequence[Health]) -> None:
    """Remember where the healthy roots live, as the daemon does."""
    store = StateStore(config.state_dir)
    saved = store.load()
    learned = False
    for health in results:
        learned |= health.learn_into(saved)
    if learned:
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
        code = EXIT_SERVER
    else:
        code = EXIT_UNHEALTHY if status_file.needs_attention(document) else EXIT_OK
    if quiet:
        return code
    if as_json:
        # Scripts get JSON either way: the last known state, marked as not running.
        print(json.dumps({**(document or {}), "running": code != EXIT_SERVER}, indent=1, sort_keys=True))
        return code
    if document is None or code == EXIT_SERVER:
        where = config.state_dir / status_file.STATUS_FILE
        if document is None:
            print(f"not running: no status file at {where} (is the daemon using --state-dir {config.state_dir}?)")
        else:
            print(f"not running: pid {document.get('pid')} is gone; status file {where} is stale")
        return code
    print(status_file.render(document))
    return code


def _print_config(config: Config) -> int:
    """The effective configuration as TOML-like lines, the key masked, each value followed
    by where it was picked up (a flag, an environment variable, the file) unless default."""

    def origin(name: str) -> str:
        return f"  # from {config.sources[name]}" if name in config.sources else ""

    print(f"# effective configuration ({config.config_file or 'no configuration file'})")
    print(f"state_dir = {json.dumps(str(config.state_dir))}{origin('state_dir')}")
    print(f"log_level = {json.dumps(config.log_level)}{origin('log_level')}")
    print(f"log_format = {json.dumps(config.log_format)}{origin('log_format')}")
    print(f"dry_run = {str(config.dry_run).lower()}{origin('dry_run')}")
    print("\n[jellyfin]")
    print(f"url = {json.dumps(config.url) + origin('url') if config.url else '# not set'}")
    print(f"api_key = {json.dumps('********') + origin('api_key') if config.api_key else '# not set'}")
    print(f"timeout = {config.request_timeout:g}")
    # Keys added with the Jellyfin integration, where they differ from their defaults.
    if config.server != "jellyfin":
        print(f"server = {json.dumps(config.server)}")
    if config.username is not None:
        print(f"username = {json.dumps(config.username)}")
        print(f"password = {json.dumps('********')}")
    if isinstance(config.verify, str):
        print(f"ca_bundle = {json.dumps(config.verify)}")
    elif config.verify is False:
        print("verify = false")
    if config.library_interval != DEFAULT_LIBRARY_INTERVAL:
        print(f"library_interval = {config.library_interval:g}")
    print("\n[refresh]")
    print(f"scope = {json.dumps(config.scope)}")
    print(f"gate = {json.dumps(config.gate)}")
    for mapping in config.path_map:
        print("\n[[path_map]]")
        print(f"jellyfin = {json.dumps(mapping.jellyfin)}")
        print(f"local = {json.dumps(mapping.local)}")
    print("\n[watch]")
    for name in ("quiet_period", "max_wait", "probe_timeout", "backoff_max", "settle", "health_interval"):
        print(f"{name} = {getattr(config, name):g}{origin(name)}")
    print(f"ignore = {json.dumps(list(config.ignore))}")
    if config.roots:
        print(f"\n# roots{origin('roots')}")
    for root in config.roots:
        print("\n[[roots]]")
        print(f"path = {json.dumps(str(root.path))}")
        if root.mount is not None:
            print(f"mount = {json.dumps(str(root.mount))}")
    if not config.roots:
        print("\n# roots: every location of every Jellyfin library")
    return EXIT_OK
