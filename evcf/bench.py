"""``evcf bench``: how fast training, evaluation and preprocessing are at a dataset's shape.

One run, on one seeded synthetic training matrix of a named shape (``ml-20m``, ``netflix``) or of
explicit sizes, and for every model asked for:

* **the fast path**: ``--steps`` training steps (after ``--warmup`` untimed ones) exactly as
  ``evcf train`` takes them (:func:`evcf.training._fit_vae`): rows densified on the device from a
  :class:`~evcf.data.batches.DeviceCSR`, ``model.loss`` under the optional bf16 autocast, the paper's
  optimizer; the median step time is extrapolated to an epoch;
* **the reference style**, re-created here as the baseline: every batch sliced from the scipy
  matrix and densified with ``toarray()`` on the host, then moved to the device (Liang's ``vae_cf``,
  RecVAE); for the VampPrior models also EVCF's pseudo-inputs ``hardtanh(I_K @ P)`` (a K×K identity
  times the K×I weight, every step) and EVCF's broadcast (B, K, Z) mixture log-density.  The
  reference always runs in float32, as the original code does.  The timed steps of the two paths
  alternate (and so does which goes first), so that load from other processes on a shared machine
  falls on both alike; each path's peak memory is measured in a separate run of it alone;
* the time to evaluate ``--eval-users`` (10,000) held-out users with :func:`evcf.evaluate.evaluate`;
* the peak resident memory of each phase (``/proc/self/status`` VmHWM, reset between phases where
  the kernel allows; ``resource.getrusage`` otherwise) and, on a GPU, ``torch.cuda.max_memory_allocated``.

Separately, in a fresh process, it writes a seeded ML-20M-like ``ratings.csv`` (``--preprocess-rows``
rows) and times ``read_ratings`` + ``binarize_filter`` + ``split_users`` + ``write_split`` on it, as
``evcf split`` runs them.

Closed-form models (popularity, EASE) report their fit time instead of epochs; EASE is skipped
above :data:`EASE_MAX_ITEMS` items (its fit is an I×I Cholesky inverse, minutes at 20k items).

Speed is measured here, never asserted in tests.  This module is imported by the CLI's parser, so
its top level imports the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import EvcfError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import scipy.sparse as sp
    import torch

__all__ = [
    "SHAPES",
    "BenchShape",
    "RECIPES",
    "EASE_MAX_ITEMS",
    "synthetic_matrix",
    "heldout_split",
    "write_ml20m_ratings",
    "reference_style",
    "broadcast_mixture_log_density",
    "run_bench",
    "format_table",
    "add_parser",
]

log = logging.getLogger(__name__)


# ==================================================================================================
# Shapes and per-model recipes


@dataclass(frozen=True)
class BenchShape:
    name: str
    users: int  # training users (rows of the training matrix)
    items: int
    nnz: int  # clicks in the training matrix
    preprocess_rows: int | None  # rows of the timed ratings.csv by default; None: only when asked


SHAPES: dict[str, BenchShape] = {
    # Liang et al.'s ML-20M split: 116,677 training users x 20,108 items, ~8M training clicks
    # (the issue: 7-8.5M); the raw ML-20M ratings.csv has 20,000,263 rows.
    "ml-20m": BenchShape("ml-20m", 116_677, 20_108, 8_000_000, 20_000_263),
    # Liang et al.'s Netflix split: 383,435 training users x 17,769 items, ~50M training clicks.
    # Preprocessing is timed on the ML-20M format only, so it is off unless --preprocess-rows is given.
    "netflix": BenchShape("netflix", 383_435, 17_769, 50_000_000, None),
}

# The step recipe of the paper each model comes from (docs/models.md).  The CLI never reads params.yaml,
# so these are the bench's own explicit defaults; --batch-size and --hparams override them.
_LIANG = {"batch_size": 500, "optimizer": "adam", "lr": 1e-3, "eval_batch_size": 2000}  # Liang et al. 2018
_EVCF = {"batch_size": 200, "optimizer": "adam-normgrad", "lr": 5e-4, "eval_batch_size": 1000}  # EVCF experiment.py
RECIPES: dict[str, dict[str, Any]] = {
    # beta: the KL weight of the timed steps (it does not change the cost): Liang's cap, EVCF's epoch 1
    "mult-dae": {**_LIANG, "beta": 0.0, "hparams": {}},
    "mult-vae": {**_LIANG, "beta": 0.2, "hparams": {}},
    "mult-vae-gated": {**_EVCF, "beta": 0.01, "hparams": {}},
    "vamp": {**_EVCF, "beta": 0.01, "hparams": {}},
    # EVCF README's hierarchical example uses --num_layers 2 (as params.yaml does); Config default 1
    "hvamp": {**_EVCF, "beta": 0.01, "hparams": {"num_layers": 2}},
    "hvamp-gated": {**_EVCF, "beta": 0.01, "hparams": {"num_layers": 2}},
}
EASE_MAX_ITEMS = 5_000  # above this, EASE's I×I inverse is skipped (time it with `evcf train`)
EASE_BENCH_LAMBDA = 500.0  # Steck 2019's choice for ML-20M


def _default_models() -> list[str]:
    from .models import MODEL_NAMES, VAEModel, model_class

    return [name for name in MODEL_NAMES if issubclass(model_class(name), VAEModel)]


# ==================================================================================================
# Seeded synthetic data


def _check_sizes(n_users: int, n_items: int, nnz: int) -> None:
    cap = max(1, n_items // 2)
    if n_users < 1 or n_items < 2 or not n_users <= nnz <= n_users * cap:
        raise EvcfError(
            f"cannot make a {n_users:,} x {n_items:,} matrix with {nnz:,} clicks",
            fix=f"give at least 1 user, 2 items, one click per user and at most half the items per "
                f"user (nnz between {n_users:,} and {max(n_users, 1) * cap:,})")


def synthetic_matrix(n_users: int, n_items: int, nnz: int, seed: int, *, min_per_user: int = 5,
                     activity_sigma: float = 1.2, zipf: float = 1.4, zipf_offset: float = 50.0
                     ) -> "sp.csr_matrix":
    """A seeded 0/1 CSR matrix (n_users, n_items) with exactly ``nnz`` ones and ML-like skew.

    * Row lengths are log-normal with σ = ``activity_sigma`` (1.2: the median user has about half
      the mean, as in ML-20M), scaled to sum to ``nnz``, at least ``min(min_per_user, nnz //
      n_users)`` and at most half the items.
    * Within a row, items are distinct and drawn by Zipf-Mandelbrot popularity
      ``(rank + zipf_offset) ** -zipf`` over a random permutation of the items (at ML-20M's shape:
      the top item is in ~30% of the rows and the top 1% of items hold ~45% of the clicks); rows
      still short after a few rounds of redraws are completed uniformly.
    """
    import numpy as np
    import scipy.sparse as sp

    _check_sizes(n_users, n_items, nnz)
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


def heldout_split(matrix: "sp.csr_matrix", seed: int, fraction: float = 0.2, min_items: int = 5
                  ) -> tuple["sp.csr_matrix", "sp.csr_matrix"]:
    """(fold-in, held-out) rows as the protocol splits held-out users: a row with ≥ ``min_items``
    clicks has ``int(fraction · n)`` of them, drawn at random (seeded), held out; shorter rows keep
    everything as fold-in."""
    import numpy as np
    import scipy.sparse as sp

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


def _n_digits(values: "np.ndarray") -> "np.ndarray":
    import numpy as np

    powers = 10 ** np.arange(1, 19, dtype=np.int64)
    return 1 + np.searchsorted(powers, values, side="right")


def _put_ints(buf: "np.ndarray", pos: "np.ndarray", values: "np.ndarray") -> "np.ndarray":
    """Write non-negative ``values`` in decimal at byte offsets ``pos``; return the offsets after."""
    widths = _n_digits(values)
    last = pos + widths - 1
    rest = values.copy()
    for k in range(int(widths.max())):
        sel = widths > k
        buf[last[sel] - k] = 48 + rest[sel] % 10
        rest //= 10
    return pos + widths


def _ratings_csv_chunk(user: "np.ndarray", movie: "np.ndarray", half_stars: "np.ndarray",
                       stamp: "np.ndarray") -> bytes:
    """``user,movie,r.r,stamp\\n`` lines, formatted with numpy (pandas' to_csv is ~10x slower)."""
    import numpy as np

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
    import numpy as np

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


# ==================================================================================================
# The reference style


def broadcast_mixture_log_density(z: "torch.Tensor", means: "torch.Tensor", logvars: "torch.Tensor"
                                  ) -> "torch.Tensor":
    """EVCF's ``log_p_z`` as written: (B, 1, Z) against (1, K, Z), a (B, K, Z) tensor, summed over
    Z, then a max-shifted log-sum-exp over K.  (B, Z), (K, Z) x2 -> (B,)

    EVCF's ``log_Normal_diag`` leaves out the −½·log 2π per dimension; it is added to the (B,)
    result so that the value equals :func:`evcf.models.vamp.mixture_log_density`.
    """
    import torch

    from .models.layers import LOG_2PI

    n_components, dim = means.shape
    z_expand = z.unsqueeze(1)  # (B, 1, Z)
    m, lv = means.unsqueeze(0), logvars.unsqueeze(0)  # (1, K, Z)
    a = torch.sum(-0.5 * (lv + torch.pow(z_expand - m, 2) / torch.exp(lv)), 2) - math.log(n_components)
    a_max, _ = torch.max(a, 1)  # (B,)
    log_prior = a_max + torch.log(torch.sum(torch.exp(a - a_max.unsqueeze(1)), 1))
    return log_prior - 0.5 * dim * LOG_2PI


def _dense_first_layer(dropout: Any, layer: Any, x: "torch.Tensor") -> "torch.Tensor":
    """The reference codes' input step: L2-normalise and drop out the dense (B, I) batch, then a
    dense (B, I) x (I, H) product."""
    import torch.nn.functional as F

    return layer(dropout(F.normalize(x, p=2.0, dim=1)))


@contextlib.contextmanager
def reference_style(model: Any, *, dense_input: bool = True) -> Iterator[None]:
    """Inside the block, the model computes the way the reference codes do.

    * ``dense_input``: the input step runs on the dense batch (``first_layer_from_rows`` replaced
      by normalise → dropout → dense product), for every model.  Same values; the dropout mask is
      drawn over all B×I entries, so its random stream differs from the sparse path's.
    * a VampPrior model computes its prior the EVCF way: ``u = hardtanh(I_K @ P)`` with a K×K
      identity (EVCF's ``idle_input``, made once) times the K×I pseudo-input weight on every call,
      and the broadcast mixture log-density (an instance attribute, removed on exit).
    """
    from .models import layers, multvae, vamp

    patched = (layers, multvae, vamp) if dense_input else ()
    saved = [module.first_layer_from_rows for module in patched]
    for module in patched:
        module.first_layer_from_rows = _dense_first_layer
    try:
        prior = getattr(model, "prior", None)
        if prior is None or not hasattr(prior, "pseudo"):
            yield
            return
        with _evcf_prior(prior):
            yield
    finally:
        for module, original in zip(patched, saved):
            module.first_layer_from_rows = original


@contextlib.contextmanager
def _evcf_prior(prior: Any) -> Iterator[None]:
    import torch
    import torch.nn.functional as F

    eye = torch.eye(prior.pseudo.shape[0], device=prior.pseudo.device, dtype=prior.pseudo.dtype)

    def log_prob(self: Any, z: torch.Tensor, encoder: Callable) -> torch.Tensor:
        pseudo_inputs = F.hardtanh(eye @ self.pseudo, 0.0, 1.0)  # (K, I)
        means, logvars = encoder(pseudo_inputs)  # (K, Z)
        return broadcast_mixture_log_density(z, means, logvars)  # (B,)

    prior.log_prob = types.MethodType(log_prob, prior)
    try:
        yield
    finally:
        del prior.log_prob


# ==================================================================================================
# Memory and machine


def _read_hwm_kib() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.M)
    return int(found.group(1)) if found else None


