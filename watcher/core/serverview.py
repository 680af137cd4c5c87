"""Jellyfin's view of the storage against this machine's: one verdict per folder. Pure.

Every local check sees storage from the watcher's side. Jellyfin often sees it from somewhere
else: its own container, where a disk the host mounted after the container started stays an
empty folder unless the volume has ``rslave`` propagation (mount_namespaces(7), "shared
subtrees"; Docker's ``bind-propagation`` option), or another host that mounts the NAS itself. A refresh can then pass every local check and still make Jellyfin scan empty folders.
So before a refresh, each root and each mount point below it is listed on both sides — here in
a child process, in Jellyfin through ``GET /Environment/DirectoryContents`` (Jellyfin.Api
``EnvironmentController.GetDirectoryContents``: 404 for a folder it cannot find) — and compared
by entry name:

* Jellyfin sees no folder, or an empty one, where this machine has entries: held;
* Jellyfin lacks entries this machine has, beyond changes in flight: held (a scan would remove
  their items). Entries Jellyfin has and this machine lacks remove nothing and are let through,
  unless the two folders have no entry in common at all (a wrong ``[[path_map]]``);
* Jellyfin did not answer in time (stuck on a hung mount itself), or this machine's listing did
  not (a hung share mounted below a root, which the mount table still lists): held as unresponsive.

"In flight" means an entry modified here within ``in_flight`` seconds (the listing child reports
those; a copy that keeps an old modification time is not in flight and may hold the refresh until
Jellyfin's view catches up, which only delays it) or one on the way to a folder the pending batch
changed. Ignored names (hidden files, NAS litter, the watcher's ignore list) are left out on both
sides.

Nothing here reads the clock, touches the filesystem or the network, or logs.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

EXAMPLES = 3
"""Entry names quoted in a reason."""


class Kind(enum.StrEnum):
    """What one side's listing of a folder gave."""

    LISTED = "listed"
    MISSING = "missing"
    """No such folder (Jellyfin: HTTP 404, DirectoryNotFoundException)."""
    UNRESPONSIVE = "unresponsive"
    """No answer within the deadline."""
    FAILED = "failed"
    """The listing failed otherwise (an I/O error; Jellyfin: HTTP 500)."""
    NOT_ASKED = "not asked"
    """Skipped: an earlier folder already made Jellyfin unresponsive."""


@dataclass(frozen=True, slots=True)
class Listing:
    """One side's listing of one folder.

    ``names``: entry names (files and folders, one level). ``recent``: names of entries changed
    within the in-flight window (this machine's side only). ``detail``: for ``failed`` what went
    wrong, for ``unresponsive`` the deadline, e.g. ``"15 s"``.
    """

    kind: Kind
    names: frozenset[str] = frozenset()
    recent: frozenset[str] = frozenset()
    detail: str = ""

    def summary(self) -> str:
        """``"12 entries"``, ``"empty"``, ``"missing"``, ``"no answer within 15 s"``, …"""
        if self.kind is Kind.LISTED:
            count = len(self.names)
            return "empty" if not count else f"{count} entr{'y' if count == 1 else 'ies'}"
        if self.kind is Kind.UNRESPONSIVE:
            return f"no answer within {self.detail}" if self.detail else "no answer"
        if self.kind is Kind.FAILED:
            return f"failed ({self.detail})" if self.detail else "failed"
        return str(self.kind)


@dataclass(frozen=True, slots=True)
class RootView:
    """What the caller knows of one root: its path here, the mount point it lives on, the mount
    points below it (from the mount table), and whether its health gate is on."""

    path: str
    mount_point: str | None = None
    mounts_below: tuple[str, ...] = ()
    gated: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """One folder to compare: ``local`` here, ``jellyfin`` as Jellyfin sees it.

    ``mount_point``: a mount point here (the disk's own folder). ``root``: the root it belongs to
    (itself, or the root a mount point lies below). ``gated``: a disagreement holds the refresh.
    """

    local: str
    jellyfin: str
    root: str
    mount_point: bool = False
    gated: bool = True

    @property
    def mapped(self) -> bool:
        """Jellyfin's path differs from this machine's (a ``[[path_map]]`` entry applies)."""
        return self.local != self.jellyfin


class Verdict(enum.StrEnum):
    AGREE = "agree"
    HOLD = "hold"
    UNRESPONSIVE = "unresponsive"
    NOT_COMPARED = "not compared"
    """This machine found its side missing or unreadable (the health gate judges that), or
    Jellyfin was not asked."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Both views of one folder and the verdict. ``reason``: for a hold, the line a user reads,
    naming both views and the likely fix; ``note``: for an agreement, what was let through."""

    target: Target
    server: Listing
    local: Listing
    verdict: Verdict
    reason: str = ""
    note: str = ""

    @property
    def holds(self) -> bool:
        """Whether this comparison holds the refresh back."""
        return self.target.gated and self.verdict in (Verdict.HOLD, Verdict.UNRESPONSIVE)

    def describe(self) -> str:
        """One clause for ``check``: ``Jellyfin sees /data/movies: 12 entries, as here``."""
        head = f"Jellyfin sees {self.target.jellyfin}: {self.server.summary()}"
        if self.verdict is Verdict.AGREE:
            return head + (f", as here ({self.note})" if self.note else ", as here")
        if self.verdict is Verdict.NOT_COMPARED:
            return head + f"; here {self.local.summary()} (not compared)"
        return f"{head}; here {self.local.summary()}: held ({self.reason})"


