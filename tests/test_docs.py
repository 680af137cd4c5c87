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


def test_every_configuration_key_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_.\[\] ]+)`", README, flags=re.MULTILINE))
    keys = (
        {f"jellyfin.{key}" for key in config._JELLYFIN_KEYS}
        | {f"watch.{key}" for key in config._WATCH_KEYS}
        | {f"refresh.{key}" for key in config._REFRESH_KEYS}
        | {f"guard.{key}" for key in config._GUARD_KEYS}
        | {f"[[roots]] {key}" for key in config._ROOT_KEYS}
        | {f"[[path_map]] {key}" for key in config._PATH_MAP_KEYS}
        | {f"server_view.{key}" for key in config._SERVER_VIEW_KEYS}
        | {f"backup.{key}" for key in config._BACKUP_KEYS}
        | {f"notify.{key}" for key in config._NOTIFY_KEYS}
        | (config._TOP_KEYS - {"jellyfin", "watch", "refresh", "guard", "roots", "path_map", "server_view", "backup",
                               "notify"})
    )
    assert keys - documented == set()


def test_example_configuration_loads_and_names_every_key(tmp_path: Path) -> None:
    example = REPOSITORY / "packaging" / "config.example.toml"
    key_file = tmp_path / "api-key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    key_file.chmod(0o600)
    text = example.read_text(encoding="utf-8").replace("/etc/jellyfin-watcher/api-key", str(key_file))
    copy = tmp_path / "config.toml"
    copy.write_text(text, encoding="utf-8")

    loaded = config.load(copy, {}, {})

    assert loaded.url == "http://localhost:8096"
    mentioned = set(re.findall(r"^#? ?([a-z_]+) =", text, flags=re.MULTILINE))
    every = (
        config._JELLYFIN_KEYS | config._WATCH_KEYS | config._REFRESH_KEYS | config._GUARD_KEYS
        | config._ROOT_KEYS | config._PATH_MAP_KEYS | config._LIBRARY_LIMIT_KEYS
        | config._SERVER_VIEW_KEYS | config._BACKUP_KEYS | config._NOTIFY_KEYS
        | (config._TOP_KEYS - {"jellyfin", "watch", "refresh", "guard", "roots", "path_map", "server_view", "backup",
                               "notify"})
    ) - {"libraries"}
    assert every - mentioned == set()
