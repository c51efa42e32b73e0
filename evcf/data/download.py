"""Download a raw dataset archive once, verify it, and never leave a partial file behind.

``fetch_archive`` reuses a file that is already at ``dest`` when its checksum matches (it never deletes
or changes a file the user already had).  A new download streams into ``<dest>.tmp`` in the same
directory (:func:`evcf.io.write_with`, evcf's one atomic writer) and is renamed onto ``dest`` only after
the byte count and the checksum check out; on any failure the temporary file is removed.  A checksum is required: params.yaml pins each archive's MD5 (as
its publisher gives it), and nothing unverified is ever used, unless params.yaml says so in words
(``unverified: true`` for that dataset).  :func:`verify_file` checks a raw file in place (the split step
calls it before reading the file, so that an archive put there by hand is checked too).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from ..errors import EvcfError
from ..io import write_with

__all__ = ["fetch_archive", "file_md5", "file_sha256", "verify_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _md5() -> hashlib._Hash:
    return hashlib.md5(usedforsecurity=False)  # an integrity check, not security


def _file_digest(path: Path, make: Callable[[], hashlib._Hash]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, make).hexdigest()  # streamed in chunks


def file_md5(path: Path) -> str:
    """MD5 of a file as lowercase hex, read in chunks."""
    return _file_digest(Path(path), _md5)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file as lowercase hex, read in chunks."""
    return _file_digest(Path(path), hashlib.sha256)


def _check_hex(value: str | None, name: str, digits: int) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{digits}}}", value):
        raise EvcfError(f"{name} {value!r} is not a checksum of {digits} hexadecimal digits",
                        fix=f"give the {name} as {digits} hexadecimal digits, or leave it out")
    return value


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": f"evcf/{__version__} (python urllib)"})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "the transfer was cut short (the server closed the connection early)"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class _Expected:
    """The checksums a file must have, and where they came from (for messages)."""

    def __init__(self, md5: str | None, sha256: str | None):
        self.md5 = md5
        self.sha256 = sha256

    def __bool__(self) -> bool:
        return self.md5 is not None or self.sha256 is not None

    def mismatch(self, md5: str | None, sha256: str | None) -> str | None:
        """Describe the first checksum that differs, or None when all known ones match."""
        if self.sha256 is not None and sha256 != self.sha256:
            return f"sha256 {sha256} differs from the expected {self.sha256}"
        if self.md5 is not None and md5 != self.md5:
            return f"md5 {md5} differs from the expected {self.md5}"
        return None


def fetch_archive(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
                  unverified: bool = False, progress: bool | None = None, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there; return ``dest``.

    At least one of ``md5`` and ``sha256`` is required (``unverified=True``: none, said explicitly),
    and every one given must match.
    ``progress`` shows a tqdm bar; by default only when stderr is a terminal.  Raises ``EvcfError``
    for a missing checksum, a failed download or a checksum mismatch, leaving nothing behind.
    """
    dest = Path(dest)
    md5 = _check_hex(md5, "md5", 32)
    sha256 = _check_hex(sha256, "sha256", 64)
    expected = _Expected(md5, sha256)
    if not expected and not unverified:
        raise EvcfError(f"no checksum given for {url}: an unverified download is never used", path=dest,
                        fix="pin the archive's md5 (or sha256) in params.yaml under data.<dataset> "
                            "(or, knowingly, set data.<dataset>.unverified: true)")
    if not expected:
        log.warning("%s: no pinned checksum; used unverified because params.yaml says `unverified: true`", url)

    if dest.exists():
        return _reuse_existing(dest, expected)
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvcfError(f"cannot create the directory ({exc.strerror or exc})", path=dest.parent,
                        fix="check the path and its permissions") from None
    try:
        _download(url, dest, expected, progress=sys.stderr.isatty() if progress is None else progress,
                  timeout=timeout)
    except BaseException:
        for directory in created:  # leave nothing behind, not even the folders made for it
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    return dest


def verify_file(path: Path, *, md5: str | None = None, sha256: str | None = None) -> Path:
    """Check a raw file in place against its pinned checksum(s); raise ``EvcfError`` naming the file,
    the expected and the actual value, and the fix.  Nothing to check (no checksum): returned as is."""
    path = Path(path)
    expected = _Expected(_check_hex(md5, "md5", 32), _check_hex(sha256, "sha256", 64))
    if not expected:
        return path
    if not path.exists():
        raise EvcfError("the raw file is missing", path=path,
                        fix="run the download step (snakemake), or place the archive there by hand: "
                            "it is checked against the pinned checksum before use")
    return _reuse_existing(path, expected)


def _reuse_existing(dest: Path, expected: _Expected) -> Path:
    if not dest.is_file():
        raise EvcfError("exists but is not a file", path=dest, fix="move it away, or choose another destination")
    try:
        md5 = file_md5(dest) if expected.md5 else None
        sha256 = file_sha256(dest) if expected.sha256 else None
    except OSError as exc:
        raise EvcfError(f"cannot read the existing file ({exc.strerror or exc})", path=dest,
                        fix="check its permissions, or delete it to re-download") from None
    problem = expected.mismatch(md5, sha256)
    if problem:
        raise EvcfError(f"the existing file's {problem}", path=dest,
                        fix=f"it is incomplete, damaged or another version: delete {dest} and run again to "
                            f"re-download it, or put the archive with the pinned checksum there")
    log.info("%s already present, checksum verified", dest)
    return dest


class _Failed(Exception):
    """Internal: a download went wrong in a way the message below describes."""


def _download(url: str, dest: Path, expected: _Expected, *, progress: bool, timeout: float) -> None:
    fix = (f"check the network connection and the URL, then run again; or download {url} by hand and place "
           f"it at {dest}: it is checked against the pinned checksum before it is used")
    log.info("downloading %s to %s", url, dest)

    def fetch(tmp: Path) -> None:
        """The body into ``tmp``, checked: a mismatch raises, and write_with removes ``tmp``."""
        md5, sha256 = _stream_to(url, tmp, expected, progress=progress, timeout=timeout, label=dest.name)
        problem = expected.mismatch(md5, sha256)
        if problem:
            raise _Failed(f"the downloaded file's {problem}")

    try:  # the temporary file goes also on KeyboardInterrupt, which propagates unchanged
        write_with(dest, fetch)
    except _Failed as exc:
        raise EvcfError(f"download of {url} failed: {exc}", path=dest, fix=fix) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise EvcfError(f"download of {url} failed: {_reason(exc)}", path=dest, fix=fix) from None
    log.info("downloaded %s (%s bytes)", dest, f"{dest.stat().st_size:,}")


def _stream_to(url: str, tmp: Path, expected: _Expected, *, progress: bool, timeout: float,
               label: str) -> tuple[str | None, str | None]:
    """Write the response body to ``tmp``; return its md5 and sha256 (None where not needed)."""
    hashes = {"md5": _md5() if expected.md5 else None, "sha256": hashlib.sha256() if expected.sha256 else None}
    with urllib.request.urlopen(_request(url), timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                                          disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for digest in hashes.values():
                    if digest is not None:
                        digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _Failed(f"the transfer was cut short ({received:,} of {total:,} bytes received)")
    return tuple(None if h is None else h.hexdigest() for h in hashes.values())
