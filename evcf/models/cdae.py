"""CDAE: collaborative denoising auto-encoder (Wu, DuBois, Zheng & Ester 2016).

Read top to bottom: the config, the network, the loss, the training loop (:class:`CDAETrainer`
holds one fit's state and takes its gradient steps; ``fit`` runs its epochs), and the two ways of
scoring users that training never saw.  Shapes: B users, I items, H hidden units, U training users.

The model.  A user's click row y (I,) is corrupted by dropout, ỹ = δ ⊙ y / (1 − q) with
δ_i ~ Bernoulli(1 − q), and reconstructed through one hidden layer that also receives a learned
per-user vector V_u:

    h = σ(W ỹ + V_u + b)          (H,)
    ŷ = σ(W' h + b')               (I,)

trained with the logistic loss on the clicked items and on negative items (Wu et al.'s negative
sampling), plus an L2 penalty, by our mini-batch loop with Adam over users (Liang et al. 2018 also
switched CDAE to user-level mini-batches with Adam).

Negative sampling.  With ``negative_ratio`` = k > 0, each unclicked item of a user enters the loss
with probability min(1, k · n_pos / n_neg), drawn afresh every step: k negatives per clicked item
in expectation (Wu et al. draw a fixed number; the Bernoulli draw vectorises).  With k = 0 every
unclicked item is in the loss (the full logistic loss over all items).

Held-out users (strong generalisation).  V_u exists only for training users.  ``user_vector``
chooses how a user never seen in training gets one:

* ``"zero"`` (default): V_u = 0.  The score is then a fixed function of the fold-in row alone,
  h = σ(W x + b), the usual way to run CDAE under strong generalisation.
* ``"fit"``: V_u is fitted on the fold-in row with the network frozen: ``fold_in_steps`` Adam
  steps from 0 on the *expected* training loss of that row (no corruption, every unclicked item
  weighted by its sampling probability, the same L2 penalty on V_u).  Deterministic.

Scores are the output logits W' h + b' (σ is monotone, so the ranking is the model's; logits do
not saturate to ties in float32).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from evcf.batches import Batches, DeviceCSR
from evcf.errors import EvcfError
from evcf.models.base import ClosedFormModel
from evcf.models.baselines import _check_train

__all__ = ["CDAE", "CDAENetwork", "CDAETrainer"]

log = logging.getLogger(__name__)

USER_VECTORS = ("zero", "fit")


class CDAENetwork(nn.Module):
    """The item-side network: encoder (W, b) and decoder (W', b').  Users' vectors live outside."""

    def __init__(self, n_items: int, hidden_size: int):
        super().__init__()
        self.encoder = nn.Linear(n_items, hidden_size)  # W (H, I), b (H,)
        self.decoder = nn.Linear(hidden_size, n_items)  # W' (I, H), b' (I,)

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """Logits (B, I) for (corrupted) rows ``x`` (B, I) and user vectors ``user`` (B, H)."""
        h = torch.sigmoid(self.encoder(x) + user)  # (B, H)
        return self.decoder(h)  # (B, I)

    def reset(self, generator: torch.Generator) -> None:
        """Xavier-uniform weights and zero biases, drawn from ``generator`` (ours)."""
        with torch.no_grad():
            for layer in (self.encoder, self.decoder):
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.zero_()


