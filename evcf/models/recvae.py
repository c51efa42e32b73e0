"""RecVAE (Shenbin et al., WSDM 2020): Mult-VAE with a new encoder, prior, KL weight and training.

Read top to bottom: the densely connected encoder, the composite prior, then the model with its
loss and its training contract (two optimizers, alternating passes, a frozen encoder refreshed each
epoch).  Shapes: B users, I items, H hidden width, Z latent size.

What it changes against Mult-VAE (:mod:`evcf.models.multvae`):

* encoder: five hidden layers, each ``LayerNorm(swish(W h_{k-1} + b + h_1 + … + h_{k-1}))`` (every
  layer sees the sum of all earlier layers' outputs), on the L2-normalised, dropped-out clicks;
  decoder: one linear layer Z → I, multinomial likelihood (as Liang's);
* prior: per latent coordinate, the mixture 3/20 · N(0, 1) + 3/4 · q_old(z | x) + 1/10 · N(0, e^10),
  where q_old is the posterior of a frozen copy of the encoder taken at the start of the epoch;
* KL weight: β′ = γ · |x| for a user with |x| clicks (computed on the device from the batch);
* training: per epoch, ``encoder_passes`` passes over the users that step only the encoder (input
  dropout 0.5, loss NLL + β′·KL), then ``decoder_passes`` passes that step only the decoder (no
  dropout, loss NLL alone); each half has its own Adam.

Sources.  The authors' code, github.com/ilya-shenbin/RecVAE, has two branches.  Branch ``wsdm``
(``recvae.ipynb``) is the code of the paper; ``master`` is a later refactoring that its README says
is "slightly different from the one described in the paper".  We follow ``wsdm``, which produced the
published numbers (Table 2), where the two differ:

* LayerNorm eps: ``wsdm`` PyTorch's default 1e-5; ``master`` 0.1;
* the previous posterior: ``wsdm`` stores each training user's (mu, logvar) from the encoder after
  the encoder passes (``set_embeddings``, eval mode, no dropout), and once before the first epoch;
  ``master`` keeps a frozen copy of the encoder (``encoder_old``), randomly initialised, not a copy,
  for the first epoch.  We keep a frozen copy (it needs no per-user table and no user index in a
  batch) and copy it at the start of every epoch, the first included: for a training user its
  output is ``wsdm``'s stored pair (the decoder pass between does not change the encoder);
* the decoder pass: ``wsdm`` loss = NLL only, encoder without dropout; ``master`` also adds the KL
  term, which has no gradient with respect to the decoder, so the decoder's update is the same.
  We run the encoder of the decoder pass without gradients (its optimizer does not step anyway).
Both branches compute the mixture per latent coordinate (``logsumexp`` over the three components,
then the sum over coordinates), not over the whole vector as the paper's formula reads; we follow
the code.  γ = 0.005, 50 epochs, 3 encoder passes per decoder pass, Adam lr 5e-4, batch 500 are the
authors' ML-20M settings (``wsdm`` notebook; ``master`` README: ``--n-epochs 50 --gamma 0.005``,
``run.py`` defaults).  Every line here is ours.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Sequence

import torch
from torch import nn

from evcf.batches import Clicks
from evcf.errors import EvcfError
from evcf.models.base import LossParts, Phase, VAEModel
from evcf.models.layers import LOG_2PI, Dropout, at_least_float32, eval_mode, first_layer_from_rows, nll, reparameterise

__all__ = ["RecVAE", "DenseEncoder", "composite_log_prior", "ENCODER", "DECODER"]

ENCODER = Phase("encoder", ("encoder",))  # a pass that steps the encoder's optimizer only
DECODER = Phase("decoder", ("decoder",))  # a pass that steps the decoder's optimizer only


def swish(x: torch.Tensor) -> torch.Tensor:
    """x · σ(x) (Ramachandran et al. 2017), the encoder's activation."""
    return x * torch.sigmoid(x)


# ==================================================================================================
# The encoder: densely connected layers, swish, layer normalisation.


class DenseEncoder(nn.Module):
    """q(z | x) = N(mu, diag(exp(logvar))) from the L2-normalised, dropped-out clicks.

    h_1 = LN(swish(W_1 x̃ + b_1)); h_k = LN(swish(W_k h_{k−1} + b_k + h_1 + … + h_{k−1})), k = 2..L;
    mu = W_mu h_L + b_mu, logvar = W_lv h_L + b_lv.  The first product is computed from the clicks
    (:func:`~evcf.models.layers.first_layer_from_rows`): the same values as the dense product.
    """

    def __init__(self, n_items: int, hidden: int, latent: int, num_layers: int, ln_eps: float):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(n_items, hidden)] +
                                [nn.Linear(hidden, hidden) for _ in range(num_layers - 1)])
        self.ln = nn.ModuleList([nn.LayerNorm(hidden, eps=ln_eps) for _ in range(num_layers)])
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor, clicks: Clicks | None, dropout: nn.Dropout
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln[0](swish(first_layer_from_rows(dropout, self.fc[0], x, clicks)))  # (B, H)
        earlier = h  # (B, H) the sum of the outputs of the layers so far
        for fc, ln in zip(self.fc[1:], self.ln[1:]):
            h = ln(swish(fc(h) + earlier))  # (B, H)
            earlier = earlier + h
        return self.mu(h), self.logvar(h)  # (B, Z), (B, Z)


