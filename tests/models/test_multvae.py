"""Mult-DAE, Mult-VAE and Mult-VAE (Gated): architecture, loss terms, input step."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from evcf.errors import EvcfError
from evcf.models import GatedMultVAE, MultDAE, MultVAE, build_model
from evcf.models.layers import Dense, GatedDense, first_layer_from_rows

I = 7  # items in these small tests


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def rows(n=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, I, generator=g) < 0.5).float()
    x[:, 0] = 1.0  # no empty rows
    return x


# --------------------------------------------------------------------------------------------------
# Parameter counts and shapes (worked out by hand; W is out×in, b is out)


def test_mult_dae_parameter_count():
    model = build_model("mult-dae", I, hidden_size=4)
    # encoder I->4: 7*4 + 4 = 32; decoder 4->I: 4*7 + 7 = 35
    assert n_params(model) == 67


def test_mult_vae_parameter_count():
    model = build_model("mult-vae", I, hidden_size=5, latent_size=3)
    # encoder 7->5: 35 + 5 = 40; heads: mu 5->3 (15 + 3 = 18) and logvar 5->3 (18) = 36
    # decoder 3->5: 15 + 5 = 20; output 5->7: 35 + 7 = 42
    assert n_params(model) == 40 + 36 + 20 + 42 == 138
    # the heads are two separate (weight, bias) pairs, not one Linear(5, 6)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if ".head." in n}
    assert shapes == {"encoder.head.mu.weight": (3, 5), "encoder.head.mu.bias": (3,),
                      "encoder.head.logvar.weight": (3, 5), "encoder.head.logvar.bias": (3,)}


def test_mult_vae_num_layers_adds_hidden_layers_on_both_sides():
    model = build_model("mult-vae", I, hidden_size=5, latent_size=3, num_layers=2)
    # 138 + one 5->5 layer (25 + 5) in the encoder and one in the decoder
    assert n_params(model) == 138 + 2 * 30 == 198


def test_gated_mult_vae_parameter_count():
    model = build_model("mult-vae-gated", I, hidden_size=5, latent_size=3)
    # the two hidden layers get a gate of the same size: encoder 2*40, decoder 2*20; heads and
    # output layer are not gated: 36 + 42
    assert n_params(model) == 80 + 36 + 40 + 42 == 198


def test_gated_models_have_gates_and_plain_models_none():
    gated = build_model("mult-vae-gated", I, hidden_size=5, latent_size=3)
    plain = build_model("mult-vae", I, hidden_size=5, latent_size=3)
    assert sum(isinstance(m, GatedDense) for m in gated.modules()) == 2
    assert not any("gate" in n for n, _ in plain.named_parameters())
    assert not any("gate" in n for n, _ in build_model("mult-dae", I).named_parameters())
    assert {n for n, _ in gated.named_parameters() if "gate" in n} == {
        "encoder.layers.0.gate.weight_t",  # stored (I, H): ItemsFirstLinear
        "encoder.layers.0.gate.bias",
        "decoder.0.0.gate.weight", "decoder.0.0.gate.bias"}


@pytest.mark.parametrize("name", ["mult-dae", "mult-vae", "mult-vae-gated"])
def test_shapes_and_loss_parts(name):
    latent = {} if name == "mult-dae" else {"latent_size": 3}
    model = build_model(name, I, hidden_size=5, **latent)
    x = rows(4)
    parts = model.loss(x, 0.3)
    assert parts.loss.shape == () and parts.loss.requires_grad
    for part in (parts.nll, parts.kl, parts.penalty):  # detached 0-d tensors, not floats
        assert isinstance(part, torch.Tensor) and part.shape == () and not part.requires_grad
    scores = model.score(x)
    assert scores.shape == (4, I) and not scores.requires_grad
    if name != "mult-dae":
        out = model(x)
        assert out.logits.shape == (4, I) and out.z.shape == out.mu.shape == (4, 3)


def test_defaults_follow_the_papers():
    vae, gated, dae = MultVAE(20), GatedMultVAE(20), MultDAE(20)
    assert (vae.config.hidden_size, vae.config.latent_size) == (600, 200)
    assert (vae.config.init, vae.config.likelihood, vae.config.logvar_clamp) == (
        "xavier", "multinomial", False)
    assert (gated.config.init, gated.config.logvar_clamp, gated.config.kl_estimator) == (
        "he", True, "sample")
    assert dae.config.hidden_size == 200 and dae.config.weight_decay == pytest.approx(0.01 / 500)
    # Liang's biases are truncated-normal(0.001); EVCF's keep PyTorch's default (much larger)
    assert vae.decoder[1].bias.abs().max().item() <= 0.002
    assert gated.decoder[1].bias.abs().max().item() > 0.002


def test_bernoulli_clamp_defaults_and_validation():
    # Liang's rows: exact likelihood; EVCF's row: log_Bernoulli's clamp (used if bernoulli is chosen)
    assert MultDAE(20).config.bernoulli_clamp == MultVAE(20).config.bernoulli_clamp == 0.0
    assert GatedMultVAE(20).config.bernoulli_clamp == 1e-5
    for bad in (-1e-5, 0.5, 2.0):
        with pytest.raises(EvcfError, match="bernoulli_clamp"):
            build_model("mult-vae", I, bernoulli_clamp=bad)


@pytest.mark.parametrize("clamp", [0.0, 1e-5, 0.3])
def test_loss_uses_the_configured_bernoulli_clamp(clamp):
    from evcf.models.layers import nll

    torch.manual_seed(5)
    model = build_model("mult-vae-gated", I, hidden_size=5, latent_size=3, likelihood="bernoulli",
                        bernoulli_clamp=clamp)
    model.eval()
    x = rows(4)
    expected = nll(model.score(x), x, "bernoulli", bernoulli_clamp=clamp).mean()
    assert float(model.loss(x, 0.0).nll) == pytest.approx(expected.item(), rel=1e-6)
    if clamp == 0.3:  # a clamp this wide binds on most items: the loss differs from the exact one
        exact = nll(model.score(x), x, "bernoulli").mean().item()
        assert abs(float(model.loss(x, 0.0).nll) - exact) > 0.01


@pytest.mark.parametrize("name", ["mult-dae", "mult-vae", "mult-vae-gated", "vamp", "hvamp", "hvamp-gated"])
def test_loss_reads_nothing_back_from_the_device(name, monkeypatch):
    """No .item() / float() / bool() on a tensor inside loss(): each would wait for a GPU."""
    model = build_model(name, I, hidden_size=5, weight_decay=0.01,
                        **({"n_pseudo": 3} if "vamp" in name else {}))
    x = rows(4)

    def host_sync(self, *args):
        raise AssertionError("loss() read a tensor value back to the host")

    for method in ("item", "tolist", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    parts = model.loss(x, 0.3)
    monkeypatch.undo()
    assert parts.loss.item() == pytest.approx(float(parts.nll) + 0.3 * float(parts.kl)
                                              + float(parts.penalty), rel=1e-5)
    assert float(parts.penalty) > 0


# --------------------------------------------------------------------------------------------------
# Loss terms against hand computations


def test_mult_dae_loss_is_multinomial_nll_plus_weight_penalty():
    torch.manual_seed(0)
    model = build_model("mult-dae", I, hidden_size=4, dropout=0.0, weight_decay=0.01)
    x = rows(3)
    w1 = model.encoder.linear.weight.detach().numpy()
    b1 = model.encoder.linear.bias.detach().numpy()
    w2, b2 = model.decoder.weight.detach().numpy(), model.decoder.bias.detach().numpy()
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    logits = np.tanh(xn @ w1.T + b1) @ w2.T + b2
    log_sm = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -(x.numpy() * log_sm).sum(1).mean()
    penalty = 0.01 * ((w1**2).sum() + (w2**2).sum())  # weights only, not biases
    model.train()
    parts = model.loss(x, beta=0.7)
    assert float(parts.nll) == pytest.approx(nll, rel=1e-5)
    assert float(parts.penalty) == pytest.approx(penalty, rel=1e-5)
    assert float(parts.kl) == 0.0
    assert parts.loss.item() == pytest.approx(nll + penalty, rel=1e-5)
    np.testing.assert_allclose(model.score(x).numpy(), logits, rtol=1e-5, atol=1e-6)


def test_mult_vae_analytic_kl_and_nll_by_hand_in_eval_mode():
    torch.manual_seed(1)
    model = build_model("mult-vae", I, hidden_size=5, latent_size=3)
    model.eval()  # no dropout, z = mu: everything deterministic
    x = rows(4)
    p = {n: t.detach().numpy() for n, t in model.state_dict().items()}  # weights (out, in)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    h = np.tanh(xn @ p["encoder.layers.0.linear.weight"].T + p["encoder.layers.0.linear.bias"])
    mu = h @ p["encoder.head.mu.weight"].T + p["encoder.head.mu.bias"]
    logvar = h @ p["encoder.head.logvar.weight"].T + p["encoder.head.logvar.bias"]
    kl = (0.5 * (-logvar + np.exp(logvar) + mu**2 - 1)).sum(1).mean()
    hd = np.tanh(mu @ p["decoder.0.0.linear.weight"].T + p["decoder.0.0.linear.bias"])
    logits = hd @ p["decoder.1.weight"].T + p["decoder.1.bias"]
    log_sm = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -(x.numpy() * log_sm).sum(1).mean()
    parts = model.loss(x, beta=0.25)
    assert float(parts.kl) == pytest.approx(kl, rel=1e-5)
    assert float(parts.nll) == pytest.approx(nll, rel=1e-5)
    assert parts.loss.item() == pytest.approx(nll + 0.25 * kl, rel=1e-5)
    assert float(parts.penalty) == 0.0
    np.testing.assert_allclose(model.score(x).numpy(), logits, rtol=1e-5, atol=1e-6)


def test_one_sample_kl_averages_to_the_analytic_kl():
    torch.manual_seed(2)
    model = build_model("mult-vae-gated", I, hidden_size=5, latent_size=3, dropout=0.0)
    assert model.config.kl_estimator == "sample"
    x = rows(1).repeat(40000, 1)  # one user, 40000 independent samples of z
    model.train()
    out = model(x)
    samples = model.kl(out).detach().double()  # log q(z|x) - log N(z; 0, I), one per row
    mu, logvar = out.mu[:1].detach().double(), out.logvar[:1].detach().double()
    analytic = (0.5 * (-logvar + logvar.exp() + mu**2 - 1)).sum().item()
    se = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - analytic) < 4 * se + 1e-6
    assert samples.std().item() > 0  # it really is a sample estimate
    # and the loss reports the batch mean of that estimate
    parts = model.loss(x[:5000], beta=1.0)
    assert abs(float(parts.kl) - analytic) < 4 * samples.std().item() / math.sqrt(5000)


def test_logvar_clamp_in_gated_model():
    model = build_model("mult-vae-gated", I, hidden_size=5, latent_size=3)
    with torch.no_grad():
        model.encoder.head.logvar.bias.fill_(100.0)
        model.encoder.head.logvar.weight.zero_()
    assert model(rows(2)).logvar.max().item() == 4.0


# --------------------------------------------------------------------------------------------------
# Input step: L2-normalise, then dropout (train mode only)


def first_layer_input(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """What the first layer sees: run first_layer_from_rows through an identity tanh layer."""
    layer = Dense(x.shape[1], x.shape[1])
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(x.shape[1]))
        layer.linear.bias.zero_()
    return torch.atanh(first_layer_from_rows(dropout, layer, x)).detach()


def test_input_is_l2_normalised_then_dropped_out_in_training_only():
    torch.manual_seed(3)
    dropout = nn.Dropout(0.4)
    x = rows(400, seed=1)
    xn = x / x.norm(dim=1, keepdim=True)
    dropout.eval()
    torch.testing.assert_close(first_layer_input(dropout, x), xn, atol=1e-5, rtol=1e-5)
    dropout.train()
    seen = first_layer_input(dropout, x)
    clicked = x > 0
    dropped = clicked & (seen.abs() < 1e-6)
    kept = clicked & ~dropped
    torch.testing.assert_close(seen[kept], xn[kept] / 0.6, atol=1e-5, rtol=1e-5)  # scaled by 1 / (1 - p)
    assert (seen[~clicked].abs() < 1e-6).all()
    frac = dropped.sum().item() / clicked.sum().item()
    assert 0.33 < frac < 0.47  # about p = 0.4 of the clicked entries are dropped


@pytest.mark.parametrize("name", ["mult-dae", "mult-vae", "mult-vae-gated", "vamp", "hvamp", "hvamp-gated"])
def test_models_feed_user_rows_through_the_sparse_first_layer(name, monkeypatch):
    """Every model's user input goes through first_layer_from_rows (with the model's dropout)."""
    from evcf.models import layers, multvae, vamp

    calls = []
    real = layers.first_layer_from_rows

    def spy(dropout, layer, x, clicks=None):
        calls.append((dropout.p, x.shape))
        return real(dropout, layer, x, clicks)

    for module in (layers, multvae, vamp):
        monkeypatch.setattr(module, "first_layer_from_rows", spy)
    model = build_model(name, I, hidden_size=5, dropout=0.3, **({"n_pseudo": 3} if "vamp" in name else {}))
    model.loss(rows(4), 1.0)
    assert calls and all(p == 0.3 and shape == (4, I) for p, shape in calls)


def test_sampling_in_training_posterior_mean_in_eval():
    torch.manual_seed(4)
    model = build_model("mult-vae", I, hidden_size=5, latent_size=3, dropout=0.0)
    x = rows(3)
    model.train()
    out = model(x)
    assert not torch.allclose(out.z, out.mu)
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    model.train()
    s1, s2 = model.score(x), model.score(x)
    assert torch.equal(s1, s2)  # score is deterministic ...
    assert model.training  # ... and restores the caller's mode


def test_the_evcf_recipe_ablation_is_the_gated_row_without_gates():
    """mult-vae-evcf: every default of Mult-VAE (Gated), tanh hidden layers instead of GLUs."""
    from evcf.models.layers import GatedDense
    from evcf.models.multvae import EvcfMultVAE

    ablation, gated = build_model("mult-vae-evcf", 40), build_model("mult-vae-gated", 40)
    assert isinstance(ablation, EvcfMultVAE) and not ablation.gated and gated.gated
    assert dataclasses.asdict(ablation.config) == dataclasses.asdict(gated.config)
    assert not any(isinstance(m, GatedDense) for m in ablation.modules())
    assert any(isinstance(m, GatedDense) for m in gated.modules())
    # the same network as Liang's Mult-VAE with the same sizes: I-600-200-600-I, by hand
    i, h, z = 40, 600, 200
    by_hand = (i * h + h) + 2 * (h * z + z) + (z * h + h) + (h * i + i)
    assert sum(p.numel() for p in ablation.parameters()) == by_hand
