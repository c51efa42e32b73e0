"""The Netflix Prize ratings: the Kaggle files ``combined_data_1.txt`` … ``combined_data_4.txt`` (loose or
inside any ``*.zip``) or the original per-movie files ``training_set/mv_XXXXXXX.txt`` (loose, in
``training_set.tar``, or in ``nf_prize_dataset.tar.gz``), read in numeric order.

``MovieID:`` lines are parsed in the same pass as the ratings by treating ``:`` as a comment
character (the line becomes a one-field row with no rating); the movie id is then forward-filled
with numpy.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from ...errors import EvcfError
from .common import (_PARSE_ERRORS, _archive_errors, _BadData, _bad_line_problem, _CountingReader, _first_bad_line,
                     _is_int, _is_rating, _problem, _Text)

log = logging.getLogger(__name__)

_NETFLIX_CHUNK_ROWS = 1 << 21  # rows per pandas chunk for Netflix (keeps the temporaries small)
_NETFLIX_BATCH_BYTES = 64 << 20  # per-movie files are parsed in batches of about this many bytes
_KAGGLE_NAME = re.compile(r"(?:^|/)combined_data_(\d+)\.txt$")
_MOVIE_NAME = re.compile(r"(?:^|/)mv_(\d+)\.txt$")
_INNER_TAR_NAME = re.compile(r"(?:^|/)training_set\.tar$")
_MOVIE_LINE = re.compile(r"\s*\d+:\s*")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _netflix_missing(raw: Path) -> EvcfError:
    directory = raw if not raw.is_file() else raw.parent
    return EvcfError(
        "no Netflix Prize ratings found; Netflix cannot be downloaded automatically (it needs an account)",
        path=raw,
        fix=(f"get the Kaggle dataset 'netflix-inc/netflix-prize-data' "
             f"(https://www.kaggle.com/datasets/netflix-inc/netflix-prize-data) and put its zip, or the extracted "
             f"combined_data_1.txt, combined_data_2.txt, combined_data_3.txt, combined_data_4.txt, in {directory}/; "
             f"or put the original nf_prize_dataset.tar.gz (or its training_set.tar, or the extracted "
             f"training_set/ folder of mv_0000001.txt ... mv_0017770.txt) in {directory}/"),
    )


def _netflix_fix(path: Path) -> str:
    return (f"re-obtain the Netflix Prize data (Kaggle 'netflix-inc/netflix-prize-data' or "
            f"nf_prize_dataset.tar.gz) and replace {path}")


def _numbered(names: Iterable[str], pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    found = []
    for name in names:
        match = pattern.search(name)
        if match:
            found.append((int(match.group(1)), name))
    return sorted(found)


def _read_netflix(raw: Path) -> pd.DataFrame:
    """Find the Netflix files under ``raw`` (a directory, or one archive) and read them in order."""
    if raw.is_dir():
        entries = sorted(raw.iterdir())
    elif raw.is_file():
        entries = [raw]
    else:
        raise _netflix_missing(raw)
    files = [p for p in entries if p.is_file()]

    # (a) the Kaggle archive: loose files, or members of a zip
    loose = _numbered((str(p) for p in files), _KAGGLE_NAME)
    if loose:
        return _read_kaggle([_Text(Path(name)) for _, name in loose], [n for n, _ in loose])
    for path in (p for p in files if p.suffix.lower() == ".zip"):
        with _archive_errors(path, _netflix_fix(path)):
            with zipfile.ZipFile(path) as archive:
                members = _numbered(archive.namelist(), _KAGGLE_NAME)
        if members:
            return _read_kaggle([_Text(path, name) for _, name in members], [n for n, _ in members])

    # (b) the original layout: per-movie files, loose or in a tar (possibly inside nf_prize_dataset.tar.gz)
    if raw.is_dir():
        for folder in (raw / "training_set", raw / "download" / "training_set", raw):
            if folder.is_dir():
                movies = _numbered((str(p) for p in folder.glob("mv_*.txt")), _MOVIE_NAME)
                if movies:
                    return _read_movie_files(_loose_movie_files(movies), raw)
    tars = [p for p in files if p.name.lower().endswith(_TAR_SUFFIXES)]
    tars.sort(key=lambda p: (not _INNER_TAR_NAME.search(p.name), p.name))  # training_set.tar first
    for path in tars:
        frame = _read_movie_files(_tar_movie_files(path), path)
        if frame is not None:
            return frame
    raise _netflix_missing(raw)


def _read_kaggle(texts: list[_Text], numbers: list[int]) -> pd.DataFrame:
    missing = [n for n in range(1, 5) if n not in numbers]
    if missing:  # a partial set would silently give another dataset than the paper's
        where = texts[0].path if texts[0].member is not None else texts[0].path.parent
        names = ", ".join(f"combined_data_{n}.txt" for n in missing)
        raise EvcfError(f"incomplete Netflix Prize data: {names} missing (the Kaggle archive has "
                        "combined_data_1.txt ... combined_data_4.txt)", path=where,
                        fix=f"put every file of the Kaggle archive in {where}, or its complete zip")
    parts = []
    for text in texts:
        fix = _netflix_fix(text.path)
        with _archive_errors(text.path, fix):
            with text.open() as stream:
                try:
                    users, items, ratings, _ = _parse_netflix(stream)
                    failure = None
                except _BadData as exc:
                    failure = str(exc)
            if failure is not None:
                with text.open() as stream:
                    found = _first_bad_line(stream, _NetflixLineCheck(), 1)
                _raise_netflix_bad(text.path, text.where(found[0] if found else None), found, failure, fix)
        if len(users) == 0:
            raise EvcfError(_problem(text.where(), "file holds no ratings"), path=text.path, fix=fix)
        log.info("Netflix: %s ratings in %s", f"{len(users):,}", text.member or text.path)
        parts.append((users, items, ratings))
    return _netflix_frame(parts, texts[0].path.parent if texts[0].member is None else texts[0].path)


def _raise_netflix_bad(path: Path, where: str, found: tuple[int, str, str] | None, failure: str, fix: str) -> None:
    if found is None:
        raise EvcfError(_problem(where, f"cannot parse the ratings ({failure})"), path=path, fix=fix)
    raise EvcfError(_bad_line_problem(where, found[1], found[2]), path=path, fix=fix)


def _netflix_frame(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], origin: Path) -> pd.DataFrame:
    if not parts or sum(len(p[0]) for p in parts) == 0:
        raise EvcfError("the Netflix files hold no ratings", path=origin, fix=_netflix_fix(origin))
    columns = [np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in range(3)]
    return pd.DataFrame({"user": columns[0], "item": columns[1], "rating": columns[2]}, copy=False)


class _NetflixLineCheck:
    """Line check of the Netflix text format (stateful: a movie line must come first)."""

    def __init__(self, single_movie: bool = False):
        self.seen_movie = False
        self.single_movie = single_movie

    def __call__(self, text: str) -> str | None:
        if ":" in text:
            if not _MOVIE_LINE.fullmatch(text):
                return "expected 'MovieID:' or 'CustomerID,Rating,Date'"
            if self.seen_movie and self.single_movie:
                return "a second 'MovieID:' line in a per-movie file"
            self.seen_movie = True
            return None
        if not self.seen_movie:
            return "rating line before the first 'MovieID:' line"
        values = text.split(",")
        if len(values) != 3:
            return f"expected 3 fields CustomerID,Rating,Date, found {len(values)}"
        if not _is_int(values[0]):
            return "CustomerID is not an integer"
        if not _is_rating(values[1]):
            return "Rating is not a number"
        return None


def _parse_netflix(stream: BinaryIO) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``MovieID:`` / ``CustomerID,Rating,Date`` text in one pass.

    Returns users, items, ratings, and for every ``MovieID:`` line the index in those arrays where its
    ratings start.  ``:`` is the comment character, so a movie line reads as one id with no rating;
    counting ``:`` and ``,`` bytes confirms that exactly the movie lines had a colon and every rating line
    had three fields.  Raises ``_BadData`` on any problem.
    """
    counter = _CountingReader(stream, b":", b",")
    users, items, ratings, starts = [], [], [], []
    movie = None  # the current movie id, carried across chunks
    n_movies = n_out = 0
    try:
        reader = pd.read_csv(counter, sep=",", header=None, names=["id", "rating", "date"], usecols=[0, 1],
                             dtype={"id": np.int64, "rating": np.float32}, comment=":", engine="c",
                             chunksize=_NETFLIX_CHUNK_ROWS)
        for chunk in reader:
            ids = chunk["id"].to_numpy()
            rating = chunk["rating"].to_numpy()
            if ids.size == 0:
                continue
            is_movie = np.isnan(rating)
            heads = np.flatnonzero(is_movie)
            if movie is None and (heads.size == 0 or heads[0] != 0):
                raise _BadData("a rating line comes before the first 'MovieID:' line")
            last_head = np.maximum.accumulate(np.where(is_movie, np.arange(ids.size), -1))
            movie_of_row = np.where(last_head >= 0, ids[np.maximum(last_head, 0)], -1 if movie is None else movie)
            keep = ~is_movie
            users.append(ids[keep])
            items.append(movie_of_row[keep])
            ratings.append(rating[keep])
            starts.append(n_out + heads - np.arange(heads.size))
            n_out += int(keep.sum())
            n_movies += heads.size
            if heads.size:
                movie = int(ids[heads[-1]])
    except pd.errors.EmptyDataError:
        pass
    except _PARSE_ERRORS as exc:
        raise _BadData(str(exc)) from None
    if counter.counts[0] != n_movies:
        raise _BadData("some lines are neither 'MovieID:' nor 'CustomerID,Rating,Date'")
    if counter.counts[1] != 2 * n_out:
        raise _BadData("some rating lines do not have three fields")
    if not users:
        return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64))
    join = np.concatenate
    return join(users), join(items), join(ratings), join(starts)


