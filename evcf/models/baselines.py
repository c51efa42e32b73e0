"""Closed-form baselines: item popularity and EASE (Steck 2019).

Both are fitted in one shot on the sparse training matrix (users × items) and score fold-in rows
``x`` (B, I) on whatever device ``x`` lives on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel
from evcf.models.layers import validate_config

__all__ = ["Popularity", "EASE", "solve_device"]

log = logging.getLogger(__name__)


def _check_train(train: sp.spmatrix, n_items: int, model: str) -> sp.csr_matrix:
    if not sp.issparse(train):
        train = sp.csr_matrix(np.asarray(train))
    if train.ndim != 2 or train.shape[1] != n_items:
        raise EvcfError(f"model {model!r} was built for {n_items} items but the training "
                        f"matrix has shape {train.shape}",
                        fix="build the model with n_items equal to the number of item columns")
    return train.tocsr()


class Popularity(SelfFittingModel):
    """Score every item by its number of training users, the same ranking for every user."""

    name: ClassVar[str] = "popularity"
    label: ClassVar[str] = "Popularity"
    section: ClassVar[str] = "extra"
    colour: ClassVar[str] = "#7f7f7f"
    row: ClassVar[int] = 2

    @dataclass(frozen=True)
    class Config:
        pass  # no hyperparameters

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        self.n_items = n_items
        self.counts: torch.Tensor | None = None  # (I,) float32

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            **setting: Any) -> None:
        train = _check_train(train, self.n_items, self.name)
        counts = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()  # (I,)
        self.counts = torch.from_numpy(counts.astype(np.float32))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.counts is None:
            raise RuntimeError("Popularity.score called before fit")
        counts = self.counts.to(x.device)
        return counts.unsqueeze(0).repeat(x.shape[0], 1)  # (B, I), fresh: the caller may mask it

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts}

    def load_state(self, state: dict[str, Any]) -> None:
        self.counts = torch.as_tensor(state["counts"], dtype=torch.float32).cpu()


def solve_device(device: torch.device | None, n_items: int) -> torch.device:
    """Where EASE solves: the run's CUDA device when three float64 I × I matrices fit in its free
    memory (the system, its Cholesky factor and the inverse), else the CPU."""
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info(device)
    return device if free >= 3 * 8 * n_items * n_items else torch.device("cpu")


class EASE(SelfFittingModel):
    """EASE (Steck 2019): item-item weights B = I − P · diag(1 / diag(P)), P = (XᵀX + λI)⁻¹.

    Equivalently B_ij = −P_ij / P_jj off the diagonal and B_jj = 0; scores = x · B.  The Gram matrix
    XᵀX is built once from the sparse training matrix (float64, dense I × I: 3.2 GB for 20k items)
    and kept between the λ candidates of one training matrix; each λ costs one Cholesky inverse in
    float64 (``torch.linalg.cholesky`` + ``torch.cholesky_inverse``, multi-threaded, about half the
    flops of a general inverse), on the run's GPU when it fits there (:func:`solve_device`).  B is
    stored as float32 on the CPU and copied to the scoring device once.
    """

    name: ClassVar[str] = "ease"
    label: ClassVar[str] = "EASE"
    section: ClassVar[str] = "extra"
    colour: ClassVar[str] = "#393b79"
    row: ClassVar[int] = 3
    uses_gpu: ClassVar[bool] = True  # its I x I solve runs on the GPU when it fits there

    @dataclass(frozen=True)
    class Config:
        # our grid around Steck's choices (his notebook: λ = 500 for ML-20M, 1000 for Netflix)
        lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        validate_config(self.config, self.name)
        self.n_items = n_items
        self.B: torch.Tensor | None = None  # (I, I) float32
        self.lam: float | None = None
        self._gram: torch.Tensor | None = None  # (I, I) float64, cached
        self._gram_source: sp.spmatrix | None = None
        self._B_device: torch.Tensor | None = None

    def candidates(self) -> Iterable[dict[str, Any]]:
        return [{"lambda": float(lam)} for lam in self.config.lambdas]

    def _gram_of(self, train: sp.spmatrix) -> torch.Tensor:
        if self._gram is None or self._gram_source is not train:
            x = _check_train(train, self.n_items, self.name).astype(np.float64)
            self._gram = torch.from_numpy((x.T @ x).toarray())  # (I, I)
            self._gram_source = train
        return self._gram

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            **setting: Any) -> None:
        lam = float(setting.get("lambda", self.config.lambdas[0]))
        if lam <= 0:
            raise EvcfError(f"EASE needs lambda > 0, got {lam}", fix="use a positive lambda")
        gram = self._gram_of(train)
        where = solve_device(device, self.n_items)  # the run's GPU when the three I x I fit on it
        a = gram.to(where, copy=True)  # a copy: the cached Gram stays as it is, on the CPU
        a.diagonal().add_(lam)  # XᵀX + λI, symmetric positive definite
        chol = torch.linalg.cholesky(a)
        del a
        p = torch.cholesky_inverse(chol)  # (I, I) (XᵀX + λI)⁻¹
        del chol
        p.div_(-p.diagonal().clone())  # column j divided by −P_jj
        p.diagonal().zero_()
        self.B = p.float().cpu()
        self.lam = lam
        self._B_device = None
        log.debug("EASE fitted with lambda=%g on %d items", lam, self.n_items)

    def clear_cache(self) -> None:
        """Drop the cached Gram matrix (the fitted B is kept)."""
        self._gram = None
        self._gram_source = None

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.B is None:
            raise RuntimeError("EASE.score called before fit")
        if self._B_device is None or self._B_device.device != x.device:
            self._B_device = self.B.to(x.device)
        return x.to(self._B_device.dtype) @ self._B_device  # (B, I)

    def state(self) -> dict[str, Any]:
        return {"B": self.B, "lambda": self.lam}

    def load_state(self, state: dict[str, Any]) -> None:
        self.B = torch.as_tensor(state["B"], dtype=torch.float32).cpu()
        self.lam = float(state["lambda"])
        self._B_device = None
