"""Readers for the raw rating files: one function, one frame ``user, item, rating`` in file order.

Row order matters: the split protocol numbers items in order of first appearance in the file
(``docs/protocol.md``), so every reader keeps the rows exactly as the file has them.

Supported raw formats (``RAW_FORMATS``):

* ``movielens-20m``: ``ml-20m.zip`` holding ``ml-20m/ratings.csv`` (header
  ``userId,movieId,rating,timestamp``), or that ``ratings.csv`` already extracted.
* ``movielens-1m``: ``ml-1m.zip`` holding ``ml-1m/ratings.dat`` (``UserID::MovieID::Rating::Timestamp``).
* ``movielens-100k``: ``ml-100k.zip`` holding ``ml-100k/u.data`` (tab-separated, no header).
* ``netflix``: a directory with the Kaggle files ``combined_data_1.txt`` … ``combined_data_4.txt``
  (loose or inside any ``*.zip``) or the original per-movie files ``training_set/mv_XXXXXXX.txt``
  (loose, in ``training_set.tar``, or in ``nf_prize_dataset.tar.gz``).  Files are read in numeric order.
* ``csv``: a CSV with header ``user,item,rating`` (what ``evcf synth`` writes), or a directory
  holding one as ``ratings.csv`` (a ``local: true`` dataset).

How it stays fast: the pandas C parser reads each file in one pass straight from the archive stream,
with explicit dtypes.  A pass-through reader counts the separator bytes as they go by, which checks
every line's field count for free; only when something is wrong is the file read again, line by line,
to name the first bad line.  Netflix's ``MovieID:`` lines are parsed in the same pass by treating
``:`` as a comment character (the line becomes a one-field row with no rating) and the movie id is
then forward-filled with numpy.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import re
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from ..errors import EvcfError

__all__ = ["RAW_FORMATS", "read_ratings"]

log = logging.getLogger(__name__)

RAW_FORMATS = ("movielens-20m", "movielens-1m", "movielens-100k", "netflix", "csv")

_NETFLIX_CHUNK_ROWS = 1 << 21  # rows per pandas chunk for Netflix (keeps the temporaries small)
_NETFLIX_BATCH_BYTES = 64 << 20  # per-movie files are parsed in batches of about this many bytes
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, gzip.BadGzipFile)
_PARSE_ERRORS = (ValueError, OverflowError)  # pandas' ParserError and EmptyDataError are ValueErrors


def read_ratings(raw: Path | str, fmt: str) -> pd.DataFrame:
    """Read a raw rating file into columns ``user`` (int64), ``item`` (int64), ``rating`` (float32).

    Rows come in file order (for Netflix: files in numeric order, lines in file order).  Any problem a
    user can fix (missing or malformed file, corrupt archive, unknown ``fmt``) raises ``EvcfError``.
    """
    raw = Path(raw)
    if fmt not in RAW_FORMATS:
        raise EvcfError(f"unknown raw format {fmt!r}", path=raw, fix=f"use one of: {', '.join(RAW_FORMATS)}")
    started = time.perf_counter()
    if fmt == "netflix":
        frame = _read_netflix(raw)
    elif fmt == "csv":
        # a local dataset's raw path is its folder: its CSV is ratings.csv there
        csv = raw / "ratings.csv" if raw.is_dir() else raw
        frame = _read_delimited(_plain_text(csv, fix="give a CSV file with header user,item,rating (for a "
                                                     "`local: true` dataset: data/raw/<name>/ratings.csv)"),
                                None, fix="correct the file, or generate it again")
    else:
        folder, filename, layout = _GROUPLENS[fmt]
        text = _grouplens_text(raw, folder, filename)
        if text.member is not None:
            fix = f"this is not the original GroupLens {folder}.zip: delete it and run again to re-download it"
        else:
            fix = f"restore the original {filename} from {folder}.zip, or delete it and download {folder}.zip again"
        frame = _read_delimited(text, layout, fix=fix)
    log.info("read %s ratings from %s (%s) in %.1f s", f"{len(frame):,}", raw, fmt, time.perf_counter() - started)
    return frame


# --------------------------------------------------------------------------------------------------
# Sources: a plain file or a member of a zip archive, and error helpers around them


@dataclass(frozen=True)
class _Text:
    """One text file to parse: ``path`` itself, or the member ``member`` of the zip archive ``path``."""

    path: Path
    member: str | None = None

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        if self.member is None:
            try:
                handle = open(self.path, "rb")
            except OSError as exc:
                raise EvcfError(f"cannot read the file ({exc.strerror or exc})", path=self.path,
                                fix="check that the file exists and is readable") from None
            with handle:
                yield handle
        else:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
                yield handle

    def where(self, lineno: int | None = None) -> str:
        parts = [] if self.member is None else [f"member {self.member}"]
        if lineno is not None:
            parts.append(f"line {lineno}")
        return ", ".join(parts)


def _problem(where: str, problem: str) -> str:
    return f"{where}: {problem}" if where else problem


@contextmanager
def _archive_errors(path: Path, fix: str) -> Iterator[None]:
    """Turn the errors of a damaged zip, tar or gzip file into one ``EvcfError``."""
    try:
        yield
    except _ARCHIVE_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        raise EvcfError(f"archive is corrupt or truncated ({detail})", path=path, fix=fix) from None


def _corrupt_fix(path: Path) -> str:
    return f"delete {path} and run again to re-download it"


class _CountingReader:
    """A pass-through binary reader that counts some single bytes on the way (structural checks).

    pandas' C parser pulls the data through ``read``; counting separators here costs one ``memchr``-like
    pass per byte class and checks the number of fields of every line without parsing them.
    """

    def __init__(self, raw: BinaryIO, *chars: bytes):
        self._raw = raw
        self._chars = chars
        self.counts = [0] * len(chars)

    def _count(self, data: bytes) -> bytes:
        for k, char in enumerate(self._chars):
            self.counts[k] += data.count(char)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self._raw.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._raw.readline(size))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _BadData(Exception):
    """Internal: the fast parse found a problem; the caller re-reads the file to name the bad line."""


# --------------------------------------------------------------------------------------------------
# Delimited text: MovieLens and plain CSV


@dataclass(frozen=True)
class _Layout:
    """How one delimited text format is laid out."""

    sep: str  # between fields, as written ("::" for ML-1M; a run of one repeated character)
    fields: tuple[str, ...]  # field names in file order
    header: bool  # the first line holds the field names
    user: str  # the fields holding the user id, the item id and the rating
    item: str
    rating: str

    def check_line(self, text: str) -> str | None:
        """Why one data line is malformed, or None (as lenient as pandas, so both agree)."""
        values = text.split(self.sep)
        if len(values) != len(self.fields):
            return f"expected {len(self.fields)} fields separated by {self.sep!r}, found {len(values)}"
        for name in (self.user, self.item):
            if not _is_int(values[self.fields.index(name)]):
                return f"{name} is not an integer"
        if not _is_rating(values[self.fields.index(self.rating)]):
            return f"{self.rating} is not a number"
        return None


# folder in the zip, file name, layout
_GROUPLENS: dict[str, tuple[str, str, _Layout]] = {
    "movielens-20m": ("ml-20m", "ratings.csv", _Layout(",", ("userId", "movieId", "rating", "timestamp"),
                                                       True, "userId", "movieId", "rating")),
    "movielens-1m": ("ml-1m", "ratings.dat", _Layout("::", ("UserID", "MovieID", "Rating", "Timestamp"),
                                                     False, "UserID", "MovieID", "Rating")),
    "movielens-100k": ("ml-100k", "u.data", _Layout("\t", ("user id", "item id", "rating", "timestamp"),
                                                    False, "user id", "item id", "rating")),
}


def _is_int(value: str) -> bool:
    try:
        number = int(value)
    except ValueError:
        try:
            as_float = float(value)  # pandas also takes "12.0" for an integer column
        except ValueError:
            return False
        if not (math.isfinite(as_float) and as_float.is_integer()):
            return False
        number = int(as_float)
    return -(2**63) <= number < 2**63


def _is_rating(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _plain_text(raw: Path, fix: str) -> _Text:
    if not raw.exists():
        raise EvcfError("file not found", path=raw, fix=fix)
    if raw.is_dir():
        raise EvcfError("is a directory, expected a file", path=raw, fix=fix)
    return _Text(raw)


def _grouplens_text(raw: Path, folder: str, filename: str) -> _Text:
    """Find the ratings file: inside ``<folder>.zip``, already extracted, or in an extracted folder."""
    get_it = f"download {folder}.zip from GroupLens (the download step does this), or correct the path"
    if not raw.exists():
        raise EvcfError("file not found", path=raw, fix=get_it)
    if raw.is_dir():
        for candidate in (raw / filename, raw / folder / filename):
            if candidate.is_file():
                return _Text(candidate)
        raise EvcfError(f"directory holds neither {filename} nor {folder}/{filename}", path=raw, fix=get_it)
    if raw.suffix.lower() != ".zip" and not zipfile.is_zipfile(raw):
        return _Text(raw)  # an extracted ratings file
    with _archive_errors(raw, _corrupt_fix(raw)):
        with zipfile.ZipFile(raw) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    wanted = f"{folder}/{filename}"
    if wanted in names:
        return _Text(raw, wanted)
    others = [name for name in names if name == filename or name.endswith("/" + filename)]
    if others:
        return _Text(raw, others[0])
    listing = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
    raise EvcfError(f"archive has no member {wanted} (it holds {listing})", path=raw,
                    fix=f"this is not the GroupLens {folder}.zip: delete it and run again to re-download it")


def _csv_layout(header_fields: list[str], text: _Text, fix: str) -> _Layout:
    missing = [name for name in ("user", "item", "rating") if name not in header_fields]
    if missing or len(set(header_fields)) != len(header_fields):
        raise EvcfError(_problem(text.where(1), f"header is {','.join(header_fields)!r}, expected user,item,rating"),
                        path=text.path, fix=fix)
    return _Layout(",", tuple(header_fields), True, "user", "item", "rating")


def _read_delimited(text: _Text, layout: _Layout | None, *, fix: str) -> pd.DataFrame:
    """Parse a delimited ratings file with the C parser; ``layout=None`` means the ``csv`` format."""
    with _archive_errors(text.path, _corrupt_fix(text.path)):
        with text.open() as stream:
            if layout is None or layout.header:
                first = stream.readline()
                if not first.strip():
                    raise EvcfError(_problem(text.where(), "file is empty" if not first else "first line is empty"),
                                    path=text.path, fix=fix)
                header = first.decode("utf-8-sig", errors="replace").strip().split(",")
                if layout is None:
                    layout = _csv_layout(header, text, fix)
                elif tuple(header) != layout.fields:
                    raise EvcfError(_problem(text.where(1), f"header is {','.join(header)!r}, expected "
                                             f"{','.join(layout.fields)!r}"), path=text.path, fix=fix)
            try:
                frame = _parse_delimited(stream, layout)
                failure = None
            except _BadData as exc:
                frame, failure = None, str(exc)
        if frame is None:
            _raise_first_bad_line(text, layout, failure, fix)
    if len(frame) == 0:
        raise EvcfError(_problem(text.where(), "file holds no ratings"), path=text.path, fix=fix)
    return frame


def _parse_delimited(stream: BinaryIO, layout: _Layout) -> pd.DataFrame:
    width = len(layout.sep)
    char = layout.sep[0]
    raw_fields = (len(layout.fields) - 1) * width + 1  # "a::b" splits on ":" into "a", "", "b"
    pos = {name: k * width for k, name in enumerate(layout.fields)}
    blanks = [k for k in range(raw_fields) if k % width]  # must be empty (the second ':' of '::')
    dtype: dict[int, type] = {pos[layout.user]: np.int64, pos[layout.item]: np.int64, pos[layout.rating]: np.float32}
    dtype.update({k: np.float32 for k in blanks})
    counter = _CountingReader(stream, char.encode())
    try:
        frame = pd.read_csv(counter, sep=char, header=None, usecols=sorted(dtype), dtype=dtype, engine="c")
    except pd.errors.EmptyDataError:
        return pd.DataFrame({"user": np.empty(0, np.int64), "item": np.empty(0, np.int64),
                             "rating": np.empty(0, np.float32)})
    except _PARSE_ERRORS as exc:
        raise _BadData(str(exc)) from None
    n = len(frame)
    if counter.counts[0] != (raw_fields - 1) * n:
        raise _BadData("some lines have the wrong number of fields")
    rating = frame[pos[layout.rating]].to_numpy()
    if not np.isfinite(rating).all():
        raise _BadData("some ratings are missing or not finite")
    if blanks and not frame[blanks].isna().all().all():
        raise _BadData(f"some fields are not separated by {layout.sep!r}")
    return pd.DataFrame({"user": frame[pos[layout.user]].to_numpy(), "item": frame[pos[layout.item]].to_numpy(),
                         "rating": rating}, copy=False)


def _first_bad_line(lines: Iterable[bytes], check: Callable[[str], str | None],
                    first_lineno: int) -> tuple[int, str, str] | None:
    """Line number, reason and text of the first line ``check`` rejects (blank lines are skipped)."""
    for lineno, raw in enumerate(lines, first_lineno):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return lineno, "not UTF-8 text", repr(raw[:80])[2:-1]
        if not text.strip():
            continue
        reason = check(text)
        if reason:
            return lineno, reason, text
    return None


def _bad_line_problem(where: str, reason: str, text: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return _problem(where, f"malformed line ({reason}): {shown!r}")


def _raise_first_bad_line(text: _Text, layout: _Layout, failure: str | None, fix: str) -> None:
    with _archive_errors(text.path, _corrupt_fix(text.path)):
        with text.open() as stream:
            if layout.header:
                stream.readline()
            found = _first_bad_line(stream, layout.check_line, 2 if layout.header else 1)
    if found is None:
        raise EvcfError(_problem(text.where(), f"cannot parse the ratings ({failure})"), path=text.path, fix=fix)
    lineno, reason, line = found
    raise EvcfError(_bad_line_problem(text.where(lineno), reason, line), path=text.path, fix=fix)


# --------------------------------------------------------------------------------------------------
# Netflix Prize

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