def loss_weights(x: torch.Tensor, negative_ratio: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Which items enter each user's loss (B, I): 1 on clicks, sampled or expected on the rest.

    With a ``generator``, each unclicked item is drawn with probability p_u = min(1, k n_pos /
    n_neg) (weight 1 if drawn, else 0); without one, it gets weight p_u (the expectation).  k = 0
    means all unclicked items, weight 1.
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


def logistic_loss(logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-user weighted logistic loss (B,): −Σ_i w_i [y_i log σ(z_i) + (1 − y_i) log(1 − σ(z_i))]."""
    target = (x > 0).to(logits.dtype)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights).sum(dim=1)


class CDAE(ClosedFormModel):
    """Wu et al.'s CDAE, trained by its own mini-batch loop (one fit per weight decay)."""

    name: ClassVar[str] = "cdae"
    seeded: ClassVar[bool] = True  # initialisation, order, corruption and negatives use the seed
    uses_gpu: ClassVar[bool] = True  # gradient steps over dense (B, I) batches

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 50  # Wu et al. 2016: K = 50 hidden units in their comparisons
        corruption: float = 0.5  # ours (Wu et al. vary the drop-out corruption level q)
        negative_ratio: float = 5.0  # ours: negatives per clicked item, in expectation (Wu et al.
        #                              sample negatives); 0 = full logistic loss over all items
        weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2)  # ours: grid of λ (Liang et al.
        #                              2018 also tuned CDAE's weight decay on validation NDCG@100)
        epochs: int = 20  # ours: the synthetic data overfits after that; no early stopping
        batch_size: int = 100  # ours (Liang et al. 2018 used batches of 500 users for CDAE)
        lr: float = 0.01  # ours, Adam (Liang et al. 2018: Adam; Wu et al.: AdaGrad)
        user_vector: str = "zero"  # ours: V_u of a held-out user, "zero" or "fit" (module docstring)
        fold_in_steps: int = 50  # ours: Adam steps fitting a held-out V_u (user_vector "fit")
        fold_in_lr: float = 0.1  # ours: their step size

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        _validate(self.config, self.name)
        self.n_items = n_items
        self.network: CDAENetwork | None = None
        self.weight_decay: float | None = None
        self.history: list[float] = []  # mean training loss of each epoch of the last fit

    def candidates(self) -> Iterable[dict[str, Any]]:
        return [{"weight_decay": float(wd)} for wd in self.config.weight_decays]

    # ----------------------------------------------------------------------------------------------
    # training

    def penalty(self, users: torch.Tensor) -> torch.Tensor:
        """L2 penalty (λ/2)(‖W‖² + ‖b‖² + ‖W'‖² + ‖b'‖²) + (λ/2) mean_u ‖V_u‖² over the batch.

        Wu et al. penalise all five parameter blocks with λ/2; the per-user vectors are penalised
        per user, in the same mean over users as the loss.
        """
        params = sum(p.pow(2).sum() for p in self.network.parameters())
        return 0.5 * self.weight_decay * (params + users.pow(2).sum(dim=1).mean())

    def start_fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
                  **setting: Any) -> CDAETrainer:
        """A fresh network and its training state for ``setting``; :meth:`fit` runs its epochs."""
        weight_decay = float(setting.get("weight_decay", self.config.weight_decays[0]))
        if weight_decay < 0:
            raise EvcfError(f"CDAE needs weight_decay >= 0, got {weight_decay}",
                            fix="use e.g. weight_decays: [1.0e-5, 1.0e-4]")
        train = _check_train(train, self.n_items, self.name)
        self.weight_decay = weight_decay
        return CDAETrainer(self, train, seed, torch.device("cpu") if device is None else device)

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            **setting: Any) -> None:
        """``epochs`` passes of :meth:`CDAETrainer.step` over the training users; ``history`` gets
        each epoch's mean loss (per user, penalty included)."""
        trainer = self.start_fit(train, seed=seed, device=device, **setting)
        self.history = []
        for _epoch in range(self.config.epochs):
            # the epoch's summed loss stays on the device: one read-back per epoch, not per step
            total = torch.zeros((), dtype=torch.float64, device=trainer.device)
            for rows, clicks in trainer.epoch():
                total += trainer.step(rows, clicks).double() * rows.numel()
            self.history.append(float(total) / max(1, trainer.n_users))
            if not math.isfinite(self.history[-1]):
                raise EvcfError(f"CDAE diverged (training loss {self.history[-1]}) with {setting}",
                                fix="use a smaller lr or a larger weight decay")
        self.network.eval()
        log.debug("CDAE fitted with weight_decay=%g: final epoch loss %.4f", self.weight_decay,
                  self.history[-1] if self.history else float("nan"))

    # ----------------------------------------------------------------------------------------------
    # scoring users never seen in training

    def fold_in_user_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """V_u (B, H) for fold-in rows ``x`` (B, I) of held-out users, as ``user_vector`` says."""
        c = self.config
        v = torch.zeros(x.shape[0], c.hidden_size, device=x.device)  # (B, H)
        if c.user_vector == "zero":
            return v
        net = self.network
        frozen = [p.requires_grad for p in net.parameters()]
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            # gradients for V_u even when the caller scores under no_grad or inference_mode
            with torch.inference_mode(False), torch.enable_grad():
                x, v = x.clone(), v.clone()  # ordinary tensors, not inference tensors
                weights = loss_weights(x, c.negative_ratio, None)  # (B, I) expected loss
                v.requires_grad_(True)
                opt = torch.optim.Adam([v], lr=c.fold_in_lr)
                for _ in range(c.fold_in_steps):
                    loss = logistic_loss(net(x, v), x, weights).sum()  # rows are independent
                    loss = loss + 0.5 * self.weight_decay * v.pow(2).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            for p, flag in zip(net.parameters(), frozen):
                p.requires_grad_(flag)
        return v.detach()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.network is None:
            raise RuntimeError("CDAE.score called before fit")
        if next(self.network.parameters()).device != x.device:
            self.network.to(x.device)
        x = x.float()
        v = self.fold_in_user_vectors(x)  # (B, H)
        with torch.no_grad():
            return self.network(x, v)  # (B, I) logits, a fresh tensor

    def state(self) -> dict[str, Any]:
        # the training users' vectors are not needed to score held-out users: not saved
        return {"network": {k: t.detach().cpu().clone() for k, t in self.network.state_dict().items()},
                "weight_decay": self.weight_decay}

    def load_state(self, state: dict[str, Any]) -> None:
        self.network = CDAENetwork(self.n_items, self.config.hidden_size)
        self.network.load_state_dict(state["network"])
        self.network.eval()
        self.weight_decay = float(state["weight_decay"])


