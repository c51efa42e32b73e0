"""Building blocks: hidden layers, heads, densities, likelihoods, init, penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from evcf.models.layers import (
    Dense,
    GatedDense,
    GaussianHead,
    init_weights,
    kl_standard_normal,
    l2_normalise,
    log_normal_diag,
    log_standard_normal,
    nll,
    reparameterise,
    weight_penalty,
)


def test_gated_dense_is_linear_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedDense(4, 3)
    x = torch.randn(5, 4)
    w, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    v, c = layer.gate.weight.detach().numpy(), layer.gate.bias.detach().numpy()
    xn = x.numpy()
    expected = (xn @ w.T + b) * (1.0 / (1.0 + np.exp(-(xn @ v.T + c))))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # (W, b) and (V, c): 2 * (4*3 + 3) parameters
    assert sum(p.numel() for p in layer.parameters()) == 30


def test_dense_is_tanh_of_linear():
    torch.manual_seed(0)
    layer = Dense(4, 3)
    x = torch.randn(5, 4)
    w, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    np.testing.assert_allclose(layer(x).detach().numpy(), np.tanh(x.numpy() @ w.T + b), rtol=1e-5,
                               atol=1e-6)
    assert sum(p.numel() for p in layer.parameters()) == 15


def test_gaussian_head_splits_and_clamps():
    head = GaussianHead(2, 3, logvar_clamp=True)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([1.0, -2.0, 3.0, 50.0, -50.0, 0.5]))
    mu, logvar = head(torch.zeros(1, 2))
    assert mu.tolist() == [[1.0, -2.0, 3.0]]
    assert logvar.tolist() == [[4.0, -12.0, 0.5]]  # hardtanh(-12, 4)
    head.logvar_clamp = False
    assert head(torch.zeros(1, 2))[1].tolist() == [[50.0, -50.0, 0.5]]


def test_multinomial_nll_by_hand():
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    # user 1: softmax = 1/3 each, two clicks -> 2 ln 3
    # user 2: softmax = (2/4, 1/4, 1/4), click on item 2 -> ln 4
    expected = [2 * math.log(3.0), math.log(4.0)]
    np.testing.assert_allclose(nll(logits, x, "multinomial").numpy(), expected, rtol=1e-6)


def test_bernoulli_nll_by_hand_sums_over_all_items():
    x = torch.tensor([[1.0, 0.0, 1.0]])
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])
    # sigma = (1/2, 3/4, 1/4): -[ln 1/2 + ln(1 - 3/4) + ln 1/4] = ln 2 + ln 4 + ln 4
    expected = [math.log(2.0) + 2 * math.log(4.0)]
    np.testing.assert_allclose(nll(logits, x, "bernoulli").numpy(), expected, rtol=1e-6)


def test_likelihoods_against_numpy_on_random_batch():
    rng = np.random.default_rng(1)
    x = (rng.random((4, 9)) < 0.3).astype(np.float64)
    logits = rng.normal(size=(4, 9))
    log_sm = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = 1.0 / (1.0 + np.exp(-logits))
    mult = -(x * log_sm).sum(1)
    bern = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1)
    xt, lt = torch.from_numpy(x), torch.from_numpy(logits)
    np.testing.assert_allclose(nll(lt, xt, "multinomial").numpy(), mult, rtol=1e-10)
    np.testing.assert_allclose(nll(lt, xt, "bernoulli").numpy(), bern, rtol=1e-10)


def test_log_densities_match_scipy():
    rng = np.random.default_rng(2)
    z, mu = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    logvar = rng.uniform(-3, 2, size=(5, 3))
    expected = [stats.multivariate_normal(mu[i], np.diag(np.exp(logvar[i]))).logpdf(z[i])
                for i in range(5)]
    got = log_normal_diag(torch.from_numpy(z), torch.from_numpy(mu), torch.from_numpy(logvar))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    std = [stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z[i]) for i in range(5)]
    np.testing.assert_allclose(log_standard_normal(torch.from_numpy(z)).numpy(), std, rtol=1e-10)


def test_analytic_kl_matches_torch_distributions():
    torch.manual_seed(3)
    mu, logvar = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)


def test_reparameterise_samples_in_training_and_returns_mean_otherwise():
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(0.25))
    assert torch.equal(reparameterise(mu, logvar, training=False), mu)
    z = reparameterise(mu, logvar, training=True)
    assert abs(z.mean().item() - 2.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02


def test_l2_normalise_rows_and_zero_row():
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert l2_normalise(x).tolist() == [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]]


def test_he_init_weights_and_default_biases():
    torch.manual_seed(4)
    lin = nn.Linear(400, 300)
    default_bias = lin.bias.detach().clone()
    init_weights(lin, "he")
    assert abs(lin.weight.std().item() - math.sqrt(2 / 400)) < 0.002
    assert torch.equal(lin.bias, default_bias)  # EVCF leaves biases at PyTorch's default


def test_xavier_init_uniform_weights_truncated_normal_biases():
    torch.manual_seed(5)
    lin = nn.Linear(400, 300)
    init_weights(lin, "xavier")
    bound = math.sqrt(6 / (400 + 300))
    assert lin.weight.abs().max().item() <= bound
    assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.002  # uniform(-a, a): std a/√3
    assert lin.bias.abs().max().item() <= 0.002 and lin.bias.std().item() < 0.001


def test_weight_penalty_excludes_biases():
    net = nn.Sequential(nn.Linear(2, 2), GatedDense(2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(2.0)
    # weights: 4 + 2 + 2 = 8 entries of 2.0 -> 8 * 4 = 32; biases (2 + 1 + 1) are ignored
    assert weight_penalty(net).item() == pytest.approx(32.0)
