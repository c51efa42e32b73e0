"""fetch_archive against a local HTTP server: verified downloads, clean failures, existing files untouched."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import socket
from pathlib import Path

import pytest
from grouplens_fixtures import make_ml20m_zip, random_ratings, serve_directory, serve_handler, write_md5

MD5 = "0" * 32  # a well-formed checksum, for tests that fail before any byte is checked

import evcf.data.download as download
from evcf.data.download import fetch_archive, file_md5, file_sha256
from evcf.errors import EvcfError


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A GroupLens-like folder: ml-20m.zip with its ml-20m.zip.md5 beside it."""
    folder = tmp_path / "site"
    archive = make_ml20m_zip(folder / "ml-20m.zip", random_ratings(0))
    write_md5(archive)
    return folder


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_file_checksums(site):
    data = (site / "ml-20m.zip").read_bytes()
    assert file_md5(site / "ml-20m.zip") == hashlib.md5(data).hexdigest()
    assert file_sha256(site / "ml-20m.zip") == hashlib.sha256(data).hexdigest()


def test_download_verified_with_pinned_md5(site, tmp_path):
    dest = tmp_path / "data" / "raw" / "ml-20m.zip"  # parent folders do not exist yet
    requests: list[str] = []
    with serve_directory(site, requests=requests) as base:
        got = fetch_archive(f"{base}/ml-20m.zip", dest, md5=file_md5(site / "ml-20m.zip"))
    assert got == dest
    assert dest.read_bytes() == (site / "ml-20m.zip").read_bytes()
    assert listing(dest.parent) == ["ml-20m.zip"]
    assert requests == ["/ml-20m.zip"]


def test_no_checksum_is_an_error_and_nothing_is_fetched_or_used(site, tmp_path):
    """An unverified archive is never used: not downloaded, and an existing file is not trusted."""
    requests: list[str] = []
    with serve_directory(site, requests=requests) as base, pytest.raises(EvcfError) as info:
        fetch_archive(f"{base}/ml-20m.zip", tmp_path / "raw" / "ml-20m.zip")
    assert "no checksum given" in str(info.value) and "pin the archive's md5" in str(info.value)
    assert requests == [] and not (tmp_path / "raw").exists()
    dest = tmp_path / "ml-20m.zip"
    dest.write_bytes(b"the user's own copy")
    with pytest.raises(EvcfError, match="no checksum given"):
        fetch_archive(f"{closed_port_url()}/ml-20m.zip", dest)
    assert dest.read_bytes() == b"the user's own copy"


def test_download_with_given_sha256(site, tmp_path):
    sha = hashlib.sha256((site / "ml-20m.zip").read_bytes()).hexdigest()
    with serve_directory(site) as base:
        dest = fetch_archive(f"{base}/ml-20m.zip", tmp_path / "ml-20m.zip", sha256=sha.upper())
    assert file_sha256(dest) == sha


def test_md5_mismatch_leaves_nothing(site, tmp_path):
    dest_dir = tmp_path / "raw"
    with serve_directory(site) as base, pytest.raises(EvcfError) as info:
        fetch_archive(f"{base}/ml-20m.zip", dest_dir / "ml-20m.zip", md5="0123456789abcdef0123456789abcdef")
    message = str(info.value)
    assert message.startswith(f"{dest_dir / 'ml-20m.zip'}: download of {base}/ml-20m.zip failed: ")
    assert "md5" in message and "differs from the expected 0123456789abcdef0123456789abcdef" in message
    assert "fix: " in message
    assert not dest_dir.exists()  # not even the folder made for it


def test_http_404_leaves_nothing(site, tmp_path):
    with serve_directory(site) as base, pytest.raises(EvcfError, match=r"failed: HTTP 404") as info:
        fetch_archive(f"{base}/ml-25m.zip", tmp_path / "raw" / "ml-25m.zip", md5=MD5)
    assert "place it at" in str(info.value)
    assert listing(tmp_path / "raw") == []


def test_connection_refused_leaves_nothing(tmp_path):
    with pytest.raises(EvcfError, match=r"ml-20m\.zip failed: .*fix: check the network"):
        fetch_archive(f"{closed_port_url()}/ml-20m.zip", tmp_path / "raw" / "ml-20m.zip", timeout=5, md5=MD5)
    assert listing(tmp_path / "raw") == []


class ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises 100,000 bytes, sends 1,000, then closes the connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


def test_truncated_transfer_leaves_nothing(tmp_path):
    with serve_handler(ShortBody) as base, pytest.raises(EvcfError, match="cut short"):
        fetch_archive(f"{base}/ml-20m.zip", tmp_path / "raw" / "ml-20m.zip", md5=MD5)
    assert listing(tmp_path / "raw") == []


def test_keyboard_interrupt_cleans_up_and_propagates(site, tmp_path, monkeypatch):
    class Interrupting:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "tqdm", Interrupting)
    with serve_directory(site) as base, pytest.raises(KeyboardInterrupt):
        fetch_archive(f"{base}/ml-20m.zip", tmp_path / "raw" / "ml-20m.zip", md5=MD5)
    assert listing(tmp_path / "raw") == []


def test_existing_good_file_is_reused_without_requests(site, tmp_path):
    dest = tmp_path / "ml-20m.zip"
    dest.write_bytes((site / "ml-20m.zip").read_bytes())
    md5 = file_md5(dest)
    # no server at all: a given checksum needs no network
    assert fetch_archive(f"{closed_port_url()}/ml-20m.zip", dest, md5=md5) == dest


@pytest.mark.parametrize("how", ["md5", "sha256"])
def test_existing_file_with_wrong_checksum_is_kept_untouched(site, tmp_path, how):
    dest = tmp_path / "ml-20m.zip"
    original = b"PK\x03\x04 half a download"
    dest.write_bytes(original)
    os.utime(dest, (1_000_000_000, 1_000_000_000))
    before = dest.stat()
    with serve_directory(site) as base:
        kwargs = {"md5": dict(md5=file_md5(site / "ml-20m.zip")),
                  "sha256": dict(sha256=file_sha256(site / "ml-20m.zip"))}[how]
        with pytest.raises(EvcfError) as info:
            fetch_archive(f"{base}/ml-20m.zip", dest, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{dest}: the existing file's {how} ")
    assert "differs from the expected" in message and f"delete {dest}" in message
    assert dest.read_bytes() == original
    assert dest.stat().st_mtime == before.st_mtime and dest.stat().st_ino == before.st_ino
    assert listing(tmp_path) == ["ml-20m.zip", "site"]


def test_bad_checksum_argument(tmp_path):
    with pytest.raises(EvcfError, match="32 hexadecimal digits"):
        fetch_archive("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", md5="not-a-checksum")


def test_no_progress_bar_when_stderr_is_not_a_terminal(site, tmp_path, capsys):
    with serve_directory(site) as base:
        fetch_archive(f"{base}/ml-20m.zip", tmp_path / "a.zip", md5=file_md5(site / "ml-20m.zip"))
        assert capsys.readouterr().err == ""
        fetch_archive(f"{base}/ml-20m.zip", tmp_path / "b.zip", md5=file_md5(site / "ml-20m.zip"), progress=True)
    assert "b.zip" in capsys.readouterr().err  # the bar, when asked for
