"""CDAE: collaborative denoising auto-encoder, as Liang et al. (2018) ran it, or as Wu et al. (2016) wrote it.

Read top to bottom: the config, the model (its search, its per-epoch selection, the held-out
users' vectors), then the training loop (:class:`CDAETrainer` holds one fit's state and takes its
gradient steps).  The network, the two losses and the row-wise Adam of the users' vectors are in
:mod:`evcf.models.cdae_parts`.
Shapes: B users, I items, H hidden units, U training users.

The model (Wu, DuBois, Zheng & Ester 2016).  A user's click row y (I,) is corrupted by dropout,
ỹ = δ ⊙ y / (1 − q) with δ_i ~ Bernoulli(1 − q), and reconstructed through one hidden layer that
also receives a learned per-user vector V_u:

    h = f(W ỹ + V_u + b)          (H,)
    ŷ = g(W' h + b')               (I,)

Two variants (``variant``):

* ``"liang2018"`` (default; the CDAE whose numbers Liang et al. 2018, Table 2 print, and that the EVCF
  Table 1 copies).  Liang et al., Sec. 4.4: a 200-unit bottleneck, f = g = tanh, "a weighted square
  loss, equivalent to what the square loss with negative sampling used in the original paper", weight
  decay searched over {0.01, 0.1, 1, 10, 100}, Adam on batches of 500 users.  The loss of user u is

      ℓ_u = Σ_i c_ui (y_ui − ŷ_ui)²,   c_ui = 1 on a click,  c_ui = p_u = min(1, k n_u / (I − n_u)) elsewhere,

  with n_u the user's clicks and k = ``negative_ratio``.  These weights are the expectation of the
  square loss with negative sampling: drawing k negatives per click from the I − n_u unclicked items
  puts each of them in the loss with probability p_u.  The weighted loss is that expectation, exactly
  and without sampling noise, which is what "equivalent" can mean (Liang et al. give no weights).
* ``"wu2016"``: Wu et al.'s own model: f = g = sigmoid, the logistic loss on the clicks and on
  negatives drawn afresh every step (each unclicked item with probability p_u; Wu et al. draw a fixed
  number, the Bernoulli draw vectorises), k = 0 meaning every unclicked item.  Wu et al. use 50
  hidden units (set ``hidden_size: 50``).  Not the model of the published numbers.

Weight decay (the units of Liang's grid).  One gradient step on a batch B minimises

    (1/|B|) Σ_{u∈B} [ℓ_u + λ ‖V_u‖²]  +  (λ / 500) (‖W‖² + ‖W'‖²)

i.e. over the whole data Σ_u [ℓ_u + λ ‖V_u‖²] + λ (‖W‖² + ‖W'‖²) per 500 users: λ multiplies the
squared weights once per batch of 500 users' summed loss, the convention of Liang et al.'s Mult-DAE
code (its λ = 0.01 is 2e-5 per user), so that Liang's grid means the same whatever the batch size.
Biases are not penalised (Liang's code penalises weights only).  The same λ holds each user's vector.

Selection.  With validation users (the training loop passes them), every epoch is scored on
validation NDCG@100 and the best epoch's network is kept, as for every other gradient-trained row
(``patience`` epochs without improvement end the fit early; 0 = never).

Held-out users (strong generalisation).  V_u exists only for training users.  ``user_vector``:

* ``"fit"`` (default; Liang et al.: "the cdae also requires additional optimization to obtain the
  latent factor for unseen users"): V_u is fitted on the fold-in row with the network frozen:
  ``fold_in_steps`` Adam steps from 0 on the user's own objective ℓ_u + λ ‖V_u‖² (the expected
  loss: no corruption, every unclicked item weighted by p_u).  Deterministic; the network's
  parameters are not touched.
* ``"zero"``: V_u = 0, so the score is a fixed function of the fold-in row, h = f(W x + b).

Scores are the output pre-activations W' h + b' (tanh and sigmoid are monotone, so the ranking is
the model's; pre-activations do not saturate to ties in float32).

No step reads a value back from the device: batch sizes come from the host, and the users' vectors
move by :class:`RowAdam`, which updates the batch's rows in place (no sparse gradient, so no
``coalesce()``, which reads the number of entries back every step).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import scipy.sparse as sp
import torch

from evcf.batches import Batches, DeviceCSR
from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel
from evcf.models.baselines import _check_train
from evcf.models.cdae_parts import CDAENetwork, RowAdam, logistic_loss, loss_weights, square_loss

__all__ = ["CDAE", "CDAENetwork", "CDAETrainer", "RowAdam", "loss_weights", "square_loss",
           "logistic_loss", "DECAY_USERS"]

log = logging.getLogger(__name__)

VARIANTS = ("liang2018", "wu2016")
USER_VECTORS = ("zero", "fit")
DECAY_USERS = 500  # λ multiplies ‖W‖² + ‖W'‖² once per this many users' summed loss (Liang's batch)
SELECT_BY = "ndcg@100"  # the validation metric of every row (evcf.training.SELECT_BY)


class CDAE(SelfFittingModel):
    """CDAE with its own mini-batch loop: one fit per weight decay, the best epoch of each kept."""

    name: ClassVar[str] = "cdae"
    label: ClassVar[str] = "CDAE"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#17becf"
    row: ClassVar[int] = 3
    seeded: ClassVar[bool] = True  # initialisation, order, corruption and negatives use the seed
    uses_gpu: ClassVar[bool] = True  # gradient steps over dense (B, I) batches
    selects_epochs: ClassVar[bool] = True  # the training loop passes the validation users to fit()

    @dataclass(frozen=True)
    class Config:
        variant: str = "liang2018"  # Liang et al. 2018 Sec. 4.4 (the published CDAE); "wu2016": Wu et al.'s
        hidden_size: int = 200  # Liang et al. 2018 Sec. 4.4: bottleneck of 200 (Wu et al.: 50)
        corruption: float = 0.5  # ours: Liang et al. do not give CDAE's; their Mult-DAE's input dropout (keep 0.5)
        negative_ratio: float = 5.0  # ours: k negatives per click (the weights of the square loss; Wu's draws)
        weight_decays: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)  # Liang et al. 2018 Sec. 4.4 (units: module docstring)
        epochs: int = 200  # ours: the most epochs of one fit (Liang's Mult-DAE epochs); the best by validation NDCG@100 is kept
        patience: int = 20  # ours: stop after this many epochs without a better validation NDCG@100 (0 = never)
        batch_size: int = 500  # Liang et al. 2018 Sec. 4.4: batches of 500 users
        lr: float = 1e-3  # ours: Adam's default (Liang et al. use Adam and give no rate; 1e-3 is their Mult-VAE's)
        user_vector: str = "fit"  # Liang et al. 2018 Sec. 4.4: unseen users' factor is optimised ("zero": V_u = 0)
        fold_in_steps: int = 50  # ours: Adam steps fitting a held-out user's V_u (user_vector "fit")
        fold_in_lr: float = 0.01  # ours: their step size

    def __init__(self, n_items: int, config: Config | None = None):
        self.config = config if config is not None else self.Config()
        _validate(self.config, self.name)
        self.n_items = n_items
        self.network: CDAENetwork | None = None
        self.weight_decay: float | None = None
        self.history: list[float] = []  # mean training loss (per user, penalty included) of each epoch
        self.val_history: list[float] = []  # validation NDCG@100 after each epoch (when validated)
        self.best_epoch: int | None = None  # the epoch kept (1-based; the last one without validation)

    def candidates(self) -> Iterable[dict[str, Any]]:
        return [{"weight_decay": float(wd)} for wd in self.config.weight_decays]

    @property
    def selection(self) -> dict[str, int]:
        """What the last fit selected: its best epoch and the epochs it ran (tuning.csv columns)."""
        return {"best_epoch": int(self.best_epoch or 0), "epochs_run": len(self.history)}

    # ----------------------------------------------------------------------------------------------
    # the loss

    def reconstruction(self, logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """ℓ_u per user (B,): the variant's loss of pre-activations ``logits`` against rows ``x``."""
        loss = square_loss if self.config.variant == "liang2018" else logistic_loss
        return loss(logits, x, weights)

    def expected_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The loss weights without sampling (B, I): p_u on the unclicked items (module docstring)."""
        return loss_weights(x, self.config.negative_ratio, None)

    def batch_loss(self, logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
                   users: torch.Tensor) -> torch.Tensor:
        """One step's objective: mean_u [ℓ_u + λ ‖V_u‖²] + (λ / 500)(‖W‖² + ‖W'‖²)."""
        lam = self.weight_decay
        per_user = self.reconstruction(logits, x, weights) + lam * users.pow(2).sum(dim=1)  # (B,)
        return per_user.mean() + (lam / DECAY_USERS) * self.network.weights_squared()

    # ----------------------------------------------------------------------------------------------
    # training

    def start_fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
                  **setting: Any) -> CDAETrainer:
        """A fresh network and its training state for ``setting``; :meth:`fit` runs its epochs."""
        weight_decay = float(setting.get("weight_decay", self.config.weight_decays[0]))
        if weight_decay < 0:
            raise EvcfError(f"CDAE needs weight_decay >= 0, got {weight_decay}",
                            fix="use e.g. weight_decays: [0.01, 0.1]")
        train = _check_train(train, self.n_items, self.name)
        self.weight_decay = weight_decay
        return CDAETrainer(self, train, seed, torch.device("cpu") if device is None else device)

    def fit(self, train: sp.spmatrix, *, seed: int = 0, device: torch.device | None = None,
            validation: tuple[Any, sp.spmatrix, int] | None = None, **setting: Any) -> None:
        """Up to ``epochs`` passes of :meth:`CDAETrainer.step` over the training users.

        ``validation`` = (fold-in rows, held-out rows, evaluation batch size) of the validation users:
        each epoch is scored on them and the best epoch's network is kept (``val_history``,
        ``best_epoch``).  Without it the last epoch is kept.  ``history`` gets each epoch's mean loss.
        """
        from evcf.evaluate import evaluate  # here: evaluate imports the data package, not the models

        trainer = self.start_fit(train, seed=seed, device=device, **setting)
        self.history, self.val_history, self.best_epoch = [], [], None
        best_score, best_state = -math.inf, None
        for epoch in range(1, self.config.epochs + 1):
            self.network.train()
            # the epoch's summed loss stays on the device: one read-back per epoch, not per step
            total = torch.zeros((), dtype=torch.float64, device=trainer.device)
            for rows, clicks in trainer.epoch():
                total += trainer.step(rows, clicks).double() * rows.numel()
            self.history.append(float(total) / max(1, trainer.n_users))
            if not math.isfinite(self.history[-1]):
                raise EvcfError(f"CDAE diverged (training loss {self.history[-1]}) at epoch {epoch} with {setting}",
                                fix="use a smaller lr or a larger weight decay")
            self.network.eval()
            if validation is None:
                self.best_epoch = epoch
                continue
            fold_in, heldout, batch_size = validation
            score = float(evaluate(self.score, fold_in, heldout, batch_size=batch_size, device=trainer.device,
                                   metrics=(SELECT_BY,)).per_user[SELECT_BY].mean())
            self.val_history.append(score)
            log.debug("CDAE weight_decay=%g epoch %d: loss %.4f, val %s %.4f", self.weight_decay, epoch,
                      self.history[-1], SELECT_BY, score)
            if score > best_score:
                best_score, self.best_epoch = score, epoch
                best_state = copy.deepcopy(self.network.state_dict())
            elif self.config.patience and epoch - self.best_epoch >= self.config.patience:
                break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.zero_grad(set_to_none=True)  # the last step's gradients are not part of the model
        self.network.eval()
        log.info("CDAE weight_decay=%g: best epoch %s of %d", self.weight_decay, self.best_epoch,
                 len(self.history))

    # ----------------------------------------------------------------------------------------------
    # scoring users never seen in training

    def fold_in_user_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """V_u (B, H) for fold-in rows ``x`` (B, I) of held-out users, as ``user_vector`` says.

        ``"fit"``: Adam on V alone; the network's parameters get no gradient and are not changed.
        """
        c = self.config
        v = torch.zeros(x.shape[0], c.hidden_size, device=x.device)  # (B, H)
        if c.user_vector == "zero" or c.fold_in_steps == 0:
            return v
        net = self.network
        frozen = [p.requires_grad for p in net.parameters()]
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            # gradients for V_u even when the caller scores under no_grad or inference_mode
            with torch.inference_mode(False), torch.enable_grad():
                x, v = x.clone(), v.clone()  # ordinary tensors, not inference tensors
                weights = self.expected_weights(x)  # (B, I)
                v.requires_grad_(True)
                opt = torch.optim.Adam([v], lr=c.fold_in_lr)
                for _ in range(c.fold_in_steps):
                    # each user's own objective ℓ_u + λ ‖V_u‖²: rows are independent, so their sum
                    loss = (self.reconstruction(net(x, v), x, weights)
                            + self.weight_decay * v.pow(2).sum(dim=1)).sum()
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
            return self.network(x, v)  # (B, I) pre-activations, a fresh tensor

    def state(self) -> dict[str, Any]:
        # the training users' vectors are not needed to score held-out users: not saved
        return {"network": {k: t.detach().cpu().clone() for k, t in self.network.state_dict().items()},
                "weight_decay": self.weight_decay, "best_epoch": self.best_epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        self.network = CDAENetwork(self.n_items, self.config.hidden_size, _activation(self.config))
        self.network.load_state_dict(state["network"])
        self.network.eval()
        self.weight_decay = float(state["weight_decay"])
        self.best_epoch = state.get("best_epoch")


def _activation(config: CDAE.Config) -> str:
    return "tanh" if config.variant == "liang2018" else "sigmoid"


class CDAETrainer:
    """One fit in progress: the network, the users' vectors V, both optimizers and the generators.

    :meth:`CDAE.fit` is passes of :meth:`step` over the batches of :meth:`epoch`; ``evcf bench``
    times the same :meth:`step`.  Nothing here reads a value back from the device.
    """

    def __init__(self, model: CDAE, train: sp.csr_matrix, seed: int, device: torch.device):
        c = model.config
        self.model, self.config, self.device = model, c, device
        self.n_users = train.shape[0]
        init_gen = torch.Generator().manual_seed(seed)  # CPU: parameters are drawn on the CPU
        self.step_gen = torch.Generator(device=device).manual_seed(seed)  # corruption and negatives
        self.order_gen = torch.Generator().manual_seed(seed + 1)  # user order of each epoch
        model.network = CDAENetwork(model.n_items, c.hidden_size, _activation(c))
        model.network.reset(init_gen)
        model.network.to(device)
        self.users = torch.zeros(self.n_users, c.hidden_size, device=device)  # V (U, H); ours: V_u starts at 0
        self.opt = torch.optim.Adam(model.network.parameters(), lr=c.lr)
        self.opt_users = RowAdam(self.users, lr=c.lr)  # only the batch's rows move (lazy, as SparseAdam)
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
        objective (:meth:`CDAE.batch_loss`), detached, on the device.

        Without ``clicks`` the count is read from the device (on a GPU, a wait): :meth:`epoch`
        gives it.
        """
        c, model = self.config, self.model
        x = self.rows_of.dense(rows, n_nonzeros=clicks)  # (B, I) 0/1
        if c.corruption > 0:
            keep = 1.0 - c.corruption
            mask = torch.rand(x.shape, generator=self.step_gen, device=self.device) < keep
            noisy = x * mask / keep  # (B, I) drop-out corruption, unbiased
        else:
            noisy = x
        v = self.users.index_select(0, rows).requires_grad_(True)  # (B, H), a leaf: its gradient is V's rows'
        logits = model.network(noisy, v)  # (B, I)
        if c.variant == "liang2018":
            weights = model.expected_weights(x)  # (B, I) the weighted square loss: no draw
        else:
            weights = loss_weights(x, c.negative_ratio, self.step_gen)  # (B, I) sampled negatives
        loss = model.batch_loss(logits, x, weights, v)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.opt_users.step(rows, v.grad)
        return loss.detach()


