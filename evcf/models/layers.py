"""Building blocks of the VAE models: hidden layers, Gaussian heads and encoders, the first layer
computed from the clicks of the rows, initialisation and the weight penalty.

Everything here is a small pure function or a small module; the model files compose them.  Shapes
use ``B`` for the batch, ``I`` for the number of items, ``H`` for a hidden width and ``Z`` for a
latent size.  Sampling, log-densities and likelihoods are in :mod:`evcf.models.densities`, the
checks of a config's values in :mod:`evcf.models.config_checks`; both are importable from here too.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from evcf.batches import Clicks, clicks_of
from evcf.models.config_checks import INITS, validate_config
from evcf.models.densities import (LIKELIHOODS, LOG_2PI, at_least_float32, kl_standard_normal, log_normal_diag,
                                   log_standard_normal, nll, reparameterise)

__all__ = [
    "LIKELIHOODS",
    "INITS",
    "LOG_2PI",
    "ItemsFirstLinear",
    "Dense",
    "GatedDense",
    "hidden_layer",
    "apply_hidden",
    "mlp",
    "GaussianHead",
    "GaussianEncoder",
    "JointInput",
    "first_layer_from_rows",
    "l2_normalise",
    "reparameterise",
    "at_least_float32",
    "log_normal_diag",
    "log_standard_normal",
    "kl_standard_normal",
    "nll",
    "init_weights",
    "weight_penalty",
    "validate_config",
    "eval_mode",
]


# --------------------------------------------------------------------------------------------------
# Hidden layers


class ItemsFirstLinear(nn.Linear):
    """``nn.Linear`` whose weight is stored as (d_in, d_out): the layout the sparse first layer reads.

    :func:`first_layer_from_rows` multiplies the clicks with rows of an (items × hidden) table
    (``embedding_bag``); a plain ``nn.Linear`` holds (hidden × items), so every step would copy its
    transpose (48 MB at ML-20M's shape) forward and the gradient's back.  Here the parameter is
    ``weight_t`` (d_in, d_out) and ``weight`` its transposed view (d_out, d_in), so everything that
    reads ``weight`` (dense products, init, penalty) is unchanged.  The values and their random
    draws are nn.Linear's; ``state_dict`` holds ``weight`` (d_out, d_in) as nn.Linear's does, so
    checkpoints and the reference re-implementations read it alike.  AdamNormGrad's norm and
    Adam's elementwise update do not depend on the layout.
    """

    def __init__(self, d_in: int, d_out: int):
        nn.Module.__init__(self)
        plain = nn.Linear(d_in, d_out)  # nn.Linear's default init, with the same random draws
        self.in_features, self.out_features = d_in, d_out
        self.weight_t = nn.Parameter(plain.weight.detach().t().contiguous())  # (d_in, d_out)
        self.bias = plain.bias  # (d_out,)

    @property
    def weight(self) -> torch.Tensor:  # (d_out, d_in), a view of weight_t
        return self.weight_t.t()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight_t = self.weight_t if keep_vars else self.weight_t.detach()
        destination[prefix + "weight"] = weight_t.t()
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight" in state_dict:
            state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Dense(nn.Module):
    """A plain hidden layer: ``tanh(W x + b)`` (Liang et al. 2018; EVCF's ungated ``NonLinear``).

    ``items_first``: W stored as (d_in, d_out) (:class:`ItemsFirstLinear`), for a first layer.
    """

    def __init__(self, d_in: int, d_out: int, items_first: bool = False):
        super().__init__()
        self.linear = (ItemsFirstLinear if items_first else nn.Linear)(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d_in) -> (n, d_out)
        return torch.tanh(self.linear(x))


class GatedDense(nn.Module):
    """A gated linear unit: ``(W x + b) ⊗ σ(V x + c)``, with no tanh on top.

    This is what EVCF's ``NonLinear(..., gated=True)`` computes: when gated, its ``activation``
    argument (tanh) is skipped.  ``linear`` holds (W, b), ``gate`` holds (V, c).  ``items_first``:
    W and V stored as (d_in, d_out) (:class:`ItemsFirstLinear`), for a first layer.
    """

    def __init__(self, d_in: int, d_out: int, items_first: bool = False):
        super().__init__()
        linear = ItemsFirstLinear if items_first else nn.Linear
        self.linear = linear(d_in, d_out)
        self.gate = linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d_in) -> (n, d_out)
        return self.linear(x) * torch.sigmoid(self.gate(x))


def hidden_layer(d_in: int, d_out: int, gated: bool, items_first: bool = False) -> nn.Module:
    """A GLU or a tanh layer; ``items_first`` for a layer that reads user rows (weights (d_in, d_out))."""
    return GatedDense(d_in, d_out, items_first) if gated else Dense(d_in, d_out, items_first)


def mlp(d_in: int, width: int, depth: int, gated: bool, items_first: bool = False) -> nn.Sequential:
    """``depth`` hidden layers: d_in → width, then (depth − 1) × width → width.

    ``items_first``: the first layer reads user rows (:class:`ItemsFirstLinear`)."""
    layers = [hidden_layer(d_in, width, gated, items_first)]
    layers += [hidden_layer(width, width, gated) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Two linear maps from a hidden layer: the mean and the log-variance of a diagonal Gaussian.

    ``mu`` and ``logvar`` are separate ``nn.Linear(H, Z)`` modules, each with its own weight and
    bias, as in EVCF (``q_z_mean`` and ``q_z_logvar``).  The split matters for AdamNormGrad, which
    divides each parameter tensor's gradient by that tensor's norm: one fused ``Linear(H, 2Z)``
    would normalise the two heads' gradients together.  (Plain Adam works per element, so for
    Liang's models the split changes nothing; :func:`init_weights` draws their Xavier weights as
    for his single ``Linear(H, 2Z)``.)  ``logvar_clamp`` applies EVCF's hardtanh(−12, 4) to the
    log-variance (Liang has no clamp).  Heads are never gated (EVCF).
    """

    def __init__(self, d_in: int, latent: int, logvar_clamp: bool):
        super().__init__()
        self.latent = latent
        self.logvar_clamp = logvar_clamp
        self.mu = nn.Linear(d_in, latent)
        self.logvar = nn.Linear(d_in, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.mu(h), self.logvar(h)  # (n, Z) each
        if self.logvar_clamp:
            logvar = F.hardtanh(logvar, -12.0, 4.0)
        return mu, logvar


def keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``like``: True with probability 1 − ``p``, independently per entry.

    The same Bernoulli(1 − p) law as ``bernoulli_``, from fewer random draws, which are the cost on
    the CPU, where the generator is sequential: at p = 0.5 (every model's default) one random bit
    per entry, eight entries from each uniform random byte; otherwise a uniform compared with 1 − p,
    as CDAE's corruption draws it (evcf/models/cdae.py).  Neither way reads a value back from the device (no host synchronisation on a GPU).  Each
    draw advances the generator's offset by the mask's size, which a CUDA graph would have to
    register; evcf does not capture its step (evcf/batches.py says why).
    """
    if p == 0.5:
        n = like.numel()
        shifts = torch.arange(8, dtype=torch.uint8, device=like.device)
        random_bytes = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8, device=like.device)
        return ((random_bytes.unsqueeze(-1) >> shifts) & 1).view(-1)[:n].view(like.shape).bool()
    return torch.rand_like(like) < (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same train/eval behaviour, same expectation) with the mask of
    :func:`keep_mask`.  The models' dense dropouts are this: the VampPrior's pseudo-inputs, a
    (K × I) dense matrix each step, are where it matters (``F.dropout`` draws its mask with
    ``bernoulli_``, one random number per entry)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0
        # one float mask, already scaled: forward and backward are then one product each (a bool mask
        # would be converted in both)
        return x * keep_mask(x, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class GaussianEncoder(nn.Module):
    """q(z | x): dropout → ``num_layers`` hidden layers → Gaussian head.

    The dropout is the encoder's first step, as in EVCF (``nn.Dropout`` heads ``q_z_layers``), so
    the VampPrior's pseudo-inputs, which go through this encoder too, are dropped out in training
    mode.
    L2 normalisation is *not* part of the encoder: the model applies it to real users only.
    """

    def __init__(self, d_in: int, hidden: int, num_layers: int, latent: int, *, gated: bool,
                 dropout: float, logvar_clamp: bool):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.layers = mlp(d_in, hidden, num_layers, gated, items_first=True)  # the first reads user rows
        self.head = GaussianHead(hidden, latent, logvar_clamp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layers(self.dropout(x))  # (n, H)
        return self.head(h)  # (n, Z), (n, Z)

    def forward_rows(self, x: torch.Tensor, clicks: Clicks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(l2_normalise(x))`` for raw user rows, computed from their non-zeros (``clicks``)."""
        h = first_layer_from_rows(self.dropout, self.layers[0], x, clicks)  # (n, H)
        for layer in self.layers[1:]:
            h = layer(h)
        return self.head(h)


def apply_hidden(layer: nn.Module, pre: Callable[[nn.Linear], torch.Tensor]) -> torch.Tensor:
    """A hidden layer's output from ``pre(m)``, the pre-activation of each of its ``nn.Linear``.

    ``Dense``: tanh(pre(linear)); ``GatedDense``: pre(linear) ⊗ σ(pre(gate)).  Lets a caller compute
    the products its own way (sparse rows, split inputs) and keep the activation in one place.
    A bare ``nn.Linear`` gives its pre-activation (a model that applies its own activation: RecVAE).
    """
    if isinstance(layer, nn.Linear):
        return pre(layer)
    if isinstance(layer, GatedDense):
        return pre(layer.linear) * torch.sigmoid(pre(layer.gate))
    if isinstance(layer, Dense):
        return torch.tanh(pre(layer.linear))
    raise TypeError(f"unsupported hidden layer {type(layer).__name__}")


class JointInput(NamedTuple):
    """A hidden layer whose input is the user row with more columns after it: ``[x ⊕ extra]``.

    H+Vamp's one-layer q(z1 | x, z2) is such a layer: one weight matrix W = [W_x  W_e] over the
    I item columns and the E = Z2 columns of z2.  Calling it gives ``layer(cat([x, extra]))``,
    computed as (x W_xᵀ + b) + extra W_eᵀ.  :func:`first_layer_from_rows` accepts it in place of a
    layer and forms x W_xᵀ from the non-zeros of the rows instead; the extra term is the same
    product in both, so the two differ only where the plain layer's sparse and dense paths do.
    """

    layer: nn.Module  # Dense or GatedDense with d_in = I + E
    extra: torch.Tensor  # (B, E), the columns after the I item columns

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (B, I) -> (B, H)
        n_items = x.shape[1]
        return apply_hidden(self.layer, lambda m: F.linear(x, m.weight[:, :n_items], m.bias)
                            + F.linear(self.extra, m.weight[:, n_items:]))


def first_layer_from_rows(dropout: nn.Dropout, layer: nn.Module | JointInput,
                          x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
    """``layer(dropout(l2_normalise(x)))`` from the non-zeros of the rows ``x``.  (B, I) -> (B, H)

    Exact: L2 normalisation and dropout change only the non-zeros, so the first layer's product is
    a weighted sum of the weight columns of each row's items (``embedding_bag``).  Values equal the
    dense path's (``x / max(‖x‖, eps)``, then ``· mask / (1 − p)``); only the summation order of the
    product differs (float rounding).  The dropout mask is drawn for the non-zeros alone: the same
    distribution as the dense mask, a different random stream.  With ~0.3% non-zeros (ML-20M) this
    replaces two dense (B, I) x (I, H) products (forward and weight gradient) — see ``evcf bench``.
    ``layer`` may be a :class:`JointInput`: then its extra columns join the product undropped.

    ``clicks`` says where the non-zeros of ``x`` are and their values (a training batch brings
    them, see :class:`~evcf.batches.RowBatch`; padding entries have value 0 and add nothing).
    Without it they are found with ``nonzero``, whose output size depends on the data: on a GPU
    the host then waits for the device.  With it, nothing here does.  The product reads the
    weight as an (items × H) table: an :class:`ItemsFirstLinear` holds it so; a plain
    ``nn.Linear`` is transposed (a copy) each call.
    """
    extra = None
    if isinstance(layer, JointInput):
        layer, extra = layer.layer, layer.extra
    n_items = x.shape[1]
    batch_row, cols, entries = clicks if clicks is not None else clicks_of(x)  # (n,) each, row-major
    norm = x.norm(2.0, dim=1).clamp_min(1e-12)  # (B,) F.normalize's denominator
    values = entries / norm[batch_row]  # (nnz,)
    if dropout.training and dropout.p > 0:
        values = values * keep_mask(values, dropout.p) / (1.0 - dropout.p)
    # clicks per row, a scatter of fixed size (``bincount`` would read its size from the device)
    counts = torch.zeros(x.shape[0], dtype=torch.long, device=x.device).index_add_(
        0, batch_row, torch.ones_like(batch_row))  # (B,)
    offsets = torch.cumsum(counts, 0) - counts

    def linear(m: nn.Linear) -> torch.Tensor:  # (B, H)
        n_extra = 0 if extra is None else extra.shape[1]
        if m.in_features != n_items + n_extra:  # a joint layer passed without its JointInput
            raise ValueError(f"first_layer_from_rows: layer reads {m.in_features} inputs, "
                             f"got {n_items} items and {n_extra} extra columns")
        # embedding_bag reads rows of an (I, H) table: the item rows of weight_t, or the transposed
        # item columns of a plain weight
        table = (m.weight_t[:n_items] if isinstance(m, ItemsFirstLinear)
                 else m.weight[:, :n_items].t().contiguous())  # (I, H)
        out = F.embedding_bag(cols, table, offsets, mode="sum",
                              per_sample_weights=values.to(table.dtype)) + m.bias
        if extra is not None:
            out = out + F.linear(extra, m.weight[:, n_items:])  # (B, E) x (E, H)
        return out

    return apply_hidden(layer, linear)


# --------------------------------------------------------------------------------------------------
# Input step and modes


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Divide each row by its L2 norm (an all-zero row stays zero).  (B, I) -> (B, I)"""
    return F.normalize(x, p=2.0, dim=1)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; the module's previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# --------------------------------------------------------------------------------------------------
# Initialisation and penalty


def init_weights(module: nn.Module, scheme: str) -> None:
    """Initialise every ``nn.Linear`` inside ``module`` (gate weights and heads included).

    * ``"xavier"`` (Liang's ``vae_cf``): weights Glorot-uniform
      (``tf.contrib.layers.xavier_initializer`` defaults to ``uniform=True``), biases truncated
      normal with std 0.001 (cut at 2 std, as TF does).  The two halves of a :class:`GaussianHead`
      use Liang's fused shape (fan-out 2Z): bound sqrt(6 / (H + 2Z)).
    * ``"he"`` (EVCF ``utils/nn.py he_init``): weights N(0, sqrt(2 / fan_in)); biases keep PyTorch's
      default init.
    """
    fan_out = {}  # nn.Linear -> the fan-out Xavier uses, when it is not the layer's own
    for m in module.modules():
        if isinstance(m, GaussianHead):
            fan_out[m.mu] = fan_out[m.logvar] = 2 * m.latent
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}")
    for m in module.modules():
        if not isinstance(m, nn.Linear):
            continue
        # drawn as a contiguous (d_out, d_in) matrix whatever the storage (ItemsFirstLinear): the
        # same random stream, and so the same values, in either layout
        weight = torch.empty(m.weight.shape, dtype=m.weight.dtype, device=m.weight.device)
        if scheme == "xavier":
            bound = math.sqrt(6.0 / (m.in_features + fan_out.get(m, m.out_features)))
            nn.init.uniform_(weight, -bound, bound)
        else:
            weight.normal_(0.0, math.sqrt(2.0 / m.in_features))
        with torch.no_grad():
            m.weight.copy_(weight)
        if scheme == "xavier" and m.bias is not None:
            nn.init.trunc_normal_(m.bias, mean=0.0, std=0.001, a=-0.002, b=0.002)


def weight_penalty(module: nn.Module) -> torch.Tensor:
    """Σ ‖W‖² over the weight matrices of every ``nn.Linear`` in ``module`` (biases excluded)."""
    terms = [m.weight.pow(2).sum() for m in module.modules() if isinstance(m, nn.Linear)]
    return torch.stack(terms).sum()
