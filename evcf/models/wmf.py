"""WMF: weighted matrix factorisation for implicit feedback (Hu, Koren & Volinsky 2008).

Read top to bottom: the config and its grid, the fit (the ``implicit`` package's alternating least
squares on the training users), then the fold-in that scores users never seen in training.

The model.  Every (user u, item i) cell has a preference p_ui = 1[r_ui > 0] and a confidence
c_ui = 1 + α·r_ui (1 for every unclicked cell).  User factors x_u and item factors y_i minimise

    Σ_ui c_ui (p_ui − x_uᵀ y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)

by alternating least squares.  With the item factors Y (I, F) fixed, each user's factor has the
closed form (Hu et al. 2008, eq. 4)

    x_u = (YᵀY + Yᵀ(C_u − Id)Y + λ Id)⁻¹ Yᵀ C_u p_u

where only the user's clicked items contribute to Yᵀ(C_u − Id)Y and to Yᵀ C_u p_u.

Strong generalisation: the held-out (validation and test) users are never in the training matrix.
``score`` computes their factors from their fold-in rows with exactly this user step, with the
trained item factors fixed ("fold-in"), then scores x_uᵀ y_i for every item.  The training users'
factors are not needed for that and are not saved.

Confidence convention of ``implicit``: its solvers read the stored value of a clicked cell as the
confidence c_ui itself (they add (c − 1)·y yᵀ and c·y), and its own ``alpha`` only multiplies the
stored values (c = α·r).  To train Hu et al.'s c = 1 + α·r, we pass the matrix 1 + α·r on the
clicked cells and leave ``implicit``'s ``alpha`` at 1.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel
from evcf.models.baselines import _check_train

__all__ = ["WMF", "fold_in_factors"]

log = logging.getLogger(__name__)

# Most float64 elements of the gathered (rows, clicks, F) item-factor block of one fold-in chunk
# (2^25 elements = 256 MiB); a batch is solved in as many row chunks as that takes.
_FOLD_IN_BUDGET = 2**25


def fold_in_factors(x: torch.Tensor, item_factors: torch.Tensor, regularization: float,
                    alpha: float) -> torch.Tensor:
    """Exact ALS user step for each row of ``x`` with the item factors fixed.

    ``x`` (B, I) holds non-negative clicks/counts r_ui; ``item_factors`` (I, F).  Returns the user
    factors (B, F) in float64: x_u = (YᵀY + Σ_{i: r_ui>0} α r_ui y_i y_iᵀ + λ Id)⁻¹ Σ_{i: r_ui>0}
    (1 + α r_ui) y_i.  Everything is computed in float64 on ``x``'s device.  Only each row's
    clicked items are gathered, rows sorted by their number of clicks and padded to the longest
    row of their chunk, so the cost is about O(clicks · F²) rather than O(B · I · F²).
    """
    y = item_factors.to(device=x.device, dtype=torch.float64)  # (I, F)
    n_rows, n_factors = x.shape[0], y.shape[1]
    gram = y.T @ y  # (F, F)  YᵀY
    gram.diagonal().add_(regularization)  # YᵀY + λ Id
    out = torch.empty(n_rows, n_factors, dtype=torch.float64, device=x.device)
    counts = (x > 0).sum(dim=1)  # (B,) clicks per row
    order = torch.argsort(counts)  # rows from the fewest to the most clicks
    sorted_counts = counts[order].tolist()
    start = 0
    while start < n_rows:
        # the largest chunk whose padded (rows, width, F) block stays within the budget
        stop = start + 1
        while (stop < n_rows
               and (stop + 1 - start) * max(sorted_counts[stop], 1) * n_factors <= _FOLD_IN_BUDGET):
            stop += 1
        rows_here = order[start:stop]  # (b,) rows of x in this chunk
        xc = x[rows_here]  # (b, I)
        b, width = xc.shape[0], max(sorted_counts[stop - 1], 1)
        rows, cols = torch.nonzero(xc > 0, as_tuple=True)  # row-major: grouped by row
        lengths = counts[rows_here]  # (b,)
        first = torch.cumsum(lengths, 0) - lengths  # (b,) offset of each row's first click
        slot = torch.arange(rows.numel(), device=x.device) - first[rows]  # position within row
        idx = torch.zeros(b, width, dtype=torch.long, device=x.device)  # (b, L) item ids, padded
        r = torch.zeros(b, width, dtype=torch.float64, device=x.device)  # (b, L) r_ui, 0 = padding
        idx[rows, slot] = cols
        r[rows, slot] = xc[rows, cols].to(torch.float64)
        yg = y[idx]  # (b, L, F) factors of each row's clicked items
        weighted = (alpha * r).unsqueeze(-1) * yg  # (b, L, F)  (c_ui − 1) y_i; 0 on padding
        a = gram + weighted.transpose(1, 2) @ yg  # (b, F, F)  YᵀC_uY + λ Id
        conf = torch.where(r > 0, 1.0 + alpha * r, torch.zeros_like(r))  # (b, L)  c_ui p_ui
        rhs = (conf.unsqueeze(-1) * yg).sum(dim=1)  # (b, F)  Yᵀ C_u p_u
        chol = torch.linalg.cholesky(a)  # symmetric positive definite since λ > 0
        out[rows_here] = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        start = stop
    return out


class WMF(SelfFittingModel):
    """Hu et al.'s WMF trained by ``implicit``'s ALS; held-out users folded in exactly in ``score``."""

    name: ClassVar[str] = "wmf"
    label: ClassVar[str] = "WMF"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#8c564b"
    row: ClassVar[int] = 1
    seeded: ClassVar[bool] = True  # the ALS starts from random factors drawn from the seed
    # implicit's PyPI wheels have no CUDA: the pipeline runs WMF on CPUs.  With a CUDA build of
    # implicit, `evcf train --device cuda` fits on the GPU (``fit``).
    uses_gpu: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config:
        # Grid (the training loop keeps the best by validation NDCG@100).  Ours, meant as the grid
        # of Liang et al. 2018 (§4.3) as we recall it, not checked against the text here: the latent
        # dimension over {100, 200} and the weight of the 1's over {2, 5, 10, 30, 50, 100} with the
        # 0's weighted 1, i.e. α = weight − 1 (Hu et al. 2008 found α = 40 good on their data).
        # λ: ours.
        factors: tuple[int, ...] = (100, 200)  # ours (Liang et al.'s K, recalled)
        alphas: tuple[float, ...] = (1.0, 4.0, 9.0, 29.0, 49.0, 99.0)  # ours (Liang et al.'s weights − 1, recalled)
        regularizations: tuple[float, ...] = (1.0, 10.0, 100.0)  # ours: λ, not given by Liang et al.
        iterations: int = 15  # `implicit`'s default number of ALS sweeps
        use_cg: bool = True  # `implicit`'s default: conjugate-gradient user/item steps (Takács et al.
        #                      2011, 3 CG steps, warm-started); False = exact Cholesky steps (Hu et al.)

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        _validate(self.config, self.name)
        self.n_items = n_items
        self.item_factors: torch.Tensor | None = None  # (I, F) float32
        self.regularization: float | None = None
        self.alpha: float | None = None
        # the training users' factors of the last fit (not part of the state: held-out users are
        # folded in); kept for inspection and tests
        self.train_user_factors: np.ndarray | None = None

    def candidates(self) -> Iterable[dict[str, Any]]:
        c = self.config
        return [{"factors": int(f), "regularization": float(lam), "alpha": float(a)}
                for f, lam, a in itertools.product(c.factors, c.regularizations, c.alphas)]

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            sweep_callback: Callable[[int, float, Any], None] | None = None, **setting: Any) -> None:
        """ALS on ``train`` with ``setting`` (factors, regularization, alpha).

        ``sweep_callback(iteration, seconds, loss)`` is handed to ``implicit``, which calls it after
        each ALS sweep with the sweep's duration (``evcf bench`` times the sweeps with it).
        """
        c = self.config
        factors = int(setting.get("factors", c.factors[0]))
        regularization = float(setting.get("regularization", c.regularizations[0]))
        alpha = float(setting.get("alpha", c.alphas[0]))
        _check_setting(factors, regularization, alpha)
        train = _check_train(train, self.n_items, self.name)
        confidence = train.astype(np.float32)  # (U, I) users x items, clicked cells only
        confidence.data = 1.0 + alpha * confidence.data  # c_ui = 1 + α r_ui (see module docstring)

        import threadpoolctl
        from implicit import gpu as implicit_gpu

        use_gpu = device is not None and device.type == "cuda" and implicit_gpu.HAS_CUDA
        # `implicit` runs its own thread pool; a multi-threaded BLAS underneath it oversubscribes
        # the cores (its documentation asks for one BLAS thread)
        with threadpoolctl.threadpool_limits(1, "blas"):
            if use_gpu:
                from implicit.gpu.als import AlternatingLeastSquares as GpuALS

                als = GpuALS(factors=factors, regularization=regularization, alpha=1.0,
                             iterations=c.iterations, random_state=seed)
            else:
                from implicit.cpu.als import AlternatingLeastSquares as CpuALS

                als = CpuALS(factors=factors, regularization=regularization, alpha=1.0,
                             iterations=c.iterations, use_cg=c.use_cg,
                             num_threads=torch.get_num_threads(), random_state=seed)
            als.fit(confidence, show_progress=False, callback=sweep_callback)
        if use_gpu:
            als = als.to_cpu()
        item_factors = np.asarray(als.item_factors, dtype=np.float32)  # (I, F)
        if not np.isfinite(item_factors).all():
            raise EvcfError(f"WMF diverged (non-finite item factors) with {setting}",
                            fix="use a larger regularization or a smaller alpha")
        self.item_factors = torch.from_numpy(item_factors.copy())
        self.train_user_factors = np.asarray(als.user_factors, dtype=np.float32)
        self.regularization, self.alpha = regularization, alpha
        log.debug("WMF fitted: %d factors, lambda=%g, alpha=%g, %d %s sweeps%s", factors,
                  regularization, alpha, c.iterations, "CG" if c.use_cg else "Cholesky",
                  " on the GPU" if use_gpu else "")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.item_factors is None:
            raise RuntimeError("WMF.score called before fit")
        users = fold_in_factors(x, self.item_factors, self.regularization, self.alpha)  # (B, F)
        y = self.item_factors.to(device=x.device, dtype=torch.float64)  # (I, F)
        return (users @ y.T).float()  # (B, I), a fresh tensor

    def state(self) -> dict[str, Any]:
        return {"item_factors": self.item_factors, "regularization": self.regularization,
                "alpha": self.alpha}

    def load_state(self, state: dict[str, Any]) -> None:
        self.item_factors = torch.as_tensor(state["item_factors"], dtype=torch.float32).cpu()
        self.regularization = float(state["regularization"])
        self.alpha = float(state["alpha"])


def _check_setting(factors: int, regularization: float, alpha: float) -> None:
    if factors < 1:
        raise EvcfError(f"WMF needs factors >= 1, got {factors}", fix="use e.g. factors: [100, 200]")
    if regularization <= 0:
        raise EvcfError(f"WMF needs regularization > 0, got {regularization}",
                        fix="use a positive regularization, e.g. regularizations: [1.0, 10.0]")
    if alpha < 0:
        raise EvcfError(f"WMF needs alpha >= 0, got {alpha}", fix="use e.g. alphas: [4.0, 9.0]")


def _validate(config: WMF.Config, model: str) -> None:
    for key in ("factors", "regularizations", "alphas"):
        if len(getattr(config, key)) == 0:
            raise EvcfError(f"model {model!r}: {key} is empty", fix=f"give {key} at least one value")
    try:
        _check_setting(min(config.factors), min(config.regularizations), min(config.alphas))
    except EvcfError as err:
        raise EvcfError(f"model {model!r}: {err.problem}", fix=err.fix) from None
    if config.iterations < 1:
        raise EvcfError(f"model {model!r}: iterations = {config.iterations} must be at least 1",
                        fix="set iterations to a positive integer, e.g. 15")
