"""The contract between models and the training loop.

Two kinds of model exist:

* :class:`VAEModel` subclasses (Mult-VAE, Mult-DAE, gated and VampPrior variants) are trained by
  :func:`evcf.training.fit` with mini-batch gradient steps.  Each one has a frozen ``Config``
  dataclass; ``build_model(name, n_items, **hparams)`` fills it from params.yaml.
* :class:`ClosedFormModel` subclasses (popularity, EASE) are fitted in one shot on the training
  matrix; the training loop tries each of ``candidates()`` and keeps the one with the best
  validation NDCG@100.

Inputs are dense float tensors ``x`` of shape ``(batch, n_items)`` holding the 0/1 click matrix rows
of the users in the batch (built on the training device from a sparse matrix, one batch at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import scipy.sparse as sp
import torch
from torch import nn

__all__ = ["VAEModel", "ClosedFormModel", "LossParts"]


@dataclass
class LossParts:
    """What one training step's loss is made of (all scalars, means over the users of the batch)."""

    loss: torch.Tensor  # the value to back-propagate: nll + beta * kl + penalty
    nll: float  # reconstruction term, -log p(x|z)
    kl: float  # KL term before multiplying by beta (0 for a DAE)
    penalty: float = 0.0  # weight penalty added to the loss (Mult-DAE's lambda * sum ||W||^2)


class VAEModel(nn.Module):
    """A model trained by gradient steps.  Subclasses set ``name`` and implement the two methods."""

    name: ClassVar[str]

    def loss(self, x: torch.Tensor, beta: float) -> LossParts:
        """Training-mode loss for a batch ``x`` (batch, n_items); ``beta`` weights the KL term."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode scores (batch, n_items) for fold-in rows ``x``: higher is better.

        Uses the posterior mean and no dropout.  The caller masks fold-in items afterwards.
        """
        raise NotImplementedError


class ClosedFormModel:
    """A model fitted in closed form on the training matrix (no epochs, no gradient steps)."""

    name: ClassVar[str]

    def candidates(self) -> Iterable[dict[str, Any]]:
        """Hyperparameter settings to try; the loop keeps the best by validation NDCG@100."""
        return [{}]

    def fit(self, train: sp.csr_matrix, **setting: Any) -> None:
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (batch, n_items) for fold-in rows ``x`` (float32 tensor on any device)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Everything needed to score again (saved in the checkpoint)."""
        raise NotImplementedError