def _maxrss_mib() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class _PeakMemory:
    """Peak RSS per phase: VmHWM reset through ``/proc/self/clear_refs`` where the kernel allows;
    otherwise ``getrusage``'s peak so far (an upper bound on the phase's peak)."""

    def __init__(self, device: "torch.device"):
        self.device = device
        self.overall_mib = _maxrss_mib()
        self.can_reset = self._reset()

    @staticmethod
    def _reset() -> bool:
        if _read_hwm_kib() is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return True

    def _current_peak_mib(self) -> float:
        hwm = _read_hwm_kib()
        return hwm / 1024.0 if hwm is not None and self.can_reset else _maxrss_mib()

    @contextlib.contextmanager
    def phase(self, into: dict[str, Any], key: str) -> Iterator[None]:
        import torch

        self.overall_mib = max(self.overall_mib, self._current_peak_mib())
        if self.can_reset:
            self._reset()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            peak = self._current_peak_mib()
            self.overall_mib = max(self.overall_mib, peak)
            into[key] = round(peak, 1)
            if cuda:
                into[key.replace("rss", "cuda")] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def peak_mib(self) -> float:
        return round(max(self.overall_mib, self._current_peak_mib()), 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: "torch.device") -> dict[str, Any]:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
                            "memory_gib": None, "gpu": None}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["summary"] = f"{info['cpu']}, {usable} cores" + (f", {info['gpu']}" if info["gpu"] else "")
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


