"""IgnoreFilter with the default patterns: which changes matter to Jellyfin."""

from __future__ import annotations

import os

import pytest

from watcher.config import DEFAULT_IGNORE
from watcher.core.filters import IgnoreFilter

ROOT = "/media/movies"


@pytest.fixture(scope="module")
def ignore() -> IgnoreFilter:
    return IgnoreFilter(DEFAULT_IGNORE)


def under_root(relative: str) -> str:
    return f"{ROOT}/{relative}"


@pytest.mark.parametrize(
    "relative",
    [
        # Partial and temporary downloads.
        "Movie (2020)/Movie (2020).mkv.part",
        "Movie (2020).mkv.!qB",
        "Movie (2020).mkv.crdownload",
        "Movie (2020).mkv.partial",
        "Movie (2020).mkv.aria2",
        "download.tmp",
        # Hidden files and anything inside hidden folders.
        ".hidden.mkv",
        "Movie (2020)/.Movie (2020).mkv.swp",
        ".sync/Movie (2020)/Movie (2020).mkv",
        "Show/.staging/episode.mkv",
        ".DS_Store",
        "Movie (2020)/.DS_Store",
        # NAS and desktop litter.
        "@eaDir/Movie (2020).mkv@SynoEAStream",
        "Movie (2020)/@eaDir/Movie (2020).mkv/SYNOVIDEO_VIDEO_SCREENSHOT.jpg",
        "#recycle/Movie (2020).mkv",
        "#snapshot/daily/Movie (2020).mkv",
        "$RECYCLE.BIN/S-1-5-21/file.mkv",
        "lost+found/#12345",
        "Movie (2020)/Thumbs.db",
        "desktop.ini",
        # What Jellyfin itself writes next to the media.
        "Movie (2020)/movie.nfo",
        "Show/Season 1/S01E01.nfo",
        "Movie (2020)/poster.jpg",
        "Movie (2020)/Movie (2020)-poster.jpg",
        "Movie (2020)/fanart.png",
        "Movie (2020)/backdrop1.jpg",
        "Movie (2020)/banner.jpg",
        "Movie (2020)/logo.png",
        "Movie (2020)/clearlogo.png",
        "Movie (2020)/folder.jpg",
        "Movie (2020)/thumb.jpg",
        "Movie (2020)/movie-thumb.jpg",
        "Movie (2020)/movie.trickplay",
        "Movie (2020)/movie.trickplay/320 - 10x10/0.jpg",
        "Movie (2020)/extrafanart/fanart1.jpg",
        "Movie (2020)/metadata/info.json",
    ],
)
def test_ignored(ignore: IgnoreFilter, relative: str) -> None:
    assert ignore(ROOT, under_root(relative)) is True


@pytest.mark.parametrize(
    "relative",
    [
        "movie.mkv",
        "Movie (2020)/Movie (2020).mkv",
        "Season 1/ep.mkv",
        "Show/Season 1/S01E01.mkv",
        "Movie (2020)/Movie (2020).en.srt",
        "Movie (2020)/Movie (2020).de.forced.ass",
        "Movie (2020)",
        "Show/Season 1",
        "Movie (2020)/Movie (2020).mp4",
        # Names that only resemble a pattern.
        "partial.mkv",
        "thumbnails/episode.mkv",
        "Movie.part2.mkv",
        "The Poster Boy (2020)/The Poster Boy (2020).mkv",
        "Movie-thumb.jpg.mkv",
        "movie-thumb.png",  # only *-thumb.jpg is a Jellyfin image name
        "tmp/movie.mkv",
        "recycle/movie.mkv",
    ],
)
def test_relevant(ignore: IgnoreFilter, relative: str) -> None:
    assert ignore(ROOT, under_root(relative)) is False


@pytest.mark.parametrize(
    "relative",
    [
        "MOVIE.MKV.PART",
        "Movie.mkv.!QB",
        "Movie.mkv.!qb",
        "movie.NFO",
        "Movie (2020)/Poster.JPG",
        "Movie (2020)/FANART.png",
        "Movie (2020)/Movie-Thumb.JPG",
        "Movie (2020)/Movie.TrickPlay/0.jpg",
        "@EADIR/x.mkv",
        "#Recycle/x.mkv",
        "THUMBS.DB",
        "Movie.CRDOWNLOAD",
    ],
)
def test_patterns_are_case_insensitive(ignore: IgnoreFilter, relative: str) -> None:
    assert ignore(ROOT, under_root(relative)) is True


def test_the_root_itself_is_relevant(ignore: IgnoreFilter) -> None:
    # e.g. the DirDeletedEvent watchdog sends when the root is deleted.
    assert ignore(ROOT, ROOT) is False


def test_a_root_under_a_hidden_folder_does_not_ignore_everything(ignore: IgnoreFilter) -> None:
    root = "/home/u/.media/movies"

    assert ignore(root, f"{root}/Movie (2020)/Movie (2020).mkv") is False
    assert ignore(root, f"{root}/movie.mkv") is False
    assert ignore(root, root) is False
    assert ignore(root, f"{root}/Movie (2020)/movie.nfo") is True
    assert ignore(root, f"{root}/.hidden/movie.mkv") is True


