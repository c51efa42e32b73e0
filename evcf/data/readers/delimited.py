"""Delimited text (the MovieLens formats and plain CSV): one pass of pandas' C parser.

The file is read straight from the archive stream with explicit dtypes.  A pass-through reader
(:class:`~evcf.data.readers.common._CountingReader`) counts the separator bytes as they go by, which
checks every line's field count for free; only when something is wrong is the file read again, line
by line, to name the first bad line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd

from ...errors import EvcfError
from .common import (_PARSE_ERRORS, _archive_errors, _BadData, _bad_line_problem, _corrupt_fix, _CountingReader,
                     _first_bad_line, _is_int, _is_rating, _problem, _Text)


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
