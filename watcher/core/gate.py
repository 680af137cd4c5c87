"""The health gate: which of a batch's roots may be refreshed now. Pure.

``gate = "all"`` (or a server-wide refresh, which scans every library): every root must be
ready, else nothing goes. ``gate = "library"``: a library may be refreshed when all of *its*
roots are ready; a root with no known library can only be covered by a server-wide
refresh, so it needs every root ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RootView:
    """What the gate needs of one root: its library (None: unknown) and why it is not
    ready (``""`` when it is, or when its health gate is off). ``unhealthy_ungated``: it is
    unhealthy but its health gate is off (only the loss guard stands between it and a scan)."""

    library_id: str | None
    blocked: str = ""
    unhealthy_ungated: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """``ready``: the batch's roots that may be refreshed; ``reasons``: why the others (or,
    with gate ``all``, any root at all) may not, one line each."""

    ready: frozenset[str]
    reasons: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return bool(self.reasons)


def gate(batch_roots: frozenset[str], roots: Mapping[str, RootView], gate: str, scope: str) -> Verdict:
    """The gate's verdict on a batch under ``batch_roots`` (root paths as strings).

    >>> views = {"/a": RootView("L1"), "/b": RootView("L2", "/b is unmounted (…)")}
    >>> gate(frozenset({"/a"}), views, "library", "library")
    Verdict(ready=frozenset({'/a'}), reasons=())
    >>> gate(frozenset({"/a"}), views, "all", "library").reasons
    ('/b is unmounted (…)',)
    """
    blocked = {key: view.blocked for key, view in roots.items() if view.blocked}
    if not blocked:
        return Verdict(batch_roots)
    if gate == "all" or scope == "server":
        return Verdict(frozenset(), tuple(blocked.values()))
    library_of = {key: view.library_id for key, view in roots.items()}
    blocked_libraries = {library_of[key] for key in blocked}
    wanted = {library_of.get(key) for key in batch_roots}
    ready = frozenset(
        key for key in batch_roots if library_of.get(key) is not None and library_of[key] not in blocked_libraries
    )
    relevant = tuple(reason for key, reason in blocked.items() if None in wanted or library_of[key] in wanted)
    return Verdict(ready, relevant)