@pytest.mark.parametrize(
    "root",
    ["/srv/@eaDir/movies", "/srv/media/metadata", "/mnt/downloads.tmp", "/mnt/#recycle/films", "/mnt/x.trickplay"],
)
def test_root_components_matching_a_pattern_do_not_count(ignore: IgnoreFilter, root: str) -> None:
    assert ignore(root, f"{root}/movie.mkv") is False
    assert ignore(root, f"{root}/movie.mkv.part") is True


def test_move_out_of_a_partial_name_is_relevant(ignore: IgnoreFilter) -> None:
    source = under_root("Movie (2020)/x.mkv.!qB")
    destination = under_root("Movie (2020)/x.mkv")

    assert ignore.ignores_all(ROOT, [source, destination]) is False


def test_move_between_ignored_names_is_ignored(ignore: IgnoreFilter) -> None:
    assert ignore.ignores_all(ROOT, [under_root("x.mkv.part"), under_root("x.mkv.!qB")]) is True
    assert ignore.ignores_all(ROOT, [under_root("movie.nfo"), under_root(".movie.nfo")]) is True


def test_move_of_a_video_into_a_hidden_folder_is_relevant(ignore: IgnoreFilter) -> None:
    # The video leaves the library: Jellyfin must drop it.
    assert ignore.ignores_all(ROOT, [under_root("x.mkv"), under_root(".trash/x.mkv")]) is False


def test_move_into_the_root_from_outside_is_relevant(ignore: IgnoreFilter) -> None:
    # watchdog reports the source path of a move from outside the root as it is.
    source = "/home/u/.downloads/complete/x.mkv"
    assert ignore(ROOT, source) is True
    assert ignore.ignores_all(ROOT, [source, under_root("x.mkv")]) is False


def test_ignores_all_skips_empty_paths(ignore: IgnoreFilter) -> None:
    # A created event has no destination: watchdog gives dest_path "".
    assert ignore.ignores_all(ROOT, [under_root("x.mkv.part"), ""]) is True
    assert ignore.ignores_all(ROOT, [under_root("x.mkv"), ""]) is False


@pytest.mark.parametrize(
    ("relative", "ignored"),
    [
        ("Movie\n(2020)/Movie.mkv", False),
        ("Movie (2020)/Movie.mkv\n", False),
        ("Movie (2020)/Movie.mkv\n.part", True),
        ("Movie (2020)/Movie.part\n.mkv", False),
        ("Movie (2020)/\n.hidden", False),
        ("Movie (2020)/.hidden\nname.mkv", True),
        ("Movie (2020)/poster\n.jpg", False),
    ],
)
def test_names_with_newlines(ignore: IgnoreFilter, relative: str, ignored: bool) -> None:
    assert ignore(ROOT, under_root(relative)) is ignored


def test_undecodable_names_do_not_crash(ignore: IgnoreFilter) -> None:
    # What os.fsdecode gives for Latin-1 bytes on a UTF-8 system: surrogate escapes.
    movie = os.fsdecode(b"/media/movies/Am\xe9lie (2001)/Am\xe9lie.mkv")
    partial = os.fsdecode(b"/media/movies/Am\xe9lie (2001)/Am\xe9lie.mkv.PART")
    litter = os.fsdecode(b"/media/movies/Am\xe9lie (2001)/@eaDir/\xff\xfe.jpg")
    hidden = os.fsdecode(b"/media/movies/.\xff/Am\xe9lie.mkv")
    assert "\udce9" in movie

    assert ignore(ROOT, movie) is False
    assert ignore(ROOT, partial) is True
    assert ignore(ROOT, litter) is True
    assert ignore(ROOT, hidden) is True
    assert ignore.ignores_all(ROOT, [partial, movie]) is False


def test_undecodable_root_does_not_crash(ignore: IgnoreFilter) -> None:
    root = os.fsdecode(b"/media/m\xf6vies")

    assert ignore(root, root + "/movie.mkv") is False
    assert ignore(root, root + "/movie.nfo") is True


def test_no_patterns_ignore_nothing() -> None:
    ignore = IgnoreFilter([])

    assert ignore(ROOT, under_root(".hidden/x.mkv.part")) is False
    assert ignore.ignores_all(ROOT, [under_root("movie.nfo")]) is False


def test_extra_patterns_are_shell_style() -> None:
    ignore = IgnoreFilter([*DEFAULT_IGNORE, "*.sample.*", "Sample"])

    assert ignore(ROOT, under_root("Movie (2020)/movie.sample.mkv")) is True
    assert ignore(ROOT, under_root("Movie (2020)/sample/clip.mkv")) is True
    assert ignore(ROOT, under_root("Movie (2020)/movie.mkv")) is False


@pytest.mark.parametrize("pattern", ["[", "movie[", "(", "a|b", "x{2}", "\\"])
def test_patterns_with_regex_characters_match_literally(pattern: str) -> None:
    ignore = IgnoreFilter([pattern])

    assert ignore(ROOT, under_root(f"dir/{pattern}")) is True
    assert ignore(ROOT, under_root("dir/movie.mkv")) is False
