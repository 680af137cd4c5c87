"""``jellyfin-watcher status``: the running daemon's state, from its status file.

Exit 0 healthy, 1 something unhealthy or held back, 3 the daemon is not running.
"""

from __future__ import annotations

import json

from watcher import presentation
from watcher.commands.common import EXIT_OK, EXIT_SERVER, EXIT_UNHEALTHY
from watcher.config import Config
from watcher.edges import statusfile as status_file


def status(config: Config, as_json: bool, quiet: bool) -> int:
    document = status_file.read(config.state_dir)
    if document is None or not status_file.daemon_running(document):
        code = EXIT_SERVER
    else:
        code = EXIT_UNHEALTHY if presentation.needs_attention(document) else EXIT_OK
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
    print(presentation.render(document))
    return code