# ==================================================================================================
# Preprocessing (in fresh processes, so that its memory is its own)


def _write_ratings_job(path: str, rows: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    info = write_ml20m_ratings(Path(path), rows, seed)
    return {**info, "write_s": time.perf_counter() - started}


def _preprocess_job(csv_path: str, out_dir: str) -> dict[str, Any]:
    """``evcf split``'s steps on an ML-20M-format ratings.csv (threshold 3.5, ≥ 5 items, as ML-20M)."""
    from .data.readers import read_ratings
    from .data.split import binarize_filter, split_users, write_split

    times: dict[str, float] = {}
    started = time.perf_counter()
    ratings = read_ratings(Path(csv_path), "movielens-20m")
    times["read_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    filtered = binarize_filter(ratings, 3.5, 5)
    del ratings
    times["filter_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    heldout = max(1, min(10_000, int(filtered["user"].nunique()) // 10))  # ML-20M: 10,000 (Liang)
    split = split_users(filtered, heldout, source=csv_path)
    del filtered
    times["split_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    summary = write_split(split, Path(out_dir))
    times["write_split_s"] = time.perf_counter() - mark
    times["preprocess_s"] = time.perf_counter() - started
    return {**times, "heldout_users": heldout, "train_clicks": summary["train"]["interactions"],
            "users": summary["filtered"]["users"], "items": summary["n_items"],
            "peak_rss_mib": _maxrss_mib()}


def _in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_preprocess(rows: int, seed: int) -> dict[str, Any]:
    """Write a seeded ML-20M-like ratings.csv, then time ``evcf split``'s steps on it."""
    with tempfile.TemporaryDirectory(prefix="evcf-bench-") as tmp:
        csv_path = Path(tmp) / "ratings.csv"
        written = _in_fresh_process(_write_ratings_job, str(csv_path), rows, seed)
        log.info("bench: wrote %s rows (%.0f MiB) of ratings.csv in %.1f s; timing the split",
                 f"{rows:,}", written["bytes"] / 2**20, written["write_s"])
        timed = _in_fresh_process(_preprocess_job, str(csv_path), str(Path(tmp) / "processed"))
    out = {"rows": rows, "csv_mib": round(written["bytes"] / 2**20, 1),
           **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in timed.items()}}
    out["peak_rss_mib"] = round(timed["peak_rss_mib"], 1)
    return out


# ==================================================================================================
# Training steps: the fast path (as evcf train) and the reference style


def _step_fast(model: Any, optimizer: Any, train: Any, rows: "torch.Tensor", beta: float,
               autocast: bool, device: "torch.device") -> float:
    """One step exactly as :func:`evcf.training._fit_vae` takes it (keep the two in step)."""
    import torch

    x = train.dense(rows)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        parts = model.loss(x, beta)
    if not torch.isfinite(parts.loss):
        raise EvcfError(f"bench: loss became {parts.loss.item()}", fix="use --precision fp32")
    optimizer.zero_grad(set_to_none=True)
    parts.loss.backward()
    optimizer.step()
    return parts.loss.item()


def _step_reference(model: Any, optimizer: Any, train: "sp.csr_matrix", rows: "np.ndarray",
                    beta: float, device: "torch.device") -> float:
    """One step of the reference codes: scipy row slice, ``toarray()`` on the host, to the device."""
    import torch

    x = torch.from_numpy(train[rows].toarray().astype("float32")).to(device)
    parts = model.loss(x, beta)
    optimizer.zero_grad()
    parts.loss.backward()
    optimizer.step()
    return parts.loss.item()


def _sync(device: "torch.device") -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_vae(name: str, recipe: dict[str, Any], hparams: dict[str, Any], data: dict[str, Any], *,
               steps: int, reference_steps: int, warmup: int, precision: str, seed: int,
               device: "torch.device", memory: _PeakMemory) -> dict[str, Any]:
    """Memory phases first (each path alone), then the timed steps of both paths interleaved.

    1. reference style alone: one step from a fresh model (its peak memory and first loss);
    2. fast path alone: a fresh model and its warm-up steps (peak memory, first loss), kept;
    3. evaluation of the held-out users with that model (time, peak memory);
    4. a fresh reference-style model and its warm-up steps, then ``steps`` fast and
       ``reference_steps`` reference steps on the same batches, alternating which goes first, so
       that load from other processes falls on both alike.
    The first losses of 1 and 2 (same seed, batch and dropout mask) must agree up to rounding.
    """
    import torch

    from .evaluate import evaluate
    from .models import build_model
    from .optim import make_optimizer

    train_csr, train_dev = data["train_csr"], data["train_dev"]
    n_users = train_csr.shape[0]
    batch = min(recipe["batch_size"], n_users)
    n_batches = max(1, warmup) + max(steps, reference_steps)
    order = torch.randperm(n_users, generator=torch.Generator().manual_seed(seed))
    # consecutive batches of one shuffled order, as an epoch takes them (wrapping round if short)
    batches = [order[torch.arange(k * batch, (k + 1) * batch) % n_users] for k in range(n_batches)]
    timed = batches[max(1, warmup):]
    steps_per_epoch = math.ceil(n_users / batch)
    autocast = precision == "bf16"
    beta = recipe["beta"]
    out: dict[str, Any] = {"batch_size": batch, "optimizer": recipe["optimizer"], "lr": recipe["lr"],
                           "hparams": hparams, "steps_per_epoch": steps_per_epoch}

    def fresh() -> tuple[Any, Any]:
        torch.manual_seed(seed)
        model = build_model(name, train_csr.shape[1], **hparams).to(device)
        model.train()
        return model, make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])

    def fast(model: Any, optimizer: Any, rows: Any) -> float:
        return _step_fast(model, optimizer, train_dev, rows, beta, autocast, device)

    def reference(model: Any, optimizer: Any, rows: Any) -> float:
        return _step_reference(model, optimizer, train_csr, rows.numpy(), beta, device)

    def check_loss(reference_path: bool) -> float:
        """Eval-mode loss of a fresh model on the first batch: no dropout, no sampling, so both
        paths must agree up to rounding (they draw dropout masks from different streams)."""
        model, _ = fresh()
        model.eval()
        x = train_dev.dense(batches[0])
        with torch.no_grad(), (reference_style(model) if reference_path else contextlib.nullcontext()):
            return model.loss(x, beta).loss.item()

    ref_first = None
    if reference_steps > 0:
        check, ref_check = check_loss(False), check_loss(True)
        with memory.phase(out, "reference_peak_rss_mib"):
            model, optimizer = fresh()
            with reference_style(model):
                torch.manual_seed(seed)
                ref_first = reference(model, optimizer, batches[0])
            del model, optimizer

    with memory.phase(out, "peak_rss_mib"):
        model, optimizer = fresh()
        torch.manual_seed(seed)
        first = fast(model, optimizer, batches[0])
        for rows in batches[1:warmup]:
            fast(model, optimizer, rows)

    with memory.phase(out, "eval_peak_rss_mib"):
        model.eval()
        _sync(device)
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=recipe["eval_batch_size"],
                 device=device)
        _sync(device)
        out["eval_10k_s"] = time.perf_counter() - started
        out["eval_batch_size"] = recipe["eval_batch_size"]
        model.train()

    ref_model = ref_optimizer = None
    if reference_steps > 0:
        ref_model, ref_optimizer = fresh()
        for rows in batches[:warmup]:
            with reference_style(ref_model):
                reference(ref_model, ref_optimizer, rows)
    times: dict[str, list[float]] = {"fast": [], "reference": []}
    for i in range(max(steps, reference_steps)):
        for kind in (("fast", "reference") if i % 2 == 0 else ("reference", "fast")):
            if i >= (steps if kind == "fast" else reference_steps):
                continue
            _sync(device)
            started = time.perf_counter()
            if kind == "fast":
                fast(model, optimizer, timed[i])
            else:
                with reference_style(ref_model):
                    reference(ref_model, ref_optimizer, timed[i])
            _sync(device)
            times[kind].append(time.perf_counter() - started)
    del model, optimizer, ref_model, ref_optimizer

    step_s = statistics.median(times["fast"])
    out.update(step_s=step_s, step_times_s=times["fast"], epoch_s=step_s * steps_per_epoch,
               users_per_s=batch / step_s, first_step_loss=first)
    if reference_steps > 0:
        ref_step = statistics.median(times["reference"])
        out.update(reference_step_s=ref_step, reference_step_times_s=times["reference"],
                   reference_epoch_s=ref_step * steps_per_epoch, reference_first_step_loss=ref_first,
                   speedup=ref_step / step_s,
                   # a check that both paths compute the same model: eval-mode losses, fp32
                   check_loss=check, reference_check_loss=ref_check,
                   check_loss_rel_diff=abs(check - ref_check) / max(abs(ref_check), 1e-12))
    else:
        out.update(reference_epoch_s=None, speedup=None)
    return out


