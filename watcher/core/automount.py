"""Automounts: which mount points autofs (or a systemd ``.automount`` unit) stands behind.

Pure: the mount table in, answers out. The kernel's autofs filesystem holds the place of a
share until something looks it up, then the automount daemon (Debian's ``automount``,
systemd for ``x-systemd.automount`` in fstab) mounts the share on top:

* a *direct* automount (``/-`` maps, systemd automount units) is an ``autofs`` mount on the
  mount point itself, options ``direct`` (or ``offset`` inside a multi-mount); the share is
  stacked on it;
* an *indirect* map (``/auto file:/etc/auto.nas``) is one ``autofs`` mount on the map's
  folder (option ``indirect``); each key (``/auto/movies``) is mounted below it on lookup.

Sources: autofs(5), auto.master(5), systemd.automount(5), and the kernel's
``Documentation/filesystems/autofs.rst`` (a mount in use is never expired).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

AUTOFS = "autofs"


def autofs_mounts(entries: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """Mount point → ``direct``, ``indirect`` or ``offset`` for every autofs mount in
    ``entries`` (mount point, filesystem type, options), stacked ones included."""
    found = {}
    for mount_point, fstype, options in entries:
        if fstype != AUTOFS:
            continue
        words = options.split(",")
        kind = next((word for word in ("indirect", "direct", "offset") if word in words), "direct")
        found[mount_point] = kind
    return found


def automount_of(mount_point: str, autofs: Mapping[str, str]) -> str | None:
    """The automount that ``mount_point`` is (or would be) mounted by, if any: the mount
    point itself for a direct automount, else the key below an indirect map's folder
    (``/auto/movies`` for ``/auto/movies``, also when nothing is mounted there yet).

    >>> automount_of("/auto/movies", {"/auto": "indirect"})
    '/auto/movies'
    >>> automount_of("/mnt/nas", {"/mnt/nas": "direct"}), automount_of("/mnt/usb", {})
    ('/mnt/nas', None)
    """
    if mount_point in autofs and autofs[mount_point] != "indirect":
        return mount_point
    parent = os.path.dirname(mount_point.rstrip("/")) or "/"
    if autofs.get(parent) == "indirect" and mount_point != parent:
        return mount_point
    return None


def unmounted_automount(real_path: str, mount_point: str, top_fstype: str, autofs: Mapping[str, str]) -> str | None:
    """The automount a path is waiting on, when it did not mount: ``real_path`` lives on
    ``mount_point`` whose top filesystem is ``top_fstype``; if that is autofs itself, the
    share that belongs there is not mounted (it failed to, or has just expired). None when
    the path is on a real filesystem, or *is* an indirect map's folder (its entries are the
    map's keys).

    >>> unmounted_automount("/auto/broken/movies", "/auto", "autofs", {"/auto": "indirect"})
    '/auto/broken'
    >>> unmounted_automount("/mnt/nas/movies", "/mnt/nas", "autofs", {"/mnt/nas": "direct"})
    '/mnt/nas'
    >>> unmounted_automount("/auto", "/auto", "autofs", {"/auto": "indirect"}) is None
    True
    """
    if top_fstype != AUTOFS:
        return None
    if autofs.get(mount_point) == "indirect":
        if real_path == mount_point:
            return None
        key = real_path[len(mount_point.rstrip("/")) + 1 :].split("/")[0]
        return os.path.join(mount_point, key)
    return mount_point
