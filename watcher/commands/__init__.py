"""One module per command of the command line (``jellyfin-watcher COMMAND``)."""