def _bench_closed_form(name: str, data: dict[str, Any], device: "torch.device",
                       memory: _PeakMemory) -> dict[str, Any]:
    import torch

    from .evaluate import evaluate
    from .models import build_model

    train_csr = data["train_csr"]
    out: dict[str, Any] = {"epoch_s": None, "users_per_s": None, "reference_epoch_s": None, "speedup": None}
    if name == "ease" and train_csr.shape[1] > EASE_MAX_ITEMS:
        out["note"] = (f"skipped: EASE's fit is an {train_csr.shape[1]:,}^2 Cholesky inverse "
                       f"(minutes; above {EASE_MAX_ITEMS:,} items the bench leaves it to `evcf train`)")
        return out
    with memory.phase(out, "peak_rss_mib"):
        model = build_model(name, train_csr.shape[1])
        setting = {"lambda": EASE_BENCH_LAMBDA} if name == "ease" else {}
        started = time.perf_counter()
        model.fit(train_csr, **setting)
        out["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=2000, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["eval_10k_s"] = time.perf_counter() - started
    out["note"] = "closed form: fit time instead of an epoch"
    return out


def _warm_up_process(device: "torch.device") -> None:
    """A few tiny steps and an evaluation first, so that the first model timed does not pay the
    process's one-time costs (lazy kernel selection, thread-pool start, allocator growth)."""
    import torch

    from .data.batches import DeviceCSR
    from .evaluate import evaluate
    from .models import build_model
    from .optim import make_optimizer

    matrix = synthetic_matrix(64, 48, 640, 0)
    fold_in, heldout = heldout_split(matrix, 0)
    train = DeviceCSR(matrix, device)
    for name in ("mult-vae", "vamp"):
        model = build_model(name, 48, hidden_size=16, latent_size=8, **({"n_pseudo": 4} if name == "vamp" else {}))
        model.to(device).train()
        optimizer = make_optimizer("adam", model.parameters(), 1e-3)
        rows = torch.arange(32)
        for _ in range(2):
            _step_fast(model, optimizer, train, rows, 0.1, False, device)
            with reference_style(model):
                _step_reference(model, optimizer, matrix, rows.numpy(), 0.1, device)
        model.eval()
        evaluate(model.score, fold_in, heldout, batch_size=32, device=device)


# ==================================================================================================
# The whole run


def run_bench(*, shape: str | None = "ml-20m", users: int | None = None, items: int | None = None,
              nnz: int | None = None, models: list[str] | None = None, steps: int = 5, warmup: int = 1,
              reference_steps: int | None = None, batch_size: int | None = None,
              hparams: dict[str, dict[str, Any]] | None = None, device: str = "auto",
              precision: str = "fp32", threads: int | None = None, eval_users: int = 10_000,
              preprocess_rows: int | None = None, skip_preprocess: bool = False,
              seed: int = 0) -> dict[str, Any]:
    """Run the benchmark and return its results (the JSON that ``evcf bench`` writes).

    ``users``/``items``/``nnz`` (all three) replace the named ``shape``.  ``reference_steps``
    defaults to ``steps`` (0 skips the reference style).  ``preprocess_rows`` defaults to the shape's
    (20,000,263 for ml-20m; none for netflix and explicit sizes).
    """
    import numpy as np
    import torch

    from . import __version__
    from .data.batches import DeviceCSR
    from .models import VAEModel, build_model, model_class
    from .training import resolve_device

    # --- arguments ----------------------------------------------------------------------------
    explicit = [v is not None for v in (users, items, nnz)]
    if any(explicit) and not all(explicit):
        raise EvcfError("--users, --items and --nnz go together", fix="give all three, or none and a --shape")
    if all(explicit):
        the_shape = BenchShape("custom", int(users), int(items), int(nnz), None)
    elif shape in SHAPES:
        the_shape = SHAPES[shape]
    else:
        raise EvcfError(f"unknown shape {shape!r}", fix=f"use one of {', '.join(SHAPES)} or --users/--items/--nnz")
    _check_sizes(the_shape.users, the_shape.items, the_shape.nnz)
    models = list(models) if models else _default_models()
    for name in models:
        model_class(name)  # EvcfError naming the valid models
    if len(set(models)) != len(models):
        raise EvcfError(f"--models lists a model twice: {models}", fix="name each model once")
    hparams = dict(hparams or {})
    for name in hparams:
        if name not in models:
            raise EvcfError(f"--hparams names {name!r}, which is not benchmarked",
                            fix=f"use model names from --models ({', '.join(models)})")
    if steps < 1 or warmup < 0:
        raise EvcfError("--steps must be at least 1 and --warmup at least 0", fix="e.g. --steps 5 --warmup 1")
    reference_steps = steps if reference_steps is None else reference_steps
    if reference_steps < 0:
        raise EvcfError("--reference-steps must not be negative", fix="use 0 to skip the reference style")
    if batch_size is not None and batch_size < 1:
        raise EvcfError("--batch-size must be at least 1", fix="e.g. --batch-size 500")
    if precision not in ("fp32", "bf16"):
        raise EvcfError(f"--precision {precision!r} is not fp32 or bf16", fix="use fp32 or bf16")
    if threads is not None and threads < 1:
        raise EvcfError("--threads must be at least 1", fix="e.g. --threads 2")
    if eval_users < 1:
        raise EvcfError("--eval-users must be at least 1", fix="e.g. --eval-users 10000")
    for name in models:  # hyperparameter names and types, before the long parts (a 2-item model)
        if issubclass(model_class(name), VAEModel):
            build_model(name, 2, **{**RECIPES.get(name, {}).get("hparams", {}), **hparams.get(name, {})})
    if skip_preprocess:
        preprocess_rows = None
    elif preprocess_rows is None:
        preprocess_rows = the_shape.preprocess_rows
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)

    result: dict[str, Any] = {
        "shape": {"name": the_shape.name, "users": the_shape.users, "items": the_shape.items,
                  "nnz": the_shape.nnz},
        "models": {},
        "eval_10k_s": None,
        "peak_rss_mib": None,
        "machine": _machine(dev),
        "device": dev.type,
        "precision": precision,
        "reference_precision": "fp32",
        "steps": steps,
        "warmup_steps": warmup,
        "reference_steps": reference_steps,
        "step_statistic": "median",
        "eval_users": None,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "evcf_version": __version__,
        "python": platform.python_version(),
        "load_average_start": _load_average(),
        "reference_style": ("scipy row slice + toarray() per batch on the host, then to the device; "
                            "VampPrior models: pseudo-inputs hardtanh(I_K @ P) and the (B, K, Z) "
                            "broadcast log-density every step (EVCF); float32"),
    }
    started = time.perf_counter()

    # --- preprocessing first, in fresh processes ------------------------------------------------
    if preprocess_rows:
        log.info("bench: preprocessing %s ratings rows", f"{preprocess_rows:,}")
        result["preprocess"] = bench_preprocess(int(preprocess_rows), seed)
        result["preprocess_s"] = result["preprocess"]["preprocess_s"]
        result["preprocess_peak_rss_mib"] = result["preprocess"]["peak_rss_mib"]
    else:
        result["preprocess"] = None
        result["preprocess_s"] = None
        result["preprocess_note"] = "skipped" if skip_preprocess else "no default row count for this shape"

    # --- data -----------------------------------------------------------------------------------
    memory = _PeakMemory(dev)
    result["peak_rss_method"] = ("VmHWM per phase (reset via /proc/self/clear_refs)" if memory.can_reset
                                 else "getrusage ru_maxrss (peak so far)")
    mark = time.perf_counter()
    train_csr = synthetic_matrix(the_shape.users, the_shape.items, the_shape.nnz, seed)
    n_eval = min(eval_users, the_shape.users)
    eval_nnz = max(n_eval, round(n_eval * the_shape.nnz / the_shape.users))  # the same clicks per user
    eval_matrix = synthetic_matrix(n_eval, the_shape.items, eval_nnz, seed + 1)
    eval_in, eval_out = heldout_split(eval_matrix, seed + 2)
    del eval_matrix
    result["synthetic_s"] = round(time.perf_counter() - mark, 3)
    mark = time.perf_counter()
    train_dev = DeviceCSR(train_csr, dev)
    result["device_csr_s"] = round(time.perf_counter() - mark, 3)
    data = {"train_csr": train_csr, "train_dev": train_dev,
            "eval_in": DeviceCSR(eval_in, dev), "eval_out": eval_out}
    result["eval_users"] = int((np.diff(eval_out.indptr) > 0).sum())
    log.info("bench: %s matrix %s x %s, %s clicks (%.1f s)", the_shape.name, f"{the_shape.users:,}",
             f"{the_shape.items:,}", f"{the_shape.nnz:,}", result["synthetic_s"])

    # --- models ---------------------------------------------------------------------------------
    _warm_up_process(dev)
    for name in models:
        if issubclass(model_class(name), VAEModel):
            recipe = dict(RECIPES.get(name, {**_LIANG, "beta": 0.2, "hparams": {}}))
            if batch_size is not None:
                recipe["batch_size"] = batch_size
            model_hparams = {**recipe["hparams"], **hparams.get(name, {})}
            log.info("bench: %s, batch %d, %d + %d steps (reference %d)", name, recipe["batch_size"],
                     warmup, steps, reference_steps)
            entry = _bench_vae(name, recipe, model_hparams, data, steps=steps,
                               reference_steps=reference_steps, warmup=warmup, precision=precision,
                               seed=seed, device=dev, memory=memory)
        else:
            log.info("bench: %s (closed form)", name)
            entry = _bench_closed_form(name, data, dev, memory)
        result["models"][name] = _rounded(entry)
        log.info("bench: %s: %s s per epoch, reference %s s", name, _fmt(entry.get("epoch_s")),
                 _fmt(entry.get("reference_epoch_s")))
    timed_eval = [m for m in result["models"].values() if m.get("eval_10k_s") is not None]
    first = result["models"].get("mult-vae") or (timed_eval[0] if timed_eval else None)
    result["eval_10k_s"] = first.get("eval_10k_s") if first else None
    trained = [m["peak_rss_mib"] for m in result["models"].values()
               if m.get("epoch_s") is not None and m.get("peak_rss_mib") is not None]  # VAE models
    result["train_peak_rss_mib"] = max(trained) if trained else None
    result["peak_rss_mib"] = memory.peak_mib()
    if dev.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    result["load_average_end"] = _load_average()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ==================================================================================================
