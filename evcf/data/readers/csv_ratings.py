"""The ``csv`` format: a CSV with header ``user,item,rating`` (what ``evcf synth`` writes for a synthetic
dataset), or a folder holding one as ``ratings.csv`` (a ``local: true`` dataset)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...errors import EvcfError
from .common import _Text
from .delimited import _read_delimited


def _plain_text(raw: Path, fix: str) -> _Text:
    if not raw.exists():
        raise EvcfError("file not found", path=raw, fix=fix)
    if raw.is_dir():
        raise EvcfError("is a directory, expected a file", path=raw, fix=fix)
    return _Text(raw)


def read_csv_ratings(raw: Path) -> pd.DataFrame:
    """The ratings of a ``csv`` dataset: the file ``raw``, or ``raw/ratings.csv`` when ``raw`` is a folder."""
    # a local dataset's raw path is its folder: its CSV is ratings.csv there
    csv = raw / "ratings.csv" if raw.is_dir() else raw
    return _read_delimited(_plain_text(csv, fix="give a CSV file with header user,item,rating (for a "
                                                "`local: true` dataset: data/raw/<name>/ratings.csv)"),
                           None, fix="correct the file, or generate it again")
