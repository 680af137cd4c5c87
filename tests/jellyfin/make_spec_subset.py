"""Write ``tests/jellyfin/openapi-subset.json``: the part of Jellyfin's OpenAPI spec the project uses.

Usage (from the repository root)::

    python tests/jellyfin/make_spec_subset.py [SOURCE]

``SOURCE`` (relative to the current directory) defaults to ``../shared/jellyfin/openapi.json``
relative to the repository root: the Jellyfin 10.11.11 spec, see ``tests/jellyfin/SOURCE.md``.
The output keeps, unchanged:

- ``openapi``, ``info``, ``servers`` and ``components.securitySchemes``;
- the operations in :data:`OPERATIONS`, and every ``components.schemas`` entry they reference,
  transitively;

and adds two extension keys:

- ``x-all-paths``: ``{path template: [methods, lowercase, sorted]}`` for *every* path of the full
  spec, so the emulator can answer 404 (path unknown) apart from 405 (method not allowed) and
  501 (a real Jellyfin operation the subset leaves out);
- ``x-source``: the source file, its Jellyfin version and its sha256.

The output is deterministic: sorted keys, ``indent=1``, a final newline.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = Path("../shared/jellyfin/openapi.json")  # relative to REPO_ROOT
OUTPUT = Path(__file__).resolve().parent / "openapi-subset.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

OPERATIONS: tuple[tuple[str, str], ...] = (
    ("/Library/VirtualFolders", "get"),
    ("/Library/Refresh", "post"),
    ("/ScheduledTasks", "get"),
    ("/ScheduledTasks/{taskId}", "get"),
    ("/ScheduledTasks/{taskId}/Triggers", "post"),
    ("/System/Info/Public", "get"),
    ("/System/Info", "get"),
    ("/System/Ping", "get"),
    ("/System/Ping", "post"),
    ("/Items/{itemId}/Refresh", "post"),
    ("/Library/Media/Updated", "post"),
    ("/Items", "get"),
    ("/Library/VirtualFolders/LibraryOptions", "post"),
    ("/Users/AuthenticateByName", "post"),
    ("/Environment/DirectoryContents", "get"),
    ("/Environment/ValidatePath", "post"),
    ("/Backup/Create", "post"),
    ("/Backup", "get"),
    ("/Backup/Restore", "post"),
)
"""(path template, lowercase method) of every operation the emulator serves."""


def _references(node: Any) -> Iterator[str]:
    """Yield every ``$ref`` string found anywhere inside ``node`` (a parsed JSON value)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _resolve(spec: dict[str, Any], reference: str) -> Any:
    """Return the node a local JSON pointer (``#/components/schemas/Name``) points at.

    Raises:
        ValueError: ``reference`` is not a local reference.
        KeyError: it points at nothing.
    """
    if not reference.startswith("#/"):
        raise ValueError(f"only local references are supported, got {reference!r}")
    node: Any = spec
    for part in reference[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def make_subset(spec: dict[str, Any], sha256: str, source_name: str) -> dict[str, Any]:
    """Return the subset of ``spec`` described in this module's docstring.

    Raises:
        KeyError: an operation of :data:`OPERATIONS` is not in ``spec``.
    """
    paths: dict[str, dict[str, Any]] = {}
    for path, method in OPERATIONS:
        path_item = spec["paths"][path]
        subset_item = paths.setdefault(path, {})
        subset_item[method] = path_item[method]
        # Path-level keys (shared parameters, summary...) apply to every operation; 10.11.11 has none.
        for key, value in path_item.items():
            if key not in HTTP_METHODS:
                subset_item[key] = value

    components: dict[str, dict[str, Any]] = {}
    pending = sorted(set(_references(paths)))
    seen: set[str] = set()
    while pending:
        reference = pending.pop()
        if reference in seen:
            continue
        seen.add(reference)
        node = _resolve(spec, reference)
        _, section, kind, name = reference.split("/", 3)
        assert section == "components", reference
        components.setdefault(kind, {})[name] = node
        pending.extend(set(_references(node)) - seen)
    components["securitySchemes"] = spec["components"]["securitySchemes"]

    info = spec["info"]
    return {
        "openapi": spec["openapi"],
        "info": info,
        "servers": spec.get("servers", []),
        "paths": paths,
        "components": components,
        "x-all-paths": {
            path: sorted(method for method in item if method in HTTP_METHODS)
            for path, item in spec["paths"].items()
        },
        "x-source": {
            "file": source_name,
            "jellyfin_version": info.get("x-jellyfin-version", info["version"]),
            "sha256": sha256,
            "note": "Generated by tests/jellyfin/make_spec_subset.py; see tests/jellyfin/SOURCE.md.",
        },
    }


def render(source: Path) -> str:
    """The text of ``openapi-subset.json`` made from the spec at ``source``.

    Raises:
        OSError: ``source`` cannot be read.
        ValueError: it is not JSON.
        KeyError: an operation of :data:`OPERATIONS` is missing from it.
    """
    raw = source.read_bytes()
    # Symbolic links are kept: a worktree elsewhere that reaches the spec through a link to the
    # shared folder records the same name as the main checkout.
    source_name = Path(os.path.relpath(os.path.normpath(os.path.abspath(source)), REPO_ROOT)).as_posix()
    subset = make_subset(json.loads(raw), hashlib.sha256(raw).hexdigest(), source_name)
    return json.dumps(subset, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Read the spec named in ``argv[0]`` (default :data:`DEFAULT_SOURCE`), write :data:`OUTPUT`; return 0."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    source = Path(arguments[0]) if arguments else REPO_ROOT / DEFAULT_SOURCE
    OUTPUT.write_text(render(source), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
