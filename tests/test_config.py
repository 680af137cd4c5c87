"""Configuration: ``config.load(file, flags, environ)`` and ``cli.main`` for configuration errors.

Every test passes its own ``environ`` dict and, for ``cli.main``, its own ``--config`` (or
``$JELLYFIN_WATCHER_CONFIG``), so the machine's environment and configuration files play
no part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from support import write_file

from watcher import cli, config
from watcher.config import (
    CREDENTIAL_NAME,
    DEFAULT_IGNORE,
    Config,
    ConfigError,
    Root,
    Secret,
)
from watcher.errors import WatcherError

SECRET = "0123456789abcdef0123456789abcdef"

running_as_root = hasattr(os, "geteuid") and os.geteuid() == 0


def load(
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    return config.load(file, flags or {}, environ or {})


def load_error(
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    with pytest.raises(ConfigError) as caught:
        load(file, flags, environ)
    return str(caught.value)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "config.toml"


# --- Defaults ----------------------------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path) -> None:
    loaded = load(environ={"STATE_DIRECTORY": str(tmp_path)})

    assert loaded.jellyfin.url is None
    assert loaded.jellyfin.api_key is None
    assert loaded.roots == ()
    assert loaded.watch.quiet_period == 30.0
    assert loaded.watch.max_wait == 600.0
    assert loaded.watch.probe_timeout == 5.0
    assert loaded.jellyfin.timeout == 30.0
    assert loaded.watch.backoff_max == 300.0
    assert loaded.watch.ignore == DEFAULT_IGNORE
    assert loaded.state_dir == tmp_path
    assert loaded.dry_run is False
    assert loaded.log_level == "info"
    assert loaded.config_file is None


def test_empty_file_gives_the_defaults(config_file: Path) -> None:
    write_file(config_file, "")

    loaded = load(config_file)

    assert loaded.watch.quiet_period == 30.0
    assert loaded.config_file == config_file


def test_full_file(tmp_path: Path, config_file: Path) -> None:
    key_file = write_file(tmp_path / "key", SECRET + "\n")
    write_file(
        config_file,
        f"""
        state_dir = "{tmp_path / 'state'}"
        log_level = "DEBUG"
        dry_run = true

        [jellyfin]
        url = " http://jellyfin.lan:8096/ "
        api_key_file = "{key_file}"
        timeout = 12

        [watch]
        quiet_period = 5
        max_wait = "120"
        probe_timeout = 0.5
        backoff_max = 60
        ignore = ["*.sample.*"]

        [[roots]]
        path = "/mnt/usb/movies/"
        mount = "/mnt/usb"

        [[roots]]
        path = "/srv/media/./shows"
        """,
    )

    loaded = load(config_file)

    assert loaded.jellyfin.url == "http://jellyfin.lan:8096"
    assert loaded.jellyfin.api_key is not None and loaded.jellyfin.api_key.reveal() == SECRET
    assert loaded.jellyfin.timeout == 12.0
    assert (loaded.watch.quiet_period, loaded.watch.max_wait, loaded.watch.probe_timeout, loaded.watch.backoff_max) == (5.0, 120.0, 0.5, 60.0)
    assert loaded.watch.ignore == (*DEFAULT_IGNORE, "*.sample.*")
    assert loaded.roots == (
        Root(Path("/mnt/usb/movies"), Path("/mnt/usb")),
        Root(Path("/srv/media/shows"), None),
    )
    assert loaded.state_dir == tmp_path / "state"
    assert loaded.log_level == "debug"
    assert loaded.dry_run is True


def test_config_is_frozen(config_file: Path) -> None:
    loaded = load(None)

    with pytest.raises(AttributeError):
        loaded.jellyfin.url = "http://x"  # type: ignore[misc]


# --- Precedence: flags > environment > file > defaults -----------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "in_file", "expected"),
    [
        ("http://flag:1", "http://env:2", "http://file:3", "http://flag:1"),
        (None, "http://env:2", "http://file:3", "http://env:2"),
        (None, "", "http://file:3", "http://file:3"),
        (None, None, "http://file:3", "http://file:3"),
        (None, None, None, None),
        ("http://flag:1", None, None, "http://flag:1"),
    ],
)
def test_url_precedence(
    config_file: Path, flag: str | None, env: str | None, in_file: str | None, expected: str | None
) -> None:
    write_file(config_file, "" if in_file is None else f'[jellyfin]\nurl = "{in_file}"\n')
    environ = {} if env is None else {"JELLYFIN_URL": env}

    assert load(config_file, {"url": flag}, environ).jellyfin.url == expected


def test_a_bad_url_in_the_file_is_shadowed_by_a_flag(config_file: Path) -> None:
    # Only the source that is used is parsed.
    write_file(config_file, '[jellyfin]\nurl = "ftp://file"\n')

    assert load(config_file, {"url": "https://flag"}).jellyfin.url == "https://flag"


@pytest.mark.parametrize(
    ("flag", "in_file", "expected"),
    [("5", "12", 5.0), ("0", 12, 0.0), (None, 12, 12.0), (None, "2.5", 2.5), (None, None, 30.0)],
)
def test_quiet_period_precedence(config_file: Path, flag: str | None, in_file: object, expected: float) -> None:
    write_file(config_file, "" if in_file is None else f"[watch]\nquiet_period = {in_file!r}\n".replace("'", '"'))

    assert load(config_file, {"quiet_period": flag}).watch.quiet_period == expected


def test_other_timing_flags_beat_the_file(config_file: Path) -> None:
    write_file(config_file, "[watch]\nmax_wait = 100\nprobe_timeout = 3\n")

    loaded = load(config_file, {"max_wait": "50", "probe_timeout": "1.5"})

    assert (loaded.watch.max_wait, loaded.watch.probe_timeout) == (50.0, 1.5)


def test_log_level_and_dry_run_flags_beat_the_file(config_file: Path) -> None:
    write_file(config_file, 'log_level = "error"\ndry_run = false\n')

    loaded = load(config_file, {"log_level": "debug", "dry_run": True})

    assert (loaded.log_level, loaded.dry_run) == ("debug", True)


def test_root_flags_replace_the_file_roots(tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_file(config_file, '[[roots]]\npath = "/srv/file-root"\n')
    monkeypatch.chdir(tmp_path)

    loaded = load(config_file, {"roots": ["/srv/a/", "relative/b", "/srv/c/../d"]})

    assert loaded.roots == (
        Root(Path("/srv/a")),
        Root(tmp_path / "relative" / "b"),
        Root(Path("/srv/d")),
    )


def test_no_root_flags_keeps_the_file_roots(config_file: Path) -> None:
    write_file(config_file, '[[roots]]\npath = "/srv/file-root"\n')

    assert load(config_file, {"roots": []}).roots == (Root(Path("/srv/file-root")),)


# --- API key sources ---------------------------------------------------------------------


@pytest.fixture
def key_sources(tmp_path: Path) -> dict[str, Any]:
    """Every API key source, each holding a different key."""
    write_file(tmp_path / "flag-key", "from-flag\n")
    write_file(tmp_path / "env-file-key", "from-env-file\n")
    write_file(tmp_path / "credentials" / CREDENTIAL_NAME, "from-credential\n")
    write_file(tmp_path / "file-key", "from-config-key-file\n")
    return {
        "flags": {"api_key_file": str(tmp_path / "flag-key")},
        "environ": {
            "JELLYFIN_API_KEY": " from-env \n",
            "JELLYFIN_API_KEY_FILE": str(tmp_path / "env-file-key"),
            "CREDENTIALS_DIRECTORY": str(tmp_path / "credentials"),
        },
        "config_key_file": tmp_path / "file-key",
    }


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ([], "from-flag"),
        (["flag"], "from-env"),
        (["flag", "JELLYFIN_API_KEY"], "from-env-file"),
        (["flag", "JELLYFIN_API_KEY", "JELLYFIN_API_KEY_FILE"], "from-credential"),
        (["flag", "JELLYFIN_API_KEY", "JELLYFIN_API_KEY_FILE", "CREDENTIALS_DIRECTORY"], "from-config-key-file"),
    ],
)
def test_api_key_precedence(
    config_file: Path, key_sources: dict[str, Any], removed: list[str], expected: str
) -> None:
    write_file(config_file, f'[jellyfin]\napi_key_file = "{key_sources["config_key_file"]}"\n')
    flags = {} if "flag" in removed else key_sources["flags"]
    environ = {name: value for name, value in key_sources["environ"].items() if name not in removed}

    api_key = load(config_file, flags, environ).jellyfin.api_key

    assert api_key is not None
    assert api_key.reveal() == expected


def test_api_key_inline_in_the_file(config_file: Path) -> None:
    write_file(config_file, f'[jellyfin]\napi_key = " {SECRET} "\n')

    api_key = load(config_file).jellyfin.api_key

    assert api_key == Secret(SECRET)


def test_credentials_directory_without_the_credential_falls_through(tmp_path: Path, config_file: Path) -> None:
    (tmp_path / "credentials").mkdir()
    write_file(config_file, '[jellyfin]\napi_key = "from-file"\n')

    api_key = load(config_file, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "credentials")}).jellyfin.api_key

    assert api_key == Secret("from-file")


def test_empty_environment_variables_count_as_unset(tmp_path: Path, config_file: Path) -> None:
    write_file(config_file, '[jellyfin]\napi_key = "from-file"\nurl = "http://file"\n')
    environ = {"JELLYFIN_API_KEY": "", "JELLYFIN_API_KEY_FILE": "", "CREDENTIALS_DIRECTORY": "", "JELLYFIN_URL": ""}

    loaded = load(config_file, environ=environ)

    assert loaded.jellyfin.api_key == Secret("from-file")
    assert loaded.jellyfin.url == "http://file"


@pytest.mark.parametrize("blank", [" ", "\n", " \t "])
def test_blank_api_key_in_the_environment_is_an_error(blank: str) -> None:
    message = load_error(environ={"JELLYFIN_API_KEY": blank})

    assert "JELLYFIN_API_KEY" in message


# --- Key file errors ---------------------------------------------------------------------


def key_file_error(source: str, key_file: Path, config_file: Path) -> str:
    """The error when the API key file is ``key_file``, given through ``source``."""
    if source == "flag":
        return load_error(flags={"api_key_file": str(key_file)})
    if source == "env":
        return load_error(environ={"JELLYFIN_API_KEY_FILE": str(key_file)})
    if source == "credential":
        return load_error(environ={"CREDENTIALS_DIRECTORY": str(key_file.parent)})
    write_file(config_file, f'[jellyfin]\napi_key_file = "{key_file}"\n')
    return load_error(config_file)


SOURCE_NAMES = {
    "flag": "--api-key-file",
    "env": "JELLYFIN_API_KEY_FILE",
    "credential": "systemd credential",
    "file": "jellyfin.api_key_file",
}
KEY_SOURCES = ["flag", "env", "file"]


@pytest.mark.parametrize("source", KEY_SOURCES)
def test_missing_key_file(tmp_path: Path, config_file: Path, source: str) -> None:
    key_file = tmp_path / "no-such-key"

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert "not found" in message
    if source == "file":
        assert message.startswith(f"{config_file}: ")


@pytest.mark.parametrize("source", [*KEY_SOURCES, "credential"])
def test_empty_key_file(tmp_path: Path, config_file: Path, source: str) -> None:
    key_file = write_file(tmp_path / "keys" / CREDENTIAL_NAME, " \n\n")

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert "empty" in message


@pytest.mark.parametrize("source", KEY_SOURCES)
def test_key_file_that_is_a_directory(tmp_path: Path, config_file: Path, source: str) -> None:
    key_file = tmp_path / "key-dir"
    key_file.mkdir()

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert "is a directory" in message


@pytest.mark.skipif(running_as_root, reason="root reads files whatever their permission bits")
@pytest.mark.parametrize("source", KEY_SOURCES)
def test_unreadable_key_file(tmp_path: Path, config_file: Path, source: str) -> None:
    key_file = write_file(tmp_path / "key", SECRET)
    key_file.chmod(0)

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert "permission denied" in message
    assert SECRET not in message


@pytest.mark.parametrize("source", KEY_SOURCES)
def test_key_file_that_cannot_be_opened(tmp_path: Path, config_file: Path, source: str) -> None:
    # Unreadable even for root: a "directory" that is a regular file (ENOTDIR).
    key_file = write_file(tmp_path / "regular-file", SECRET) / "key"

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert "cannot read" in message
    assert SECRET not in message


@pytest.mark.parametrize("source", KEY_SOURCES)
def test_key_file_that_is_not_utf8_does_not_show_its_content(tmp_path: Path, config_file: Path, source: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.encode() + b"\xff\xfe")

    message = key_file_error(source, key_file, config_file)

    assert SOURCE_NAMES[source] in message
    assert str(key_file) in message
    assert SECRET not in message


def test_api_key_and_api_key_file_both_set(tmp_path: Path, config_file: Path) -> None:
    key_file = write_file(tmp_path / "key", SECRET)
    write_file(config_file, f'[jellyfin]\napi_key = "{SECRET}"\napi_key_file = "{key_file}"\n')

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: ")
    assert "jellyfin.api_key" in message and "jellyfin.api_key_file" in message
    assert SECRET not in message


@pytest.mark.parametrize("value", ['""', '"   "', "12345", f'["{SECRET}"]', "true"])
def test_api_key_of_the_wrong_type(config_file: Path, value: str) -> None:
    write_file(config_file, f"[jellyfin]\napi_key = {value}\n")

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: jellyfin.api_key: ")
    assert SECRET not in message


def test_api_key_file_of_the_wrong_type(config_file: Path) -> None:
    write_file(config_file, "[jellyfin]\napi_key_file = 42\n")

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: jellyfin.api_key_file: ")


# --- File errors: every message names the file and the key -------------------------------


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        # Malformed TOML.
        ("[watch\nquiet_period = 5\n", None, "not valid TOML"),
        ("quiet_period = \n", None, "not valid TOML"),
        ('[watch]\nquiet_period = 5\nquiet_period = 6\n', None, "not valid TOML"),
        # Unknown keys, with a suggestion.
        ("[watch]\nquiet_perod = 5\n", "watch.quiet_perod", "did you mean watch.quiet_period?"),
        ("[jelyfin]\nurl = 'http://x'\n", "jelyfin", "did you mean jellyfin?"),
        ("[jellyfin]\napikey = 'x'\n", "jellyfin.apikey", "did you mean jellyfin.api_key?"),
        ("[[root]]\npath = '/srv'\n", "root", "did you mean roots?"),
        ("[[roots]]\npth = '/srv'\n", "roots[1].pth", "did you mean roots[1].path?"),
        ("statedir = '/x'\nzzz = 1\n", "statedir", "unknown keys statedir (did you mean state_dir?), zzz"),
        # Wrong types and values.
        ('[watch]\nquiet_period = "abc"\n', "watch.quiet_period", "expected seconds ≥ 0, got 'abc'"),
        ("[watch]\nquiet_period = true\n", "watch.quiet_period", "expected seconds ≥ 0, got a boolean"),
        ("[watch]\nquiet_period = -1\n", "watch.quiet_period", "expected seconds ≥ 0, got -1"),
        ("[watch]\nquiet_period = -0.5\n", "watch.quiet_period", "got -0.5"),
        ('[watch]\nquiet_period = "nan"\n', "watch.quiet_period", "got 'nan'"),
        ("[watch]\nquiet_period = nan\n", "watch.quiet_period", "expected seconds"),
        ("[watch]\nquiet_period = inf\n", "watch.quiet_period", "expected seconds"),
        ("[watch]\nquiet_period = [5]\n", "watch.quiet_period", "got a list"),
        ("[watch]\nmax_wait = {}\n", "watch.max_wait", "got a table"),
        ("[watch]\nprobe_timeout = 0.01\n", "watch.probe_timeout", "expected seconds ≥ 0.1"),
        ("[watch]\nbackoff_max = 0.5\n", "watch.backoff_max", "expected seconds ≥ 1"),
        ("[jellyfin]\ntimeout = 'x'\n", "jellyfin.timeout", "expected seconds ≥ 1"),
        ("[watch]\nignore = '*.sample'\n", "watch.ignore", "expected a list of non-empty strings"),
        ("[watch]\nignore = ['']\n", "watch.ignore", "expected a list of non-empty strings"),
        ("[watch]\nignore = [1]\n", "watch.ignore", "expected a list of non-empty strings"),
        ("[watch]\ndefault_ignore = 'no'\n", "watch.default_ignore", "expected true or false"),
        ("jellyfin = 5\n", "jellyfin", "expected a table [jellyfin], got a number"),
        ("watch = 'x'\n", "watch", "expected a table [watch], got a string"),
        ("state_dir = 5\n", "state_dir", "expected a non-empty string, got a number"),
        ("state_dir = ''\n", "state_dir", "expected a non-empty string"),
        ("log_level = 'loud'\n", "log_level", "expected one of debug, info, warning, error"),
        ("log_level = 3\n", "log_level", "expected one of debug, info, warning, error, got 3"),
        ("dry_run = 'yes'\n", "dry_run", "expected true or false"),
        # URLs.
        ("[jellyfin]\nurl = 'localhost:8096'\n", "jellyfin.url", "expected an http:// or https:// URL"),
        ("[jellyfin]\nurl = 'jellyfin.lan'\n", "jellyfin.url", "expected an http:// or https:// URL"),
        ("[jellyfin]\nurl = 'ftp://jellyfin.lan'\n", "jellyfin.url", "got 'ftp://jellyfin.lan'"),
        ("[jellyfin]\nurl = 'http://'\n", "jellyfin.url", "expected an http:// or https:// URL"),
        ("[jellyfin]\nurl = ''\n", "jellyfin.url", "expected a non-empty string"),
        ("[jellyfin]\nurl = 8096\n", "jellyfin.url", "got a number"),
        # Roots.
        ("roots = '/srv/movies'\n", "roots", "expected [[roots]] tables"),
        ("roots = ['/srv/movies']\n", "roots[1]", "expected a table"),
        ("[[roots]]\nmount = '/mnt/usb'\n", "roots[1]", "missing key path"),
        ("[[roots]]\npath = '/a'\n[[roots]]\nmount = '/mnt'\n", "roots[2]", "missing key path"),
        ("[[roots]]\npath = 'movies'\n", "roots[1].path", "expected an absolute path, got 'movies'"),
        ("[[roots]]\npath = 5\n", "roots[1].path", "expected a non-empty string"),
        ("[[roots]]\npath = ''\n", "roots[1].path", "expected a non-empty string"),
        ("[[roots]]\npath = '/mnt/usb/movies'\nmount = 'usb'\n", "roots[1].mount", "expected an absolute path"),
        (
            "[[roots]]\npath = '/mnt/usb/movies'\nmount = '/mnt/usb2'\n",
            "roots[1].mount",
            "/mnt/usb2 does not contain the root /mnt/usb/movies",
        ),
        (
            "[[roots]]\npath = '/mnt/usbdisk/movies'\nmount = '/mnt/usb'\n",
            "roots[1].mount",
            "does not contain the root",
        ),
    ],
)
def test_bad_file_names_the_file_and_the_key(config_file: Path, text: str, key: str | None, detail: str) -> None:
    write_file(config_file, text)

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: ")
    if key is not None:
        assert key in message
    assert detail in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("mount", "path"),
    [("/mnt/usb", "/mnt/usb"), ("/mnt/usb", "/mnt/usb/movies"), ("/", "/srv/movies"), ("/mnt/usb/", "/mnt/usb/a/b")],
)
def test_mount_containing_the_root_is_accepted(config_file: Path, mount: str, path: str) -> None:
    write_file(config_file, f"[[roots]]\npath = '{path}'\nmount = '{mount}'\n")

    assert load(config_file).roots == (Root(Path(path), Path(mount)),)


def test_mount_containment_is_checked_on_the_normalised_path(config_file: Path) -> None:
    write_file(config_file, "[[roots]]\npath = '/mnt/usb/../data/movies'\nmount = '/mnt/usb'\n")

    message = load_error(config_file)

    assert "roots[1].mount" in message


def test_roots_paths_are_normalised_and_expanded(config_file: Path) -> None:
    write_file(config_file, "[[roots]]\npath = '~/movies'\n[[roots]]\npath = '/srv//a/./b/'\n")

    roots = load(config_file).roots

    assert roots == (Root(Path("~/movies").expanduser()), Root(Path("/srv/a/b")))


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    message = load_error(missing)

    assert message.startswith(f"{missing}: ")
    assert "not found" in message


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    message = load_error(tmp_path)

    assert message.startswith(f"{tmp_path}: ")
    assert "is a directory" in message


def test_config_file_that_is_not_utf8(config_file: Path) -> None:
    config_file.write_bytes(b'[jellyfin]\nurl = "http://\xff"\n')

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: ")


@pytest.mark.skipif(running_as_root, reason="root reads files whatever their permission bits")
def test_unreadable_config_file(config_file: Path) -> None:
    write_file(config_file, "")
    config_file.chmod(0)

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: ")
    assert "permission denied" in message


def test_config_file_that_cannot_be_opened(tmp_path: Path) -> None:
    config_file = write_file(tmp_path / "regular-file", "") / "config.toml"

    message = load_error(config_file)

    assert message.startswith(f"{config_file}: ")


# --- Errors from flags and the environment name them -------------------------------------


@pytest.mark.parametrize(
    ("flags", "environ", "source", "detail"),
    [
        ({"url": "ftp://x"}, {}, "--url", "expected an http:// or https:// URL"),
        ({"url": ""}, {}, "--url", "expected a non-empty string"),
        ({}, {"JELLYFIN_URL": "localhost:8096"}, "JELLYFIN_URL", "got 'localhost:8096'"),
        ({"quiet_period": "abc"}, {}, "--quiet-period", "expected seconds ≥ 0, got 'abc'"),
        ({"quiet_period": "-3"}, {}, "--quiet-period", "got '-3'"),
        ({"max_wait": "soon"}, {}, "--max-wait", "expected seconds ≥ 0"),
        ({"probe_timeout": "0"}, {}, "--probe-timeout", "expected seconds ≥ 0.1"),
    ],
)
def test_bad_flag_or_environment_names_its_source(
    flags: dict[str, Any], environ: dict[str, str], source: str, detail: str
) -> None:
    message = load_error(flags=flags, environ=environ)

    assert message.startswith(f"{source}: ")
    assert detail in message


# --- Ignore patterns and the state directory ---------------------------------------------


def test_extra_ignore_patterns_are_added_to_the_defaults(config_file: Path) -> None:
    write_file(config_file, "[watch]\nignore = ['*.sample.*', 'Extras']\n")

    assert load(config_file).watch.ignore == (*DEFAULT_IGNORE, "*.sample.*", "Extras")


def test_default_ignore_false_keeps_only_the_extra_patterns(config_file: Path) -> None:
    write_file(config_file, "[watch]\ndefault_ignore = false\nignore = ['*.sample.*']\n")

    assert load(config_file).watch.ignore == ("*.sample.*",)


def test_default_ignore_false_without_extras_ignores_nothing(config_file: Path) -> None:
    write_file(config_file, "[watch]\ndefault_ignore = false\n")

    assert load(config_file).watch.ignore == ()


def test_state_dir_honours_state_directory(tmp_path: Path) -> None:
    assert load(environ={"STATE_DIRECTORY": str(tmp_path / "a")}).state_dir == tmp_path / "a"


def test_state_dir_takes_the_first_of_several_state_directories(tmp_path: Path) -> None:
    environ = {"STATE_DIRECTORY": f"{tmp_path / 'first'}:{tmp_path / 'second'}"}

    assert load(environ=environ).state_dir == tmp_path / "first"


def test_state_dir_from_file_and_flag_beat_state_directory(tmp_path: Path, config_file: Path) -> None:
    write_file(config_file, f"state_dir = '{tmp_path / 'from-file'}'\n")
    environ = {"STATE_DIRECTORY": str(tmp_path / "from-systemd")}

    assert load(config_file, environ=environ).state_dir == tmp_path / "from-file"
    assert load(config_file, {"state_dir": str(tmp_path / "from-flag")}, environ).state_dir == tmp_path / "from-flag"


def test_state_dir_without_state_directory() -> None:
    expected = config.SYSTEM_STATE_DIR if running_as_root else None

    state_dir = load(environ={"STATE_DIRECTORY": ""}).state_dir

    if expected is not None:
        assert state_dir == expected
    else:
        assert state_dir.is_absolute() and state_dir.name == config.APP_NAME


def test_state_dir_in_the_file_is_expanded(config_file: Path) -> None:
    write_file(config_file, "state_dir = '~/watcher-state'\n")

    assert load(config_file).state_dir == Path("~/watcher-state").expanduser()


# --- Secret ------------------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret(SECRET)

    renderings = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        f"{secret!a}",
        "%s %r" % (secret, secret),  # noqa: UP031 -- %-formatting is a way a secret could leak
        f"{secret}",
        repr([secret]),
        repr({"key": secret}),
    ]

    for rendering in renderings:
        assert SECRET not in rendering
        assert "****" in rendering
    assert secret.reveal() == SECRET


def test_secret_has_no_instance_dict() -> None:
    secret = Secret(SECRET)

    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret.other = 1  # type: ignore[attr-defined]


def test_secret_equality() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))


def test_config_repr_hides_the_api_key(config_file: Path) -> None:
    write_file(config_file, f'[jellyfin]\nurl = "http://x"\napi_key = "{SECRET}"\n')

    loaded = load(config_file)

    assert loaded.jellyfin.api_key is not None and loaded.jellyfin.api_key.reveal() == SECRET
    assert SECRET not in repr(loaded)
    assert SECRET not in str(loaded)
    assert SECRET not in f"{loaded}"
    assert "api_key=Secret('********')" in repr(loaded)


# --- cli.main: configuration errors --------------------------------------------------------


def run_main(argv: list[str], environ: Mapping[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv, environ=environ)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    assert err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jellyfin-watcher: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "check", "refresh"])
@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[watch\n", "not valid TOML"),
        ("[watch]\nquiet_perod = 5\n", "unknown key watch.quiet_perod (did you mean watch.quiet_period?)"),
        ('[watch]\nquiet_period = "abc"\n', "watch.quiet_period: expected seconds ≥ 0, got 'abc'"),
        ("[watch]\nquiet_period = true\n", "watch.quiet_period"),
        ("[watch]\nquiet_period = -1\n", "watch.quiet_period"),
        ("[jellyfin]\nurl = 'ftp://x'\n", "jellyfin.url"),
        ("[jellyfin]\nurl = 'localhost:8096'\n", "jellyfin.url"),
        ("[jellyfin]\napi_key = 'a'\napi_key_file = '/b'\n", "jellyfin.api_key and jellyfin.api_key_file"),
        ("[jellyfin]\napi_key_file = '/nonexistent/key'\n", "jellyfin.api_key_file: API key file /nonexistent/key not found"),
        ("[[roots]]\nmount = '/mnt'\n", "roots[1]: missing key path"),
        ("[[roots]]\npath = 'movies'\n", "roots[1].path"),
        ("[[roots]]\npath = '/srv/movies'\nmount = '/mnt/usb'\n", "roots[1].mount"),
    ],
)
def test_main_config_error_is_one_line_and_exit_2(
    config_file: Path, capsys: pytest.CaptureFixture[str], command: str, text: str, detail: str
) -> None:
    write_file(config_file, text)

    code, out, err = run_main([command, "--config", str(config_file)], {}, capsys)

    assert code == cli.EXIT_CONFIG == 2
    assert out == ""
    line = assert_one_error_line(err)
    assert str(config_file) in line
    assert detail in line


@pytest.mark.parametrize(
    ("arguments", "environ", "detail"),
    [
        (["--url", "ftp://x"], {}, "--url: expected an http:// or https:// URL"),
        (["--quiet-period", "abc"], {}, "--quiet-period: expected seconds ≥ 0, got 'abc'"),
        (["--quiet-period", "-1"], {}, "--quiet-period"),
        (["--api-key-file", "/nonexistent/key"], {}, "--api-key-file: API key file /nonexistent/key not found"),
        ([], {"JELLYFIN_API_KEY_FILE": "/nonexistent/key"}, "JELLYFIN_API_KEY_FILE"),
        ([], {"JELLYFIN_URL": "jellyfin.lan"}, "JELLYFIN_URL"),
        (["--log-level", "loud"], {}, "argument --log-level: invalid choice: 'loud'"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
        (["--quiet-perio", "5"], {}, "unrecognized arguments: --quiet-perio"),
    ],
)
def test_main_flag_and_environment_errors(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    environ: dict[str, str],
    detail: str,
) -> None:
    write_file(config_file, "")

    code, out, err = run_main(["check", "--config", str(config_file), *arguments], environ, capsys)

    assert code == 2
    assert out == ""
    assert detail in assert_one_error_line(err)


def test_main_reads_the_config_file_named_by_the_environment(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_file(config_file, "[watch]\nquiet_period = 'abc'\n")

    code, _, err = run_main(["check"], {"JELLYFIN_WATCHER_CONFIG": str(config_file)}, capsys)

    assert code == 2
    assert f"{config_file}: watch.quiet_period" in assert_one_error_line(err)


def test_main_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"

    code, out, err = run_main(["run", "--config", str(missing)], {}, capsys)

    assert code == 2
    assert out == ""
    assert f"{missing}: configuration file not found" in assert_one_error_line(err)


@pytest.mark.parametrize("argv", [[], ["--config", "x.toml"], ["watch"]])
def test_main_without_a_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run_main(argv, {}, capsys)

    assert code == 2
    assert out == ""
    assert_one_error_line(err)


@pytest.mark.parametrize("command", ["run", "check", "refresh"])
@pytest.mark.parametrize("form", [["--api-key", SECRET], [f"--api-key={SECRET}"]])
def test_main_refuses_an_api_key_on_the_command_line(
    config_file: Path, capsys: pytest.CaptureFixture[str], command: str, form: list[str]
) -> None:
    write_file(config_file, "")

    code, out, err = run_main([command, "--config", str(config_file), *form], {}, capsys)

    assert code == 2
    assert SECRET not in out + err
    line = assert_one_error_line(err)
    assert "--api-key is not accepted" in line
    assert "JELLYFIN_API_KEY" in line


@pytest.mark.parametrize("form", [["--api-key", SECRET], [f"--api-key={SECRET}"]])
def test_main_refuses_an_api_key_before_the_command(
    config_file: Path, capsys: pytest.CaptureFixture[str], form: list[str]
) -> None:
    write_file(config_file, "")

    code, out, err = run_main([*form, "check", "--config", str(config_file)], {}, capsys)

    assert code == 2
    assert_one_error_line(err)
    assert SECRET not in out + err


def test_main_refuses_an_api_key_even_when_the_config_is_fine(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The refusal comes before anything else runs: no probe, no request, no state written.
    write_file(config_file, f"state_dir = '{tmp_path / 'state'}'\n[[roots]]\npath = '{tmp_path}'\n")

    code, out, err = run_main(["check", "--config", str(config_file), "--api-key", SECRET], {}, capsys)

    assert code == 2
    assert out == ""
    assert SECRET not in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("abbreviation", ["--api-key-f", "--api-key-fil", "--api"])
def test_main_does_not_accept_abbreviations_of_api_key_file(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str], abbreviation: str
) -> None:
    write_file(config_file, "")
    key_file = write_file(tmp_path / "key", SECRET)

    code, out, err = run_main(["check", "--config", str(config_file), abbreviation, str(key_file)], {}, capsys)

    assert code == 2
    line = assert_one_error_line(err)
    assert f"unrecognized arguments: {abbreviation}" in line
    assert SECRET not in out + err


def test_main_error_stays_one_line_for_a_key_with_a_newline(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_file(config_file, '"quiet\\nperiod" = 5\n')

    code, _, err = run_main(["check", "--config", str(config_file)], {}, capsys)

    assert code == 2
    assert_one_error_line(err)


def test_config_error_is_a_watcher_error() -> None:
    assert issubclass(ConfigError, WatcherError)
