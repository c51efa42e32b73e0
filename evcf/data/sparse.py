"""Load a processed split (``data/processed/<dataset>/``) into scipy CSR matrices.

Rows of each matrix are the users of that split in uid order, re-based to start at 0 (as the
reference's loaders do); columns are sids.  The fold-in and held-out matrices of a split share rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import EvcfError

__all__ = ["SplitData", "load_split"]


@dataclass
class SplitData:
    train: sp.csr_matrix  # (n_train_users, n_items)
    validation_tr: sp.csr_matrix  # (n_heldout, n_items) fold-in rows of validation users
    validation_te: sp.csr_matrix  # (n_heldout, n_items) their held-out rows
    test_tr: sp.csr_matrix
    test_te: sp.csr_matrix
    test_uids: np.ndarray  # global uid of each test row
    fingerprint: str = ""  # sha256 of the processed files (evcf.identity.split_fingerprint); "" if built in memory

    @property
    def n_items(self) -> int:
        return self.train.shape[1]


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise EvcfError("missing split file", path=path, fix="run the split step (evcf split) first")
    frame = pd.read_csv(path, dtype={"uid": np.int64, "sid": np.int64})
    if list(frame.columns) != ["uid", "sid"]:
        raise EvcfError("expected header uid,sid", path=path, fix="re-run the split step")
    return frame


def _csr(frame: pd.DataFrame, first_uid: int, n_rows: int, n_items: int) -> sp.csr_matrix:
    rows = frame["uid"].to_numpy() - first_uid
    data = np.ones(len(frame), dtype=np.float32)
    return sp.csr_matrix((data, (rows, frame["sid"].to_numpy())), shape=(n_rows, n_items), dtype=np.float32)


def load_split(processed: Path) -> SplitData:
    processed = Path(processed)
    n_items = sum(1 for _ in open(processed / "unique_sid.txt")) if (processed / "unique_sid.txt").exists() else None
    if n_items is None:
        raise EvcfError("missing unique_sid.txt", path=processed, fix="run the split step (evcf split) first")
    train = _read(processed / "train.csv")
    frames = {name: _read(processed / f"{name}.csv") for name in ("validation_tr", "validation_te", "test_tr", "test_te")}
    stats_path = processed / "stats.json"
    if not stats_path.exists():
        raise EvcfError("missing stats.json", path=stats_path, fix="run the split step (evcf split) first")
    stats = json.loads(stats_path.read_text())
    n_heldout = int(stats["n_heldout_users"])
    n_train = int(stats["filtered"]["users"]) - 2 * n_heldout
    vd_first, te_first = n_train, n_train + n_heldout
    out = {"train": _csr(train, 0, n_train, n_items)}
    for name, frame in frames.items():
        first = vd_first if name.startswith("validation") else te_first
        out[name] = _csr(frame, first, n_heldout, n_items)
    from ..identity import split_fingerprint

    return SplitData(**out, test_uids=np.arange(te_first, te_first + n_heldout),
                     fingerprint=split_fingerprint(processed))
