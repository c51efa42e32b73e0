"""Optimisers: plain Adam (Liang et al. 2018) and EVCF's AdamNormGrad (Kim & Suh 2019)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from evcf.errors import EvcfError

__all__ = ["OPTIMIZER_NAMES", "AdamNormGrad", "make_optimizer"]

OPTIMIZER_NAMES: tuple[str, ...] = ("adam", "adam-normgrad")

GRAD_NORM_EPS = 1e-7  # EVCF utils/optimizer.py: grad / (torch.norm(grad, 2) + 1.e-7)


class AdamNormGrad(torch.optim.Optimizer):
    """Adam on normalised gradients: each parameter's gradient g becomes g / (‖g‖₂ + 1e-7) first.

    The update follows EVCF's ``utils/optimizer.py`` (the PyTorch ≤ 1.0 Adam it was copied from):
    m ← β₁m + (1−β₁)ĝ, v ← β₂v + (1−β₂)ĝ², p ← p − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + eps).
    That differs from today's ``torch.optim.Adam`` only in where eps enters (here it is added before
    the bias correction of v).  The norm is over the whole parameter tensor (``torch.norm(grad, 2)``
    flattens).  ``p.grad`` itself is left untouched.  The state (``step``, ``exp_avg``,
    ``exp_avg_sq`` per parameter) round-trips through ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0:
            raise ValueError(f"invalid eps {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamNormGrad does not support sparse gradients")
                grad = p.grad / (torch.linalg.vector_norm(p.grad) + GRAD_NORM_EPS)
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] = int(state["step"]) + 1
                t = state["step"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        return loss


def make_optimizer(name: str, params: Iterable, lr: float) -> torch.optim.Optimizer:
    """``"adam"``: ``torch.optim.Adam`` (Liang: Adam, β = (0.9, 0.999), eps 1e-8);
    ``"adam-normgrad"``: :class:`AdamNormGrad` (EVCF)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if name == "adam-normgrad":
        return AdamNormGrad(params, lr=lr)
    raise EvcfError(f"unknown optimizer {name!r}", fix=f"use one of {', '.join(OPTIMIZER_NAMES)}")
