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

One module per family: :mod:`.movielens`, :mod:`.netflix`, :mod:`.csv_ratings`; :mod:`.delimited` is
the parser of delimited text (MovieLens and CSV), :mod:`.common` what every reader shares.  Each reads
in one pass of pandas' C parser and re-reads a file line by line only to name its first bad line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ...errors import EvcfError
from .csv_ratings import read_csv_ratings
from .movielens import read_movielens
from .netflix import _read_netflix

__all__ = ["RAW_FORMATS", "read_ratings"]

log = logging.getLogger(__name__)

RAW_FORMATS = ("movielens-20m", "movielens-1m", "movielens-100k", "netflix", "csv")


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
        frame = read_csv_ratings(raw)
    else:
        frame = read_movielens(raw, fmt)
    log.info("read %s ratings from %s (%s) in %.1f s", f"{len(frame):,}", raw, fmt, time.perf_counter() - started)
    return frame
