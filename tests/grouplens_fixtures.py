"""Build small archives in the GroupLens and Netflix Prize layouts, and serve files over local HTTP.

Tests make these at test time from a tiny frame (no third-party rating data lives in the repository).
Frames have columns ``user``, ``item``, ``rating``.

Row order in the files:

* MovieLens (``make_ml20m_zip``, ``make_ml1m_zip``, ``make_ml100k_zip``): exactly the frame's order, so
  ``read_ratings`` returns the frame unchanged.
* Netflix (``make_netflix_kaggle``, ``make_netflix_training_set``, ``make_nf_prize_targz``): the
  layout groups ratings by movie, movies in ascending id, rows of one movie in the frame's order.
  ``expected_netflix_order(df)`` is that frame, the one ``read_ratings(..., "netflix")`` returns.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "make_ml20m_zip",
    "make_ml1m_zip",
    "make_ml100k_zip",
    "make_netflix_kaggle",
    "make_netflix_training_set",
    "make_nf_prize_targz",
    "expected_netflix_order",
    "write_md5",
    "random_ratings",
    "serve_directory",
    "serve_handler",
]

_FIRST_TIMESTAMP = 1_100_000_000


def random_ratings(seed: int, n_users: int = 60, n_items: int = 40, n_rows: int = 1500,
                   half_stars: bool = True) -> pd.DataFrame:
    """Distinct (user, item) pairs in random row order; ids 1..n_users and 1..n_items (GroupLens-like).

    Ratings are 0.5..5 in half stars, or 1..5 whole stars.  Dtypes match ``read_ratings``: int64, int64,
    float32.
    """
    if n_rows > n_users * n_items:
        raise ValueError(f"n_rows={n_rows} exceeds the {n_users * n_items} distinct (user, item) pairs")
    rng = np.random.default_rng(seed)
    cells = rng.choice(n_users * n_items, size=n_rows, replace=False)  # random order: already shuffled
    if half_stars:
        rating = rng.integers(1, 11, size=n_rows) / 2
    else:
        rating = rng.integers(1, 6, size=n_rows).astype(np.float64)
    return pd.DataFrame({
        "user": (cells // n_items + 1).astype(np.int64),
        "item": (cells % n_items + 1).astype(np.int64),
        "rating": rating.astype(np.float32),
    })


def _whole_stars(df: pd.DataFrame, layout: str) -> np.ndarray:
    rating = df["rating"].to_numpy(dtype=np.float64)
    if not np.all(rating == np.round(rating)):
        raise ValueError(f"{layout} stores whole-star ratings; use random_ratings(..., half_stars=False)")
    return rating.astype(np.int64)


def _timestamps(n: int) -> np.ndarray:
    return _FIRST_TIMESTAMP + np.arange(n, dtype=np.int64) * 37


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _lines(rows: Iterator[str]) -> bytes:
    return "".join(f"{row}\n" for row in rows).encode()


def make_ml20m_zip(path: Path, df: pd.DataFrame) -> Path:
    """``ml-20m.zip`` with ``ml-20m/ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    ts = _timestamps(len(df))
    body = _lines(f"{u},{i},{r:.1f},{t}" for u, i, r, t in zip(df["user"], df["item"], df["rating"], ts))
    members = {"ml-20m/": b"", "ml-20m/movies.csv": b"movieId,title,genres\n",
               "ml-20m/ratings.csv": b"userId,movieId,rating,timestamp\n" + body}
    return _write_zip(path, members)


def make_ml1m_zip(path: Path, df: pd.DataFrame) -> Path:
    """``ml-1m.zip`` with ``ml-1m/ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, whole stars)."""
    rating = _whole_stars(df, "ML-1M")
    ts = _timestamps(len(df))
    body = _lines(f"{u}::{i}::{r}::{t}" for u, i, r, t in zip(df["user"], df["item"], rating, ts))
    return _write_zip(path, {"ml-1m/README": b"fixture\n", "ml-1m/ratings.dat": body})


def make_ml100k_zip(path: Path, df: pd.DataFrame) -> Path:
    """``ml-100k.zip`` with ``ml-100k/u.data`` (tab-separated ``user item rating timestamp``)."""
    rating = _whole_stars(df, "ML-100K")
    ts = _timestamps(len(df))
    body = _lines(f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(df["user"], df["item"], rating, ts))
    return _write_zip(path, {"ml-100k/u.item": b"1|fixture\n", "ml-100k/u.data": body})