def _validate(config: CDAE.Config, model: str) -> None:
    def bad(key: str, problem: str, fix: str) -> EvcfError:
        return EvcfError(f"model {model!r}: {key} = {getattr(config, key)!r} {problem}", fix=fix)

    if config.variant not in VARIANTS:
        raise bad("variant", "is not a valid choice", f"use one of {', '.join(VARIANTS)}")
    for key in ("hidden_size", "epochs", "batch_size"):
        if getattr(config, key) < 1:
            raise bad(key, "must be at least 1", f"set {key} to a positive integer")
    for key in ("fold_in_steps", "patience"):
        if getattr(config, key) < 0:
            raise bad(key, "must not be negative", "use e.g. 10")
    if not 0.0 <= config.corruption < 1.0:
        raise bad("corruption", "must be in [0, 1)", "use a drop probability such as 0.5")
    if config.negative_ratio < 0:
        raise bad("negative_ratio", "must not be negative", "use e.g. 5.0, or 0 for all items")
    if len(config.weight_decays) == 0 or any(wd < 0 for wd in config.weight_decays):
        raise bad("weight_decays", "must be a non-empty list of numbers >= 0",
                  "e.g. weight_decays: [0.01, 0.1, 1.0, 10.0, 100.0]")
    if config.lr <= 0 or config.fold_in_lr <= 0:
        raise bad("lr" if config.lr <= 0 else "fold_in_lr", "must be positive", "use e.g. 0.001")
    if config.user_vector not in USER_VECTORS:
        raise bad("user_vector", "is not a valid choice", f"use one of {', '.join(USER_VECTORS)}")
