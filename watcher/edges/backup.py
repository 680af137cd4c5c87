"""A Jellyfin backup before a refresh that removes items.

When a removal goes through (confirmed with ``refresh --allow-removals``, or small enough to pass
the loss guard) nothing the watcher does can undo it: Jellyfin deletes the items' images, edited
metadata and chapters. Jellyfin 10.11 and later can write a backup archive first
(``POST /Backup/Create``, ``Jellyfin.Api/Controllers/BackupController.cs``): it answers only once
``jellyfin-backup-yyyyMMddHHmmss.zip`` is written into its backup folder, so the request gets its
own long timeout. Restoring is ``POST /Backup/Restore`` (it restarts the server) or starting
Jellyfin with ``--restore-archive``, on the same or a newer version.

Older servers have no backups (``GET /System/Info/Public`` tells the version): the caller then
refreshes as before, protected by the loss guard alone.
"""

from __future__ import annotations

import logging
import posixpath

from watcher.core.protections import Archive, Protections, parse_version
from watcher.edges.jellyfin import JellyfinClient, http_status
from watcher.errors import RequestRejected

logger = logging.getLogger(__name__)


class BackupUnavailable(Exception):
    """This server cannot make backups (older than 10.11, or Emby); ``str()`` says why."""


def create_backup(client: JellyfinClient, contents: tuple[str, ...], timeout: float, server: str = "jellyfin") -> Archive:
    """Ask Jellyfin for a backup holding ``contents`` and wait for it, at most ``timeout`` seconds.

    Raises BackupUnavailable (no backups on this server) or JellyfinError (the backup failed:
    too little free space, a scan running on 12.0, a timeout).
    """
    if server == "emby":
        raise BackupUnavailable("Emby has no backup endpoint")
    version = str(client.public_info().get("Version") or "")
    parsed = parse_version(version)
    if parsed is not None and not Protections(parsed).backups:
        raise BackupUnavailable(f"Jellyfin {version} has no backups (10.11 or later)")
    try:
        manifest = client.with_timeout(timeout).create_backup(contents)
    except RequestRejected as error:
        if http_status(error) in (404, 405):
            raise BackupUnavailable(f"Jellyfin {version or '?'} has no backup endpoint (HTTP {http_status(error)})") from None
        raise
    path = str(manifest.get("Path") or "")
    options = manifest.get("Options")
    options = options if isinstance(options, dict) else {}
    holds = tuple(name for name in ("database", "metadata", "trickplay", "subtitles") if options.get(name.capitalize()))
    return Archive(posixpath.basename(path) or "?", path, holds or contents, str(manifest.get("ServerVersion") or version))
