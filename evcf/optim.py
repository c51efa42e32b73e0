"""Optimisers: plain Adam (Liang et al. 2018) and EVCF's AdamNormGrad (Kim & Suh 2019).

Both have a ``fused`` form (``train.fused_optimizer``, on by default): torch's fused Adam kernel, one
pass over each parameter instead of a chain of elementwise operations (fewer passes over memory;
``evcf bench`` measures the difference).  The update is the same up to float
rounding, not bit for bit (tests/training/test_optim.py compares the two over several steps); off, each
optimizer runs the elementwise form of its reference code.

AdamNormGrad's elementwise form is written as multi-tensor operations (``torch._foreach_*``: a few
kernels for all parameters instead of a dozen per parameter) with its step count and bias
corrections on the parameters' device, so a step neither reads a value back nor copies one over.

Neither optimizer can be captured in a CUDA graph as built here, and nothing relies on it: torch's
fused Adam is made without ``capturable=True`` (torch refuses to capture it so), the fused
AdamNormGrad computes its eps from a step count kept on the host (a new scalar each step, which a
graph would freeze), and the learning rate is a Python float in both.  The step around them is not
capturable either (evcf/batches.py: click lists of data-dependent length, a shorter last batch, β
as a Python float); docs/gpu.md says why that was left for later.
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
    flattens).  The state (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter) round-trips through
    ``state_dict`` / ``load_state_dict``.

    Unfused: multi-tensor operations over all parameters of a group; ``step`` is a float64 0-d
    tensor on the parameter's device and the bias corrections are computed there, so nothing is
    read back or copied over.  ``p.grad`` is left untouched.  (That alone does not make the step
    capturable as a CUDA graph: the learning rate is a Python float and the rest of the step is
    not capturable either, see the module's docstring.)

    ``fused``: the gradients are divided by their norms in place (multi-tensor; ``p.grad`` is left
    so divided), then torch's fused Adam kernel takes every parameter in one call with
    eps / √(1−β₂ᵗ) for eps: torch's p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps') is then the
    formula above.  That eps depends on t, which the host counts (``step``, a Python int; the
    kernel's own float32 count is ``fused_step`` on the device): no value is read back.  Equal to
    the unfused update up to float rounding.
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
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamNormGrad does not support sparse gradients")
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0 if group.get("fused") else torch.zeros((), dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("fused"):
                self._fused_step(params, group)
            else:
                self._foreach_step(params, group)
        return loss

    def _foreach_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for state, p in zip(states, params):
            step = state["step"]
            # a host count (a fused run's state), or a count loaded on the CPU (load_state_dict leaves
            # "step" where the checkpoint put it): moved to the device once
            if not isinstance(step, torch.Tensor) or step.device != p.device or step.dtype != torch.float64:
                state["step"] = torch.as_tensor(step, dtype=torch.float64).to(p.device)
        steps = [s["step"] for s in states]  # (), float64, on each parameter's device
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        grads = [p.grad for p in params]
        norms = torch._foreach_norm(grads)  # ‖g‖₂ per parameter
        torch._foreach_add_(norms, GRAD_NORM_EPS)
        grads = torch._foreach_div(grads, norms)  # ĝ (new tensors: p.grad untouched)
        torch._foreach_add_(steps, 1.0)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        # −lr·√(1−β₂ᵗ)/(1−β₁ᵗ), in float64 on the device
        bias1 = torch._foreach_pow(beta1, steps)
        torch._foreach_sub_(bias1, 1.0)  # β₁ᵗ − 1
        bias2 = torch._foreach_pow(beta2, steps)
        torch._foreach_sub_(bias2, 1.0)
        torch._foreach_neg_(bias2)  # 1 − β₂ᵗ
        torch._foreach_sqrt_(bias2)
        step_sizes = torch._foreach_div(bias2, bias1)
        torch._foreach_mul_(step_sizes, group["lr"])  # negative
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_div_(denoms, step_sizes)
        torch._foreach_addcdiv_(params, exp_avgs, denoms)  # p + m / (denom / step) = p − |step|·m/denom

    def _fused_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        norms = torch._foreach_norm(grads)
        torch._foreach_add_(norms, GRAD_NORM_EPS)
        torch._foreach_div_(grads, norms)  # ĝ, in p.grad
        by_step: dict[int, list[torch.Tensor]] = {}  # parameters at the same count share one kernel call
        for p in params:
            state = self.state[p]
            if isinstance(state["step"], torch.Tensor):  # an unfused run's state: read once
                state["step"] = int(state["step"])
            if "fused_step" not in state:  # made on the device, so no host-to-device copy per step
                state["fused_step"] = torch.full((), state["step"], dtype=torch.float32, device=p.device)
            state["step"] += 1
            by_step.setdefault(state["step"], []).append(p)
        for t, ps in by_step.items():
            states = [self.state[p] for p in ps]
            adam_update(
                ps, [p.grad for p in ps], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                [s["fused_step"] for s in states], foreach=None, capturable=False, differentiable=False,
                fused=True, grad_scale=None, found_inf=None, has_complex=False, amsgrad=False, beta1=beta1,
                beta2=beta2, lr=group["lr"], weight_decay=0.0, eps=group["eps"] / math.sqrt(1.0 - beta2**t),
                maximize=False)


def make_optimizer(name: str, params: Iterable, lr: float, *, fused: bool = False) -> torch.optim.Optimizer:
    """``"adam"``: ``torch.optim.Adam`` (Liang: Adam, β = (0.9, 0.999), eps 1e-8);
    ``"adam-normgrad"``: :class:`AdamNormGrad` (EVCF).  ``fused``: torch's fused kernel for either;
    unfused, Adam is torch's default form for the device (per parameter on a CPU, multi-tensor on
    CUDA) and AdamNormGrad its multi-tensor form."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused else {}))
    if name == "adam-normgrad":
        return AdamNormGrad(params, lr=lr, fused=fused)
    raise EvcfError(f"unknown optimizer {name!r}", fix=f"use one of {', '.join(OPTIMIZER_NAMES)}")
