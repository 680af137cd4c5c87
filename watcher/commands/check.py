"""``jellyfin-watcher check``: each root's health and, where Jellyfin can be asked, its view of
the root, one line each; ``--predict`` adds the loss guard's verdict per library. Exit 0 when
every root is healthy (and no view or prediction objects), 1 otherwise, 3 when Jellyfin's view
could not be checked."""

from __future__ import annotations

from watcher.commands.common import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    client_for,
    forget_mounts,
    learn_mounts,
    probe,
    roots_of,
)
from watcher.config import Config
from watcher.core.guard import Limits
from watcher.core.health import branch_lines
from watcher.core.serverview import Comparison
from watcher.edges.jellyfin import JellyfinClient
from watcher.edges.predict import predict
from watcher.edges.serverview import check_roots
from watcher.errors import JellyfinError
from watcher.presentation import check_line


def _viewer(config: Config) -> JellyfinClient | None:
    """A client for Jellyfin's view of the roots, when a URL and a credential are configured."""
    configured = config.jellyfin.url is not None and (config.jellyfin.api_key is not None or config.jellyfin.username is not None)
    return client_for(config, "to list the roots") if configured and config.server_view.enabled and not config.dry_run else None


def check(config: Config, predict_removals: bool = False, relearn: bool = False) -> int:
    needs_server = predict_removals or not config.roots
    client = client_for(config, "to read the libraries") if needs_server and not config.dry_run else None
    roots = roots_of(config, client)
    if relearn:
        forget_mounts(config, roots)
    results = probe(config, roots)
    if relearn:
        learn_mounts(config, results)
    views: dict[str, list[Comparison]] = {}
    viewer = client if client is not None else _viewer(config)
    unviewed: JellyfinError | None = None
    if viewer is not None and config.server_view.enabled:
        try:
            for comparison in check_roots(viewer, config, results):
                views.setdefault(comparison.target.root, []).append(comparison)
        except JellyfinError as error:
            unviewed = error
    for health in results:
        shown = views.get(str(health.root.path), [])
        print("; ".join([check_line(health, config), *(comparison.describe() for comparison in shown)]))
        for line in branch_lines(health):
            print(f"  {line}")
    code = EXIT_OK if all(health.healthy for health in results) else EXIT_UNHEALTHY
    if any(comparison.holds for shown in views.values() for comparison in shown):
        code = EXIT_UNHEALTHY
    if unviewed is not None:
        raise JellyfinError(f"Jellyfin's view of the roots not checked: {unviewed}")
    if predict_removals and client is not None:
        for library in client.libraries():
            prediction = predict(client, library, lambda path: str(config.map_path(path)), config.guard.timeout)
            count, share = config.guard.limits_for(library.name)
            verdict = "refused" if prediction.refused(Limits(count, share)) else "ok"
            print(
                f"library {library.name}: {prediction.items} items, "
                f"{'?' if prediction.unresponsive else prediction.missing} with missing files: {verdict}"
                + (f" ({prediction.describe()})" if verdict == "refused" else "")
            )
            if verdict == "refused":
                code = EXIT_UNHEALTHY
    return code
