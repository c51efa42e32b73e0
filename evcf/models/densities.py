"""Sampling, log-densities and likelihoods of the VAE models.

The reparameterised draw of z, Gaussian log-densities and KL terms (in float32 at least, whatever
the autocast), and the negative log-likelihood of the click rows, multinomial or Bernoulli, from
the dense rows or from their clicks.  Shapes as in :mod:`evcf.models.layers`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from evcf.batches import Clicks

__all__ = ["LIKELIHOODS", "LOG_2PI", "reparameterise", "at_least_float32", "log_normal_diag",
           "log_standard_normal", "kl_standard_normal", "nll"]

LIKELIHOODS = ("multinomial", "bernoulli")
LOG_2PI = math.log(2.0 * math.pi)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """z = mu + exp(logvar / 2) · ε with ε ~ N(0, I) in training; z = mu otherwise."""
    if not training:
        return mu
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 (e.g. outputs of layers under autocast) to float32; leave others alone.

    Log-densities sum hundreds of terms and are then subtracted from each other (the one-sample KL),
    which half precision cannot resolve.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension.  (B, Z) x3 -> (B,)"""
    z, mu, logvar = at_least_float32(z), at_least_float32(mu), at_least_float32(logvar)
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension.  (B, Z) -> (B,)"""
    z = at_least_float32(z)
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, diag(exp(logvar))) ‖ N(0, I)) per row (Liang's ``q_graph``).  -> (B,)"""
    mu, logvar = at_least_float32(mu), at_least_float32(logvar)
    return 0.5 * (-logvar + torch.exp(logvar) + mu**2 - 1.0).sum(-1)


def nll(logits: torch.Tensor, x: torch.Tensor, likelihood: str,
        bernoulli_clamp: float = 0.0, clicks: Clicks | None = None) -> torch.Tensor:
    """Negative log-likelihood of the raw 0/1 rows ``x`` per user.  (B, I) x2 -> (B,)

    * multinomial (Liang): −Σ_i x_i · log_softmax(logits)_i;
    * bernoulli (EVCF's ``binary`` input type): −Σ_i [x_i log p_i + (1 − x_i) log(1 − p_i)] over
      all items.  With ``bernoulli_clamp`` c = 0, p = σ(l) exactly (BCE with logits, numerically
      stable).  With c > 0, p = clamp(σ(l), c, 1 − c), as EVCF's ``log_Bernoulli`` does with
      c = 1e-5: no item costs more than −log c, and a logit beyond the clamp gets no gradient.
      It is computed as clamp(log σ(±l), log c, log(1 − c)) — the same values, since log is
      increasing and 1 − clamp(σ(l), c, 1 − c) = clamp(σ(−l), c, 1 − c) — in float32 at least,
      without forming 1 − p.
    ``bernoulli_clamp`` is ignored by the multinomial likelihood.

    ``clicks`` (where given: the non-zeros of ``x`` and their values, padding allowed) turn the
    sums over x's entries into sums over the clicks, with one pass over the (B, I) logits:
    multinomial, n_u · logsumexp(l_u) − Σ_clicks l (n_u = Σ x_u); clamped Bernoulli,
    Σ_i −log(1 − p_i) + Σ_clicks [−log p + log(1 − p)], with −log(1 − p) = clamp(softplus(l),
    −log(1 − c), −log c) and −log p = the same of softplus(l) − l.  The same values as the dense
    formulas up to float rounding (tests/models/test_layers.py writes those out).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    if clicks is not None and (likelihood == "multinomial" or bernoulli_clamp > 0):
        return _nll_from_clicks(logits, x, likelihood, bernoulli_clamp, clicks)
    if likelihood == "multinomial":
        return -(F.log_softmax(logits, dim=1) * x).sum(1)
    if bernoulli_clamp == 0:
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    logits = at_least_float32(logits)
    lo, hi = math.log(bernoulli_clamp), math.log1p(-bernoulli_clamp)
    log_p = F.logsigmoid(logits).clamp(lo, hi)  # (B, I)  log p
    log_not_p = F.logsigmoid(-logits).clamp(lo, hi)  # (B, I)  log(1 - p)
    return -(x * log_p + (1.0 - x) * log_not_p).sum(1)


def _nll_from_clicks(logits: torch.Tensor, x: torch.Tensor, likelihood: str, bernoulli_clamp: float,
                     clicks: Clicks) -> torch.Tensor:
    """:func:`nll` as one pass over the logits plus sums over the clicks.  (B, I) -> (B,)"""
    batch_row, cols, values = clicks
    # float32 at least (as log_softmax under autocast), before the clicks are read: the gradients of
    # the full pass and of the click terms then add up in float32 (in bf16 they would cancel)
    logits = at_least_float32(logits)  # (B, I)
    if likelihood == "multinomial":  # -Σ x log_softmax(l) = Σx · logsumexp(l) - Σ_clicks x l
        return _MultinomialFromClicks.apply(logits, batch_row, cols, values.to(logits.dtype))
    at_clicks = logits[batch_row, cols]  # (n,)
    per_row = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)  # (B,)
    # clamped Bernoulli: -log(1 - p) over every item, then -log p + log(1 - p) at the clicks
    lo, hi = -math.log1p(-bernoulli_clamp), -math.log(bernoulli_clamp)  # the bounds of -log p
    neg_log_not_p = F.softplus(logits).clamp(lo, hi).sum(1)  # (B,)  Σ_i -log(1 - p_i)
    soft = F.softplus(at_clicks)  # (n,)  -log(1 - p) = softplus(l), -log p = softplus(l) - l
    correction = (soft - at_clicks).clamp(lo, hi) - soft.clamp(lo, hi)  # (n,)
    return neg_log_not_p + per_row.index_add(0, batch_row, values.to(per_row.dtype) * correction)


class _MultinomialFromClicks(torch.autograd.Function):
    """Liang's multinomial NLL from the clicks, n_u · logsumexp(l_u) − Σ_clicks v · l  (B, I) -> (B,),
    with its gradient written out: g_u · (n_u · softmax(l_u) − v at the clicks).

    The same values as the formula under autograd (the same operations, in the same order).  Autograd
    of that formula would also build a zero (B, I) gradient for the gather of the clicks and add it
    to logsumexp's, which recomputes exp(l − logsumexp): three more passes over the (B, I) logits.
    This forms softmax once and subtracts the clicks in place (a flat ``index_add_``: no read-back
    on a GPU; padding clicks have v = 0 and change nothing).  Gradients agree with autograd's up to
    float rounding (tests/models/test_layers.py).  It replaces autograd's graph of the formula,
    which kept the (batch, items) log-softmax and its gradient as separate tensors.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, batch_row: torch.Tensor, cols: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        per_row = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)  # (B,)
        n_clicks = per_row.index_add(0, batch_row, values)  # (B,)
        ctx.save_for_backward(logits, n_clicks, batch_row, cols, values)
        return n_clicks * torch.logsumexp(logits, dim=1) - per_row.index_add(0, batch_row, values * logits[batch_row, cols])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, n_clicks, batch_row, cols, values = ctx.saved_tensors
        out = torch.softmax(logits, dim=1).mul_((grad * n_clicks)[:, None])  # (B, I)
        out.view(-1).index_add_(0, batch_row * logits.shape[1] + cols, -(grad[batch_row] * values))
        return out, None, None, None
