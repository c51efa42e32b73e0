"""Popularity and EASE against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models import EASE, Popularity, build_model

X = np.array([
    [1, 1, 0, 0, 1],
    [0, 1, 1, 0, 0],
    [1, 0, 1, 1, 0],
    [0, 0, 0, 1, 1],
    [1, 1, 1, 0, 0],
    [0, 1, 0, 1, 1],
], dtype=np.float64)


def test_popularity_scores_are_column_sums_for_every_user():
    model = build_model("popularity", 5)
    model.fit(sp.csr_matrix(X))
    x = torch.zeros(3, 5)
    scores = model.score(x)
    assert scores.tolist() == [[3.0, 4.0, 3.0, 3.0, 3.0]] * 3
    scores[0, 0] = -float("inf")  # the caller masks in place: that must not leak into other rows
    assert model.score(x)[1, 0] == 3.0
    other = Popularity(5)
    other.load_state(model.state())
    assert torch.equal(other.score(x), model.score(x))


def ease_by_numpy(x: np.ndarray, lam: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))
    return b


@pytest.mark.parametrize("lam", [0.5, 2.0, 10.0])
def test_ease_equals_the_self_fitting(lam):
    model = build_model("ease", 5, lambdas=[lam])
    model.fit(sp.csr_matrix(X), **{"lambda": lam})
    expected_b = ease_by_numpy(X, lam)
    np.testing.assert_allclose(np.diag(expected_b), 0.0, atol=1e-12)
    np.testing.assert_allclose(model.B.numpy(), expected_b, rtol=1e-5, atol=1e-6)
    fold_in = torch.tensor(X[:3], dtype=torch.float32)
    np.testing.assert_allclose(model.score(fold_in).numpy(), X[:3] @ expected_b, rtol=1e-5,
                               atol=1e-6)
    assert model.state()["lambda"] == lam


def test_ease_candidates_state_and_gram_reuse():
    model = build_model("ease", 5)
    assert [c["lambda"] for c in model.candidates()] == [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                                                        5000.0]
    train = sp.csr_matrix(X)
    model.fit(train, **{"lambda": 1.0})
    gram = model._gram
    model.fit(train, **{"lambda": 3.0})
    assert model._gram is gram  # one Gram matrix for all candidates of one training matrix
    np.testing.assert_allclose(model.B.numpy(), ease_by_numpy(X, 3.0), rtol=1e-5, atol=1e-6)
    restored = EASE(5)
    restored.load_state(model.state())
    x = torch.tensor(X[3:], dtype=torch.float32)
    assert torch.equal(restored.score(x), model.score(x))
    assert restored.lam == 3.0


def test_self_fitting_models_check_the_item_count():
    with pytest.raises(EvcfError, match="4 items"):
        build_model("ease", 4).fit(sp.csr_matrix(X), **{"lambda": 1.0})
    with pytest.raises(EvcfError, match="4 items"):
        build_model("popularity", 4).fit(sp.csr_matrix(X))


def test_ease_solves_on_the_gpu_only_when_it_fits(monkeypatch):
    from evcf.models.baselines import solve_device

    cuda = torch.device("cuda", 0)
    assert solve_device(None, 100) == torch.device("cpu")
    assert solve_device(torch.device("cpu"), 100) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    need = 3 * 8 * 100 * 100  # three float64 100 x 100 matrices
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need, 10 * need))
    assert solve_device(cuda, 100) == cuda
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need - 1, 10 * need))
    assert solve_device(cuda, 100) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh runs it)")
def test_ease_on_cuda_equals_the_cpu_fit():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((60, 25)) < 0.2).astype(np.float32))
    cpu, gpu = build_model("ease", 25), build_model("ease", 25)
    cpu.fit(train, device=torch.device("cpu"), **{"lambda": 10.0})
    gpu.fit(train, device=torch.device("cuda"), **{"lambda": 10.0})
    torch.testing.assert_close(gpu.B, cpu.B, rtol=1e-5, atol=1e-6)