class CDAETrainer:
    """One fit in progress: the network, the users' vectors V, both optimizers and the generators.

    :meth:`CDAE.fit` is ``epochs`` passes of :meth:`step` over the batches of :meth:`epoch`;
    ``evcf bench`` times the same :meth:`step`.  Nothing here reads a value back from the device.
    """

    def __init__(self, model: CDAE, train: sp.csr_matrix, seed: int, device: torch.device):
        c = model.config
        self.model, self.config, self.device = model, c, device
        self.n_users = train.shape[0]
        init_gen = torch.Generator().manual_seed(seed)  # CPU: parameters are drawn on the CPU
        self.step_gen = torch.Generator(device=device).manual_seed(seed)  # corruption and negatives
        self.order_gen = torch.Generator().manual_seed(seed + 1)  # user order of each epoch
        model.network = CDAENetwork(model.n_items, c.hidden_size)
        model.network.reset(init_gen)
        model.network.to(device)
        # V (U, H), the training users' vectors
        self.users = nn.Embedding(self.n_users, c.hidden_size, sparse=True, device=device)
        nn.init.zeros_(self.users.weight)  # ours: every V_u starts at 0
        # Adam for the network; its lazy sparse variant for V, so only the batch's rows move
        self.opt = torch.optim.Adam(model.network.parameters(), lr=c.lr)
        self.opt_users = torch.optim.SparseAdam(self.users.parameters(), lr=c.lr)
        self.rows_of = DeviceCSR(train, device)
        model.network.train()

    def epoch(self) -> Iterator[tuple[torch.Tensor, int]]:
        """One epoch's batches in a fresh seeded user order: (rows (B,) on the device, clicks).

        The order is drawn on the host and cut by :class:`~evcf.batches.Batches` (copied once;
        each batch's click count from the host), so building its dense rows never waits for the device.
        """
        order = torch.randperm(self.n_users, generator=self.order_gen)  # (U,)
        yield from Batches(self.rows_of, order, self.config.batch_size).spans()

    def step(self, rows: torch.Tensor, clicks: int | None = None) -> torch.Tensor:
        """One Adam step on the users ``rows`` (B,) holding ``clicks`` clicks; returns the batch's
        loss (mean over its users, penalty included), detached, on the device.

        Without ``clicks`` the count is read from the device (on a GPU, a wait): :meth:`epoch`
        gives it.
        """
        c, network = self.config, self.model.network
        x = self.rows_of.dense(rows, n_nonzeros=clicks)  # (B, I) 0/1
        if c.corruption > 0:
            keep = 1.0 - c.corruption
            mask = torch.rand(x.shape, generator=self.step_gen, device=self.device) < keep
            noisy = x * mask / keep  # (B, I) drop-out corruption, unbiased
        else:
            noisy = x
        v = self.users(rows)  # (B, H)
        logits = network(noisy, v)  # (B, I)
        weights = loss_weights(x, c.negative_ratio, self.step_gen)  # (B, I)
        loss = logistic_loss(logits, x, weights).mean() + self.model.penalty(v)
        self.opt.zero_grad(set_to_none=True)
        self.opt_users.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.opt_users.step()
        return loss.detach()


def _validate(config: CDAE.Config, model: str) -> None:
    def bad(key: str, problem: str, fix: str) -> EvcfError:
        return EvcfError(f"model {model!r}: {key} = {getattr(config, key)!r} {problem}", fix=fix)

    for key in ("hidden_size", "epochs", "batch_size"):
        if getattr(config, key) < 1:
            raise bad(key, "must be at least 1", f"set {key} to a positive integer")
    if config.fold_in_steps < 0:
        raise bad("fold_in_steps", "must not be negative", "use e.g. 50")
    if not 0.0 <= config.corruption < 1.0:
        raise bad("corruption", "must be in [0, 1)", "use a drop probability such as 0.2")
    if config.negative_ratio < 0:
        raise bad("negative_ratio", "must not be negative", "use e.g. 5.0, or 0 for all items")
    if len(config.weight_decays) == 0 or any(wd < 0 for wd in config.weight_decays):
        raise bad("weight_decays", "must be a non-empty list of numbers >= 0",
                  "e.g. weight_decays: [1.0e-5, 1.0e-4]")
    if config.lr <= 0 or config.fold_in_lr <= 0:
        raise bad("lr" if config.lr <= 0 else "fold_in_lr", "must be positive", "use e.g. 0.001")
    if config.user_vector not in USER_VECTORS:
        raise bad("user_vector", "is not a valid choice", f"use one of {', '.join(USER_VECTORS)}")
