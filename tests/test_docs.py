"""The README is part of the product: its commands and its key table must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from watcher import config

REPOSITORY = Path(__file__).resolve().parent.parent
README = (REPOSITORY / "README.md").read_text(encoding="utf-8")


def _shell_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)]


def test_readme_starts_with_the_run_and_the_test_command() -> None:
    run_command, test_command = _shell_blocks()[:2]
    assert "jellyfin-watcher run --dry-run" in run_command
    assert "pytest" in test_command


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _shell_blocks()[1]
    ci_lines = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def _schema_keys() -> set[str]:
    """Every key of the configuration's schema, as the README's table names them
    (``watch.quiet_period``, ``[[roots]] path``, ``state_dir``)."""
    known = config.known_keys()
    keys = {f"{table}.{key}" for table in config.SECTIONS for key in known[table]}
    keys |= {f"[[roots]] {key}" for key in known["roots"]} | {f"[[path_map]] {key}" for key in known["path_map"]}
    return keys | {key for key in known[""] if key not in config.SECTIONS and key not in ("roots", "path_map")}


def test_every_configuration_key_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_.\[\] ]+)`", README, flags=re.MULTILINE))
    assert _schema_keys() - documented == set()


def test_example_configuration_loads_and_names_every_key(tmp_path: Path) -> None:
    example = REPOSITORY / "packaging" / "config.example.toml"
    key_file = tmp_path / "api-key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    key_file.chmod(0o600)
    text = example.read_text(encoding="utf-8").replace("/etc/jellyfin-watcher/api-key", str(key_file))
    copy = tmp_path / "config.toml"
    copy.write_text(text, encoding="utf-8")

    loaded = config.load(copy, {}, {})

    assert loaded.jellyfin.url == "http://localhost:8096"
    mentioned = set(re.findall(r"^#? ?([a-z_]+) =", text, flags=re.MULTILINE))
    known = config.known_keys()
    every = {key for table, keys in known.items() if table for key in keys}
    every |= {key for key in known[""] if key not in config.SECTIONS and key not in ("roots", "path_map")}
    assert every - {"libraries"} - mentioned == set()


def _defined_tests() -> dict[str, set[str]]:
    """Test function names defined in each test file, by path relative to the repository."""
    defined: dict[str, set[str]] = {}
    for path in (REPOSITORY / "tests").rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        defined[path.relative_to(REPOSITORY).as_posix()] = set(re.findall(r"^\s*def (test_\w+)", text, flags=re.MULTILINE))
    return defined


def test_every_test_the_readme_names_exists() -> None:
    """A claim in the README names the test that proves it: a renamed or removed test must
    not leave the claim pointing at nothing."""
    defined = _defined_tests()
    everywhere = set().union(*defined.values())
    missing = []
    for match in re.finditer(r"`((?:tests/)?(?:[\w/]+/)?(test_\w+\.py))?(?:::)?(test_\w+)?`", README):
        path, name = match.group(1), match.group(3)
        if path and not path.startswith("tests/"):
            path = f"tests/{path}"
        if (path and path not in defined) or (name and name not in (defined[path] if path else everywhere)):
            missing.append(match.group(0))
    assert missing == []
    assert len(re.findall(r"test_\w+`", README)) > 40, "the README names the tests behind its claims"
