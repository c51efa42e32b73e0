"""SLIM: each column of W against a direct solve of the same constrained elastic net."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import minimize

from evcf.errors import EvcfError
from evcf.models import SLIM, build_model
from evcf.models.slim import slim_weights

import sklearn  # noqa: E402,F401  a required dependency (pyproject.toml): a broken install fails, never skips

X = np.array([
    [1, 1, 0, 0, 1],
    [0, 1, 1, 0, 0],
    [1, 0, 1, 1, 0],
    [0, 0, 0, 1, 1],
    [1, 1, 1, 0, 0],
    [0, 1, 0, 1, 1],
    [1, 1, 0, 1, 0],
    [0, 0, 1, 1, 1],
], dtype=np.float64)

TIGHT = {"max_iter": 100_000, "tol": 1e-14}  # coordinate descent run to convergence


def slim_column_directly(x: np.ndarray, j: int, l1: float, l2: float) -> np.ndarray:
    """min ½‖x_j − X w‖² + (l2/2)‖w‖² + l1 Σ w  over w ≥ 0 with w_j = 0, by L-BFGS-B.

    With w ≥ 0 the ℓ1 norm is the linear term Σ w, so the problem is a smooth bound-constrained
    quadratic; w_j = 0 is the bound [0, 0].
    """
    y = x[:, j]

    def objective(w):
        r = y - x @ w
        value = 0.5 * r @ r + 0.5 * l2 * w @ w + l1 * w.sum()
        grad = -x.T @ r + l2 * w + l1
        return value, grad

    bounds = [(0.0, 0.0) if k == j else (0.0, None) for k in range(x.shape[1])]
    res = minimize(objective, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    # The optimality (KKT) conditions decide, not res.success: at this tolerance L-BFGS-B's line
    # search can stop "ABNORMAL" at the optimum, depending on the BLAS kernel the machine runs.
    w, grad = res.x, objective(res.x)[1]
    free = np.array([k != j for k in range(x.shape[1])])
    projected = np.where(w[free] > 1e-12, grad[free], np.minimum(grad[free], 0.0))  # a bound may hold with grad >= 0
    assert np.abs(projected).max() < 1e-7, (res.message, projected)
    return w


@pytest.mark.parametrize("l1, l2", [(0.1, 0.5), (0.5, 1.0), (1.0, 0.1), (0.01, 2.0), (2.0, 0.0)])
def test_weights_match_a_direct_solve(l1, l2):
    w = slim_weights(sp.csr_matrix(X), l1, l2, **TIGHT).toarray()  # (I, I)
    for j in range(X.shape[1]):
        np.testing.assert_allclose(w[:, j], slim_column_directly(X, j, l1, l2), atol=1e-6,
                                   err_msg=f"column {j}")
    assert (w >= 0).all()
    assert (np.diag(w) == 0).all()  # exactly zero, not just small


def test_model_fit_score_state():
    model = build_model("slim", 5, l1_penalties=[0.5], l2_penalties=[1.0], **TIGHT)
    assert SLIM.seeded is False
    assert list(model.candidates()) == [{"l1": 0.5, "l2": 1.0}]
    model.fit(sp.csr_matrix(X), l1=0.5, l2=1.0)
    w = model.W.toarray()
    assert model.W.shape == (5, 5) and model.W.dtype == np.float32
    assert (w >= 0).all() and (np.diag(w) == 0).all()
    assert model.W.diagonal().tolist() == [0.0] * 5 and (w > 0).sum() > 0
    x = torch.tensor(X[:3], dtype=torch.float32)
    scores = model.score(x)
    assert scores.shape == (3, 5)
    np.testing.assert_allclose(scores.numpy(), X[:3] @ w, rtol=1e-6, atol=1e-7)
    scores[0, 0] = -float("inf")  # the caller masks in place: a fresh tensor every call
    assert torch.isfinite(model.score(x)).all()
    restored = SLIM(5)
    restored.load_state(model.state())
    assert torch.equal(restored.score(x), model.score(x))


def test_threads_and_item_subsets_give_the_same_columns():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((60, 40)) < 0.15).astype(np.float64))
    one = slim_weights(x, 0.5, 1.0, threads=1)
    two = slim_weights(x, 0.5, 1.0, threads=2)
    assert (one != two).nnz == 0
    some = slim_weights(x, 0.5, 1.0, items=[3, 17])
    assert set(np.flatnonzero(np.diff(some.indptr))) <= {3, 17}
    for j in (3, 17):
        np.testing.assert_array_equal(some[:, j].toarray(), one[:, j].toarray())


def test_bad_settings_are_errors():
    with pytest.raises(EvcfError, match="l1_penalties"):
        build_model("slim", 5, l1_penalties=[-1.0])
    with pytest.raises(EvcfError, match="all 0"):
        build_model("slim", 5, l1_penalties=[0.0], l2_penalties=[0.0])
    with pytest.raises(EvcfError, match="4 items"):
        build_model("slim", 4).fit(sp.csr_matrix(X), l1=1.0, l2=1.0)


def test_sklearn_units_are_ning_karypis_penalties_times_the_users():
    """penalty_units: sklearn reads (l1, l2) as scikit-learn's alpha·ρ and alpha·(1−ρ) on the loss
    averaged over the U users: the direct solve of SLIM's own problem with U·l1 and U·l2."""
    n_users = X.shape[0]
    w = slim_weights(sp.csr_matrix(X), 0.05, 0.1, penalty_units="sklearn", **TIGHT).toarray()
    for j in range(X.shape[1]):
        np.testing.assert_allclose(w[:, j], slim_column_directly(X, j, 0.05 * n_users, 0.1 * n_users), atol=1e-6)
    assert SLIM.Config().penalty_units == "ning-karypis"
    model = build_model("slim", X.shape[1], penalty_units="sklearn", l1_penalties=[0.05], l2_penalties=[0.1], **TIGHT)
    model.fit(sp.csr_matrix(X), l1=0.05, l2=0.1)
    np.testing.assert_allclose(model.W.toarray(), w, rtol=1e-6, atol=1e-7)
    with pytest.raises(EvcfError, match="penalty_units"):
        build_model("slim", 5, penalty_units="scikit")


