"""Refresh scopes (``watcher.core.scope.plan`` and ``fold``), path mapping (``Config.map_path`` and
``Config.jellyfin_path``) and the configuration errors of the keys behind them.

Pure: no process, no server. A batch is built by hand as the debouncer would hand it over;
``plan`` is asked which requests it becomes.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

import pytest
from support import write_config, write_file

from watcher import cli, config
from watcher.config import Config, ConfigError, PathMapping, Root
from watcher.core.debounce import Batch
from watcher.core.libraries import tag_roots
from watcher.core.scope import MAX_PATHS, RefreshRequest, fold, plan

MOVIES_ID = "0123456789abcdef0123456789abcdef"
SHOWS_ID = "fedcba9876543210fedcba9876543210"
MOVIES = "/mnt/disk1/movies"
MOVIES_2 = "/mnt/disk2/movies"  # a second location of the Movies library
SHOWS = "/mnt/disk2/shows"
UNTAGGED = "/srv/other"

ROOTS = {
    MOVIES: Root(Path(MOVIES), library_id=MOVIES_ID, library_name="Movies"),
    MOVIES_2: Root(Path(MOVIES_2), library_id=MOVIES_ID, library_name="Movies"),
    SHOWS: Root(Path(SHOWS), library_id=SHOWS_ID, library_name="Shows"),
    UNTAGGED: Root(Path(UNTAGGED)),
}


def batch(*roots: str, folders: tuple[str, ...] = (), whole: tuple[str, ...] = (), changes: int = 0) -> Batch:
    return Batch(frozenset(roots), changes or max(1, len(folders)), 0.0, 1.0, frozenset(folders), frozenset(whole))


def same(path: str) -> str:
    return path


def library(*roots: str, library_id: str = MOVIES_ID, name: str = "Movies") -> RefreshRequest:
    return RefreshRequest("library", frozenset(roots), library_id, name)


# --- fold --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folders", "folded"),
    [
        ([], []),
        (["/m/a"], ["/m/a"]),
        (["/m/a/b", "/m/a"], ["/m/a"]),
        (["/m/a/b/c/d", "/m/a"], ["/m/a"]),  # an ancestor several levels up covers it
        (["/m/a/b", "/m/a/c"], ["/m/a/b", "/m/a/c"]),  # siblings stay
        (["/m/a", "/m/ab", "/m/a b", "/m/a-b/c"], ["/m/a", "/m/a b", "/m/a-b/c", "/m/ab"]),  # a prefix is no ancestor
        (["/m/a/", "/m/a", "/m//a/b"], ["/m/a"]),  # trailing and doubled slashes are one folder
        (["/m/a/./b", "/m/a/x/../b"], ["/m/a/b"]),
        (["/", "/m/a"], ["/"]),
        (["/m/z", "/m/a", "/m/k"], ["/m/a", "/m/k", "/m/z"]),  # sorted
    ],
)
def test_fold_drops_folders_below_another(folders: list[str], folded: list[str]) -> None:
    assert fold(folders) == folded


def test_fold_is_idempotent_and_order_free() -> None:
    folders = ["/m/b/1", "/m/a", "/m/b", "/m/a/x", "/m/c/d/e", "/m/c/d"]
    assert fold(folders) == fold(reversed(folders)) == fold(fold(folders)) == ["/m/a", "/m/b", "/m/c/d"]


# --- plan: server scope --------------------------------------------------------------------------


def test_server_scope_is_one_library_refresh_for_everything() -> None:
    changed = batch(MOVIES, SHOWS, folders=(f"{MOVIES}/A", f"{SHOWS}/B"))

    assert plan(changed, ROOTS, "server", same) == [RefreshRequest("server", frozenset({MOVIES, SHOWS}))]


@pytest.mark.parametrize("scope", ["library", "path"])
def test_a_root_in_no_known_library_needs_a_server_refresh(scope: str) -> None:
    changed = batch(MOVIES, UNTAGGED, folders=(f"{MOVIES}/A", f"{UNTAGGED}/B"))

    assert plan(changed, ROOTS, scope, same) == [RefreshRequest("server", frozenset({MOVIES, UNTAGGED}))]


@pytest.mark.parametrize("scope", ["library", "path"])
def test_a_root_missing_from_the_roots_needs_a_server_refresh(scope: str) -> None:
    # E.g. a batch restored from the state file for a root that is no longer configured.
    changed = batch(SHOWS, "/gone", whole=(SHOWS, "/gone"))

    assert plan(changed, ROOTS, scope, same) == [RefreshRequest("server", frozenset({SHOWS, "/gone"}))]


# --- plan: library scope -------------------------------------------------------------------------


def test_library_scope_refreshes_each_changed_library_once() -> None:
    changed = batch(MOVIES, MOVIES_2, SHOWS, folders=(f"{MOVIES}/A", f"{MOVIES_2}/B", f"{SHOWS}/C"))

    requests = plan(changed, ROOTS, "library", same)

    assert sorted(requests, key=lambda request: request.library_id or "") == [
        library(MOVIES, MOVIES_2),
        library(SHOWS, library_id=SHOWS_ID, name="Shows"),
    ]


def test_library_scope_leaves_unchanged_libraries_alone() -> None:
    assert plan(batch(SHOWS, whole=(SHOWS,)), ROOTS, "library", same) == [
        library(SHOWS, library_id=SHOWS_ID, name="Shows")
    ]


# --- plan: path scope ----------------------------------------------------------------------------


def test_path_scope_sends_the_folded_folders_of_every_library_in_one_request() -> None:
    changed = batch(
        MOVIES,
        SHOWS,
        folders=(f"{MOVIES}/Alien (1979)", f"{MOVIES}/Alien (1979)/extras", f"{SHOWS}/Dark/Season 1", f"{SHOWS}/Dark"),
    )

    [request] = plan(changed, ROOTS, "path", same)

    assert request.kind == "path"
    assert request.paths == (f"{MOVIES}/Alien (1979)", f"{SHOWS}/Dark")
    assert request.roots == {MOVIES, SHOWS}
    assert request.describe() == "POST /Library/Media/Updated (2 folders)"


def test_path_scope_sends_jellyfins_paths() -> None:
    docker = Config(path_map=(PathMapping("/data/movies", MOVIES), PathMapping("/data/shows", SHOWS)))
    changed = batch(MOVIES, SHOWS, folders=(f"{MOVIES}/New Movie (2024)", SHOWS))

    [request] = plan(changed, ROOTS, "path", docker.jellyfin_path)

    assert request.paths == ("/data/movies/New Movie (2024)", "/data/shows")


def test_path_scope_refreshes_a_root_that_changed_as_a_whole_by_its_library() -> None:
    # Shows came back from an unmount (or lost events): no folder list, so its library.
    changed = batch(MOVIES, SHOWS, folders=(f"{MOVIES}/A",), whole=(SHOWS,))

    requests = plan(changed, ROOTS, "path", same)

    assert library(SHOWS, library_id=SHOWS_ID, name="Shows") in requests
    assert RefreshRequest("path", frozenset({MOVIES}), paths=(f"{MOVIES}/A",)) in requests
    assert len(requests) == 2


def test_path_scope_whole_root_takes_its_whole_library() -> None:
    # One location of Movies changed as a whole: the library refresh covers its other
    # location too; no path request is needed for Movies.
    changed = batch(MOVIES, MOVIES_2, folders=(f"{MOVIES_2}/B",), whole=(MOVIES,))

    assert plan(changed, ROOTS, "path", same) == [library(MOVIES, MOVIES_2)]


def test_path_scope_without_any_folder_listed_refreshes_the_library() -> None:
    # A batch restored from an older state file: roots and counts, no folders.
    assert plan(batch(MOVIES), ROOTS, "path", same) == [library(MOVIES)]


def test_path_scope_does_not_take_a_sibling_roots_folders_for_its_own() -> None:
    sibling = "/mnt/disk1/movies 2"  # shares the text prefix of MOVIES, not its folder
    roots = {**ROOTS, sibling: Root(Path(sibling), library_id=SHOWS_ID, library_name="Shows")}
    changed = batch(MOVIES, sibling, folders=(f"{sibling}/X",))

    requests = plan(changed, roots, "path", same)

    assert library(MOVIES) in requests
    assert RefreshRequest("path", frozenset({sibling}), paths=(f"{sibling}/X",)) in requests
    assert len(requests) == 2


def test_path_scope_with_exactly_max_paths_folders_is_one_path_request() -> None:
    folders = tuple(f"{MOVIES}/Movie {index:03d}" for index in range(MAX_PATHS))

    [request] = plan(batch(MOVIES, folders=folders), ROOTS, "path", same)

    assert request.kind == "path"
    assert request.paths == folders
    assert MAX_PATHS == 100


def test_path_scope_beyond_max_paths_falls_back_to_each_library() -> None:
    folders = (*(f"{MOVIES}/Movie {index:03d}" for index in range(MAX_PATHS)), f"{SHOWS}/Show")

    requests = plan(batch(MOVIES, SHOWS, folders=folders), ROOTS, "path", same)

    assert sorted(requests, key=lambda request: request.library_id or "") == [
        library(MOVIES),
        library(SHOWS, library_id=SHOWS_ID, name="Shows"),
    ]


def test_path_scope_counts_folders_after_folding() -> None:
    # 300 changed folders, 3 after folding: well under the cap.
    folders = tuple(f"{MOVIES}/{name}/{index}" for name in "abc" for index in range(100)) + tuple(
        f"{MOVIES}/{name}" for name in "abc"
    )

    [request] = plan(batch(MOVIES, folders=folders), ROOTS, "path", same)

    assert request.paths == (f"{MOVIES}/a", f"{MOVIES}/b", f"{MOVIES}/c")


def test_every_changed_root_is_covered_by_exactly_one_request() -> None:
    changed = batch(MOVIES, MOVIES_2, SHOWS, folders=(f"{MOVIES}/A", f"{MOVIES_2}/B"), whole=(SHOWS,))
    for scope in ("server", "library", "path"):
        requests = plan(changed, ROOTS, scope, same)
        covered = [root for request in requests for root in request.roots]
        assert sorted(covered) == sorted(changed.roots), scope


def test_describe_names_the_request() -> None:
    assert RefreshRequest("server", frozenset()).describe() == "POST /Library/Refresh"
    assert library(MOVIES).describe() == f"POST /Items/{MOVIES_ID}/Refresh (library Movies)"
    assert RefreshRequest("path", frozenset(), paths=("/x",)).describe() == "POST /Library/Media/Updated (1 folder)"


# --- path mapping ------------------------------------------------------------------------------


def mapped(tmp_path: Path, *pairs: tuple[str, str]) -> Config:
    file = write_config(tmp_path / "config.toml", {"path_map": [{"jellyfin": jellyfin, "local": local}
                                                                for jellyfin, local in pairs]})
    return config.load(file, {}, {"STATE_DIRECTORY": str(tmp_path)})


def test_path_map_normalises_trailing_slashes(tmp_path: Path) -> None:
    loaded = mapped(tmp_path, ("/data/movies/", "/mnt/media/movies/"))

    assert loaded.path_map == (PathMapping("/data/movies", "/mnt/media/movies"),)
    assert loaded.map_path("/data/movies") == Path("/mnt/media/movies")
    assert loaded.map_path("/data/movies/") == Path("/mnt/media/movies")
    assert loaded.map_path("/data/movies/New Movie/") == Path("/mnt/media/movies/New Movie")
    assert loaded.jellyfin_path("/mnt/media/movies/") == "/data/movies"
    assert loaded.jellyfin_path("/mnt/media/movies/New Movie") == "/data/movies/New Movie"


def test_path_map_longest_prefix_wins_in_both_directions(tmp_path: Path) -> None:
    loaded = mapped(
        tmp_path,
        ("/data", "/mnt/all"),  # listed first, but shorter
        ("/data/movies", "/mnt/movies"),
        ("/media/kids", "/mnt/all/kids"),  # a local folder inside another mapping's local folder
    )

    assert loaded.map_path("/data/movies/A (2000)/A.mkv") == Path("/mnt/movies/A (2000)/A.mkv")
    assert loaded.map_path("/data/music/B") == Path("/mnt/all/music/B")
    assert loaded.map_path("/data") == Path("/mnt/all")
    assert loaded.map_path("/data/movies2/C") == Path("/mnt/all/movies2/C")  # a text prefix is no folder prefix
    assert loaded.map_path("/media/kids/D") == Path("/mnt/all/kids/D")
    assert loaded.map_path("/elsewhere/E") == Path("/elsewhere/E")  # unmapped: as it is

    assert loaded.jellyfin_path("/mnt/movies/A (2000)") == "/data/movies/A (2000)"
    assert loaded.jellyfin_path("/mnt/all/music") == "/data/music"
    assert loaded.jellyfin_path("/mnt/all/kids/D") == "/media/kids/D"  # longest local prefix
    assert loaded.jellyfin_path("/mnt/all") == "/data"
    assert loaded.jellyfin_path("/mnt/moviesX") == "/mnt/moviesX"
    assert loaded.is_mapped("/data/anything") and not loaded.is_mapped("/database")


def test_path_map_round_trips(tmp_path: Path) -> None:
    loaded = mapped(tmp_path, ("/data/movies", "/srv/a/movies"), ("/data/shows", "/srv/b"), ("/", "/srv/root"))
    for path in ("/data/movies", "/data/movies/X/y.mkv", "/data/shows/Dark/Season 1", "/data/other", "/"):
        assert loaded.jellyfin_path(str(loaded.map_path(path))) == path, path


def test_path_map_of_the_filesystem_root(tmp_path: Path) -> None:
    container = mapped(tmp_path, ("/", "/var/lib/container/root"))
    assert container.map_path("/data/x") == Path("/var/lib/container/root/data/x")
    assert container.map_path("/") == Path("/var/lib/container/root")
    assert container.jellyfin_path("/var/lib/container/root/data") == "/data"
    assert container.jellyfin_path("/var/lib/container/root") == "/"

    host = mapped(tmp_path, ("/media", "/"))
    assert host.map_path("/media/movies") == Path("/movies")
    assert host.jellyfin_path("/movies") == "/media/movies"


def test_without_path_map_paths_are_taken_as_they_are(tmp_path: Path) -> None:
    loaded = config.load(None, {}, {"STATE_DIRECTORY": str(tmp_path)})
    assert loaded.path_map == ()
    assert loaded.map_path("/data/movies/") == Path("/data/movies")
    assert loaded.jellyfin_path("/data/movies") == "/data/movies"


# --- configuration errors of the new keys ---------------------------------------------------------


def load_text(tmp_path: Path, text: str) -> Config:
    return config.load(write_file(tmp_path / "config.toml", text), {}, {"STATE_DIRECTORY": str(tmp_path)})


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'config.toml'}: "), message  # names the file
    return message


def test_refresh_defaults(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "")
    assert (loaded.refresh.scope, loaded.refresh.gate, loaded.jellyfin.server, loaded.jellyfin.verify, loaded.jellyfin.library_interval) == (
        "server", "all", "jellyfin", True, 600.0,
    )


@pytest.mark.parametrize(
    ("scope", "gate"), [("server", "all"), ("library", "all"), ("path", "all"), ("library", "library"), ("PATH", "Library")]
)
def test_valid_scope_and_gate(tmp_path: Path, scope: str, gate: str) -> None:
    loaded = load_text(tmp_path, f'[refresh]\nscope = "{scope}"\ngate = "{gate}"\n')
    assert (loaded.refresh.scope, loaded.refresh.gate) == (scope.lower(), gate.lower())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[refresh]\nscope = "folder"', "refresh.scope: expected one of server, library, path, got 'folder'"),
        ("[refresh]\nscope = 1", "refresh.scope: expected one of server, library, path, got 1"),
        ('[refresh]\ngate = "any"', "refresh.gate: expected one of all, library, got 'any'"),
        ('[refresh]\nscop = "path"', "unknown key refresh.scop (did you mean refresh.scope?)"),
        ('refresh = "path"', "refresh: expected a table [refresh], got a string"),
        ('[refresh]\ngate = "library"', 'refresh.gate = "library" needs refresh.scope = "library" or "path"'),
        ('[refresh]\nscope = "server"\ngate = "library"', 'refresh.gate = "library" needs refresh.scope'),
        ('[jellyfin]\nserver = "plex"', "jellyfin.server: expected one of jellyfin, emby, got 'plex'"),
        ('[jellyfin]\nusername = "alice"', "jellyfin.username needs jellyfin.password_file"),
        ('[jellyfin]\npassword_file = "/x"', "jellyfin.password_file needs jellyfin.username"),
        ('[jellyfin]\nusername = ""\npassword_file = "/x"', "jellyfin.username: expected a non-empty string"),
        ('[jellyfin]\nverify = "no"', "jellyfin.verify: expected true or false, got 'no'"),
        ('[jellyfin]\nverify = false\nca_bundle = "/ca.pem"', "jellyfin.ca_bundle and jellyfin.verify = false contradict"),
        ("[jellyfin]\nca_bundle = 1", "jellyfin.ca_bundle: expected a non-empty string"),
        ("[jellyfin]\nlibrary_interval = 0.5", "jellyfin.library_interval: expected seconds ≥ 1, got 0.5"),
        ('[jellyfin]\nlibrary_interval = "often"', "jellyfin.library_interval: expected seconds ≥ 1, got 'often'"),
        ('[jellyfin]\nlibrary_intervall = 60', "unknown key jellyfin.library_intervall (did you mean jellyfin.library_interval?)"),
        ('path_map = "/data"', "path_map: expected [[path_map]] tables"),
        ('[path_map]\njellyfin = "/data"\nlocal = "/mnt"', "path_map: expected [[path_map]] tables"),
        ('[[path_map]]\njellyfin = "/data"', "path_map[1]: missing key local"),
        ('[[path_map]]\nlocal = "/mnt"', "path_map[1]: missing key jellyfin"),
        ('[[path_map]]\njellyfin = "data"\nlocal = "/mnt"', "path_map[1].jellyfin: expected an absolute path, got 'data'"),
        ('[[path_map]]\njellyfin = "/data"\nlocal = "mnt/media"', "path_map[1].local: expected an absolute path"),
        ('[[path_map]]\njellyfin = "/data"\nlocal = ""', "path_map[1].local: expected a non-empty string"),
        ('[[path_map]]\njellyfin = "/data"\nlocal = "/mnt"\nlocl = "/x"', "unknown key path_map[1].locl (did you mean path_map[1].local?)"),
        ('[[path_map]]\njellyfin = "/a"\nlocal = "/b"\n[[path_map]]\njellyfin = "C:/media"\nlocal = "/c"', "path_map[2].jellyfin"),
    ],
)
def test_configuration_errors_name_the_key_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_server_emby_and_tls_options(tmp_path: Path) -> None:
    assert load_text(tmp_path, '[jellyfin]\nserver = "Emby"').jellyfin.server == "emby"
    assert load_text(tmp_path, "[jellyfin]\nverify = false").jellyfin.verify is False
    assert load_text(tmp_path, '[jellyfin]\nca_bundle = "~/ca.pem"').jellyfin.verify == os.path.expanduser("~/ca.pem")
    assert load_text(tmp_path, "[jellyfin]\nlibrary_interval = 1").jellyfin.library_interval == 1.0


def test_password_file_is_read_and_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse\n", encoding="utf-8")
    password.chmod(0o600)

    with caplog.at_level(logging.WARNING, logger="watcher.config"):
        loaded = load_text(tmp_path, f'[jellyfin]\nusername = "alice"\npassword_file = "{password}"\n')

    assert loaded.jellyfin.username == "alice"
    assert loaded.jellyfin.password is not None and loaded.jellyfin.password.reveal() == "correct horse"
    assert "correct horse" not in repr(loaded)
    assert caplog.records == []


def test_password_file_readable_by_others_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse\n", encoding="utf-8")
    password.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="watcher.config"):
        load_text(tmp_path, f'[jellyfin]\nusername = "alice"\npassword_file = "{password}"\n')

    assert [record.getMessage() for record in caplog.records] == [
        f"the password file {password} is readable by every user: chmod 600 {password}"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "password file {path} not found"), ("", "the password file {path} is empty")],
)
def test_password_file_problems(tmp_path: Path, content: str | None, expected: str) -> None:
    password = tmp_path / "password"
    if content is not None:
        password.write_text(content, encoding="utf-8")
    message = error_of(tmp_path, f'[jellyfin]\nusername = "alice"\npassword_file = "{password}"\n')
    assert expected.format(path=password) in message
    assert "jellyfin.password_file" in message


def test_cli_exits_2_on_scope_server_with_gate_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_file(tmp_path / "config.toml", '[refresh]\nscope = "server"\ngate = "library"\n')

    code = cli.main(["check", "--config", str(file), str(tmp_path)], environ={"STATE_DIRECTORY": str(tmp_path)})

    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"jellyfin-watcher: error: {file}: refresh.gate"), line


def test_config_print_shows_the_refresh_keys_and_the_path_map(tmp_path: Path) -> None:
    from support import child_env, run_cli

    password = tmp_path / "password"
    password.write_text("correct horse\n", encoding="utf-8")
    password.chmod(0o600)
    file = write_file(
        tmp_path / "config.toml",
        '[jellyfin]\nurl = "http://nas:8920/emby"\nserver = "emby"\nusername = "alice"\n'
        f'password_file = "{password}"\nverify = false\nlibrary_interval = 60\n'
        '[refresh]\nscope = "path"\ngate = "library"\n'
        '[[path_map]]\njellyfin = "/data/movies/"\nlocal = "/mnt/media/movies"\n'
        '[[path_map]]\njellyfin = "/data/shows"\nlocal = "/mnt/media/shows/"\n',
    )

    env = child_env(api_key="0123456789abcdef", home=tmp_path / "home")  # "# not set" would not be TOML

    shown = run_cli("config", "--print", "--config", file, env=env)

    assert shown.returncode == 0, shown
    assert "correct horse" not in shown.stdout + shown.stderr
    printed = tomllib.loads(shown.stdout)
    assert printed["jellyfin"] == {
        "url": "http://nas:8920/emby", "api_key": "********", "timeout": 30, "server": "emby",
        "username": "alice", "password": "********", "verify": False, "library_interval": 60,
    }
    assert printed["refresh"] == {"scope": "path", "gate": "library"}
    assert printed["path_map"] == [
        {"jellyfin": "/data/movies", "local": "/mnt/media/movies"},
        {"jellyfin": "/data/shows", "local": "/mnt/media/shows"},
    ]


# --- configured roots tagged with their libraries (core.libraries.tag_roots) -----------------------------


def test_configured_roots_are_tagged_with_the_one_library_they_belong_to(tmp_path: Path) -> None:
    from watcher.core.libraries import Library

    docker = Config(path_map=(PathMapping("/data", "/mnt/media"),))
    libraries = [
        Library("Movies", MOVIES_ID, ("/data/movies",)),
        Library("Shows", SHOWS_ID, ("/data/shows", "/data/more shows")),
    ]
    roots = [
        Root(Path("/mnt/media/movies")),  # a location itself
        Root(Path("/mnt/media/shows/Dark")),  # inside a location
        Root(Path("/mnt/media/more shows")),  # the second location of Shows
        Root(Path("/mnt/media/moviesX")),  # a text prefix only: in no library
        Root(Path("/mnt/media")),  # holds folders of both libraries
        Root(Path("/elsewhere")),
    ]

    tagged, warnings = tag_roots(docker, roots, libraries)

    assert [(str(root.path), root.library_name) for root in tagged] == [
        ("/mnt/media/movies", "Movies"),
        ("/mnt/media/shows/Dark", "Shows"),
        ("/mnt/media/more shows", "Shows"),
        ("/mnt/media/moviesX", None),
        ("/mnt/media", None),
        ("/elsewhere", None),
    ]
    assert [root.library_id for root in tagged[:3]] == [MOVIES_ID, SHOWS_ID, SHOWS_ID]
    assert warnings == [
        "/mnt/media/moviesX is in no Jellyfin library: it can only be refreshed with a server-wide scan",
        "/mnt/media holds folders of several Jellyfin libraries (Movies, Shows): it can only be refreshed with a "
        "server-wide scan",
        "/elsewhere is in no Jellyfin library: it can only be refreshed with a server-wide scan",
    ]
    # An untagged root makes every scope a server-wide refresh.
    changed = batch("/mnt/media", folders=("/mnt/media/shows/New",))
    assert plan(changed, {str(root.path): root for root in tagged}, "library", same)[0].kind == "server"
