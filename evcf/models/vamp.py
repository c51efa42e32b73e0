"""VampPrior models of Kim & Suh (2019): Vamp, H+Vamp and H+Vamp (Gated).

Read top to bottom: the mixture log-density, the VampPrior module, Vamp (the Mult-VAE network with a
VampPrior), then H+Vamp (two stochastic layers) and its gated variant.  Shapes: B users, I items, K
pseudo-inputs, H hidden width, Z / Z1 / Z2 latent sizes.

Settled from EVCF's code (``models/Model.py``, ``Vamp.py``, ``HVamp.py``, ``HVamp_1layer.py``,
``utils/load_data.py``):

* Pseudo-inputs u_k = hardtanh_{0,1}(P_k) go through the encoder *with its dropout* (EVCF's
  ``q_z_layers`` starts with ``nn.Dropout``, and ``log_p_z`` calls ``q_z(X)`` in whatever mode the
  model is in) and *without* L2 normalisation (EVCF normalises inside ``forward``, not ``q_z``).
* EVCF builds the pseudo-inputs as ``hardtanh(eye(K) @ W)``; we read P directly (same values, no K×K
  identity product).
* EVCF evaluates log p(z) by broadcasting (B, 1, Z) against (1, K, Z); we expand the quadratic form
  into matrix products (:func:`mixture_log_density`), exact up to rounding, with no (B, K, Z)
  tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from evcf.batches import Clicks, clicks_of
from evcf.errors import EvcfError
from evcf.models.base import VAEModel
from evcf.models.layers import (
    LOG_2PI,
    Dropout,
    GaussianEncoder,
    GaussianHead,
    JointInput,
    at_least_float32,
    hidden_layer,
    init_weights,
    first_layer_from_rows,
    log_normal_diag,
    mlp,
    reparameterise,
    validate_config,
)
from evcf.models.multvae import MultVAE, VAEOutput

__all__ = ["mixture_log_density", "VampPrior", "Vamp", "HVamp", "GatedHVamp"]

# maps inputs (n, I) to the Gaussian parameters (mu, logvar), each (n, Z)
Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ==================================================================================================
# The mixture log-density


def mixture_log_density(z: torch.Tensor, means: torch.Tensor,
                        logvars: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k N(z_b; m_k, diag(exp(logvar_k))) for every row z_b.  (B, Z), (K, Z) x2 -> (B,)

    The squared Mahalanobis distance is expanded into matrix products,
    Σ_d (z_d − m_kd)² / v_kd = z² · (1/v_k) − 2 z · (m_k / v_k) + Σ_d m_kd² / v_kd,
    so memory is O(B·K + K·Z) instead of EVCF's O(B·K·Z).  The expansion subtracts large terms
    when a component's variance is tiny (logvar down to −12, so 1/v up to e¹² ≈ 1.6e5), so it is
    evaluated in float64 (a few B×Z×K products: cheap; autocast leaves float64 alone) and cast back
    to the dtype of ``z`` (float32 at least).
    """
    n_components, dim = means.shape
    z64, m64, lv64 = z.double(), means.double(), logvars.double()
    prec = torch.exp(-lv64)  # (K, Z)  1 / v
    quad = (z64 * z64) @ prec.T - 2.0 * (z64 @ (m64 * prec).T) + (m64 * m64 * prec).sum(1)  # (B, K)
    log_comp = -0.5 * (quad + lv64.sum(1) + dim * LOG_2PI)  # (B, K)  log N(z_b; m_k, v_k)
    log_p = torch.logsumexp(log_comp, dim=1) - math.log(n_components)  # (B,)
    return log_p.to(at_least_float32(z).dtype)


