"""Seeded synthetic data at the shape of a paper's dataset, for ``evcf bench``.

* :data:`SHAPES`: the sizes of Liang et al.'s ML-20M and Netflix training matrices;
* :func:`synthetic_matrix`: a seeded 0/1 CSR matrix of a given size with ML-like user-activity and
  item-popularity skew (what the bench trains on);
* :func:`heldout_split`: fold-in and held-out rows of such a matrix, as the protocol splits
  held-out users (what the bench evaluates);
* :func:`write_ml20m_ratings`: a seeded ML-20M-format ``ratings.csv`` (what the bench preprocesses).

Unlike :mod:`evcf.data.synthetic` (a small dataset with latent structure that a model can learn,
for running the pipeline offline), these only have the sizes and skew that set the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import EvcfError

__all__ = ["Shape", "SHAPES", "synthetic_matrix", "heldout_split", "write_ml20m_ratings"]


@dataclass(frozen=True)
class Shape:
    name: str
    users: int  # training users (rows of the training matrix)
    items: int
    nnz: int  # clicks in the training matrix
    preprocess_rows: int | None  # rows of the timed ratings.csv by default; None: only when asked


SHAPES: dict[str, Shape] = {
    # Liang et al.'s ML-20M split: 116,677 training users x 20,108 items, ~8M training clicks
    # (the issue: 7-8.5M); the raw ML-20M ratings.csv has 20,000,263 rows.
    "ml-20m": Shape("ml-20m", 116_677, 20_108, 8_000_000, 20_000_263),
    # Liang et al.'s Netflix split: 383,435 training users x 17,769 items, ~50M training clicks.
    # Preprocessing is timed on the ML-20M format only, so it is off unless asked for.
    "netflix": Shape("netflix", 383_435, 17_769, 50_000_000, None),
}


def check_sizes(n_users: int, n_items: int, nnz: int) -> None:
    cap = max(1, n_items // 2)
    if n_users < 1 or n_items < 2 or not n_users <= nnz <= n_users * cap:
        raise EvcfError(
            f"cannot make a {n_users:,} x {n_items:,} matrix with {nnz:,} clicks",
            fix=f"give at least 1 user, 2 items, one click per user and at most half the items per "
                f"user (nnz between {n_users:,} and {max(n_users, 1) * cap:,})")


def synthetic_matrix(n_users: int, n_items: int, nnz: int, seed: int, *, min_per_user: int = 5,
                     activity_sigma: float = 1.2, zipf: float = 1.4, zipf_offset: float = 50.0
                     ) -> sp.csr_matrix:
    """A seeded 0/1 CSR matrix (n_users, n_items) with exactly ``nnz`` ones and ML-like skew.

    * Row lengths are log-normal with σ = ``activity_sigma`` (1.2: the median user has about half
      the mean, as in ML-20M), scaled to sum to ``nnz``, at least ``min(min_per_user, nnz //
      n_users)`` and at most half the items.
    * Within a row, items are distinct and drawn by Zipf-Mandelbrot popularity
      ``(rank + zipf_offset) ** -zipf`` over a random permutation of the items (at ML-20M's shape:
      the top item is in ~30% of the rows and the top 1% of items hold ~45% of the clicks); rows
      still short after a few rounds of redraws are completed uniformly.
    """
    check_sizes(n_users, n_items, nnz)
    cap = max(1, n_items // 2)
    rng = np.random.default_rng(seed)

    # row lengths: floor(raw * s) clipped to [low, cap], s found by bisection, remainder spread
    raw = rng.lognormal(0.0, activity_sigma, n_users)
    low = max(1, min(min_per_user, nnz // n_users))
    cap = max(cap, low)

    def total(scale: float) -> int:
        return int(np.clip(np.floor(raw * scale), low, cap).sum())

    lo, hi = 0.0, 1.0
    while total(hi) < nnz:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) <= nnz else (lo, mid)
    lengths = np.clip(np.floor(raw * lo), low, cap).astype(np.int64)
    missing = nnz - int(lengths.sum())
    while missing > 0:
        room = np.flatnonzero(lengths < cap)
        pick = rng.choice(room, size=min(missing, room.size), replace=False)
        lengths[pick] += 1
        missing -= pick.size

    # items: draw each row's shortfall, deduplicate, repeat for the rows still short
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    cdf = np.cumsum((ranks + zipf_offset) ** -zipf)
    cdf /= cdf[-1]
    item_of_rank = rng.permutation(n_items).astype(np.int64)
    have = np.zeros(n_users, np.int64)
    pending = np.empty(0, np.int64)  # keys user * n_items + item of rows not yet complete
    done: list[np.ndarray] = []
    popularity_rounds, max_rounds = 8, 200
    for round_ in range(max_rounds):
        need = lengths - have
        users = np.flatnonzero(need)
        if users.size == 0:
            break
        draw_users = np.repeat(users, need[users])
        if round_ < popularity_rounds:
            pos = np.minimum(np.searchsorted(cdf, rng.random(draw_users.size), side="right"), n_items - 1)
            items = item_of_rank[pos]
        else:
            items = rng.integers(0, n_items, draw_users.size)
        keys = np.concatenate([pending, draw_users * n_items + items])
        keys.sort()  # np.unique's hash path is ~10x slower than sort + compare here
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        row_of_key = keys // n_items
        have[users] = np.bincount(row_of_key, minlength=n_users)[users]
        complete = (have == lengths)[row_of_key]
        done.append(keys[complete])
        pending = keys[~complete]
    else:  # pragma: no cover - uniform redraws converge geometrically
        raise RuntimeError("synthetic_matrix did not converge")

    keys = np.concatenate(done)
    keys.sort()
    rows = keys // n_items  # (nnz,)
    cols = (keys - rows * n_items).astype(np.int32)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    if nnz < 2**31:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((np.ones(nnz, np.float32), cols, indptr), shape=(n_users, n_items))


def heldout_split(matrix: sp.csr_matrix, seed: int, fraction: float = 0.2, min_items: int = 5
                  ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fold-in, held-out) rows as the protocol splits held-out users: a row with ≥ ``min_items``
    clicks has ``int(fraction · n)`` of them, drawn at random (seeded), held out; shorter rows keep
    everything as fold-in."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    order = np.lexsort((rng.random(matrix.nnz), rows))  # a random order within each row
    rank = np.empty(matrix.nnz, np.int64)
    rank[order] = np.arange(matrix.nnz) - matrix.indptr[rows[order]]
    n_held = np.where(lengths >= min_items, (fraction * lengths).astype(np.int64), 0)
    held = rank < n_held[rows]
    cols = matrix.indices

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (rows[mask], cols[mask])),
                             shape=matrix.shape)

    return part(~held), part(held)


# ML-20M's share of each star rating 0.5, 1.0, ..., 5.0 (approximate, from its ratings.csv)
_ML20M_STAR_SHARES = (0.012, 0.034, 0.014, 0.072, 0.044, 0.214, 0.105, 0.278, 0.077, 0.150)
_ML20M_USERS_PER_ROW = 138_493 / 20_000_263  # raw ML-20M: 138,493 users, 26,744 movies
_ML20M_MOVIES = 26_744
_ML20M_MAX_MOVIE_ID = 131_262


def _n_digits(values: np.ndarray) -> np.ndarray:
    powers = 10 ** np.arange(1, 19, dtype=np.int64)
    return 1 + np.searchsorted(powers, values, side="right")


def _put_ints(buf: np.ndarray, pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Write non-negative ``values`` in decimal at byte offsets ``pos``; return the offsets after."""
    widths = _n_digits(values)
    last = pos + widths - 1
    rest = values.copy()
    for k in range(int(widths.max())):
        sel = widths > k
        buf[last[sel] - k] = 48 + rest[sel] % 10
        rest //= 10
    return pos + widths


