"""``python -m watcher``: the same as the ``jellyfin-watcher`` command."""

import sys

from watcher.cli import main

sys.exit(main())
