"""What the commands share: exit codes, the Jellyfin client, the roots and their probe.

The one-shot commands probe the roots the way the daemon does: with the mount points
learned while they were healthy (kept in the state directory), so that ``check``, ``doctor``
and ``refresh`` never call healthy a root the daemon calls unmounted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from watcher.config import Config, Root, Secret
from watcher.core.health import Health
from watcher.core.libraries import needs_libraries, resolve_roots
from watcher.core.state import SavedState
from watcher.edges.probe import probe_roots
from watcher.edges.state import StateStore
from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.edges.jellyfin import JellyfinClient, UserLogin

logger = logging.getLogger("watcher")

EXIT_OK = 0
EXIT_UNHEALTHY = 1
"""A root is unhealthy, a refresh was suppressed or refused, something needs attention."""
EXIT_CONFIG = 2
EXIT_SERVER = 3
"""Jellyfin unreachable or the key rejected (``status``: the daemon is not running)."""


def client_for(config: Config, needed_for: str) -> JellyfinClient:
    """A client for the configured server. Raises ConfigError when the URL or the key is
    missing, naming what it is ``needed_for``."""
    from watcher.edges.jellyfin import (  # the HTTP client: not imported by a dry run
        JellyfinClient,
        UserLogin,
    )

    if config.jellyfin.url is None:
        raise ConfigError(f"no Jellyfin URL, needed {needed_for}: give --url, set JELLYFIN_URL or jellyfin.url in the config")
    credentials: Secret | UserLogin
    if config.jellyfin.api_key is not None:
        credentials = config.jellyfin.api_key
    elif config.jellyfin.username is not None and config.jellyfin.password is not None:
        credentials = UserLogin(config.jellyfin.username, config.jellyfin.password, config.state_dir)
    else:
        raise ConfigError(
            f"no API key, needed {needed_for}: make one in Jellyfin's Dashboard → API Keys and give it "
            "through JELLYFIN_API_KEY, --api-key-file or jellyfin.api_key_file (or set jellyfin.username "
            "and jellyfin.password_file)"
        )
    return JellyfinClient(config.jellyfin.url, credentials, config.jellyfin.timeout, verify=config.jellyfin.verify, server=config.jellyfin.server)


def roots_of(config: Config, client: JellyfinClient | None) -> tuple[Root, ...]:
    """The roots, as the daemon resolves them (the warnings it would log are logged).
    Raises ConfigError (nothing to watch) or JellyfinError."""
    libraries = client.libraries() if client is not None and needs_libraries(config, False) else None
    roots, warnings = resolve_roots(config, libraries)
    for message in warnings:
        logger.warning("%s", message)
    return roots


def probe(config: Config, roots: Sequence[Root], saved: SavedState | None = None) -> list[Health]:
    """Probe ``roots`` against the mount points learned while they were healthy; a root
    that is a file is a usage error (ConfigError)."""
    saved = StateStore(config.state_dir).load() if saved is None else saved
    results = probe_roots(roots, saved.expected_mounts(), config.watch.probe_timeout, expected_below=saved.expected_below(),
                          expected_branches=saved.expected_branches())
    for health in results:
        if health.is_file:
            raise ConfigError(f"root {health.root.path} is a file, not a folder: give the library's folder")
    return results


def learn_mounts(config: Config, results: Sequence[Health]) -> None:
    """Remember where the healthy roots live, as the daemon does."""
    store = StateStore(config.state_dir)
    saved = store.load()
    learned = False
    for health in results:
        if health.healthy:
            learned |= health.learn_into(saved)
    if learned:
        store.save(saved)


def forget_mounts(config: Config, roots: Sequence[Root]) -> None:
    """Forget what was learned about ``roots`` (``check --relearn``)."""
    store = StateStore(config.state_dir)
    saved = store.load()
    for root in roots:
        saved.forget(str(root.path))
    store.save(saved)
