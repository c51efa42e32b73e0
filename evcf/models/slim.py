"""SLIM: sparse linear item-item model (Ning & Karypis 2011).

Read top to bottom: the config and its grid, the per-item elastic net, the parallel fit, scoring.

The model.  A sparse, non-negative item-item matrix W (I × I) with a zero diagonal; a user's scores
are x · W.  Column j of W is the solution of one elastic net that predicts item j's column of the
training matrix X (U × I) from the other items' columns:

    w_j = argmin_{w ≥ 0, w_j = 0}  ½ ‖X_{:,j} − X w‖² + (l2 / 2) ‖w‖² + l1 ‖w‖₁

(Ning & Karypis's β is our ``l2``, their λ our ``l1``.)  The I problems are independent; we solve
each with scikit-learn's coordinate descent (``ElasticNet(positive=True, fit_intercept=False)``) on
the sparse column-major X, in a pool of threads (the solver releases the GIL).

The constraint w_jj = 0 is imposed by solving item j's problem on a copy of X whose column j is
all zeros: a zero column never enters coordinate descent, so its coefficient keeps its starting
value, 0, and the other coefficients are those of the problem without item j.  Each thread owns
its copy of X's value array, zeroes column j's values before the solve and restores them after.

Units of the penalties (``penalty_units``).  Liang et al. 2018 (Sec. 4.4) search both penalties over
{0.1, 0.5, 1, 5} without saying in which units.  ``"ning-karypis"`` (default) reads them as above, on
the summed squared error, as Ning & Karypis write SLIM.  ``"sklearn"`` reads them as scikit-learn's
``ElasticNet`` does, on the squared error averaged over the U users: alpha = l1 + l2 and
l1_ratio = l1 / (l1 + l2) passed unscaled, as many public SLIMs do; that is the Ning–Karypis problem
with both penalties multiplied by U (about 1e5 on ML-20M).  docs/models.md says why the default.

Strong generalisation needs nothing special: W only depends on the training users, and ``score``
applies it to any fold-in row.  The fit is deterministic (cyclic coordinate descent): seedless.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel
from evcf.models.baselines import _check_train

__all__ = ["SLIM", "slim_weights"]

log = logging.getLogger(__name__)

_CHUNK = 32  # items per task handed to a thread


PENALTY_UNITS = ("ning-karypis", "sklearn")


def _enet(l1: float, l2: float, n_users: int, max_iter: int, tol: float, penalty_units: str = "ning-karypis",
          warm_start: bool = False):
    """scikit-learn's ElasticNet set up to solve SLIM's per-item problem exactly.

    scikit-learn minimises  (1 / 2n) ‖y − X w‖² + a·ρ ‖w‖₁ + (a (1 − ρ) / 2) ‖w‖²  with n rows.
    Multiplying SLIM's objective  ½ ‖y − X w‖² + (l2 / 2) ‖w‖² + l1 ‖w‖₁  by 1/n gives the same
    minimiser when  a·ρ = l1 / n  and  a (1 − ρ) = l2 / n, i.e.

        a = (l1 + l2) / n,   ρ = l1 / (l1 + l2).

    With ``penalty_units="sklearn"`` the penalties are scikit-learn's own: a = l1 + l2, no 1/n.
    """
    from sklearn.linear_model import ElasticNet

    scale = n_users if penalty_units == "ning-karypis" else 1
    return ElasticNet(alpha=(l1 + l2) / scale, l1_ratio=l1 / (l1 + l2), positive=True,
                      fit_intercept=False, precompute=False, copy_X=False, max_iter=max_iter,
                      tol=tol, selection="cyclic", warm_start=warm_start)


def slim_weights(train: sp.spmatrix, l1: float, l2: float, *, items: Sequence[int] | None = None,
                 threads: int = 1, max_iter: int = 1000, tol: float = 1e-4,
                 penalty_units: str = "ning-karypis", start: sp.spmatrix | None = None) -> sp.csc_matrix:
    """SLIM's W (I × I, float64, CSC): column j solves item j's non-negative elastic net.

    ``items`` restricts the fit to those columns (the others stay empty), for benchmarks;
    ``threads`` threads share the items.  ``max_iter``/``tol`` are scikit-learn's stopping rule
    (at most ``max_iter`` sweeps; stop when the duality gap is below ``tol`` · ‖y‖² / n).

    ``start`` (I × I, zero diagonal, non-negative): a warm start, column j of it is where item j's
    coordinate descent begins (the previous setting's W along a regularisation path).  Each
    problem is strictly convex when l2 > 0 (convex otherwise), so the solution is the cold start's
    up to the same stopping rule; only the number of sweeps changes.
    """
    x = sp.csc_matrix(train, dtype=np.float64)  # (U, I) column-major: coordinate descent's layout
    x.sort_indices()
    n_users, n_items = x.shape
    items = np.arange(n_items) if items is None else np.asarray(items, dtype=np.int64)
    if start is not None:
        start = sp.csc_matrix(start, dtype=np.float64)
        if start.shape != (n_items, n_items):
            raise ValueError(f"SLIM: the warm start is {start.shape}, not ({n_items}, {n_items})")
        if start.diagonal().any():  # item j's own coefficient is never updated: it must start at 0
            raise ValueError("SLIM: the warm start has non-zero self-weights (its diagonal)")
        start.sort_indices()
    local = threading.local()
    unconverged: list[int] = []  # items whose solve stopped at max_iter (list.append is atomic)

    def solve(chunk: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        if not hasattr(local, "x"):
            # this thread's copy of the values; indices and indptr are shared read-only
            local.x = sp.csc_matrix((x.data.copy(), x.indices, x.indptr), shape=x.shape)
            local.enet = _enet(l1, l2, n_users, max_iter, tol, penalty_units, warm_start=start is not None)
        xt, enet = local.x, local.enet
        out = []
        for j in chunk:
            lo, hi = x.indptr[j], x.indptr[j + 1]
            y = np.zeros(n_users)  # (U,) the target: item j's column
            y[x.indices[lo:hi]] = x.data[lo:hi]
            xt.data[lo:hi] = 0.0  # item j may not predict itself
            if start is not None:  # scikit-learn's warm start begins from coef_
                coef0 = np.zeros(n_items)
                s0, s1 = start.indptr[j], start.indptr[j + 1]
                coef0[start.indices[s0:s1]] = start.data[s0:s1]
                enet.coef_ = coef0
            try:
                enet.fit(xt, y, check_input=False)
            finally:
                xt.data[lo:hi] = x.data[lo:hi]
            coef = enet.coef_  # (I,)
            if enet.n_iter_ >= max_iter:
                unconverged.append(int(j))
            if coef[j] != 0.0:  # cannot happen: column j was zero and the start is zero
                raise RuntimeError(f"SLIM: item {j} got a self-weight {coef[j]}")
            nz = np.flatnonzero(coef)
            out.append((int(j), nz, coef[nz].copy()))
        return out

    from sklearn.exceptions import ConvergenceWarning

    chunks = [items[i:i + _CHUNK] for i in range(0, items.size, _CHUNK)]
    # one summary below instead of a warning per item (the filter is process-wide: worker threads
    # see it; it is restored when the pool is done)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            results = [r for part in pool.map(solve, chunks) for r in part]
    if unconverged:
        log.warning("SLIM (l1=%g, l2=%g): %d of %d items stopped at max_iter=%d before the "
                    "duality gap reached tol=%g (e.g. item %d)", l1, l2, len(unconverged),
                    items.size, max_iter, tol, unconverged[0])

    # assemble W column by column: column j holds item j's coefficients
    lengths = np.zeros(n_items, dtype=np.int64)
    for j, nz, _ in results:
        lengths[j] = nz.size
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.float64)
    for j, nz, values in results:
        indices[indptr[j]:indptr[j + 1]] = nz
        data[indptr[j]:indptr[j + 1]] = values
    return sp.csc_matrix((data, indices, indptr), shape=(n_items, n_items))


class SLIM(SelfFittingModel):
    """Ning & Karypis's SLIM; scores = x · W with W sparse, non-negative, zero diagonal."""

    name: ClassVar[str] = "slim"
    label: ClassVar[str] = "SLIM"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#bcbd22"
    row: ClassVar[int] = 2
    seeded: ClassVar[bool] = False  # cyclic coordinate descent from zero: no randomness

    @dataclass(frozen=True)
    class Config:
        # Liang et al. 2018 (Sec. 4.4) search both of SLIM's regularisation parameters over
        # {0.1, 0.5, 1, 5} (confirmed against the text); they do not give the parameterisation.
        l1_penalties: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)  # Liang et al. 2018 Sec. 4.4 (λ of the ℓ1 term)
        l2_penalties: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)  # Liang et al. 2018 Sec. 4.4 (β of the ℓ2 term)
        penalty_units: str = "ning-karypis"  # ours (Liang do not say): SLIM's own units; "sklearn": scikit-learn's alpha
        max_iter: int = 1000  # scikit-learn's ElasticNet default (coordinate-descent sweeps)
        tol: float = 1e-4  # scikit-learn's ElasticNet default (duality-gap tolerance)
        warm_start: bool = True  # ours: each setting starts from the previous setting's W (the same solution up to tol, fewer sweeps)

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        _validate(self.config, self.name)
        self.n_items = n_items
        self.W: sp.csc_matrix | None = None  # (I, I) float32
        self.l1: float | None = None
        self.l2: float | None = None
        self._W_device: torch.Tensor | None = None  # Wᵀ, torch sparse COO on the scoring device
        self._path: sp.csc_matrix | None = None  # the last fit's W (float32): the next setting's warm start

    def candidates(self) -> Iterable[dict[str, Any]]:
        """The grid as a regularisation path: from the most to the least penalised, and with
        ``warm_start`` each setting changes one penalty from the one before (l1 descending, l2
        sweeping down then up), so that each fit starts near its solution.  Without warm starts
        the grid is in the order written."""
        c = self.config
        if not c.warm_start:
            return [{"l1": float(l1), "l2": float(l2)}
                    for l1, l2 in itertools.product(c.l1_penalties, c.l2_penalties)]
        l2s = sorted(set(c.l2_penalties), reverse=True)
        path = []
        for k, l1 in enumerate(sorted(set(c.l1_penalties), reverse=True)):
            path += [{"l1": float(l1), "l2": float(l2)} for l2 in (l2s if k % 2 == 0 else l2s[::-1])]
        return path

    def path_state(self) -> dict[str, Any] | None:
        """The next fit's warm start (SelfFittingModel.path_state): the last fit's W."""
        return {"W": self._path} if self.config.warm_start and self._path is not None else None

    def load_path_state(self, state: dict[str, Any] | None) -> None:
        self._path = None if state is None else sp.csc_matrix(state["W"], dtype=np.float32)

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            **setting: Any) -> None:
        c = self.config
        l1 = float(setting.get("l1", c.l1_penalties[0]))
        l2 = float(setting.get("l2", c.l2_penalties[0]))
        _check_penalties(l1, l2)
        train = _check_train(train, self.n_items, self.name)
        started = time.perf_counter()
        start = self._path if c.warm_start else None
        w = slim_weights(train, l1, l2, threads=torch.get_num_threads(), max_iter=c.max_iter,
                         tol=c.tol, penalty_units=c.penalty_units, start=start)
        self.W = w.astype(np.float32)
        # the next start is this W as kept (float32), in a resumed search as in an uninterrupted one
        self._path = self.W if c.warm_start else None
        self.l1, self.l2 = l1, l2
        self._W_device = None
        log.debug("SLIM fitted with l1=%g l2=%g%s: %d non-zeros (%.1f per item) in %.1fs", l1, l2,
                  " (warm start)" if start is not None else "", w.nnz, w.nnz / max(1, self.n_items),
                  time.perf_counter() - started)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.W is None:
            raise RuntimeError("SLIM.score called before fit")
        if self._W_device is None or self._W_device.device != x.device:
            wt = self.W.T.tocoo()  # (I, I) Wᵀ: row j = column j of W
            indices = torch.from_numpy(np.vstack([wt.row, wt.col]).astype(np.int64))  # (2, nnz)
            self._W_device = torch.sparse_coo_tensor(
                indices, torch.from_numpy(wt.data.astype(np.float32)), size=wt.shape,
                check_invariants=True).coalesce().to(x.device)
        # (x W)ᵀ = Wᵀ xᵀ: sparse (I, I) times dense (I, B)
        return torch.sparse.mm(self._W_device, x.float().T).T.contiguous()  # (B, I), a fresh tensor

    def state(self) -> dict[str, Any]:
        return {"W": self.W, "l1": self.l1, "l2": self.l2}

    def load_state(self, state: dict[str, Any]) -> None:
        self.W = sp.csc_matrix(state["W"], dtype=np.float32)
        self.l1, self.l2 = float(state["l1"]), float(state["l2"])
        self._W_device = None


