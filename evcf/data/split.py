"""Binarise, filter and split users exactly as Liang et al. (2018) do (``docs/protocol.md``).

The steps, in order:

1. keep ratings ``> threshold`` (3.5: four and five stars);
2. keep users with at least ``min_items`` kept ratings (no item filter);
3. permute the sorted unique user ids with the legacy ``RandomState(98765)`` — the same stream as the
   reference's ``np.random.seed(98765); np.random.permutation(n)``;
4. the first n − 2h permuted users train, the next h validate, the last h test;
5. items: ``pd.unique`` of the training users' rows in file order; held-out users' rows are restricted
   to them;
6. fold-in split of validation and of test users, each with the RandomState reset to 98765: users
   visited in ascending raw id, a user with ≥ 5 rows gets ``choice(n_u, int(0.2 * n_u),
   replace=False)`` rows held out, fewer than 5 keeps everything as fold-in;
7. uid = position in the permuted user list, sid = position in the item list.

This is the one place where the seed is fixed rather than passed in: reproducing the reference's
random stream is the point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EvcfError

__all__ = [
    "FINGERPRINT_KEYS",
    "SPLIT_SEED",
    "SPLIT_FILES",
    "SPLIT_OUTPUTS",
    "Split",
    "binarize_filter",
    "split_users",
    "write_split",
    "check_fingerprint",
    "rows_sha256",
]

log = logging.getLogger(__name__)

SPLIT_SEED = 98765  # the reference's seed, for the user permutation and for each fold-in split
HELDOUT_FRACTION = 0.2  # share of a held-out user's rows to predict
MIN_ROWS_TO_HOLD_OUT = 5  # users with fewer rows keep them all as fold-in
# the one list of the processed split's files: those a run reads (stats.json holds the sizes the loader
# uses), whose bytes are the split's fingerprint in a run's identity (evcf.identity.split_fingerprint) ...
SPLIT_FILES = ("train.csv", "validation_tr.csv", "validation_te.csv", "test_tr.csv", "test_te.csv",
               "unique_sid.txt", "stats.json")
# ... and all that write_split writes: those and the raw user ids in permuted order (uid = position), which
# no run reads (the outputs of the workflow's split rule)
SPLIT_OUTPUTS = (*SPLIT_FILES, "unique_uid.txt")


@dataclass
class Split:
    """The reference split: frames of ``uid, sid`` plus the raw ids behind them."""

    train: pd.DataFrame
    validation_tr: pd.DataFrame
    validation_te: pd.DataFrame
    test_tr: pd.DataFrame
    test_te: pd.DataFrame
    unique_uid: np.ndarray  # raw user ids in permuted order; uid = position
    unique_sid: np.ndarray  # raw item ids in order of first appearance in training rows; sid = position
    n_heldout: int
    filtered: dict  # ratings, users and items after binarisation and filtering

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "train.csv": self.train,
            "validation_tr.csv": self.validation_tr,
            "validation_te.csv": self.validation_te,
            "test_tr.csv": self.test_tr,
            "test_te.csv": self.test_te,
        }


def binarize_filter(ratings: pd.DataFrame, threshold: float, min_items: int) -> pd.DataFrame:
    """Keep rows with ``rating > threshold``, then users with ≥ ``min_items`` kept rows (file order kept)."""
    kept = ratings.loc[ratings["rating"].to_numpy() > threshold, ["user", "item"]]
    counts = kept["user"].value_counts()
    active = counts.index[counts.to_numpy() >= min_items]
    return kept.loc[kept["user"].isin(active)].reset_index(drop=True)


def _fold_in_split(plays: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each user's rows 80/20 (fold-in / held-out) with the reference's reset random stream.

    Rows come back grouped by ascending raw user id, in file order within a user: the order the
    reference's ``groupby`` + ``concat`` produces.
    """
    rng = np.random.RandomState(SPLIT_SEED)
    order = np.argsort(plays["user"].to_numpy(), kind="stable")
    grouped = plays.iloc[order].reset_index(drop=True)
    users = grouped["user"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else np.array([], int)
    ends = np.r_[starts[1:], users.size]
    heldout = np.zeros(users.size, dtype=bool)
    for start, end in zip(starts, ends):
        n_u = end - start
        if n_u >= MIN_ROWS_TO_HOLD_OUT:
            picked = rng.choice(n_u, size=int(HELDOUT_FRACTION * n_u), replace=False)
            heldout[start + picked.astype(np.int64)] = True
    return grouped.loc[~heldout], grouped.loc[heldout]


def split_users(filtered: pd.DataFrame, n_heldout: int, *, source: str = "the dataset") -> Split:
    """Apply steps 3-7 of the protocol to binarised, filtered ``user, item`` rows in file order."""
    unique_users = np.sort(filtered["user"].unique())
    n_users = unique_users.size
    if n_heldout < 1 or n_users - 2 * n_heldout < 1:
        raise EvcfError(
            f"{n_users} users remain after binarising and filtering, too few for "
            f"{n_heldout} validation + {n_heldout} test users (at least {2 * n_heldout + 1} needed)",
            path=source,
            fix="lower `heldout_users` for this dataset in params.yaml, or use a larger dataset",
        )
    perm = np.random.RandomState(SPLIT_SEED).permutation(n_users)
    unique_uid = unique_users[perm]
    n_train = n_users - 2 * n_heldout
    train_users = unique_uid[:n_train]
    vd_users = unique_uid[n_train : n_train + n_heldout]
    te_users = unique_uid[n_train + n_heldout :]

    train_plays = filtered.loc[filtered["user"].isin(train_users)]
    unique_sid = pd.unique(train_plays["item"])
    known_item = filtered["item"].isin(unique_sid)
    vd_tr, vd_te = _fold_in_split(filtered.loc[filtered["user"].isin(vd_users) & known_item])
    te_tr, te_te = _fold_in_split(filtered.loc[filtered["user"].isin(te_users) & known_item])

    uid_of = pd.Series(np.arange(n_users, dtype=np.int64), index=unique_uid)
    sid_of = pd.Series(np.arange(unique_sid.size, dtype=np.int64), index=unique_sid)

    def numerize(plays: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "uid": uid_of.loc[plays["user"].to_numpy()].to_numpy(),
                "sid": sid_of.loc[plays["item"].to_numpy()].to_numpy(),
            }
        )

    return Split(
        train=numerize(train_plays),
        validation_tr=numerize(vd_tr),
        validation_te=numerize(vd_te),
        test_tr=numerize(te_tr),
        test_te=numerize(te_te),
        unique_uid=unique_uid,
        unique_sid=np.asarray(unique_sid),
        n_heldout=n_heldout,
        filtered={
            "ratings": int(len(filtered)),
            "users": int(n_users),
            "items": int(filtered["item"].nunique()),
        },
    )


