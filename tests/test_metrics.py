"""Recall@K and NDCG@K against hand-worked cases and an independent numpy implementation."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from conftest import write_synthetic_split
from evcf.data.sparse import load_split
from evcf.evaluate import evaluate
from evcf.metrics import ndcg_at_k, recall_at_k, topk_hits
from evcf.models import build_model

INF = -np.inf


def test_perfect_ranking():
    scores = np.array([[0.9, 0.8, 0.1, 0.0]])
    held = np.array([[1, 1, 0, 0]])
    assert recall_at_k(scores, held, 2)[0] == 1.0
    assert ndcg_at_k(scores, held, 2)[0] == pytest.approx(1.0)


def test_no_hit():
    scores = np.array([[0.9, 0.8, 0.1, 0.0]])
    held = np.array([[0, 0, 1, 1]])
    assert recall_at_k(scores, held, 2)[0] == 0.0
    assert ndcg_at_k(scores, held, 2)[0] == 0.0


def test_hand_worked_partial_hits():
    # ranking: items 3, 0, 4, 1, 2; held out {0, 2}
    scores = np.array([[0.8, 0.4, 0.1, 0.9, 0.5]])
    held = np.array([[1, 0, 1, 0, 0]])
    # K=3: top-3 = {3, 0, 4}: one hit at rank 2, min(3, 2) = 2
    assert recall_at_k(scores, held, 3)[0] == pytest.approx(0.5)
    dcg = 1 / math.log2(3)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(scores, held, 3)[0] == pytest.approx(dcg / idcg)
    # K=5: both hits, ranks 2 and 5
    assert recall_at_k(scores, held, 5)[0] == pytest.approx(1.0)
    assert ndcg_at_k(scores, held, 5)[0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / idcg)


def test_fewer_heldout_than_k_normalises_by_heldout_count():
    # 3 held-out items, K = 20 > n_items: recall divides by 3, not by 20
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    held = np.array([[0, 1, 0, 1, 1]])
    assert recall_at_k(scores, held, 20)[0] == pytest.approx(1.0)
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(r + 1) for r in (1, 2, 3))
    assert ndcg_at_k(scores, held, 20)[0] == pytest.approx(dcg / idcg)


def test_more_heldout_than_k_normalises_by_k():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    held = np.array([[1, 0, 1, 1, 1]])
    # K=2: top-2 = {0, 1}, one hit, min(2, 4) = 2
    assert recall_at_k(scores, held, 2)[0] == pytest.approx(0.5)
    assert ndcg_at_k(scores, held, 2)[0] == pytest.approx(1.0 / (1 + 1 / math.log2(3)))


def test_user_without_heldout_is_nan_and_foldin_masked_items_never_count():
    scores = np.array([[INF, 0.5, 0.4], [0.3, 0.2, 0.1]])
    held = np.array([[0, 0, 1], [0, 0, 0]])
    r = recall_at_k(scores, held, 1)
    assert r[0] == 0.0 and math.isnan(r[1])
    assert math.isnan(ndcg_at_k(scores, held, 1)[1])


def test_inputs_numpy_torch_and_sparse_agree():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 30)).astype(np.float32)
    held = (rng.random((20, 30)) < 0.2).astype(np.float32)
    for k in (1, 5, 10):
        a = ndcg_at_k(scores, held, k)
        np.testing.assert_allclose(ndcg_at_k(torch.from_numpy(scores), sp.csr_matrix(held), k), a)
        np.testing.assert_allclose(recall_at_k(torch.from_numpy(scores), torch.from_numpy(held), k),
                                   recall_at_k(scores, held, k))


def _independent(scores, held, k):
    """vae_cf-style: argpartition, then sort the top k, loop per user."""
    n_users = scores.shape[0]
    recall = np.full(n_users, np.nan)
    ndcg = np.full(n_users, np.nan)
    idx_part = np.argpartition(-scores, k, axis=1)[:, :k]
    for u in range(n_users):
        top = idx_part[u][np.argsort(-scores[u, idx_part[u]])]
        n_rel = int(held[u].sum())
        if n_rel == 0:
            continue
        hits = held[u, top]
        recall[u] = hits.sum() / min(k, n_rel)
        dcg = sum(hits[r] / np.log2(r + 2) for r in range(k))
        idcg = sum(1 / np.log2(r + 2) for r in range(min(k, n_rel)))
        ndcg[u] = dcg / idcg
    return recall, ndcg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_implementation_with_masked_foldin(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 50, 400
    scores = rng.normal(size=(n_users, n_items))
    foldin = rng.random((n_users, n_items)) < 0.05
    held = ((rng.random((n_users, n_items)) < 0.04) & ~foldin).astype(np.float64)
    held[0] = 0  # a user with nothing held out
    scores[foldin] = -np.inf
    for k in (20, 50, 100):
        r_ind, n_ind = _independent(scores, held, k)
        np.testing.assert_allclose(recall_at_k(scores, held, k), r_ind, equal_nan=True)
        np.testing.assert_allclose(ndcg_at_k(scores, held, k), n_ind, rtol=1e-6, equal_nan=True)


# -- ties and batching -----------------------------------------------------------------------------


def reference_ranking(scores: np.ndarray, k: int) -> np.ndarray:
    """Independent: sort by (score descending, item index ascending)."""
    items = np.arange(scores.shape[1])
    return np.stack([np.lexsort((items, -row))[:k] for row in scores])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_rank_the_lower_item_index_first(dtype):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 57)).astype(np.float64)  # many ties, as popularity counts have
    scores[:, 5] = -np.inf  # masked fold-in items tie too
    heldout = rng.random((30, 57)) < 0.2
    hits, n = topk_hits(torch.tensor(scores, dtype=dtype), torch.tensor(heldout), 20)
    want = np.take_along_axis(heldout, reference_ranking(scores, 20), axis=1)
    np.testing.assert_array_equal(hits.numpy(), want)
    np.testing.assert_array_equal(n.numpy(), heldout.sum(1))


def test_all_equal_scores_give_the_first_k_items():
    heldout = torch.zeros(2, 10, dtype=torch.bool)
    heldout[:, [0, 1, 9]] = True
    hits, _ = topk_hits(torch.ones(2, 10), heldout, 3)
    assert hits.tolist() == [[True, True, False]] * 2


def test_popularity_evaluation_is_independent_of_the_row_batching(tmp_path):
    data = load_split(write_synthetic_split(tmp_path / "processed", 40, n_users=400, n_items=100, mean_items=25, n_topics=5, seed=1))
    model = build_model("popularity", data.n_items)
    model.fit(data.train)
    one = evaluate(model.score, data.test_tr, data.test_te, batch_size=1000).per_user
    many = evaluate(model.score, data.test_tr, data.test_te, batch_size=7).per_user
    pd.testing.assert_frame_equal(one, many)