# The per-movie files of the original release: (number from the file name, name for messages, bytes)
_MovieFile = tuple[int, str, bytes]


def _loose_movie_files(movies: list[tuple[int, str]]) -> Iterator[_MovieFile]:
    for number, name in movies:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise EvcfError(f"cannot read the file ({exc.strerror or exc})", path=name,
                            fix="check that the file is readable") from None
        yield number, name, data


def _tar_movie_files(path: Path) -> Iterator[_MovieFile]:
    """Stream ``mv_*.txt`` members from a tar, looking one level into a nested ``training_set.tar``."""

    def walk(archive: tarfile.TarFile, prefix: str) -> Iterator[_MovieFile]:
        for info in archive:
            if not info.isfile():
                continue
            match = _MOVIE_NAME.search(info.name)
            if match:
                handle = archive.extractfile(info)
                yield int(match.group(1)), prefix + info.name, handle.read()
            elif not prefix and _INNER_TAR_NAME.search(info.name):
                handle = archive.extractfile(info)
                with tarfile.open(fileobj=handle, mode="r|") as inner:
                    yield from walk(inner, f"{info.name}!")

    with _archive_errors(path, _netflix_fix(path)):
        with tarfile.open(path, mode="r|*") as archive:
            yield from walk(archive, "")