# Table and CLI


def _fmt(value: float | None, unit: str = "") -> str:
    """3 significant digits, no exponent for the magnitudes a bench sees."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per model, then preprocessing, evaluation and memory."""
    from tabulate import tabulate

    rows = []
    for name, m in result["models"].items():
        rows.append([
            name,
            m.get("batch_size", "-"),
            _fmt(m.get("epoch_s") if m.get("epoch_s") is not None else m.get("fit_s")),
            _fmt(m.get("users_per_s")),
            _fmt(m.get("reference_epoch_s")),
            _fmt(m.get("speedup"), "x"),
            _fmt(m.get("eval_10k_s")),
            _fmt(m.get("peak_rss_mib")) + (f" / {_fmt(m['eval_peak_rss_mib'])}" if m.get("eval_peak_rss_mib") else ""),
            m.get("note", ""),
        ])
    n_eval = result.get("eval_users") or 0
    headers = ["model", "batch", "s / epoch", "users / s", "reference s / epoch", "speed-up",
               f"eval {n_eval:,} users (s)", "peak RSS train / eval (MiB)", "note"]
    shape = result["shape"]
    lines = [
        f"shape {shape['name']}: {shape['users']:,} users x {shape['items']:,} items, {shape['nnz']:,} clicks; "
        f"device {result['device']} ({result['machine']['summary']}), {result['precision']} "
        f"(reference {result['reference_precision']}), {result['threads']} threads; "
        f"median of {result['steps']} steps ({result['reference_steps']} reference) after {result['warmup_steps']} "
        f"warm-up, the two paths interleaved, times an epoch's steps",
        tabulate(rows, headers=headers, disable_numparse=True, colalign=("left",) + ("right",) * 7 + ("left",)),
    ]
    pre = result.get("preprocess")
    if pre:
        lines.append(f"preprocessing {pre['rows']:,} ratings rows ({pre['csv_mib']:,} MiB csv) to the split: "
                     f"{_fmt(pre['preprocess_s'])} s (read {_fmt(pre['read_s'])}, binarize+filter "
                     f"{_fmt(pre['filter_s'])}, split {_fmt(pre['split_s'])}, write {_fmt(pre['write_split_s'])}), "
                     f"peak RSS {_fmt(pre['peak_rss_mib'])} MiB")
    else:
        lines.append(f"preprocessing: {result.get('preprocess_note', 'skipped')}")
    lines.append(f"peak RSS: training {_fmt(result['train_peak_rss_mib'])} MiB (worst model, fast path alone), "
                 f"whole bench {_fmt(result['peak_rss_mib'])} MiB; load average "
                 f"{result['load_average_start']} -> {result['load_average_end']}")
    return "\n".join(lines)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(f'expected {{"model": {{...}}, ...}}, got {text!r}')
    return value


