"""Mult-DAE and Mult-VAE (Liang et al. 2018), and Mult-VAE (Gated) (Kim & Suh 2019).

Read top to bottom: the DAE, then the VAE, then its gated variant, which only changes defaults and
the hidden layer.  All losses are means over the users of the batch.  Shapes: B users, I items,
H hidden width, Z latent size.

Sources: Liang's ``vae_cf`` notebook (``MultiDAE``, ``MultiVAE``) and EVCF's ``models/Baseline.py``
(its Mult-VAE, used with ``--gated`` for the gated row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from evcf.batches import Clicks, clicks_of
from evcf.models.base import LossParts, VAEModel
from evcf.models.layers import (
    Dense,
    Dropout,
    GaussianEncoder,
    eval_mode,
    init_weights,
    kl_standard_normal,
    first_layer_from_rows,
    log_normal_diag,
    log_standard_normal,
    mlp,
    nll,
    reparameterise,
    validate_config,
    weight_penalty,
)

__all__ = ["MultDAE", "MultVAE", "GatedMultVAE", "EvcfMultVAE"]


# ==================================================================================================
# Mult-DAE: [I-200-I], tanh, multinomial likelihood, L2 penalty on the weights.


class MultDAE(VAEModel):
    """Liang's Mult-DAE: L2-normalise, dropout, I → H (tanh) → I logits; loss = NLL + λ Σ‖W‖²."""

    name: ClassVar[str] = "mult-dae"
    label: ClassVar[str] = "Mult-DAE"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#1f77b4"
    row: ClassVar[int] = 4

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 200  # Liang et al. 2018, Mult-DAE architecture [I-200-I]
        dropout: float = 0.5  # Liang notebook: keep_prob 0.5 on the input
        weight_decay: float = 2e-5  # Liang notebook: lam = 0.01 / batch_size (500); penalty λ Σ‖W‖²
        likelihood: str = "multinomial"  # Liang: multinomial log-likelihood
        # bernoulli only: 0 = exact σ(logits); Liang's code has no Bernoulli likelihood to copy
        bernoulli_clamp: float = 0.0
        init: str = "xavier"  # Liang: Xavier weights, truncated-normal(0.001) biases

    def __init__(self, n_items: int, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        validate_config(self.config, self.name)
        c = self.config
        self.n_items = n_items
        self.dropout = Dropout(c.dropout)
        self.encoder = Dense(n_items, c.hidden_size, items_first=True)  # I -> H, tanh; W stored (I, H)
        self.decoder = nn.Linear(c.hidden_size, n_items)  # H -> I, logits
        init_weights(self, c.init)

    def forward(self, x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
        h = first_layer_from_rows(self.dropout, self.encoder, x, clicks)  # (B, H) = tanh(W dropout(l2(x)) + b)
        return self.decoder(h)  # (B, I) logits

    def loss(self, x: torch.Tensor, beta: float = 0.0, clicks: Clicks | None = None) -> LossParts:
        """NLL + λ Σ‖W‖² (``beta`` is ignored: a DAE has no KL term).

        Liang's TF code adds ``2 * l2_regularizer(lam)`` = lam · Σ w² (TF halves it, he doubles
        it back).
        """
        c = self.config
        clicks = clicks if clicks is not None else clicks_of(x)  # (found once, for both uses)
        rec = nll(self(x, clicks), x, c.likelihood, c.bernoulli_clamp, clicks).mean()
        penalty = c.weight_decay * weight_penalty(self)
        total = rec + penalty
        return LossParts(loss=total, nll=rec.detach(), kl=rec.new_zeros(()),
                         penalty=penalty.detach())

    @torch.no_grad()
    def score(self, x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
        with eval_mode(self):
            return self(x, clicks)  # (B, I)


# ==================================================================================================
# Mult-VAE: [I-600-200-600-I], tanh, multinomial likelihood, Gaussian posterior, N(0, I) prior.


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # (B, I)
    z: torch.Tensor  # (B, Z) sample in training mode, posterior mean in eval mode
    mu: torch.Tensor  # (B, Z)
    logvar: torch.Tensor  # (B, Z)


class MultVAE(VAEModel):
    """Liang's Mult-VAE.  ``num_layers`` hidden layers of width H on each side (EVCF's option).

    The encoder is ``GaussianEncoder`` (dropout → hidden layers → (mu, logvar)), the decoder is
    hidden layers → ``Linear(H, I)`` logits.  In training mode z is a reparameterised sample; in
    eval mode z is the posterior mean.  The KL term is the analytic Gaussian KL to N(0, I) (Liang)
    or its one-sample estimate log q(z|x) − log N(z; 0, I) (EVCF ``Baseline.py``), per
    ``kl_estimator``.
    """

    name: ClassVar[str] = "mult-vae"
    label: ClassVar[str] = "Mult-VAE"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#ff7f0e"
    row: ClassVar[int] = 5
    gated: ClassVar[bool] = False  # hidden layers: tanh(Wx+b) or the GLU (Wx+b)⊗σ(Vx+c)

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 600  # Liang et al. 2018: [I-600-200-600-I]
        latent_size: int = 200  # Liang et al. 2018: 200-dimensional z
        num_layers: int = 1  # Liang: one hidden layer per side; also EVCF's `--num_layers` default
        dropout: float = 0.5  # Liang notebook: keep_prob 0.5 on the normalised input
        likelihood: str = "multinomial"  # Liang: multinomial log-likelihood
        # bernoulli only: 0 = exact σ(logits); Liang's code has no Bernoulli likelihood to copy
        bernoulli_clamp: float = 0.0
        init: str = "xavier"  # Liang: Xavier weights, truncated-normal(0.001) biases
        logvar_clamp: bool = False  # Liang: log-variance head is plain linear
        kl_estimator: str = "analytic"  # Liang's q_graph: closed-form Gaussian KL
        weight_decay: float = 0.0  # Liang notebook: MultiVAE(lam=0.0)

    def __init__(self, n_items: int, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        validate_config(self.config, self.name)
        c = self.config
        self.n_items = n_items
        # q(z | x): dropout -> I -> H (-> H ...) -> (mu, logvar)
        self.encoder = GaussianEncoder(n_items, c.hidden_size, c.num_layers, c.latent_size,
                                       gated=self.gated, dropout=c.dropout,
                                       logvar_clamp=c.logvar_clamp)
        # p(x | z): Z -> H (-> H ...) -> I logits
        self.decoder = nn.Sequential(mlp(c.latent_size, c.hidden_size, c.num_layers, self.gated),
                                     nn.Linear(c.hidden_size, n_items))
        init_weights(self, c.init)

    # --- the network ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, clicks: Clicks | None = None) -> VAEOutput:
        mu, logvar = self.encoder.forward_rows(x, clicks)  # (B, Z), (B, Z): encoder(l2_normalise(x))
        z = reparameterise(mu, logvar, self.training)  # (B, Z)
        return VAEOutput(self.decoder(z), z, mu, logvar)

    # --- the prior and the KL term ----------------------------------------------------------------

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per row: the standard normal here; the VampPrior in :class:`Vamp`.  -> (B,)"""
        return log_standard_normal(z)

    def kl(self, out: VAEOutput) -> torch.Tensor:
        """KL term per user (B,): analytic, or the one-sample estimate log q(z|x) − log p(z)."""
        if self.config.kl_estimator == "analytic":
            return kl_standard_normal(out.mu, out.logvar)
        return log_normal_diag(out.z, out.mu, out.logvar) - self.log_prior(out.z)

    # --- the loss, next to the forward pass -------------------------------------------------------

    def loss(self, x: torch.Tensor, beta: float, clicks: Clicks | None = None) -> LossParts:
        """NLL + β·KL (+ λ Σ‖W‖² when ``weight_decay`` > 0), means over the batch.

        Uses the module's current mode: in training mode, dropout and a sampled z; in eval mode (as
        EVCF's validation loss), no dropout and z = posterior mean.
        """
        c = self.config
        clicks = clicks if clicks is not None else clicks_of(x)  # (found once, for both uses)
        out = self(x, clicks)
        rec = nll(out.logits, x, c.likelihood, c.bernoulli_clamp, clicks).mean()
        kl = self.kl(out).mean()
        total = rec + beta * kl
        penalty = rec.new_zeros(())
        if c.weight_decay > 0:
            penalty = c.weight_decay * weight_penalty(self)
            total = total + penalty
        return LossParts(loss=total, nll=rec.detach(), kl=kl.detach(), penalty=penalty.detach())

    @torch.no_grad()
    def score(self, x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
        """Logits of p(x | z = posterior mean), no dropout.  (B, I)"""
        with eval_mode(self):
            return self(x, clicks).logits


# ==================================================================================================
# Mult-VAE (Gated): EVCF's Baseline.py with --gated.


class GatedMultVAE(MultVAE):
    """Mult-VAE whose hidden layers are gated linear units (Kim & Suh 2019), in EVCF's set-up.

    Only the defaults differ from :class:`MultVAE`: EVCF's He init, the hardtanh(−12, 4) on the
    log-variance head, and the one-sample KL estimate that ``Baseline.py`` computes
    (``KL = -(log_p_z - log_q_z)`` from the sampled z).  ``Baseline.py`` always uses the multinomial
    likelihood (``log_Softmax``), whatever ``--input_type`` says.
    """

    name: ClassVar[str] = "mult-vae-gated"
    label: ClassVar[str] = "Mult-VAE (Gated)"
    section: ClassVar[str] = "paper"
    colour: ClassVar[str] = "#2ca02c"
    row: ClassVar[int] = 6
    gated: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config(MultVAE.Config):
        hidden_size: int = 600  # EVCF experiment.py `--hidden_size` default
        latent_size: int = 200  # EVCF experiment.py `--z1_size` default
        num_layers: int = 1  # EVCF experiment.py `--num_layers` default
        dropout: float = 0.5  # EVCF Baseline.py: nn.Dropout(p=0.5) first in q_z_layers
        likelihood: str = "multinomial"  # EVCF Baseline.py: always log_Softmax
        # bernoulli only: EVCF utils/distributions.py log_Bernoulli clamps p to [1e-5, 1 - 1e-5]
        bernoulli_clamp: float = 1e-5
        init: str = "he"  # EVCF utils/nn.py he_init on every nn.Linear; biases PyTorch default
        logvar_clamp: bool = True  # EVCF: q_z_logvar = Linear then Hardtanh(-12, 4)
        kl_estimator: str = "sample"  # EVCF Baseline.py: log q(z|x) - log p(z) at the sampled z
        weight_decay: float = 0.0  # EVCF: AdamNormGrad(weight_decay=0), no penalty


# ==================================================================================================
# Mult-VAE through the EVCF recipe: the ablation between Mult-VAE and Mult-VAE (Gated).


class EvcfMultVAE(GatedMultVAE):
    """Mult-VAE trained as EVCF trains its rows: ``Baseline.py`` without ``--gated`` (an ablation).

    Liang's Mult-VAE (the row compared with the published number) and Mult-VAE (Gated) differ in
    about eight things besides the gates: optimiser, learning rate, batch size, β schedule, init,
    KL estimator, log-variance clamp, early stopping.  This row keeps all of EVCF's choices and only
    drops the gates (tanh hidden layers), so that Mult-VAE (EVCF recipe) → Mult-VAE (Gated) changes
    one thing.  Its training recipe is its params.yaml row, the same as the gated row's.
    """

    name: ClassVar[str] = "mult-vae-evcf"
    label: ClassVar[str] = "Mult-VAE (EVCF recipe)"
    section: ClassVar[str] = "extra"
    colour: ClassVar[str] = "#66a61e"
    row: ClassVar[int] = 1
    gated: ClassVar[bool] = False

