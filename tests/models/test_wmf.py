"""WMF: the held-out-user fold-in and the training confidence against direct numpy solves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models import WMF, build_model
from evcf.models.wmf import fold_in_factors

import implicit  # noqa: E402,F401  a required dependency (pyproject.toml): a broken install fails, never skips

# 6 fold-in users x 5 items; row 3 has no clicks, row 5 has a count of 2 (confidence 1 + 2α)
X = np.array([
    [1, 1, 0, 0, 1],
    [0, 1, 1, 0, 0],
    [1, 0, 1, 1, 0],
    [0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1],
    [0, 2, 0, 1, 0],
], dtype=np.float64)

# given item factors (5 items x 3 factors)
Y = np.array([
    [0.3, -0.2, 0.5],
    [0.1, 0.4, -0.3],
    [-0.6, 0.2, 0.1],
    [0.2, 0.2, 0.2],
    [0.5, -0.1, -0.4],
])


def hu_user_step(x: np.ndarray, y: np.ndarray, lam: float, alpha: float) -> np.ndarray:
    """Hu et al. 2008 eq. 4 for each row, written out with the full diagonal C_u (no shortcuts)."""
    out = []
    for row in x:
        c = np.diag(1.0 + alpha * row)  # c_ui = 1 + α r_ui on every item (1 where unclicked)
        p = (row > 0).astype(float)  # p_ui
        a = y.T @ c @ y + lam * np.eye(y.shape[1])
        out.append(np.linalg.solve(a, y.T @ c @ p))
    return np.array(out)


@pytest.mark.parametrize("lam, alpha", [(0.1, 1.0), (1.0, 9.0), (0.01, 40.0)])
def test_fold_in_is_the_weighted_least_squares_solution(lam, alpha):
    model = WMF(5)
    model.load_state({"item_factors": torch.tensor(Y, dtype=torch.float32), "regularization": lam,
                      "alpha": alpha})
    y32 = Y.astype(np.float32).astype(np.float64)  # the model keeps float32 factors
    expected = hu_user_step(X, y32, lam, alpha)
    got = fold_in_factors(torch.tensor(X, dtype=torch.float32), model.item_factors, lam, alpha)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[3].numpy(), 0.0)  # no clicks: the factor is 0
    scores = model.score(torch.tensor(X, dtype=torch.float32))
    assert scores.shape == (6, 5) and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected @ y32.T, rtol=1e-5, atol=1e-7)


def test_fold_in_in_chunks_matches_one_chunk(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.random((40, 30)) < 0.2).astype(np.float32)
    y = torch.from_numpy(rng.normal(size=(30, 4)))
    whole = fold_in_factors(torch.from_numpy(x), y, 0.5, 3.0)
    monkeypatch.setattr("evcf.models.wmf._FOLD_IN_BUDGET", 1)  # one row per chunk
    np.testing.assert_allclose(fold_in_factors(torch.from_numpy(x), y, 0.5, 3.0).numpy(),
                               whole.numpy(), rtol=1e-12)
    np.testing.assert_allclose(whole.numpy(), hu_user_step(x.astype(float), y.numpy(), 0.5, 3.0),
                               rtol=1e-10, atol=1e-12)


def test_training_uses_confidence_one_plus_alpha():
    """After the last ALS sweep (an item step, exact with use_cg=False), every item factor solves
    the item step of Hu et al. with c = 1 + α r for the fitted training-user factors."""
    rng = np.random.default_rng(1)
    train = (rng.random((30, 12)) < 0.3).astype(np.float64)
    lam, alpha = 0.5, 4.0
    model = build_model("wmf", 12, factors=[3], regularizations=[lam], alphas=[alpha],
                        iterations=3, use_cg=False)
    model.fit(sp.csr_matrix(train), seed=0, factors=3, regularization=lam, alpha=alpha)
    users = model.train_user_factors.astype(np.float64)  # (U, F)
    expected = hu_user_step(train.T, users, lam, alpha)  # item step = user step on the transpose
    np.testing.assert_allclose(model.item_factors.numpy(), expected, rtol=2e-3, atol=2e-5)


def test_seeded_fit_candidates_and_state():
    rng = np.random.default_rng(2)
    train = sp.csr_matrix((rng.random((50, 20)) < 0.2).astype(np.float32))
    model = build_model("wmf", 20, factors=[4, 8], regularizations=[1.0], alphas=[2.0, 5.0])
    assert WMF.seeded is True
    assert list(model.candidates()) == [
        {"factors": 4, "regularization": 1.0, "alpha": 2.0},
        {"factors": 4, "regularization": 1.0, "alpha": 5.0},
        {"factors": 8, "regularization": 1.0, "alpha": 2.0},
        {"factors": 8, "regularization": 1.0, "alpha": 5.0},
    ]
    x = torch.from_numpy(train[:5].toarray())
    model.fit(train, seed=3, factors=4, regularization=1.0, alpha=2.0)
    a = model.score(x)
    model.fit(train, seed=3, factors=4, regularization=1.0, alpha=2.0)
    assert torch.equal(model.score(x), a)
    model.fit(train, seed=4, factors=4, regularization=1.0, alpha=2.0)
    assert not torch.equal(model.score(x), a)
    restored = WMF(20)
    restored.load_state(model.state())
    assert torch.equal(restored.score(x), model.score(x))
    scores = model.score(x)
    scores[0, 0] = -float("inf")  # the caller masks in place: a fresh tensor every call
    assert torch.isfinite(model.score(x)).all()


def test_bad_settings_are_errors():
    with pytest.raises(EvcfError, match="regularization"):
        build_model("wmf", 5, regularizations=[0.0])
    with pytest.raises(EvcfError, match="factors"):
        build_model("wmf", 5, factors=[])
    with pytest.raises(EvcfError, match="must be an integer"):
        build_model("wmf", 5, factors=[10.5])
    with pytest.raises(EvcfError, match="4 items"):
        build_model("wmf", 4).fit(sp.csr_matrix(X), factors=2, regularization=1.0, alpha=1.0)
