"""``jellyfin-watcher run``: the daemon.

One daemon per state directory: two would both refresh, and each overwrite the other's
saved batch. The daemon holds an advisory lock on ``<state dir>/daemon.lock`` (flock(2)),
which the kernel releases when the process ends, however it ends; a second ``run`` with the
same state directory exits 2 naming the running one's pid. ``check``, ``status`` and a
one-shot ``refresh`` do not take the lock and keep working beside a running daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.commands.common import EXIT_OK, client_for, probe
from watcher.config import Config
from watcher.core.health import Health
from watcher.edges.sdnotify import Notifier
from watcher.edges.state import StateStore
from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.edges.jellyfin import JellyfinClient

logger = logging.getLogger("watcher")

LOCK_FILE = "daemon.lock"

Reloader = Callable[[], tuple[Config, "JellyfinClient | None"]]


def run(config: Config, reload: Reloader | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT (SIGHUP: ``reload``). Returns the exit code;
    raises ConfigError for a configuration that cannot work (exit 2)."""
    client = None if config.dry_run else client_for(config, "to refresh")
    # The daemon's modules load while the roots are probed (the probe mostly waits for its
    # child process): the first watch comes that much sooner.
    loading = threading.Thread(target=import_module, args=("watcher.service",), name="import", daemon=True)
    loading.start()
    first_probe: list[Health] = []
    try:
        if config.roots:
            first_probe = probe(config, config.roots)  # a root that is a file is a usage error, at once
        elif client is None:
            raise ConfigError(
                "no roots to watch: give ROOT arguments or [[roots]] in the config "
                "(in dry-run mode the watcher does not ask Jellyfin for its libraries)"
            )
    finally:
        loading.join()
    # Loaded by now (or this raises what loading raised).
    from watcher.service import Service

    with single_daemon(config.state_dir):
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
            client=client,
            store=StateStore(config.state_dir),
            reload=reloaded if reload is not None else None,
            notifier=notifier,
            first_probe=first_probe,
        )

        def stop(signum: int, frame: object) -> None:
            service.request_stop()

        def hangup(signum: int, frame: object) -> None:
            service.request_reload()

        previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
        gc.freeze()  # the start-up's objects: later collections need not look at them
        gc.enable()
        try:
            service.run()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            notifier.close()
            if holder["client"] is not None:
                holder["client"].close()
    return EXIT_OK


@contextlib.contextmanager
def single_daemon(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's daemon lock. Raises ConfigError naming the daemon that
    holds it, or why it cannot be taken."""
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise ConfigError(
            f"cannot use the state directory {state_dir}: {error.strerror or error}; give a writable one with --state-dir"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"cannot lock {path}: {error.strerror or error}") from None
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(
                f"another jellyfin-watcher daemon (pid {holder}) is running with the state directory {state_dir}: "
                "stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
