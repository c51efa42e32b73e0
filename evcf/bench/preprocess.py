"""``evcf split``'s steps timed on a seeded ML-20M-format ``ratings.csv``, each in a fresh process
(spawned), so that its peak memory is its own."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .timer import maxrss_mib

__all__ = ["bench_preprocess"]

log = logging.getLogger(__name__)


def _write_ratings_job(path: str, rows: int, seed: int) -> dict[str, Any]:
    from ..data.shapes import write_ml20m_ratings

    started = time.perf_counter()
    return {**write_ml20m_ratings(Path(path), rows, seed), "write_s": time.perf_counter() - started}


def _preprocess_job(csv_path: str, out_dir: str) -> dict[str, Any]:
    """``evcf split``'s steps on an ML-20M-format ratings.csv (threshold 3.5, ≥ 5 items, as ML-20M)."""
    from ..data.readers import read_ratings
    from ..data.split import binarize_filter, split_users, write_split

    times, started = {}, time.perf_counter()
    ratings = read_ratings(Path(csv_path), "movielens-20m")
    times["read_s"], mark = time.perf_counter() - started, time.perf_counter()
    filtered = binarize_filter(ratings, 3.5, 5)
    del ratings
    times["filter_s"], mark = time.perf_counter() - mark, time.perf_counter()
    heldout = max(1, min(10_000, int(filtered["user"].nunique()) // 10))  # ML-20M: 10,000 (Liang)
    split = split_users(filtered, heldout, source=csv_path)
    del filtered
    times["split_s"], mark = time.perf_counter() - mark, time.perf_counter()
    summary = write_split(split, Path(out_dir))
    times["write_split_s"] = time.perf_counter() - mark
    times["preprocess_s"] = time.perf_counter() - started
    return {**times, "heldout_users": heldout, "train_clicks": summary["train"]["interactions"],
            "users": summary["filtered"]["users"], "items": summary["n_items"], "peak_rss_mib": maxrss_mib()}


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
        log.info("bench: wrote %s rows of ratings.csv in %.1f s; timing the split", f"{rows:,}", written["write_s"])
        timed = _in_fresh_process(_preprocess_job, str(csv_path), str(Path(tmp) / "processed"))
    return {"rows": rows, "csv_mib": written["bytes"] / 2**20, **timed}


