"""``jellyfin-watcher check``: each root's health, one line each; ``--predict`` adds the loss
guard's verdict per library. Exit 0 when every root is healthy (and no prediction refused),
1 otherwise."""

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
from watcher.guard import Limits, predict
from watcher.presentation import check_line


def check(config: Config, predict_removals: bool = False, relearn: bool = False) -> int:
    needs_server = predict_removals or not config.roots
    client = client_for(config, "to read the libraries") if needs_server and not config.dry_run else None
    roots = roots_of(config, client)
    if relearn:
        forget_mounts(config, roots)
    results = probe(config, roots)
    if relearn:
        learn_mounts(config, results)
    for health in results:
        print(check_line(health, config))
    code = EXIT_OK if all(health.healthy for health in results) else EXIT_UNHEALTHY
    if predict_removals and client is not None:
        for library in client.libraries():
            prediction = predict(client, library, lambda path: str(config.map_path(path)), config.guard_timeout)
            count, share = config.limits_for(library.name)
            verdict = "refused" if prediction.refused(Limits(count, share)) else "ok"
            print(
                f"library {library.name}: {prediction.items} items, "
                f"{'?' if prediction.unresponsive else prediction.missing} with missing files: {verdict}"
                + (f" ({prediction.describe()})" if verdict == "refused" else "")
            )
            if verdict == "refused":
                code = EXIT_UNHEALTHY
    return code
