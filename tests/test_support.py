"""The shared test helpers of ``tests/support.py`` that write configuration files: whatever
path a test hands them, the file is valid TOML and reads back (with tomllib, as the watcher
reads it) as that very path; a name no TOML file can hold is refused, not mangled."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from support import toml_string, write_config

AWKWARD_PATHS = [
    "/media/movies",
    "/media/Film\nwith a newline",
    '/media/"quoted" film',
    "/media/back\\slash\\\\double",
    "C:\\media\\films\\",
    "/media/tab\tand\rcarriage return",
    "/media/control \x00\x01\x08\x0b\x0c\x1b\x1f and delete \x7f",
    "/media/Amélie (2001)/日本語/🎬",
    "/media/''' and \"\"\" and \\u0041 and \\n",
    "/media/trailing backslash\\",
    "",
]

NOT_UTF8 = [os.fsdecode(b"/media/caf\xe9"), os.fsdecode(b"/media/\xff\xfe"), "/media/lone \ud800 surrogate"]


@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_toml_string_reads_back_as_the_same_path(path: str) -> None:
    document = f"path = {toml_string(Path(path) if path else path)}\n"
    assert tomllib.loads(document) == {"path": str(Path(path)) if path else path}
    assert "\n" not in toml_string(path), "a basic string on one line"


@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_write_config_of_a_mapping_reads_back(tmp_path: Path, path: str) -> None:
    config = {
        "state_dir": tmp_path / path.lstrip("/"),
        "dry_run": True,
        "watch": {"quiet_period": 0.5, "max_wait": 30, "network_fstypes": ["fuse", path]},
        "roots": [{"path": Path(path) if path else path, "health_gate": False}, {"path": "/media/other"}],
    }
    written = write_config(tmp_path / "config.toml", config)
    assert written == tmp_path / "config.toml"
    with written.open("rb") as file:  # as the watcher reads it: bytes, UTF-8
        assert tomllib.load(file) == {
            "state_dir": str(tmp_path / path.lstrip("/")),
            "dry_run": True,
            "watch": {"quiet_period": 0.5, "max_wait": 30, "network_fstypes": ["fuse", path]},
            "roots": [{"path": str(Path(path)) if path else path, "health_gate": False}, {"path": "/media/other"}],
        }


def test_write_config_of_text_writes_it_unchanged(tmp_path: Path) -> None:
    text = "[watch]\nquiet_priod = 5\n[[roots]\n"  # a broken file, exactly as the test wants it
    assert write_config(tmp_path / "config.toml", text).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("path", NOT_UTF8)
def test_a_name_that_is_not_utf8_is_refused_not_mangled(tmp_path: Path, path: str) -> None:
    # A TOML file is UTF-8 and its \u escapes are Unicode scalar values: no spelling reads
    # back as these surrogate escapes, so the helpers say so instead of writing another path.
    with pytest.raises(ValueError, match="is not UTF-8: a TOML configuration cannot name it"):
        toml_string(Path(path))
    with pytest.raises(ValueError, match="is not UTF-8"):
        write_config(tmp_path / "config.toml", {"roots": [{"path": Path(path)}]})
    assert not (tmp_path / "config.toml").exists()