def targets(roots: Iterable[RootView], to_jellyfin: Callable[[str], str]) -> tuple[Target, ...]:
    """The folders to compare: each root, then each mount point below it, each once.

    ``to_jellyfin`` maps a path here to Jellyfin's path for it (the reverse ``[[path_map]]``).
    """
    seen: set[str] = set()
    found = []
    for root in roots:
        for local in (root.path, *root.mounts_below):
            if local in seen:
                continue
            seen.add(local)
            mount_point = local != root.path or root.mount_point == root.path
            found.append(Target(local, to_jellyfin(local), root.path, mount_point, root.gated))
    return tuple(found)


def in_flight(folder: str, changed_folders: Iterable[str]) -> frozenset[str]:
    """Names of ``folder``'s entries that lead to a folder the pending batch changed.

    >>> sorted(in_flight("/m", ["/m/New (2024)", "/m/Old/extras", "/other", "/m"]))
    ['New (2024)', 'Old']
    """
    prefix = folder.rstrip("/") + "/"
    names = set()
    for changed in changed_folders:
        if changed.startswith(prefix):
            names.add(changed[len(prefix):].split("/", 1)[0])
    return frozenset(name for name in names if name)


def compare(
    target: Target,
    server: Listing,
    local: Listing,
    changed_folders: Iterable[str] = (),
    ignored: Callable[[str], bool] = lambda name: False,
    in_flight_seconds: float = 0.0,
) -> Comparison:
    """The verdict on one folder (see the module docstring). ``ignored``: entry names left out on
    both sides. ``in_flight_seconds``: the window ``local.recent`` was taken with, for the reason."""
    jellyfin, here = target.jellyfin, target.local
    if local.kind is Kind.UNRESPONSIVE:  # e.g. a hung share mounted below a healthy root
        return Comparison(target, server, local, Verdict.UNRESPONSIVE, (
            f"this machine did not list {here} within {local.detail or 'the deadline'}: a hung mount here?"))
    if local.kind is not Kind.LISTED or server.kind is Kind.NOT_ASKED:
        return Comparison(target, server, local, Verdict.NOT_COMPARED)
    local_names = frozenset(name for name in local.names if not ignored(name))
    count = _entries(len(local_names))
    if server.kind is Kind.UNRESPONSIVE:
        return Comparison(target, server, local, Verdict.UNRESPONSIVE, (
            f"Jellyfin did not list {jellyfin} within {server.detail or 'its deadline'} while this machine lists "
            f"{here} ({count}): is Jellyfin itself stuck on a hung mount? Check the share on Jellyfin's host"))
    if server.kind is Kind.FAILED:
        return Comparison(target, server, local, Verdict.HOLD, (
            f"Jellyfin cannot list {jellyfin} ({server.detail or 'an error'}) while this machine lists {here} "
            f"({count}): is the disk or share failing as Jellyfin sees it?"))
    if server.kind is Kind.MISSING:
        return Comparison(target, server, local, Verdict.HOLD, (
            f"Jellyfin sees no folder {jellyfin} while this machine has {here} ({count}): " + _missing_fix(target)))
    server_names = frozenset(name for name in server.names if not ignored(name))
    moving = local.recent | in_flight(here, changed_folders)
    unseen = sorted(local_names - server_names - moving)
    extra = server_names - local_names
    if not unseen:
        notes = []
        if local_names - server_names:
            notes.append(f"{len(local_names - server_names)} in flight")
        if extra:
            notes.append(f"Jellyfin sees {len(extra)} more")
        return Comparison(target, server, local, Verdict.AGREE, note=", ".join(notes))
    if not server_names:
        return Comparison(target, server, local, Verdict.HOLD, (
            f"Jellyfin sees {jellyfin} empty while this machine sees {here} with {count}: " + _empty_fix(target)))
    if not server_names & local_names:
        return Comparison(target, server, local, Verdict.HOLD, (
            f"Jellyfin's {jellyfin} and this machine's {here} have no entry in common "
            f"(Jellyfin: {_examples(sorted(server_names))}; here: {_examples(unseen)}): not the same folder. "
            + _sentence(_missing_fix(target))))
    window = f" (entries changed in the last {in_flight_seconds:g} s are not counted)" if in_flight_seconds else ""
    return Comparison(target, server, local, Verdict.HOLD, (
        f"Jellyfin does not see {len(unseen)} of the {count} this machine has in {here} "
        f"({_examples(unseen)}){window}, as {jellyfin}: a scan would remove their items. "
        "Is something mounted here that Jellyfin's view lacks (a container volume without rslave "
        "propagation, the share not mounted on Jellyfin's host), or is it another copy of the folder?"))


def reasons(comparisons: Sequence[Comparison]) -> tuple[str, ...]:
    """The reasons of the comparisons that hold the refresh back, in order."""
    return tuple(comparison.reason for comparison in comparisons if comparison.holds)


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}" if count else "no entries"


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _missing_fix(target: Target) -> str:
    if target.mapped:
        return (f"is the share mounted on Jellyfin's host, and does [[path_map]] map {target.jellyfin} to "
                f"{target.local}?")
    parent = posixpath.dirname(target.local.rstrip("/")) or "/"
    return ("is the share mounted on Jellyfin's host? If Jellyfin runs in a container or on another host, give it "
            f"a volume for {parent}, or map its path with [[path_map]]")


def _empty_fix(target: Target) -> str:
    if target.mount_point:
        return (f"{target.local} is a mount point here. If Jellyfin runs in a container, its volume lacks rslave "
                "propagation (the disk was mounted after the container started): add :rslave to the volume and "
                "restart the container. Otherwise the disk or share is not mounted on Jellyfin's host")
    return (f"is the share mounted on Jellyfin's host, and does [[path_map]] map {target.jellyfin} to "
            f"{target.local}?" if target.mapped else "is the share mounted on Jellyfin's host?")
