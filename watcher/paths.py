"""Path containment on strings, without touching the filesystem.

Roots may sit on hung mounts, so nothing here resolves, stats or lists a path: paths are
compared as the strings they are (absolute, normalised by whoever built them).
"""

from __future__ import annotations


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it.

    A trailing slash on either side is ignored; ``/`` contains every absolute path.

    >>> within("/media/movies/A/a.mkv", "/media/movies"), within("/media/movies2", "/media/movies")
    (True, False)
    """
    path = path.rstrip("/") or "/"
    folder = folder.rstrip("/") or "/"
    return folder == "/" or path == folder or path.startswith(folder + "/")
