"""Optimisers: plain Adam (Liang et al. 2018) and EVCF's AdamNormGrad (Kim & Suh 2019).

Both have a ``fused`` form (``train.fused_optimizer``): torch's fused Adam kernel, one pass over each
parameter instead of a chain of elementwise operations (about 10x less time on a CPU, at ML-20M's
24-44M parameters a sizeable part of a step).  The update is the same up to float rounding, not bit
for bit, so it is an option, off by default.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.adam import adam as adam_update  # the functional form behind torch.optim.Adam

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

    ``fused``: the same update through torch's fused Adam kernel, which divides the gradient by
    ``grad_scale`` = ‖g‖₂ + 1e-7 (a float32 scalar, as the kernel takes it) on the way (and leaves
    ``p.grad`` so divided) and takes
    eps / √(1−β₂ᵗ) for eps: torch's p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps') is then the formula
    above.  Equal up to float rounding; the state also holds the step as a tensor (``fused_step``).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, fused: bool = False):
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0:
            raise ValueError(f"invalid eps {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, fused=fused))

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
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] = int(state["step"]) + 1
                t = state["step"]
                if group.get("fused"):
                    self._fused_step(p, state, group, t)
                    continue
                grad = p.grad / (torch.linalg.vector_norm(p.grad) + GRAD_NORM_EPS)
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        return loss

    @staticmethod
    def _fused_step(p: torch.Tensor, state: dict, group: dict, t: int) -> None:
        beta1, beta2 = group["betas"]
        if "fused_step" not in state:  # made on the device, so no host-to-device copy per step
            state["fused_step"] = torch.full((), t - 1, dtype=torch.float32, device=p.device)
        adam_update(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["fused_step"]],
            foreach=None, capturable=False, differentiable=False, fused=True,
            grad_scale=(torch.linalg.vector_norm(p.grad) + GRAD_NORM_EPS).float(), found_inf=None, has_complex=False,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0,
            eps=group["eps"] / math.sqrt(1.0 - beta2**t), maximize=False)


def make_optimizer(name: str, params: Iterable, lr: float, *, fused: bool = False) -> torch.optim.Optimizer:
    """``"adam"``: ``torch.optim.Adam`` (Liang: Adam, β = (0.9, 0.999), eps 1e-8);
    ``"adam-normgrad"``: :class:`AdamNormGrad` (EVCF).  ``fused``: torch's fused kernel for either."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused else {}))
    if name == "adam-normgrad":
        return AdamNormGrad(params, lr=lr, fused=fused)
    raise EvcfError(f"unknown optimizer {name!r}", fix=f"use one of {', '.join(OPTIMIZER_NAMES)}")