# ==================================================================================================
# The composite prior.


def _log_normal(z: torch.Tensor, mu: torch.Tensor | float, logvar: torch.Tensor | float) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per coordinate.  (B, Z) -> (B, Z)"""
    if not isinstance(logvar, torch.Tensor):  # a constant (the wide component): no copy to the device
        return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * math.exp(-logvar))
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def composite_log_prior(z: torch.Tensor, old_mu: torch.Tensor, old_logvar: torch.Tensor,
                        weights: Sequence[float], wide_logvar: float) -> torch.Tensor:
    """log p(z) per coordinate under the composite prior.  (B, Z) x3 -> (B, Z)

    p(z_j) = w_0 · N(z_j; 0, 1) + w_1 · N(z_j; old_mu_j, exp(old_logvar_j)) + w_2 · N(z_j; 0, exp(wide_logvar)),
    computed as a logsumexp over the three components (both branches of the authors' code).
    """
    z, old_mu, old_logvar = at_least_float32(z), at_least_float32(old_mu), at_least_float32(old_logvar)
    parts = torch.stack([_log_normal(z, 0.0, 0.0) + math.log(weights[0]),
                         _log_normal(z, old_mu, old_logvar) + math.log(weights[1]),
                         _log_normal(z, 0.0, wide_logvar) + math.log(weights[2])], dim=-1)  # (B, Z, 3)
    return torch.logsumexp(parts, dim=-1)


# ==================================================================================================
# The model.


class RecVAEOutput(NamedTuple):
    logits: torch.Tensor  # (B, I)
    z: torch.Tensor  # (B, Z) a sample in training mode, the posterior mean in eval mode
    mu: torch.Tensor  # (B, Z)
    logvar: torch.Tensor  # (B, Z)


class RecVAE(VAEModel):
    """RecVAE: :class:`DenseEncoder`, a linear multinomial decoder, the composite prior, β′ = γ·|x|,
    alternating encoder and decoder passes (see the module docstring for the sources)."""

    name: ClassVar[str] = "recvae"
    label: ClassVar[str] = "RecVAE"
    section: ClassVar[str] = "extra"
    colour: ClassVar[str] = "#637939"
    row: ClassVar[int] = 4
    uses_beta: ClassVar[bool] = False  # the KL weight is γ·|x|, not the loop's β schedule

    @dataclass(frozen=True)
    class Config:
        hidden_size: int = 600  # RecVAE wsdm notebook (hidden_dim); master run.py --hidden-dim
        latent_size: int = 200  # RecVAE wsdm notebook (latent_dim); master run.py --latent-dim
        num_layers: int = 5  # RecVAE code: fc1..fc5, densely connected
        dropout: float = 0.5  # RecVAE code: dropout_rate 0.5 in the encoder passes (0 in the decoder's)
        ln_eps: float = 1e-5  # RecVAE wsdm notebook: nn.LayerNorm's default (master: 0.1)
        gamma: float = 0.005  # RecVAE wsdm notebook (beta=0.005 times the click count); master README ML-20M
        encoder_passes: int = 3  # RecVAE code: n_epochs=3 of the encoder per epoch (master --n-enc_epochs)
        decoder_passes: int = 1  # RecVAE code: n_epochs=1 of the decoder per epoch (master --n-dec_epochs)
        # RecVAE code: mixture weights of N(0, 1), the old posterior, the wide normal (3/20, 3/4, 1/10)
        mixture_weights: tuple[float, ...] = (0.15, 0.75, 0.1)
        wide_logvar: float = 10.0  # RecVAE code: logvar_uniform_prior filled with 10

    def __init__(self, n_items: int, config: Config | None = None):
        super().__init__()
        self.config = c = config if config is not None else self.Config()
        self._validate(c)
        self.n_items = n_items
        self.dropout = Dropout(c.dropout)  # the encoder passes' input dropout
        self.no_dropout = Dropout(0.0)  # the decoder passes, the frozen copy and scoring
        self.encoder = DenseEncoder(n_items, c.hidden_size, c.latent_size, c.num_layers, c.ln_eps)
        self.decoder = nn.Linear(c.latent_size, n_items)  # Z -> I logits
        # PyTorch's default initialisation throughout, as the authors' code
        self.encoder_old = copy.deepcopy(self.encoder).requires_grad_(False)  # refreshed each epoch
        self.phase = ENCODER  # what ``loss`` computes; the loop sets it before each pass

    def _validate(self, c: Config) -> None:
        def bad(key: str, problem: str, fix: str) -> EvcfError:
            return EvcfError(f"model {self.name!r}: {key} = {getattr(c, key)!r} {problem}", fix=fix)

        for key in ("hidden_size", "latent_size", "num_layers", "encoder_passes", "decoder_passes"):
            if getattr(c, key) < 1:
                raise bad(key, "must be at least 1", f"set {key} to a positive integer")
        if not 0.0 <= c.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)", "use a drop probability such as 0.5")
        if not (c.gamma >= 0 and c.ln_eps > 0):
            raise bad("gamma" if c.gamma < 0 else "ln_eps", "must be positive", "use the authors' value")
        if len(c.mixture_weights) != 3 or any(w <= 0 for w in c.mixture_weights) or \
                not math.isclose(sum(c.mixture_weights), 1.0, rel_tol=1e-9):
            raise bad("mixture_weights", "must be three positive weights summing to 1",
                      "use the authors' [0.15, 0.75, 0.1]")

    # --- the training contract (evcf.models.base.VAEModel) -------------------------------------

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Two optimizers, as the authors: the encoder's and the decoder's (the frozen copy has none)."""
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}

    def epoch_phases(self, epoch: int) -> Sequence[Phase]:
        c = self.config
        return (ENCODER,) * c.encoder_passes + (DECODER,) * c.decoder_passes

    def on_epoch_start(self, epoch: int) -> None:
        self.refresh_prior()

    def begin_phase(self, phase: Phase) -> None:
        if phase not in (ENCODER, DECODER):
            raise ValueError(f"recvae has no phase {phase}")
        self.phase = phase

    @torch.no_grad()
    def refresh_prior(self) -> None:
        """The frozen copy of the encoder becomes the current encoder (in place, on the device)."""
        self.encoder_old.load_state_dict(self.encoder.state_dict())  # copies into its tensors

    # --- the network, the prior and the loss --------------------------------------------------

    def forward(self, x: torch.Tensor, clicks: Clicks | None = None) -> RecVAEOutput:
        """Encoder (input dropout only in the encoder passes of training), z, decoder logits."""
        dropout = self.dropout if self.training and self.phase == ENCODER else self.no_dropout
        mu, logvar = self.encoder(x, clicks, dropout)  # (B, Z), (B, Z)
        z = reparameterise(mu, logvar, self.training)  # (B, Z)
        return RecVAEOutput(self.decoder(z), z, mu, logvar)

    def kl(self, out: RecVAEOutput, x: torch.Tensor, clicks: Clicks | None) -> torch.Tensor:
        """One-sample KL estimate per user, log q(z|x) − log p(z), summed over coordinates.  (B,)"""
        with torch.no_grad():
            old_mu, old_logvar = self.encoder_old(x, clicks, self.no_dropout)  # (B, Z) each
        log_q = _log_normal(at_least_float32(out.z), at_least_float32(out.mu), at_least_float32(out.logvar))
        log_p = composite_log_prior(out.z, old_mu, old_logvar, self.config.mixture_weights,
                                    self.config.wide_logvar)
        return (log_q - log_p).sum(-1)

    def loss(self, x: torch.Tensor, beta: float = 0.0, clicks: Clicks | None = None) -> LossParts:
        """Encoder pass: NLL + mean(γ·|x|·KL); decoder pass: NLL alone.  Means over the batch.

        ``beta`` is ignored (``uses_beta`` is False): the KL weight of a user is γ times her click
        count, summed on the device.
        """
        if self.phase == DECODER:
            with torch.no_grad():  # only the decoder is stepped in this pass
                mu, logvar = self.encoder(x, clicks, self.no_dropout)
                z = reparameterise(mu, logvar, self.training)  # (B, Z)
            rec = nll(self.decoder(z), x, "multinomial").mean()
            return LossParts(loss=rec, nll=rec.detach(), kl=rec.new_zeros(()), penalty=rec.new_zeros(()))
        out = self(x, clicks)
        rec = nll(out.logits, x, "multinomial").mean()
        kl = self.kl(out, x, clicks)  # (B,)
        weight = self.config.gamma * x.sum(-1)  # (B,) β′ = γ·|x|
        total = rec + (weight * kl).mean()
        return LossParts(loss=total, nll=rec.detach(), kl=kl.mean().detach(), penalty=rec.new_zeros(()))

    @torch.no_grad()
    def score(self, x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
        """Logits of p(x | z = posterior mean), no dropout.  (B, I)"""
        with eval_mode(self):
            return self(x, clicks).logits