def expected_netflix_order(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as the Netflix layouts store it: by movie id ascending, rows of a movie in df order."""
    out = df.sort_values("item", kind="stable").reset_index(drop=True)
    return out.astype({"user": np.int64, "item": np.int64, "rating": np.float32})


def _movie_texts(df: pd.DataFrame) -> list[tuple[int, bytes]]:
    """One ``MovieID:`` block per movie, in ascending movie id."""
    rating = _whole_stars(df, "Netflix")
    frame = pd.DataFrame({"user": df["user"].to_numpy(), "item": df["item"].to_numpy(), "rating": rating})
    blocks = []
    for movie, rows in frame.groupby("item", sort=True):
        day = 1 + (movie % 28)
        lines = [f"{movie}:"] + [f"{u},{r},2005-09-{day:02d}" for u, r in zip(rows["user"], rows["rating"])]
        blocks.append((int(movie), _lines(iter(lines))))
    return blocks


def make_netflix_kaggle(directory: Path, df: pd.DataFrame, *, zipped: bool = False) -> Path:
    """The Kaggle ``netflix-prize-data`` layout: ``combined_data_1.txt`` … ``combined_data_4.txt``.

    Movies (ascending) are cut into up to four contiguous runs, one file each.  Loose files go in
    ``directory``; with ``zipped`` they are members of ``directory/netflix-prize-data.zip`` (at the zip's
    root, next to a ``movie_titles.csv``), as Kaggle ships them.  Returns ``directory``, the ``raw`` path
    for ``read_ratings(directory, "netflix")``; rows come back in ``expected_netflix_order(df)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blocks = _movie_texts(df)
    runs = [run for run in np.array_split(np.arange(len(blocks)), min(4, len(blocks))) if run.size]
    files = {f"combined_data_{k}.txt": b"".join(blocks[j][1] for j in run) for k, run in enumerate(runs, 1)}
    if zipped:
        titles = _lines(f"{movie},2001,Movie {movie}" for movie, _ in blocks)
        _write_zip(directory / "netflix-prize-data.zip", {"movie_titles.csv": titles, **files})
    else:
        for name, data in files.items():
            (directory / name).write_bytes(data)
    return directory


def make_netflix_training_set(directory: Path, df: pd.DataFrame, *, as_tar: bool = False,
                              reverse_members: bool = False) -> Path:
    """The original release's ``training_set/mv_XXXXXXX.txt`` files (one per movie, named by its id).

    Loose in ``directory/training_set/``, or with ``as_tar`` as members ``training_set/mv_*.txt`` of
    ``directory/training_set.tar`` (``reverse_members`` stores them in descending order, to check that
    readers sort).  Returns ``directory``; rows come back in ``expected_netflix_order(df)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blocks = _movie_texts(df)
    if as_tar:
        order = reversed(blocks) if reverse_members else blocks
        (directory / "training_set.tar").write_bytes(_tar_bytes({f"training_set/mv_{m:07d}.txt": d for m, d in order}))
    else:
        folder = directory / "training_set"
        folder.mkdir(exist_ok=True)
        for movie, data in blocks:
            (folder / f"mv_{movie:07d}.txt").write_bytes(data)
    return directory


def make_nf_prize_targz(directory: Path, df: pd.DataFrame) -> Path:
    """``directory/nf_prize_dataset.tar.gz`` holding ``download/training_set.tar`` (the original release)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inner = _tar_bytes({f"training_set/mv_{m:07d}.txt": d for m, d in _movie_texts(df)})
    outer = {"download/README": b"fixture\n", "download/training_set.tar": inner}
    with tarfile.open(directory / "nf_prize_dataset.tar.gz", "w:gz") as archive:
        for name, data in outer.items():
            _add_member(archive, name, data)
    return directory


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _FIRST_TIMESTAMP
    archive.addfile(info, io.BytesIO(data))


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            _add_member(archive, name, data)
    return buffer.getvalue()


def write_md5(path: Path) -> Path:
    """Write ``<path>.md5`` in GroupLens style (``<hex>  <name>``) and return it."""
    path = Path(path)
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    md5 = path.with_name(path.name + ".md5")
    md5.write_text(f"{digest}  {path.name}\n")
    return md5


@contextmanager
def serve_handler(handler: type[http.server.BaseHTTPRequestHandler] | partial) -> Iterator[str]:
    """Run a threaded HTTP server on 127.0.0.1 (a free port) with ``handler``; yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fixture-http",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def send_head(self):
        if self.requests is not None:
            self.requests.append(self.path)
        return super().send_head()


@contextmanager
def serve_directory(directory: Path, *, requests: list[str] | None = None) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yield the base URL (no trailing slash).

    If ``requests`` is a list, the path of every GET/HEAD request is appended to it.
    """
    handler = type("Handler", (_QuietFileHandler,), {"requests": requests})
    with serve_handler(partial(handler, directory=str(directory))) as url:
        yield url