def _read_movie_files(files: Iterator[_MovieFile], origin: Path) -> pd.DataFrame | None:
    """Parse per-movie files in batches; put them in numeric order; None if there were none."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    segments: list[tuple[int, int, int, int]] = []  # (file number, part, start, stop)
    batch: list[_MovieFile] = []
    size = 0

    def flush() -> None:
        nonlocal size
        users, items, ratings, starts = _parse_movie_batch(batch, origin)
        if len(starts) != len(batch):  # cannot happen after the per-file checks; never mis-assign movies
            raise EvcfError("cannot match movie lines to per-movie files", path=origin, fix=_netflix_fix(origin))
        stops = np.append(starts[1:], len(users))
        segments.extend((number, len(parts), int(a), int(b)) for (number, _, _), a, b in zip(batch, starts, stops))
        parts.append((users, items, ratings))
        batch.clear()
        size = 0

    for movie_file in files:
        batch.append(movie_file)
        size += len(movie_file[2])
        if size >= _NETFLIX_BATCH_BYTES:
            flush()
    if batch:
        flush()
    if not segments:
        return None
    log.info("Netflix: %s per-movie files from %s", f"{len(segments):,}", origin)
    numbers = [s[0] for s in segments]
    if any(a > b for a, b in zip(numbers, numbers[1:])):  # archive order is not numeric order
        ordered = sorted(segments, key=lambda s: s[0])
        parts = [tuple(np.concatenate([parts[p][k][a:b] for _, p, a, b in ordered]) for k in range(3))]
    return _netflix_frame(parts, origin)


def _parse_movie_batch(batch: list[_MovieFile], origin: Path) -> tuple[np.ndarray, ...]:
    fix = _netflix_fix(origin)
    for number, name, data in batch:  # one 'MovieID:' line, first: so the k-th movie line is the k-th file
        first = data.lstrip().split(b"\n", 1)[0].rstrip()
        if data.count(b":") != 1 or not first.endswith(b":"):
            _raise_movie_file_bad(name, data, origin, "expected one 'MovieID:' line at the top", fix)
    text = b"".join(data if data.endswith(b"\n") else data + b"\n" for _, _, data in batch)
    try:
        return _parse_netflix(io.BytesIO(text))
    except _BadData as exc:
        for _, name, data in batch:
            found = _first_bad_line(data.splitlines(keepends=True), _NetflixLineCheck(single_movie=True), 1)
            if found:
                path, where = _member_where(name, origin, found[0])
                _raise_netflix_bad(path, where, found, str(exc), fix)
        raise EvcfError(f"cannot parse the per-movie files ({exc})", path=origin, fix=fix) from None


def _member_where(name: str, origin: Path, lineno: int | None) -> tuple[Path, str]:
    """The file to name in a message about one per-movie file, and where in it."""
    if origin.is_dir():  # loose files: name is the file's own path
        path, where = Path(name), ""
    else:
        path, where = origin, f"member {name}"
    if lineno is not None:
        where = f"{where}, line {lineno}" if where else f"line {lineno}"
    return path, where


def _raise_movie_file_bad(name: str, data: bytes, origin: Path, failure: str, fix: str) -> None:
    found = _first_bad_line(data.splitlines(keepends=True), _NetflixLineCheck(single_movie=True), 1)
    if found is None:
        found = (1, failure, data.lstrip().split(b"\n", 1)[0].decode("utf-8", "replace").rstrip())
    path, where = _member_where(name, origin, found[0])
    _raise_netflix_bad(path, where, found, failure, fix)
