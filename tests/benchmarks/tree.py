"""Build the trees the benchmarks watch: a media library of folders and empty files.

The layout is a library's: ``root/dNNN/eNNN/`` (top folders, each with sub-folders), the
files spread evenly over the sub-folders as ``fNNNNNN.mkv``. Files are empty: what costs a
watcher is the number of folders (one inotify watch each) and of entries, not their size.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tree:
    root: Path
    folders: list[str]
    """Every folder below the root that holds files (the leaves), as absolute paths."""
    directories: int
    """Folders under the root, the root itself included."""
    files: int


def build(root: Path, directories: int, files: int) -> Tree:
    """A tree of ``directories`` folders (root included) and ``files`` empty files under
    ``root``, which must not exist yet. Returns what was built."""
    root.mkdir(parents=True)
    below = max(1, directories - 1)
    # t top folders with s sub-folders each: t + t*s = below, t ≈ sqrt(below)
    top = max(1, round(math.sqrt(below)))
    subs = max(0, (below - top) // top)
    extra = below - top - top * subs  # spread over the first top folders
    leaves: list[str] = []
    made = 1
    for t in range(top):
        top_folder = os.path.join(root, f"d{t:04d}")
        os.mkdir(top_folder)
        made += 1
        count = subs + (1 if t < extra else 0)
        if count == 0:
            leaves.append(top_folder)
        for s in range(count):
            leaf = os.path.join(top_folder, f"e{s:04d}")
            os.mkdir(leaf)
            made += 1
            leaves.append(leaf)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for index in range(files):
        os.close(os.open(os.path.join(leaves[index % len(leaves)], f"f{index:07d}.mkv"), flags, 0o644))
    return Tree(root, leaves, made, files)


def storm(folders: list[str], count: int, tag: str) -> float:
    """Create ``count`` empty files round-robin over ``folders`` as fast as possible (each
    an IN_CREATE and an IN_CLOSE_WRITE); returns the seconds it took."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    started = time.monotonic()
    number = len(folders)
    for index in range(count):
        os.close(os.open(os.path.join(folders[index % number], f"storm-{tag}-{index:07d}.mkv"), flags, 0o644))
    return time.monotonic() - started