# ==================================================================================================
# The VampPrior


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q(z | u_k), with learned pseudo-inputs u_k = hardtanh_{0,1}(P_k).

    ``P`` is a (K, I) parameter initialised N(mean, std) (EVCF ``normal_init`` with
    ``--pseudoinputs_mean 0.05 --pseudoinputs_std 0.01``).  It is not an ``nn.Linear``, so the
    models' weight init and weight penalty leave it alone, as in EVCF (``add_pseudoinputs`` runs
    after ``he_init``).
    """

    def __init__(self, n_components: int, n_items: int, mean: float, std: float):
        super().__init__()
        self.std = std
        # P (K, I)
        self.pseudo = nn.Parameter(torch.empty(n_components, n_items).normal_(mean, std))

    def pseudo_inputs(self) -> torch.Tensor:
        return F.hardtanh(self.pseudo, 0.0, 1.0)  # (K, I)

    def log_prob(self, z: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        """log p(z) per row; the components are ``encoder`` applied to the pseudo-inputs."""
        means, logvars = encoder(self.pseudo_inputs())  # (K, Z), (K, Z)
        return mixture_log_density(z, means, logvars)  # (B,)

    @torch.no_grad()
    def init_from(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """P = rows + N(0, std) noise, one row per pseudo-input.

        As EVCF's ``--use_training_data_init``: the first K (shuffled) training users plus noise
        with ``pseudoinputs_std`` 0.01 (``utils/load_data.py``).
        """
        if rows.is_sparse:
            rows = rows.to_dense()
        if tuple(rows.shape) != tuple(self.pseudo.shape):
            raise EvcfError(
                f"pseudo-input initialisation needs {self.pseudo.shape[0]} rows of "
                f"{self.pseudo.shape[1]} items, got shape {tuple(rows.shape)}",
                fix="pass exactly n_pseudo training users (lower n_pseudo if there are fewer)",
            )
        device = generator.device if generator is not None else self.pseudo.device
        noise = torch.randn(self.pseudo.shape, generator=generator, device=device)  # (K, I)
        self.pseudo.copy_(rows.to(self.pseudo) + self.std * noise.to(self.pseudo))


# ==================================================================================================
# Vamp: the Mult-VAE network with a VampPrior


class Vamp(MultVAE):
    """EVCF's ``models/Vamp.py``: the Mult-VAE network (EVCF style) with a VampPrior on z.

    KL is the one-sample estimate log q(z|x) − log p(z) at the sampled z, mean over the batch.
    Default likelihood: Bernoulli, because EVCF's ``--input_type`` defaults to ``binary`` and its
    data loaders force ``binary`` unless ``multinomial`` is asked for; the paper kept, per row,
    whichever of the two worked better and did not publish which.  Both are available.

    ``pseudo_init: "random-users"`` is carried out by the training loop, which owns the data: the
    model asks for ``n_pseudo`` training rows (:meth:`rows_to_init_from`) and the loop hands them to
    :meth:`init_from_rows` before the first epoch (the model alone starts from
    N(pseudo_mean, pseudo_std)).
    """

    name: ClassVar[str] = "vamp"
    label: ClassVar[str] = "Vamp"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#d62728"
    row: ClassVar[int] = 7
    gated: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 600  # EVCF experiment.py `--hidden_size` default
        latent_size: int = 200  # EVCF experiment.py `--z1_size` default
        num_layers: int = 1  # EVCF experiment.py `--num_layers` default
        dropout: float = 0.5  # EVCF Vamp.py: nn.Dropout(p=0.5) first in q_z_layers
        likelihood: str = "bernoulli"  # EVCF `--input_type` default "binary" (see class docstring)
        # EVCF utils/distributions.py log_Bernoulli: p clamped to [1e-5, 1 - 1e-5]; 0 = exact
        bernoulli_clamp: float = 1e-5
        init: str = "he"  # EVCF utils/nn.py he_init on every nn.Linear; biases PyTorch default
        logvar_clamp: bool = True  # EVCF: q_z_logvar = Linear then Hardtanh(-12, 4)
        n_pseudo: int = 1000  # EVCF experiment.py `--number_components` default (K)
        pseudo_init: str = "normal"  # EVCF: N(mean, std) unless `--use_training_data_init`
        pseudo_mean: float = 0.05  # EVCF experiment.py `--pseudoinputs_mean` default
        pseudo_std: float = 0.01  # EVCF experiment.py `--pseudoinputs_std` default
        weight_decay: float = 0.0  # EVCF: AdamNormGrad(weight_decay=0), no penalty

    def __init__(self, n_items: int, config: Config | None = None):
        super().__init__(n_items, config)
        c = self.config
        self.prior = VampPrior(c.n_pseudo, n_items, c.pseudo_mean, c.pseudo_std)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) under the VampPrior; pseudo-inputs go through ``self.encoder`` unnormalised."""
        return self.prior.log_prob(z, self.encoder)  # (B,)

    def kl(self, out: VAEOutput) -> torch.Tensor:
        return log_normal_diag(out.z, out.mu, out.logvar) - self.log_prior(out.z)  # (B,)

    def init_pseudo_from(self, rows: torch.Tensor,
                         generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to ``n_pseudo`` training rows (K, I) plus N(0, pseudo_std)."""
        self.prior.init_from(rows, generator)

    def rows_to_init_from(self) -> int:
        """``n_pseudo`` training users with ``pseudo_init: "random-users"``, else none."""
        return self.config.n_pseudo if self.config.pseudo_init == "random-users" else 0

    def init_from_rows(self, rows: torch.Tensor) -> None:
        self.init_pseudo_from(rows)


# ==================================================================================================
# H+Vamp: two stochastic layers, VampPrior on the top one


class HVampOutput(NamedTuple):
    logits: torch.Tensor  # (B, I)
    z1: torch.Tensor  # (B, Z1)
    z1_mu: torch.Tensor  # (B, Z1)  q(z1 | x, z2)
    z1_logvar: torch.Tensor  # (B, Z1)
    z2: torch.Tensor  # (B, Z2)
    z2_mu: torch.Tensor  # (B, Z2)  q(z2 | x)
    z2_logvar: torch.Tensor  # (B, Z2)
    p_z1_mu: torch.Tensor  # (B, Z1)  p(z1 | z2)
    p_z1_logvar: torch.Tensor  # (B, Z1)


class HVamp(VAEModel):
    """EVCF's H+Vamp: ``models/HVamp_1layer.py`` for one hidden layer, ``models/HVamp.py`` for more.

    "⊕" is concatenation (``torch.cat``), x the user's L2-normalised row, L = ``num_layers``.

    L = 1 (EVCF's default ``--num_layers``; its ``HVamp_1layer.py``, ``--model_name hvamp1``, says a
    one-layer H+Vamp must use that network), every path has exactly one hidden layer:

    * q(z2 | x): dropout → I→H → heads;
    * q(z1 | x, z2): [dropout(x) ⊕ z2] → (I+Z2)→H → heads;
    * p(z1 | z2): Z2→H → heads;
    * p(x | z1, z2): [z1 ⊕ z2] → (Z1+Z2)→H → Linear(H, I).

    L ≥ 2 (``HVamp.py``, ``--model_name hvamp``; the README's hierarchical example uses L = 2):

    * q(z2 | x): dropout → I→H → (L−1)×H→H → heads;
    * q(z1 | x, z2): [dropout → I→H ⊕ Z2→H] → 2H→H → (L−2)×H→H → heads;
    * p(z1 | z2): Z2→H → (L−1)×H→H → heads;
    * p(x | z1, z2): [Z1→H ⊕ Z2→H] → 2H→H → (L−2)×H→H → Linear(H, I).

    In both, p(z2) is the VampPrior with pseudo-inputs through q(z2 | ·), and the x input of
    q(z1|·) has its own dropout, drawn independently of q(z2|·)'s, as in EVCF.  Heads are a linear
    mean and a (clamped) linear log-variance (:class:`GaussianHead`).

    KL = log q(z1|x,z2) + log q(z2|x) − log p(z1|z2) − log p(z2) at the sampled (z1, z2).  In eval
    mode z2 = mean of q(z2|x) and z1 = mean of q(z1|x, z2).  Likelihood default: Bernoulli (see
    :class:`Vamp`; the README example passes ``--input_type="binary"``).
    """

    name: ClassVar[str] = "hvamp"
    label: ClassVar[str] = "H+Vamp"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#9467bd"
    row: ClassVar[int] = 8
    gated: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 600  # EVCF experiment.py `--hidden_size` default
        z1_size: int = 200  # EVCF experiment.py `--z1_size` default
        z2_size: int = 200  # EVCF experiment.py `--z2_size` default
        # EVCF experiment.py default 1 (HVamp_1layer.py's network); the README's example uses 2
        num_layers: int = 1
        dropout: float = 0.5  # EVCF HVamp*.py: nn.Dropout(p=0.5) on x in q(z2|x) and q(z1|x,z2)
        likelihood: str = "bernoulli"  # EVCF `--input_type` default "binary" (README example too)
        # EVCF utils/distributions.py log_Bernoulli: p clamped to [1e-5, 1 - 1e-5]; 0 = exact
        bernoulli_clamp: float = 1e-5
        init: str = "he"  # EVCF utils/nn.py he_init on every nn.Linear; biases PyTorch default
        logvar_clamp: bool = True  # EVCF: every logvar head = Linear then Hardtanh(-12, 4)
        n_pseudo: int = 1000  # EVCF experiment.py `--number_components` default (K)
        pseudo_init: str = "normal"  # EVCF: N(mean, std) unless `--use_training_data_init`
        pseudo_mean: float = 0.05  # EVCF experiment.py `--pseudoinputs_mean` default
        pseudo_std: float = 0.01  # EVCF experiment.py `--pseudoinputs_std` default
        weight_decay: float = 0.0  # EVCF: AdamNormGrad(weight_decay=0), no penalty

    def __init__(self, n_items: int, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        validate_config(self.config, self.name)
        c, g = self.config, self.gated
        h, n_layers = c.hidden_size, c.num_layers
        self.n_items = n_items
        self.one_layer = n_layers == 1  # HVamp_1layer.py's network; HVamp.py's otherwise
        # q(z2 | x)
        self.q_z2 = GaussianEncoder(n_items, h, n_layers, c.z2_size, gated=g, dropout=c.dropout,
                                    logvar_clamp=c.logvar_clamp)
        # q(z1 | x, z2)
        if self.one_layer:  # one layer over [dropout(x) ⊕ z2]
            self.q_z1_x = Dropout(c.dropout)
            self.q_z1_joint = hidden_layer(n_items + c.z2_size, h, g, items_first=True)  # W stored (I+Z2, H)
        else:  # a branch for each input, then 2H->H and (L-2) H->H
            self.q_z1_x = nn.Sequential(Dropout(c.dropout), hidden_layer(n_items, h, g, items_first=True))
            self.q_z1_z2 = hidden_layer(c.z2_size, h, g)
            self.q_z1_joint = mlp(2 * h, h, n_layers - 1, g)
        self.q_z1_head = GaussianHead(h, c.z1_size, c.logvar_clamp)
        # p(z1 | z2)
        self.p_z1 = mlp(c.z2_size, h, n_layers, g)
        self.p_z1_head = GaussianHead(h, c.z1_size, c.logvar_clamp)
        # p(x | z1, z2)
        if self.one_layer:  # one layer over [z1 ⊕ z2]
            self.p_x_joint = hidden_layer(c.z1_size + c.z2_size, h, g)
        else:  # a branch for each input, then 2H->H and (L-2) H->H
            self.p_x_z1 = hidden_layer(c.z1_size, h, g)
            self.p_x_z2 = hidden_layer(c.z2_size, h, g)
            self.p_x_joint = mlp(2 * h, h, n_layers - 1, g)
        self.p_x_out = nn.Linear(h, n_items)  # H -> I logits
        init_weights(self, c.init)
        # p(z2): VampPrior (after init_weights, as EVCF's add_pseudoinputs comes after he_init)
        self.prior = VampPrior(c.n_pseudo, n_items, c.pseudo_mean, c.pseudo_std)

    # --- the network ------------------------------------------------------------------------------

    def q_z1(self, x: torch.Tensor, z2: torch.Tensor, clicks: Clicks | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1 | x, z2) for raw rows ``x`` (normalised and dropped out here).  -> (B, Z1) x2"""
        if self.one_layer:
            # (I+Z2)->H over [dropout(l2_normalise(x)) ⊕ z2], from the non-zeros of x
            h = first_layer_from_rows(self.q_z1_x, JointInput(self.q_z1_joint, z2), x, clicks)  # (B, H)
        else:
            h_x = first_layer_from_rows(self.q_z1_x[0], self.q_z1_x[1], x, clicks)  # (B, H)
            h = self.q_z1_joint(torch.cat([h_x, self.q_z1_z2(z2)], dim=1))  # (B, 2H) -> (B, H)
        return self.q_z1_head(h)

    def p_x(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Logits of p(x | z1, z2).  (B, Z1), (B, Z2) -> (B, I)"""
        if self.one_layer:
            h = self.p_x_joint(torch.cat([z1, z2], dim=1))  # (B, Z1+Z2) -> (B, H)
        else:
            h = self.p_x_joint(torch.cat([self.p_x_z1(z1), self.p_x_z2(z2)], dim=1))  # (B, H)
        return self.p_x_out(h)

    def forward(self, x: torch.Tensor, clicks: Clicks | None = None) -> HVampOutput:
        clicks = clicks if clicks is not None else clicks_of(x)  # (found once, for both first layers)
        z2_mu, z2_logvar = self.q_z2.forward_rows(x, clicks)  # (B, Z2): q_z2(l2_normalise(x))
        z2 = reparameterise(z2_mu, z2_logvar, self.training)
        z1_mu, z1_logvar = self.q_z1(x, z2, clicks)  # (B, Z1)
        z1 = reparameterise(z1_mu, z1_logvar, self.training)
        p_mu, p_logvar = self.p_z1_head(self.p_z1(z2))  # (B, Z1)
        return HVampOutput(self.p_x(z1, z2), z1, z1_mu, z1_logvar, z2, z2_mu, z2_logvar, p_mu,
                           p_logvar)

    # --- the prior, the KL term and the loss ------------------------------------------------------

    def log_prior_z2(self, z2: torch.Tensor) -> torch.Tensor:
        """log p(z2) under the VampPrior; pseudo-inputs go through q(z2 | ·) unnormalised.  (B,)"""
        return self.prior.log_prob(z2, self.q_z2)

    def kl(self, out: HVampOutput) -> torch.Tensor:
        log_q = (log_normal_diag(out.z1, out.z1_mu, out.z1_logvar)
                 + log_normal_diag(out.z2, out.z2_mu, out.z2_logvar))  # (B,)
        log_p = log_normal_diag(out.z1, out.p_z1_mu, out.p_z1_logvar) + self.log_prior_z2(out.z2)
        return log_q - log_p  # (B,)

    # The loss (NLL + β·KL (+ λ Σ‖W‖²), means over the batch) and the eval-mode scores
    # (z2 = E q(z2|x), z1 = E q(z1|x, z2), no dropout) are Mult-VAE's, over this forward() and kl().
    loss = MultVAE.loss
    score = MultVAE.score

    def init_pseudo_from(self, rows: torch.Tensor,
                         generator: torch.Generator | None = None) -> None:
        """Set the pseudo-inputs to ``n_pseudo`` training rows (K, I) plus N(0, pseudo_std)."""
        self.prior.init_from(rows, generator)

    def rows_to_init_from(self) -> int:
        """``n_pseudo`` training users with ``pseudo_init: "random-users"``, else none."""
        return self.config.n_pseudo if self.config.pseudo_init == "random-users" else 0

    def init_from_rows(self, rows: torch.Tensor) -> None:
        self.init_pseudo_from(rows)


class GatedHVamp(HVamp):
    """H+Vamp (Gated): every hidden layer a GLU (EVCF ``--gated``, with ``hvamp1`` or ``hvamp`` as
    for :class:`HVamp`); heads and the output layer stay linear (EVCF's ``NonLinear`` heads are
    built without ``gated``)."""

    name: ClassVar[str] = "hvamp-gated"
    label: ClassVar[str] = "H+Vamp (Gated)"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#e377c2"
    row: ClassVar[int] = 9
    gated: ClassVar[bool] = True
    Config = HVamp.Config
