"""Raw GroupLens / Netflix layouts → reader → split equals the independent reference split."""

import numpy as np
import pytest

from evcf.data.readers import read_ratings
from evcf.data.split import binarize_filter, split_users
from grouplens_fixtures import (
    expected_netflix_order,
    make_ml1m_zip,
    make_ml20m_zip,
    make_ml100k_zip,
    make_netflix_kaggle,
    make_netflix_training_set,
    random_ratings,
)
from reference_split import reference_split


def _check(raw_frame, n_heldout):
    ours = split_users(binarize_filter(raw_frame, 3.5, 5), n_heldout)
    ref = reference_split(raw_frame, n_heldout)
    for name, frame in ours.frames().items():
        np.testing.assert_array_equal(frame.to_numpy(), ref[name].to_numpy(), err_msg=name)
    np.testing.assert_array_equal(ours.unique_sid, ref["unique_sid"])
    return ours


@pytest.mark.parametrize(
    "maker,fmt,half",
    [(make_ml20m_zip, "movielens-20m", True), (make_ml1m_zip, "movielens-1m", False),
     (make_ml100k_zip, "movielens-100k", False)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_movielens_fixture_split(tmp_path, maker, fmt, half, seed):
    df = random_ratings(seed, n_users=120, n_items=60, n_rows=3000, half_stars=half)
    path = maker(tmp_path / f"{fmt}.zip", df)
    raw = read_ratings(path, fmt)
    split = _check(raw, 10)
    assert split.filtered["users"] == (binarize_filter(df, 3.5, 5)["user"].nunique())


@pytest.mark.parametrize("layout", ["kaggle", "kaggle-zip", "training_set"])
def test_netflix_fixture_split(tmp_path, layout):
    df = random_ratings(7, n_users=150, n_items=50, n_rows=3500, half_stars=False)
    if layout == "training_set":
        make_netflix_training_set(tmp_path, df)
    else:
        make_netflix_kaggle(tmp_path, df, zipped=layout == "kaggle-zip")
    raw = read_ratings(tmp_path, "netflix")
    expected = expected_netflix_order(df).reset_index(drop=True)
    np.testing.assert_array_equal(raw[["user", "item"]].to_numpy(), expected[["user", "item"]].to_numpy())
    _check(raw, 12)
