"""Score held-out users in batches on the device and report Recall@20/50 and NDCG@100."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .batches import Batches, DeviceCSR
from .metrics import ndcg_from_hits, recall_from_hits, topk_hits

__all__ = ["METRICS", "Evaluation", "evaluate", "summarize"]

# name -> (function of topk_hits' output, K); the paper's three
METRICS: dict[str, tuple[Callable, int]] = {
    "recall@20": (recall_from_hits, 20),
    "recall@50": (recall_from_hits, 50),
    "ndcg@100": (ndcg_from_hits, 100),
}


@dataclass
class Evaluation:
    # one row per evaluated user: row, then one column per metric
    per_user: pd.DataFrame

    def summary(self) -> dict[str, float]:
        return summarize(self.per_user)


def summarize(per_user: pd.DataFrame) -> dict[str, float]:
    """Mean and standard error per metric over users with held-out items.

    The standard error is ``std / sqrt(n)`` with the population std (ddof 0), as the reference
    notebook reports it.
    """
    out: dict[str, float] = {}
    for name in METRICS:
        values = per_user[name].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if values.size else float("nan")
        out[f"{name}_se"] = float(values.std() / np.sqrt(values.size)) if values.size else float("nan")
    return out


@torch.no_grad()
def evaluate(
    score: Callable[[torch.Tensor], torch.Tensor],
    fold_in: sp.csr_matrix | DeviceCSR,
    heldout: sp.csr_matrix,
    *,
    batch_size: int = 2000,
    device: torch.device | str = "cpu",
    metrics: tuple[str, ...] = tuple(METRICS),
    with_clicks: bool = False,
) -> Evaluation:
    """Per-user metrics for users (rows) with at least one held-out item.

    ``score(x)`` maps dense fold-in rows (batch, n_items) to scores; fold-in items are set to −inf
    on the device before ranking.  With ``with_clicks``, ``score(x, clicks)`` also gets where the
    rows' clicks are (:class:`~evcf.batches.Clicks`), as a VAE model's ``score`` takes them, so
    that its first layer need not search ``x`` for them.  Nothing here waits for the device until
    the end: the batches are cut by :class:`~evcf.batches.Batches` (users copied to the device
    once, click counts from the host), and the per-user values stay on the device until one copy
    of each metric's column.
    """
    rows_csr = fold_in if isinstance(fold_in, DeviceCSR) else DeviceCSR(fold_in, device)
    heldout = sp.csr_matrix(heldout)
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)  # (n,) on the host
    heldout_dev = DeviceCSR(heldout, rows_csr.device)
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for (x, clicks), (truth, _) in zip(Batches(rows_csr, users, batch_size),
                                       Batches(heldout_dev, users, batch_size, dtype=torch.bool)):
        scores = score(x, clicks) if with_clicks else score(x)  # (batch, n_items)
        scores = scores.float().masked_fill_(x > 0, -torch.inf)  # fold-in items never recommended
        # one ranking for all metrics: the top max(K) items, each metric reads its first K
        hits, n_heldout = topk_hits(scores, truth, max(METRICS[name][1] for name in metrics))
        for name in metrics:
            fn, k = METRICS[name]
            columns[name].append(fn(hits, n_heldout, k))
    frame = pd.DataFrame({"row": users})
    for name in metrics:
        frame[name] = torch.cat(columns[name]).cpu().numpy() if columns[name] else np.array([])
    return Evaluation(frame)
