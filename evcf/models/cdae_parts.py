"""CDAE's pieces below the model (:mod:`evcf.models.cdae`): the item-side network, the loss weights
and the two losses, and :class:`RowAdam`, the row-wise Adam of the users' vectors.

Shapes: B users, I items, H hidden units, U training users.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CDAENetwork", "loss_weights", "square_loss", "logistic_loss", "RowAdam"]


class CDAENetwork(nn.Module):
    """The item-side network: encoder (W, b) and decoder (W', b').  Users' vectors live outside."""

    def __init__(self, n_items: int, hidden_size: int, activation: str = "tanh"):
        super().__init__()
        self.encoder = nn.Linear(n_items, hidden_size)  # W (H, I), b (H,)
        self.decoder = nn.Linear(hidden_size, n_items)  # W' (I, H), b' (I,)
        self.activation = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """Output pre-activations (B, I) for (corrupted) rows ``x`` (B, I) and user vectors (B, H)."""
        h = self.activation(self.encoder(x) + user)  # (B, H)
        return self.decoder(h)  # (B, I)

    def weights_squared(self) -> torch.Tensor:
        """‖W‖² + ‖W'‖² (biases not penalised)."""
        return self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()

    def reset(self, generator: torch.Generator) -> None:
        """Xavier-uniform weights and zero biases, drawn from ``generator`` (Liang et al.'s code
        initialises its autoencoders with Xavier weights)."""
        with torch.no_grad():
            for layer in (self.encoder, self.decoder):
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.zero_()


def loss_weights(x: torch.Tensor, negative_ratio: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Which items enter each user's loss, and how much (B, I): 1 on clicks, p_u or a draw elsewhere.

    p_u = min(1, k n_u / (I − n_u)).  Without a ``generator`` each unclicked item gets weight p_u
    (the expectation of negative sampling: Liang's weighted square loss); with one, weight 1 with
    probability p_u, else 0 (Wu's sampled negatives).  k = 0 means all unclicked items, weight 1.
    """
    clicked = x > 0  # (B, I)
    if negative_ratio <= 0:
        return torch.ones_like(x)
    n_pos = clicked.sum(dim=1, keepdim=True).to(x.dtype)  # (B, 1)
    n_neg = (x.shape[1] - n_pos).clamp(min=1.0)  # (B, 1)
    p = (negative_ratio * n_pos / n_neg).clamp(max=1.0)  # (B, 1)
    if generator is None:
        neg = p.expand_as(x)
    else:
        neg = (torch.rand(x.shape, generator=generator, device=x.device) < p).to(x.dtype)
    return torch.where(clicked, torch.ones_like(x), neg)  # (B, I)


def square_loss(logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-user weighted square loss (B,): Σ_i w_i (y_i − tanh(z_i))²  (Liang's CDAE)."""
    target = (x > 0).to(logits.dtype)
    return ((target - torch.tanh(logits)).pow(2) * weights).sum(dim=1)


def logistic_loss(logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-user weighted logistic loss (B,): −Σ_i w_i [y_i log σ(z_i) + (1 − y_i) log(1 − σ(z_i))]  (Wu's)."""
    target = (x > 0).to(logits.dtype)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights).sum(dim=1)


class RowAdam:
    """Adam on the rows of a table that a step touches: SparseAdam's lazy update without sparse tensors.

    ``step(rows, grad)`` updates rows ``rows`` (distinct) of ``table`` (U, H) with their gradient
    ``grad`` (B, H): the moments of those rows only, bias correction by a step count kept on the host
    (one per table, as ``torch.optim.SparseAdam`` counts), and the update
    ``row −= lr √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (√v + ε)``, as SparseAdam writes it.  Nothing is read back
    from the device (SparseAdam coalesces its sparse gradient, which reads the entry count back).
    """

    def __init__(self, table: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.table, self.lr, self.betas, self.eps = table, lr, betas, eps
        self.exp_avg = torch.zeros_like(table)  # (U, H)
        self.exp_avg_sq = torch.zeros_like(table)  # (U, H)
        self.steps = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        m = self.exp_avg.index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)  # (B, H)
        v = self.exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        step_size = self.lr * math.sqrt(1 - beta2 ** self.steps) / (1 - beta1 ** self.steps)
        self.table.index_add_(0, rows, m.div_(v.sqrt_().add_(self.eps)), alpha=-step_size)
