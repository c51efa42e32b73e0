"""Ranking metrics of the Liang et al. (2018) protocol, per user.

Both functions take the full score matrix of a batch of users and their held-out items, and return one
value per user (NaN where a user has no held-out item, so that callers decide how to average).

Definitions (``docs/protocol.md``, from the ``vae_cf`` notebook):

* Recall@K = |top-K ∩ held-out| / min(K, |held-out|)
* NDCG@K = DCG@K / IDCG@K with DCG@K = Σ_{r=1..K} rel_r / log2(r + 1) and
  IDCG@K = Σ_{r=1..min(K, |held-out|)} 1 / log2(r + 1)

The caller has already set the scores of fold-in items to −inf.  Ties are broken deterministically,
on every device: among equal scores the lower item index ranks first (:func:`ranked_topk`).
The reference's ``np.argpartition`` leaves tie order unspecified; it matters for integer scores
such as popularity's counts, and for the −inf of masked items when a user has fewer than K others.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["recall_at_k", "ndcg_at_k", "ranked_topk", "topk_hits", "recall_from_hits", "ndcg_from_hits"]


def _as_tensor(scores) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.detach()
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    return torch.from_numpy(scores)


def _heldout_dense(heldout, device: torch.device) -> torch.Tensor:
    if sp.issparse(heldout):
        heldout = heldout.toarray()
    if isinstance(heldout, torch.Tensor):
        heldout = heldout.to(device)
        return heldout if heldout.dtype == torch.bool else heldout > 0
    return torch.from_numpy(np.asarray(heldout) > 0).to(device)


def ranked_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k best items per row, best first; equal scores: the lower index first.

    ``torch.topk`` gives the k-th best score t of each row.  Every item scored above t is among
    its k (they come first in its output); the places left go to the items scored exactly t,
    lowest index first, found by a second ``topk`` over −index restricted to those items.  The k
    items, in index order, are then sorted by score with a stable sort, so ties keep index order.
    Exact on every device, about the cost of two ``topk`` calls, and nothing waits for a GPU (no
    output size depends on the data).
    """
    n_rows, n_items = scores.shape
    if k == 0 or n_rows == 0:
        return torch.empty(n_rows, 0, dtype=torch.long, device=scores.device)
    values, index = torch.topk(scores, k, dim=1, sorted=True)  # (users, k), best first
    kth = values[:, k - 1 : k]  # (users, 1)
    n_above = (values > kth).sum(dim=1, keepdim=True)  # (users, 1): items above t, all among the k
    # the items scored t, lowest index first (the others keyed below every tied item)
    cols = torch.arange(n_items, dtype=torch.int32, device=scores.device)  # (items,)
    key = torch.where(scores == kth, -cols, torch.iinfo(torch.int32).min)  # (users, items)
    tied = torch.topk(key, k, dim=1, sorted=True).indices  # (users, k)
    place = torch.arange(k, device=scores.device)  # (k,)
    index = torch.where(place < n_above, index, tied.gather(1, (place - n_above).clamp_min(0)))
    index = torch.sort(index, dim=1).values  # the k chosen items, ascending index
    order = torch.sort(torch.gather(scores, 1, index), dim=1, descending=True, stable=True).indices
    return torch.gather(index, 1, order)


def topk_hits(scores, heldout, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (hits, n_heldout): ``hits[u, r]`` is True when user u's rank-(r+1) item is held out.

    ``hits`` has shape (users, min(k, n_items)); ``n_heldout`` (users,) counts held-out items.
    """
    scores = _as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users, items), got shape {tuple(scores.shape)}")
    truth = _heldout_dense(heldout, scores.device)
    if truth.shape != scores.shape:
        raise ValueError(f"heldout shape {tuple(truth.shape)} != scores shape {tuple(scores.shape)}")
    k = min(k, scores.shape[1])
    top = ranked_topk(scores, k)  # (users, k)
    hits = torch.gather(truth, 1, top)  # (users, k)
    return hits, truth.sum(dim=1)


def recall_from_hits(hits: torch.Tensor, n_heldout: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k (users,) float64, on ``hits``' device, from :func:`topk_hits` (its first k columns)."""
    n = n_heldout.double()
    recall = hits[:, :k].sum(dim=1).double() / torch.clamp(n, max=k)
    return torch.where(n == 0, torch.nan, recall)


def ndcg_from_hits(hits: torch.Tensor, n_heldout: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k (users,) float64, on ``hits``' device, from :func:`topk_hits` (its first k columns)."""
    hits = hits[:, :k]
    # the k discounts, made on hits' device (no copy from the host per batch)
    rank = torch.arange(k, device=hits.device)  # (k,) 0-based rank
    discount = 1.0 / torch.log2(rank.double() + 2.0)  # (k,)
    dcg = (hits.double() * discount[: hits.shape[1]]).sum(dim=1)
    # IDCG: the first min(k, held-out) discounts, summed per user (a masked row sum: a float cumsum
    # on CUDA is not deterministic, and refused under torch.use_deterministic_algorithms)
    n_rel = torch.clamp(n_heldout, max=k).unsqueeze(1)  # (users, 1)
    idcg = torch.where(rank < n_rel, discount, 0.0).sum(dim=1)  # (users,)
    return torch.where(n_heldout == 0, torch.nan, dcg / idcg)


def recall_at_k(scores, heldout, k: int) -> np.ndarray:
    """Recall@k per user: hits in the top k divided by min(k, number of held-out items)."""
    hits, n = topk_hits(scores, heldout, k)
    return recall_from_hits(hits, n, k).cpu().numpy()


def ndcg_at_k(scores, heldout, k: int) -> np.ndarray:
    """NDCG@k per user, with the ideal DCG taken over min(k, number of held-out items) positions."""
    hits, n = topk_hits(scores, heldout, k)
    return ndcg_from_hits(hits, n, k).cpu().numpy()