def rows_sha256(frame: pd.DataFrame) -> str:
    """sha256 of ``uid,sid\\n`` lines sorted numerically by uid then sid (docs/protocol.md fingerprints)."""
    arr = frame[["uid", "sid"]].to_numpy(dtype=np.int64)
    arr = arr[np.lexsort((arr[:, 1], arr[:, 0]))]
    text = "".join(f"{u},{s}\n" for u, s in arr)
    return hashlib.sha256(text.encode()).hexdigest()


def _sid_file_text(unique_sid: np.ndarray) -> str:
    return "".join(f"{s}\n" for s in unique_sid)


def stats(split: Split) -> dict:
    """Users, items and interactions per split, and sparsity of the training matrix."""
    n_items = int(split.unique_sid.size)
    out: dict = {"filtered": split.filtered, "n_items": n_items, "n_heldout_users": split.n_heldout}
    for name, frame in split.frames().items():
        n_users = int(frame["uid"].nunique())
        out[name.removesuffix(".csv")] = {
            "users": n_users,
            "items": int(frame["sid"].nunique()),
            "interactions": int(len(frame)),
        }
    n_train_users = int(split.unique_uid.size - 2 * split.n_heldout)
    out["train"]["sparsity"] = 1.0 - len(split.train) / (n_train_users * max(n_items, 1))
    return out


# what a fingerprint may hold (params.yaml data.<dataset>.fingerprint); see check_fingerprint
FINGERPRINT_KEYS = ("ratings", "users", "filtered_items", "items", "validation_te_rows", "test_te_rows",
                    "unique_sid_sha256", "validation_te_sha256", "test_te_sha256")


def check_fingerprint(split: Split, expected: dict, *, source: str) -> None:
    """Raise if the split differs from the known fingerprint of the reference split.

    ``expected`` may hold: ``ratings``, ``users`` and ``filtered_items`` (after binarising and
    filtering), ``items`` (kept from the training users), ``validation_te_rows``, ``test_te_rows``,
    ``unique_sid_sha256``, ``validation_te_sha256``, ``test_te_sha256``.
    """
    actual = {
        "ratings": lambda: split.filtered["ratings"],
        "users": lambda: split.filtered["users"],
        "filtered_items": lambda: split.filtered["items"],
        "items": lambda: int(split.unique_sid.size),
        "validation_te_rows": lambda: len(split.validation_te),
        "test_te_rows": lambda: len(split.test_te),
        "unique_sid_sha256": lambda: hashlib.sha256(_sid_file_text(split.unique_sid).encode()).hexdigest(),
        "validation_te_sha256": lambda: rows_sha256(split.validation_te),
        "test_te_sha256": lambda: rows_sha256(split.test_te),
    }
    assert set(actual) == set(FINGERPRINT_KEYS)  # the schema (evcf/config/schema.py) reads that list
    unknown = set(expected) - set(actual)
    if unknown:
        raise EvcfError(
            f"unknown fingerprint keys {sorted(unknown)}",
            path="params.yaml",
            fix=f"use only {sorted(actual)}",
        )
    wrong = []
    for key, want in expected.items():
        got = actual[key]()
        if got != want:
            wrong.append(f"{key}: expected {want}, got {got}")
    if wrong:
        raise EvcfError(
            "the split does not reproduce the reference split (" + "; ".join(wrong) + ")",
            path=source,
            fix="check that the raw file is the published archive and unmodified; "
            "the split code must not be changed without updating the fingerprints",
        )
    log.info("fingerprint of the reference split verified (%d checks)", len(expected))


def write_split(split: Split, out_dir: Path) -> dict:
    """Write the reference layout into ``out_dir`` atomically (a sibling temp folder, then rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, frame in split.frames().items():
            frame.to_csv(tmp / name, index=False)
        (tmp / "unique_sid.txt").write_text(_sid_file_text(split.unique_sid))
        (tmp / "unique_uid.txt").write_text("".join(f"{u}\n" for u in split.unique_uid))
        summary = stats(split)
        (tmp / "stats.json").write_text(json.dumps(summary, indent=2) + "\n")
        assert sorted(p.name for p in tmp.iterdir()) == sorted(SPLIT_OUTPUTS)  # the one list names every file
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