def _cmd_bench(args: argparse.Namespace) -> None:
    result = run_bench(
        shape=args.shape, users=args.users, items=args.items, nnz=args.nnz, models=args.models,
        steps=args.steps, warmup=args.warmup, reference_steps=args.reference_steps,
        batch_size=args.batch_size, hparams=args.hparams, device=args.device,
        precision=args.precision, threads=args.threads, eval_users=args.eval_users,
        preprocess_rows=args.preprocess_rows, skip_preprocess=args.skip_preprocess, seed=args.seed,
    )
    out = Path(args.out) if args.out else Path("results") / "bench" / f"{result['device']}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        raise EvcfError(f"cannot write the results ({exc.strerror or exc})", path=out,
                        fix="choose a writable --out path") from None
    print(format_table(result))
    print(f"ok: {out}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf bench`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="time training steps, evaluation and preprocessing against the reference style",
        description="Time training steps, evaluation and preprocessing at a dataset's shape, against "
                    "the reference style (see evcf/bench.py).")
    p.add_argument("--shape", default="ml-20m", help=f"named shape: {', '.join(SHAPES)} (default ml-20m)")
    p.add_argument("--users", type=int, help="explicit training users (with --items and --nnz)")
    p.add_argument("--items", type=int)
    p.add_argument("--nnz", type=int, help="explicit training clicks")
    p.add_argument("--models", nargs="+", default=None, help="registry names (default: every VAE model)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="timed reference-style steps (default: --steps; 0 skips the reference)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="one batch size for every model (default: each paper's, 500 Liang / 200 EVCF)")
    p.add_argument("--hparams", type=_json_object, default=None,
                   help='JSON per model, e.g. \'{"vamp": {"n_pseudo": 500}}\'')
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--eval-users", type=int, default=10_000, help="held-out users to evaluate (default 10000)")
    p.add_argument("--preprocess-rows", type=int, default=None,
                   help="rows of the timed ratings.csv (default 20,000,263 for ml-20m)")
    p.add_argument("--skip-preprocess", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<device>.json)")
    p.set_defaults(func=_cmd_bench)
    return p
