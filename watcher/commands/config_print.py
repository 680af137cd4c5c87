"""``jellyfin-watcher config --print``: the effective configuration, secrets masked.

Generated from the configuration's schema (:func:`watcher.config.print_lines`): every setting
of every table, with where each value that is not a default came from.
"""

from __future__ import annotations

from watcher.commands.common import EXIT_OK
from watcher.config import Config, print_lines


def print_config(config: Config) -> int:
    for line in print_lines(config):
        print(line)
    return EXIT_OK