# --- warm starts along the regularisation path (issue 18) ------------------------------------------

def test_the_grid_is_a_path_from_most_to_least_penalised_one_penalty_changing_at_a_time():
    model = build_model("slim", 5, l1_penalties=[0.1, 1.0, 0.5], l2_penalties=[2.0, 0.5])
    assert [(s["l1"], s["l2"]) for s in model.candidates()] == [
        (1.0, 2.0), (1.0, 0.5), (0.5, 0.5), (0.5, 2.0), (0.1, 2.0), (0.1, 0.5)]
    cold = build_model("slim", 5, l1_penalties=[0.1, 1.0], l2_penalties=[2.0, 0.5], warm_start=False)
    assert [(s["l1"], s["l2"]) for s in cold.candidates()] == [(0.1, 2.0), (0.1, 0.5), (1.0, 2.0), (1.0, 0.5)]


def test_a_warm_started_path_reaches_each_settings_own_solution(monkeypatch):
    """Each fit starts from the previous W, and still lands on the direct solve of its own problem."""
    import evcf.models.slim as slim_module

    starts = []
    real = slim_module.slim_weights

    def recording(*args, start=None, **kwargs):
        starts.append(None if start is None else start.copy())
        return real(*args, start=start, **kwargs)

    monkeypatch.setattr(slim_module, "slim_weights", recording)
    model = build_model("slim", 5, l1_penalties=[0.1, 1.0], l2_penalties=[0.5, 2.0], **TIGHT)
    previous = None
    for setting in model.candidates():
        model.fit(sp.csr_matrix(X), **setting)
        if previous is None:
            assert starts[-1] is None
        else:  # the previous setting's W, as kept
            assert (starts[-1] != previous).nnz == 0
        w = model.W.toarray()
        for j in range(X.shape[1]):
            np.testing.assert_allclose(w[:, j], slim_column_directly(X, j, setting["l1"], setting["l2"]),
                                       atol=1e-5, err_msg=f"{setting} column {j}")
        assert (np.diag(w) == 0).all()
        previous = model.W.copy()


def test_a_warm_start_matches_the_cold_start_and_takes_fewer_sweeps():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((300, 40)) < 0.15).astype(np.float64))
    cold = slim_weights(x, 0.5, 1.0, tol=1e-8, max_iter=10_000)
    before = slim_weights(x, 1.0, 1.0, tol=1e-8, max_iter=10_000)
    warm = slim_weights(x, 0.5, 1.0, tol=1e-8, max_iter=10_000, start=before)
    np.testing.assert_allclose(warm.toarray(), cold.toarray(), atol=1e-6)
    assert (warm.diagonal() == 0).all()
    same = slim_weights(x, 0.5, 1.0, tol=1e-8, max_iter=1, start=cold)  # one sweep from the solution
    np.testing.assert_allclose(same.toarray(), cold.toarray(), atol=1e-6)
    with pytest.raises(ValueError, match="warm start"):
        slim_weights(x, 0.5, 1.0, start=sp.csc_matrix((3, 3)))
    with pytest.raises(ValueError, match="self-weights"):
        slim_weights(x, 0.5, 1.0, start=sp.identity(40, format="csc"))
