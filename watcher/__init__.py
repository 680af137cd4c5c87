"""jellyfin-watcher: refresh a Jellyfin library when files change, never while storage is missing."""

__version__ = "0.1.0"
