"""``jellyfin-watcher doctor [--fix]``: is Jellyfin set up for the watcher?"""

from __future__ import annotations

from watcher.commands.common import client_for
from watcher.config import Config
from watcher.doctor import doctor as run_doctor


def doctor(config: Config, fix: bool) -> int:
    """Run the checks (:mod:`watcher.doctor`); returns the exit code (0, 1 or 3)."""
    return run_doctor(config, client_for(config, "to check Jellyfin"), fix=fix)