def _check_penalties(l1: float, l2: float) -> None:
    if l1 < 0 or l2 < 0 or l1 + l2 == 0:
        raise EvcfError(f"SLIM needs l1 >= 0 and l2 >= 0, not both 0; got l1={l1}, l2={l2}",
                        fix="use positive penalties, e.g. l1_penalties: [0.5, 1.0]")


def _validate(config: SLIM.Config, model: str) -> None:
    for key in ("l1_penalties", "l2_penalties"):
        values = getattr(config, key)
        if len(values) == 0 or any(v < 0 for v in values):
            raise EvcfError(f"model {model!r}: {key} = {list(values)} must be a non-empty list of "
                            f"numbers >= 0", fix=f"e.g. {key}: [0.5, 1.0]")
    if all(v == 0 for v in config.l1_penalties) and all(v == 0 for v in config.l2_penalties):
        raise EvcfError(f"model {model!r}: l1_penalties and l2_penalties are all 0",
                        fix="give at least one positive penalty")
    if config.penalty_units not in PENALTY_UNITS:
        raise EvcfError(f"model {model!r}: penalty_units = {config.penalty_units!r} is not a valid choice",
                        fix=f"use one of {', '.join(PENALTY_UNITS)}")
    if config.max_iter < 1:
        raise EvcfError(f"model {model!r}: max_iter = {config.max_iter} must be at least 1",
                        fix="use scikit-learn's default, 1000")
    if config.tol <= 0:
        raise EvcfError(f"model {model!r}: tol = {config.tol} must be positive",
                        fix="use scikit-learn's default, 1e-4")