def _ratings_csv_chunk(user: np.ndarray, movie: np.ndarray, half_stars: np.ndarray,
                       stamp: np.ndarray) -> bytes:
    """``user,movie,r.r,stamp\\n`` lines, formatted with numpy (pandas' to_csv is ~10x slower)."""
    width = _n_digits(user) + _n_digits(movie) + _n_digits(stamp) + 3 + 3 + 1  # 3 commas, "r.r", \n
    ends = np.cumsum(width)
    buf = np.empty(int(ends[-1]), np.uint8)
    pos = _put_ints(buf, ends - width, user)
    buf[pos] = ord(",")
    pos = _put_ints(buf, pos + 1, movie)
    buf[pos] = ord(",")
    buf[pos + 1] = 48 + half_stars // 2
    buf[pos + 2] = ord(".")
    buf[pos + 3] = np.where(half_stars % 2 == 1, ord("5"), ord("0"))
    buf[pos + 4] = ord(",")
    pos = _put_ints(buf, pos + 5, stamp)
    buf[pos] = ord("\n")
    return buf.tobytes()


def write_ml20m_ratings(path: Path, rows: int, seed: int) -> dict[str, int]:
    """Write a seeded ML-20M-like ``ratings.csv`` with exactly ``rows`` data rows.

    Header ``userId,movieId,rating,timestamp``; contiguous user ids sorted ascending, at least 20
    ratings per user (as ML-20M), movie ids sorted within a user and drawn from 26,744 sparse ids up
    to 131,262 with popularity skew, half-star ratings with ML-20M's distribution ("4.0", "3.5"),
    10-digit Unix timestamps.
    """
    if rows < 20:
        raise EvcfError(f"--preprocess-rows {rows} is too small", fix="use at least 20 rows (or --skip-preprocess)")
    n_users = max(1, min(round(rows * _ML20M_USERS_PER_ROW), rows // 20))
    n_movies = max(2, min(_ML20M_MOVIES, rows // 10))
    n_movies = max(n_movies, -(-2 * rows // n_users))  # at most half the movies per user
    matrix = synthetic_matrix(n_users, n_movies, rows, seed, min_per_user=20)
    rng = np.random.default_rng(seed + 1)
    movie_ids = np.sort(rng.choice(np.arange(1, max(_ML20M_MAX_MOVIE_ID, n_movies) + 1), n_movies,
                                   replace=False)).astype(np.int64)
    shares = np.asarray(_ML20M_STAR_SHARES) / sum(_ML20M_STAR_SHARES)
    path = Path(path)
    chunk = 1 << 21
    with open(path, "wb") as out:
        out.write(b"userId,movieId,rating,timestamp\n")
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            user = np.searchsorted(matrix.indptr, np.arange(start, stop), side="right").astype(np.int64)
            movie = movie_ids[matrix.indices[start:stop]]
            half_stars = rng.choice(np.arange(1, 11), size=stop - start, p=shares).astype(np.int64)
            stamp = rng.integers(1_000_000_000, 1_427_784_002, stop - start)
            out.write(_ratings_csv_chunk(user, movie, half_stars, stamp))
    return {"rows": rows, "users": n_users, "movies": n_movies, "bytes": path.stat().st_size}
