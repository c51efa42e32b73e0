"""The split equals an independent re-implementation of docs/protocol.md, row for row, in order."""

import json

import numpy as np
import pandas as pd
import pytest

from evcf.cli import main
from evcf.data.split import binarize_filter, check_fingerprint, rows_sha256, split_users, write_split
from evcf.data.synthetic import SyntheticSpec, generate_ratings
from evcf.errors import EvcfError
from reference_split import reference_split


def _ours(raw, n_heldout):
    return split_users(binarize_filter(raw, 3.5, 5), n_heldout)


def _assert_same(ours, ref):
    for name, frame in ours.frames().items():
        expected = ref[name].reset_index(drop=True)
        got = frame.reset_index(drop=True)
        assert len(got) == len(expected), name
        np.testing.assert_array_equal(got["uid"].to_numpy(), expected["uid"].to_numpy(), err_msg=name)
        np.testing.assert_array_equal(got["sid"].to_numpy(), expected["sid"].to_numpy(), err_msg=name)
    np.testing.assert_array_equal(ours.unique_sid, np.asarray(ref["unique_sid"]))
    np.testing.assert_array_equal(ours.unique_uid, np.asarray(ref["unique_uid"]))


@pytest.mark.parametrize(
    "spec,n_heldout",
    [
        (SyntheticSpec(n_users=400, n_items=150, mean_items=20, seed=0), 40),
        (SyntheticSpec(n_users=900, n_items=300, mean_items=12, n_topics=5, seed=7), 100),
        (SyntheticSpec(n_users=250, n_items=60, mean_items=30, zipf=1.5, seed=123), 10),
        (SyntheticSpec(n_users=1500, n_items=500, mean_items=25, seed=2024), 300),
    ],
)
def test_split_equals_reference_on_generated_data(spec, n_heldout):
    raw = generate_ratings(spec)
    _assert_same(_ours(raw, n_heldout), reference_split(raw, n_heldout))


def test_split_equals_reference_with_shuffled_rows_and_half_stars():
    # file order decides item numbering: shuffle rows and use half-star ratings (3.5 must be dropped)
    rng = np.random.default_rng(5)
    raw = generate_ratings(SyntheticSpec(n_users=500, n_items=200, seed=3))
    raw = raw.iloc[rng.permutation(len(raw))].reset_index(drop=True)
    raw["rating"] = rng.choice(np.arange(0.5, 5.5, 0.5), size=len(raw)).astype(np.float32)
    assert (raw["rating"] == 3.5).any()
    _assert_same(_ours(raw, 30), reference_split(raw, 30))


def test_protocol_invariants():
    raw = generate_ratings(SyntheticSpec(n_users=600, n_items=200, seed=11))
    split = _ours(raw, 50)
    n_users = split.filtered["users"]
    n_train = n_users - 100
    assert split.train["uid"].min() == 0 and split.train["uid"].max() == n_train - 1
    for prefix, first in (("validation", n_train), ("test", n_train + 50)):
        tr, te = split.frames()[f"{prefix}_tr.csv"], split.frames()[f"{prefix}_te.csv"]
        assert set(tr["uid"]) | set(te["uid"]) <= set(range(first, first + 50))
        # held out = int(0.2 * n_u) of each user's rows, none shared with fold-in
        n_u = tr.groupby("uid").size().add(te.groupby("uid").size(), fill_value=0)
        held = te.groupby("uid").size().reindex(n_u.index, fill_value=0)
        expected = np.where(n_u >= 5, (0.2 * n_u).astype(int), 0)
        np.testing.assert_array_equal(held.to_numpy(), expected)
        assert not set(map(tuple, tr.to_numpy())) & set(map(tuple, te.to_numpy()))
    # every item id appears in training rows; sids number items by first appearance there
    assert split.train["sid"].nunique() == split.unique_sid.size
    assert (pd.unique(split.train["sid"]) == np.arange(split.unique_sid.size)).all()


def test_too_few_users_is_a_clear_error():
    raw = generate_ratings(SyntheticSpec(n_users=50, n_items=40, seed=1))
    with pytest.raises(EvcfError, match="too few for 100 validation"):
        _ours(raw, 100)


def test_write_split_layout_and_fingerprint(tmp_path):
    raw = generate_ratings(SyntheticSpec(n_users=300, n_items=100, seed=4))
    split = _ours(raw, 30)
    out = tmp_path / "processed" / "toy"
    summary = write_split(split, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.csv", "validation_tr.csv", "validation_te.csv", "test_tr.csv", "test_te.csv",
         "unique_sid.txt", "unique_uid.txt", "stats.json"]
    )
    assert (out / "train.csv").read_text().splitlines()[0] == "uid,sid"
    assert json.loads((out / "stats.json").read_text()) == summary
    assert summary["train"]["interactions"] == len(split.train)
    assert (out / "unique_sid.txt").read_text().split() == [str(s) for s in split.unique_sid]
    # no temporary folders left behind
    assert [p.name for p in out.parent.iterdir()] == ["toy"]

    good = {"users": split.filtered["users"], "items": int(split.unique_sid.size),
            "test_te_rows": len(split.test_te), "test_te_sha256": rows_sha256(split.test_te)}
    check_fingerprint(split, good, source="toy")
    with pytest.raises(EvcfError, match="does not reproduce the reference split"):
        check_fingerprint(split, {**good, "test_te_rows": len(split.test_te) + 1}, source="toy")


def test_rows_sha256_matches_hand_computation():
    import hashlib

    frame = pd.DataFrame({"uid": [10, 2, 2], "sid": [1, 7, 3]})
    assert rows_sha256(frame) == hashlib.sha256(b"2,3\n2,7\n10,1\n").hexdigest()


# -- the fingerprint --------------------------------------------------------------------------------


def test_fingerprint_checks_filtered_counts(tmp_path):
    raw = generate_ratings(SyntheticSpec(n_users=300, n_items=80, mean_items=20, n_topics=4, seed=1))
    filtered = binarize_filter(raw, 3.5, 5)
    split = split_users(filtered, 30)
    right = {"ratings": len(filtered), "users": filtered["user"].nunique(),
             "filtered_items": filtered["item"].nunique()}
    check_fingerprint(split, right, source="x")
    with pytest.raises(EvcfError, match="ratings: expected"):
        check_fingerprint(split, {**right, "ratings": right["ratings"] + 1}, source="x")
    with pytest.raises(EvcfError, match="filtered_items: expected"):
        check_fingerprint(split, {**right, "filtered_items": 17769}, source="x")


def test_evcf_split_checks_the_fingerprint(tmp_path, capsys):
    """Mutation: cmd_split never calls check_fingerprint."""
    from evcf.data.synthetic import SyntheticSpec, generate_ratings, write_ratings

    raw = tmp_path / "ratings.csv"
    write_ratings(generate_ratings(SyntheticSpec(n_users=200, n_items=60, mean_items=20, n_topics=4, seed=1)), raw)
    args = ["split", "--raw", str(raw), "--format", "csv", "--threshold", "3.5", "--min-items", "5",
            "--heldout", "20"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    users = json.loads((tmp_path / "ok" / "stats.json").read_text())["filtered"]["users"]
    capsys.readouterr()
    assert main([*args, "--fingerprint", json.dumps({"users": users + 1}), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "users" in err
    assert not (tmp_path / "bad").exists()
    assert main([*args, "--fingerprint", json.dumps({"users": users}), "--out", str(tmp_path / "good")]) == 0
