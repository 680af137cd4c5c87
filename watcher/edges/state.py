"""What the watcher remembers across restarts, in ``<state dir>/state.json``.

* the mount point each root was last seen healthy on, so that a watcher restarted while a
  USB disk is away does not learn ``/`` as the disk's mount point;
* for a root on a union filesystem (a mergerfs pool), each branch of the pool: its mount
  point and whether it held files, as last seen healthy, so that a branch whose disk is
  gone is noticed although the pool keeps answering;
* the pending batch (roots and change count), so that changes owed a refresh when the
  process stopped or crashed are refreshed after a restart, through the health gate.

Written atomically (temporary file, fsync, rename, fsync of the folder): a crash leaves the
old file or the new one, never half of one. A corrupt or unreadable file is reported and
replaced, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from watcher.core.state import LearnedBranch, PendingChanges, SavedState

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
FORMAT_VERSION = 1


class StateStore:
    """Reads and writes :class:`SavedState` in ``directory``.

    The directory is created (mode 0700) on the first save. Errors writing are logged once
    per distinct message and otherwise ignored: losing the state file must not stop the
    watcher.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self._last_error = ""

    def load(self) -> SavedState:
        """The saved state; an empty one if there is none or it cannot be used."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return SavedState()
        except (OSError, UnicodeDecodeError) as error:
            logger.error("cannot read the state file %s (%s); starting from an empty state", self.path, error)
            return SavedState()
        try:
            return _decode(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
            logger.error(
                "the state file %s is corrupt (%s); it will be replaced. Remembered mount points are lost: "
                "configure mount = \"...\" for roots on removable disks",
                self.path,
                error,
            )
            return SavedState()

    def save(self, state: SavedState) -> bool:
        """Write ``state`` atomically; False (and an ERROR line) if it could not be written."""
        data = {
            "version": FORMAT_VERSION,
            "mounts": state.mounts,
            "below": state.below,
            "pending": None if state.pending is None else {"roots": state.pending.roots, "changes": state.pending.changes},
        }
        if state.branches:  # only for roots on a pool: the file stays as it was for the others
            data["branches"] = {
                root: {
                    path: {"pool": b.pool, "kind": b.kind, "mode": b.mode, "mount": b.mount, "held_files": b.held_files}
                    for path, b in branches.items()
                }
                for root, branches in state.branches.items()
            }
        try:
            atomic_write_json(self.path, data)
        except OSError as error:
            message = f"cannot write the state file {self.path}: {error.strerror or error}; check --state-dir"
            if message != self._last_error:
                logger.error("%s", message)
                self._last_error = message
            return False
        self._last_error = ""
        return True


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new one.

    Temporary file in the same folder, fsync, rename over ``path``, fsync of the folder
    (creating the folder, mode 0700, if needed). Raises OSError.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _decode(data: Any) -> SavedState:
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"expected a JSON object with version {FORMAT_VERSION}")
    mounts = data.get("mounts") or {}
    if not isinstance(mounts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mounts.items()):
        raise ValueError("mounts: expected an object of strings")
    below = data.get("below") or {}
    if not isinstance(below, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v) for k, v in below.items()
    ):
        raise ValueError("below: expected an object of string lists")
    pending = data.get("pending")
    saved = SavedState(
        mounts=dict(mounts), below={key: list(value) for key, value in below.items()}, branches=_decode_branches(data)
    )
    if pending is not None:
        roots = pending["roots"]
        changes = pending["changes"]
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots) or not isinstance(changes, int):
            raise ValueError("pending: expected roots (list of strings) and changes (number)")
        if changes > 0:
            saved.pending = PendingChanges(roots=list(roots), changes=changes)
    return saved


def _decode_branches(data: dict[str, Any]) -> dict[str, dict[str, LearnedBranch]]:
    branches = data.get("branches") or {}
    if not isinstance(branches, dict):
        raise TypeError("branches: expected an object")
    decoded: dict[str, dict[str, LearnedBranch]] = {}
    for root, entries in branches.items():
        if not isinstance(root, str) or not isinstance(entries, dict):
            raise TypeError("branches: expected an object of objects")
        for path, entry in entries.items():
            if not isinstance(path, str) or not isinstance(entry, dict):
                raise TypeError("branches: expected an object of objects")
            pool, kind, mode, mount = (entry.get(key) for key in ("pool", "kind", "mode", "mount"))
            held = entry.get("held_files")
            if not (isinstance(pool, str) and isinstance(kind, str) and isinstance(mode, str) and isinstance(mount, str)):
                raise TypeError("branches: expected pool, kind, mode and mount as strings")
            if not isinstance(held, bool):
                raise TypeError("branches: expected held_files as true or false")
            decoded.setdefault(root, {})[path] = LearnedBranch(pool, kind, mode, mount, held)
    return decoded
