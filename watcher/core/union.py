"""Union filesystems: which folders (*branches*) a pool is made of, from their own words.

Pure: text in, paths out. Reading the text (an extended attribute, the mount table) is the
edges' job (:mod:`watcher.edges.union`).

* **mergerfs** lists its branches in the extended attribute ``user.mergerfs.branches`` of
  the control file ``<pool>/.mergerfs`` (``/mnt/disk1=RW:/mnt/disk2=NC,100G``: each branch
  with its mode, ``RW``, ``RO`` or ``NC``, and an optional minimum free space), older
  releases in ``user.mergerfs.srcmounts`` (``/mnt/disk1:/mnt/disk2``). Source: mergerfs(1),
  "BRANCHES" and "RUNTIME CONFIG"; a branch may be a glob (``/mnt/disk*``).
* **overlayfs** names its layers in its mount options: ``lowerdir=/l1:/l2`` (``\\:`` is a
  colon inside a path; ``::`` separates data-only layers), ``upperdir=``, and since Linux
  6.8 ``lowerdir+=`` / ``datadir+=`` once per layer. Source: the kernel's
  ``Documentation/filesystems/overlayfs.rst``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MERGERFS = "fuse.mergerfs"
OVERLAY = "overlay"
POOL_KINDS = {MERGERFS: "mergerfs", OVERLAY: "overlayfs"}
"""Filesystem type (mount table) → the name a user knows the pool by."""
MERGERFS_MODES = ("RW", "RO", "NC")
GLOB_CHARACTERS = frozenset("*?[")

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class BranchSpec:
    """One branch as the pool names it: ``path`` (possibly a glob, for mergerfs) and its
    ``mode``: ``RW``/``RO``/``NC`` for mergerfs, ``lower``/``upper`` for overlayfs."""

    path: str
    mode: str

    @property
    def is_glob(self) -> bool:
        return any(character in GLOB_CHARACTERS for character in self.path)


def parse_mergerfs_branches(value: str) -> list[BranchSpec]:
    """Branches from ``user.mergerfs.branches`` or ``user.mergerfs.srcmounts``.

    >>> parse_mergerfs_branches("/mnt/d1=RW:/mnt/d2=NC,100G:/mnt/d*")
    [BranchSpec(path='/mnt/d1', mode='RW'), BranchSpec(path='/mnt/d2', mode='NC'), BranchSpec(path='/mnt/d*', mode='RW')]
    """
    branches = []
    for entry in value.strip().strip("\0").split(":"):
        entry = entry.strip()
        if not entry:
            continue
        path, mode = entry, "RW"
        head, separator, tail = entry.rpartition("=")
        suffix = tail.split(",")[0].upper()
        if separator and head and suffix in MERGERFS_MODES:
            path, mode = head, suffix
        branches.append(BranchSpec(os.path.normpath(path), mode))
    return branches


def parse_overlay_layers(options: str) -> list[BranchSpec]:
    """Lower and upper layers from an overlay mount's options (``lowerdir=…,upperdir=…``).

    >>> parse_overlay_layers("rw,lowerdir=/l1:/l\\\\:2::/data,upperdir=/up,workdir=/work")
    [BranchSpec(path='/l1', mode='lower'), BranchSpec(path='/l:2', mode='lower'), BranchSpec(path='/data', mode='lower'), BranchSpec(path='/up', mode='upper')]
    """
    layers: list[BranchSpec] = []
    for option in options.split(","):
        key, _, value = option.partition("=")
        value = _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), value)
        if key == "lowerdir":
            layers.extend(BranchSpec(path, "lower") for path in _split_layers(value))
        elif key in ("lowerdir+", "datadir+") and value:
            layers.append(BranchSpec(value, "lower"))
        elif key == "upperdir" and value:
            layers.append(BranchSpec(value, "upper"))
    return layers


def _split_layers(value: str) -> list[str]:
    """``/l1:/l\\:2::/data`` → ``["/l1", "/l:2", "/data"]``."""
    parts, current, escaped = [], "", False
    for character in value:
        if escaped:
            current += character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            parts.append(current)
            current = ""
        else:
            current += character
    parts.append(current)
    return [part for part in parts if part]


def translate(path: str, counterpart_folder: str, root: str) -> str:
    """A path under ``counterpart_folder`` (on a branch) as the pool shows it under ``root``.

    >>> translate("/mnt/disk1/movies/New/New.mkv", "/mnt/disk1/movies", "/pool/movies")
    '/pool/movies/New/New.mkv'
    """
    if path == counterpart_folder:
        return root
    prefix = counterpart_folder.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path
    return os.path.join(root, path[len(prefix) :])
