"""Score held-out users in batches on the device and report Recall@20/50 and NDCG@100."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .data.batches import DeviceCSR
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
    per_user: pd.DataFrame  # one row per evaluated user: row, then one column per metric

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
) -> Evaluation:
    """Per-user metrics for users (rows) with at least one held-out item.

    ``score(x)`` maps dense fold-in rows (batch, n_items) to scores; fold-in items are set to −inf
    on the device before ranking.  Apart from what ``score`` itself does, nothing waits for the
    device until the end: the batches' rows come from the host, and the per-user values stay on
    the device until one copy of each metric's column.
    """
    rows_csr = fold_in if isinstance(fold_in, DeviceCSR) else DeviceCSR(fold_in, device)
    heldout = sp.csr_matrix(heldout)
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    heldout_dev = DeviceCSR(heldout, rows_csr.device)
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for start in range(0, users.size, batch_size):
        rows = users[start : start + batch_size]  # on the host: the batch's click counts are summed there
        x = rows_csr.dense(rows)  # (batch, n_items)
        scores = score(x).float().masked_fill_(x > 0, -torch.inf)  # fold-in items never recommended
        truth = heldout_dev.dense(rows, dtype=torch.bool)
        # one ranking for all metrics: the top max(K) items, each metric reads its first K
        hits, n_heldout = topk_hits(scores, truth, max(METRICS[name][1] for name in metrics))
        for name in metrics:
            fn, k = METRICS[name]
            columns[name].append(fn(hits, n_heldout, k))
    frame = pd.DataFrame({"row": users})
    for name in metrics:
        frame[name] = torch.cat(columns[name]).cpu().numpy() if columns[name] else np.array([])
    return Evaluation(frame)
