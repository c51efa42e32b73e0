"""KL-weight (β) schedules as pure functions."""

from __future__ import annotations

__all__ = ["beta_liang", "beta_evcf"]


def beta_liang(update_count: int, total_anneal_steps: int, anneal_cap: float) -> float:
    """Liang et al. (2018): β = min(cap, updates / total), raised before every training step.

    ``update_count`` is the number of gradient steps taken before this one (the reference
    increments it after each step).  ``total_anneal_steps = 0`` means β = cap from the start.
    """
    if total_anneal_steps <= 0:
        return float(anneal_cap)
    return float(min(anneal_cap, update_count / total_anneal_steps))


def beta_evcf(epoch: int, warmup_epochs: int, max_beta: float) -> float:
    """Kim & Suh (2019) code: β = max_beta · epoch / warmup, once per epoch from epoch 1, capped."""
    if warmup_epochs <= 0:
        return float(max_beta)
    return float(min(max_beta, max_beta * epoch / warmup_epochs))
