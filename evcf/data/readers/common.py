"""What the readers of every raw format share: the file to parse (a plain file or a zip member), the
errors of a damaged archive, the pass-through byte counter that checks field counts while pandas
parses, and the line-by-line re-read that names the first bad line.
"""

from __future__ import annotations

import gzip
import math
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import EvcfError

_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, gzip.BadGzipFile)
_PARSE_ERRORS = (ValueError, OverflowError)  # pandas' ParserError and EmptyDataError are ValueErrors


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
