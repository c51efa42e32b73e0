"""Building blocks: hidden layers, heads, densities, likelihoods, init, penalty."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from evcf.models.layers import (
    Dense,
    Dropout,
    GatedDense,
    GaussianHead,
    JointInput,
    first_layer_from_rows,
    init_weights,
    keep_mask,
    kl_standard_normal,
    l2_normalise,
    log_normal_diag,
    log_standard_normal,
    nll,
    reparameterise,
    weight_penalty,
)
from evcf.optim import AdamNormGrad


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


def test_gaussian_head_has_two_linear_maps_and_clamps_the_logvar():
    head = GaussianHead(2, 3, logvar_clamp=True)
    with torch.no_grad():
        head.mu.weight.zero_()
        head.logvar.weight.zero_()
        head.mu.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
        head.logvar.bias.copy_(torch.tensor([50.0, -50.0, 0.5]))
    mu, logvar = head(torch.zeros(1, 2))
    assert mu.tolist() == [[1.0, -2.0, 3.0]]
    assert logvar.tolist() == [[4.0, -12.0, 0.5]]  # hardtanh(-12, 4)
    head.logvar_clamp = False
    assert head(torch.zeros(1, 2))[1].tolist() == [[50.0, -50.0, 0.5]]


def test_gaussian_head_mean_and_logvar_weights_are_separate_tensors():
    head = GaussianHead(4, 3, logvar_clamp=False)
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    # EVCF's q_z_mean and q_z_logvar: a (Z, H) weight and a (Z,) bias each, 2 * (12 + 3) = 30
    assert shapes == {"mu.weight": (3, 4), "mu.bias": (3,), "logvar.weight": (3, 4),
                      "logvar.bias": (3,)}
    h = torch.randn(5, 4)
    mu, logvar = head(h)
    torch.testing.assert_close(mu, h @ head.mu.weight.T + head.mu.bias)
    torch.testing.assert_close(logvar, h @ head.logvar.weight.T + head.logvar.bias)


def test_adam_normgrad_normalises_the_mean_and_logvar_heads_separately():
    torch.manual_seed(6)
    head = GaussianHead(4, 3, logvar_clamp=False)
    h, target_mu, target_lv = torch.randn(8, 4), torch.randn(8, 3), torch.randn(8, 3)

    def train(mu_scale: float, steps: int) -> tuple[GaussianHead, AdamNormGrad, dict]:
        """AdamNormGrad steps on mu_scale·‖mu − t‖² + ‖logvar − t'‖² (and last grads)."""
        model = copy.deepcopy(head)
        opt = AdamNormGrad(model.parameters(), lr=0.05)
        for _ in range(steps):
            mu, logvar = model(h)
            loss = mu_scale * ((mu - target_mu) ** 2).sum() + ((logvar - target_lv) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            opt.step()
        return model, opt, grads

    # after one step Adam's first moment is (1 - β1) ĝ: each tensor's gradient over its own norm
    model, opt, grads = train(1.0, steps=1)
    for name, p in model.named_parameters():
        g = grads[name]
        torch.testing.assert_close(opt.state[p]["exp_avg"] / 0.1, g / (g.norm() + 1e-7))
    # scaling the mean's loss 10x changes nothing for the log-variance head: its gradients and
    # its normalised steps are the same, bit for bit (a fused Linear(H, 2Z) would shrink them)
    plain, _, _ = train(1.0, steps=5)
    scaled, _, _ = train(10.0, steps=5)
    assert torch.equal(scaled(h)[1], plain(h)[1])
    assert not torch.equal(scaled(h)[0], plain(h)[0])  # the mean head did see the change


def test_xavier_init_of_gaussian_head_uses_liangs_fused_fan_out():
    torch.manual_seed(7)
    head = GaussianHead(600, 200, logvar_clamp=False)
    init_weights(head, "xavier")
    bound = math.sqrt(6 / (600 + 2 * 200))  # vae_cf: one (600, 400) matrix for both halves
    for lin in (head.mu, head.logvar):
        assert lin.weight.abs().max().item() <= bound
        assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.001
    init_weights(head, "he")  # He is fan-in only: N(0, sqrt(2 / 600)) either way
    for lin in (head.mu, head.logvar):
        assert abs(lin.weight.std().item() - math.sqrt(2 / 600)) < 0.001


def test_first_layer_from_rows_with_joint_input_equals_the_dense_concatenation():
    torch.manual_seed(8)
    x = (torch.rand(6, 9) < 0.4).float()
    x[:, 0] = 1.0
    for layer in (Dense(9 + 2, 5), GatedDense(9 + 2, 5)):
        extra = torch.randn(6, 2, requires_grad=True)
        dropout = nn.Dropout(0.5).eval()
        fast = first_layer_from_rows(dropout, JointInput(layer, extra), x)
        dense = layer(torch.cat([l2_normalise(x), extra], dim=1))
        torch.testing.assert_close(fast, dense)
        torch.testing.assert_close(JointInput(layer, extra)(l2_normalise(x)), dense)
        params = [extra, *layer.parameters()]
        for a, b in zip(torch.autograd.grad(fast.sum(), params),
                        torch.autograd.grad(dense.sum(), params)):
            torch.testing.assert_close(a, b)  # gradients reach the extra input too
        with pytest.raises(ValueError, match="11 inputs"):  # the z2 columns silently ignored: no
            first_layer_from_rows(dropout, layer, x)


def test_joint_input_extra_columns_are_not_dropped_out():
    torch.manual_seed(9)
    x = (torch.rand(50, 6) < 0.5).float()
    x[:, 0] = 1.0
    extra = torch.rand(50, 3) * 0.5
    layer = Dense(9, 9)  # identity weights: atanh of the output is the layer's input
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(9))
        layer.linear.bias.zero_()
    seen = torch.atanh(first_layer_from_rows(nn.Dropout(0.9).train(), JointInput(layer, extra), x))
    torch.testing.assert_close(seen[:, 6:], extra)  # z2 is never dropped out
    assert (seen[:, :6][x > 0] == 0).float().mean() > 0.8  # while the items are


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


def test_clamped_bernoulli_nll_by_hand():
    c = 1e-5
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    logits = torch.tensor([[0.0, math.log(3.0), 20.0, 30.0, -30.0]], requires_grad=True)
    # sigma = 1/2, 3/4, then three beyond the clamp: 1 - 2e-9 -> 1 - c, ~1 -> 1 - c, 9e-14 -> c
    # -[ln 1/2 + ln(1 - 3/4) + ln(1 - c) + ln(1 - (1 - c)) + ln c]
    clamped = math.log(2.0) + math.log(4.0) - math.log(1.0 - c) - 2 * math.log(c)
    got = nll(logits, x, "bernoulli", bernoulli_clamp=c)
    np.testing.assert_allclose(got.detach().numpy(), [clamped], rtol=1e-6)
    # where the clamp binds, the logit gets no gradient (EVCF's torch.clamp); elsewhere σ(l) − x
    (grad,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 0.75, 0.0, 0.0, 0.0]]))
    # c = 0: the exact likelihood, -ln σ(-30) = 30 + ln(1 + e^-30) and so on
    exact = (math.log(2.0) + math.log(4.0) + math.log1p(math.exp(-20.0))
             + 2 * (30.0 + math.log1p(math.exp(-30.0))))
    np.testing.assert_allclose(nll(logits, x, "bernoulli").detach().numpy(), [exact], rtol=1e-6)
    # the multinomial likelihood ignores the clamp
    torch.testing.assert_close(nll(logits, x, "multinomial", bernoulli_clamp=c),
                               nll(logits, x, "multinomial"))


def test_clamped_bernoulli_nll_equals_evcfs_formula_and_is_float32_under_bf16():
    rng = np.random.default_rng(10)
    x = (rng.random((4, 30)) < 0.3).astype(np.float64)
    logits = rng.normal(scale=8.0, size=(4, 30))  # many beyond ±11.5, where the clamp binds
    p = np.clip(1.0 / (1.0 + np.exp(-logits)), 1e-5, 1 - 1e-5)  # EVCF log_Bernoulli
    evcf = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1)
    got = nll(torch.from_numpy(logits), torch.from_numpy(x), "bernoulli", bernoulli_clamp=1e-5)
    np.testing.assert_allclose(got.numpy(), evcf, rtol=1e-10)
    half = torch.from_numpy(logits).bfloat16()
    got16 = nll(half, torch.from_numpy(x).float(), "bernoulli", bernoulli_clamp=1e-5)
    assert got16.dtype == torch.float32  # 1 - 1e-5 is 1.0 in bf16: computed in float32
    want16 = nll(half.float(), torch.from_numpy(x).float(), "bernoulli", bernoulli_clamp=1e-5)
    torch.testing.assert_close(got16, want16)


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


# --------------------------------------------------------------------------------------------------
# The likelihoods from the clicks (one pass over the logits) against the dense formulas


def _old_nll(logits: torch.Tensor, x: torch.Tensor, likelihood: str, clamp: float) -> torch.Tensor:
    """The dense formulas as evcf computed them before the clicks were used (two log-sigmoids)."""
    logits = logits.float() if logits.dtype == torch.bfloat16 else logits
    if likelihood == "multinomial":
        return -(torch.log_softmax(logits, dim=1) * x).sum(1)
    lo, hi = math.log(clamp), math.log1p(-clamp)
    log_p = torch.nn.functional.logsigmoid(logits).clamp(lo, hi)
    log_not_p = torch.nn.functional.logsigmoid(-logits).clamp(lo, hi)
    return -(x * log_p + (1.0 - x) * log_not_p).sum(1)


@pytest.mark.parametrize("likelihood", ["multinomial", "bernoulli"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pad", [False, True])
def test_nll_from_the_clicks_equals_the_dense_formula(likelihood, dtype, pad):
    """Values and gradients (of a sum weighted per user, so each row's upstream gradient differs),
    with and without padded click lists; logits out to ±25 so that the clamp (c = 1e-5,
    |l| > 11.5) binds for many items; a user without clicks included."""
    from evcf.batches import clicks_of

    g = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 50, generator=g) < 0.2).to(torch.float64)
    x[2] = 0  # no clicks
    logits64 = torch.randn(6, 50, generator=g, dtype=torch.float64) * 8.0
    clicks = clicks_of(x, pad=pad)
    assert pad == (clicks.batch_row.numel() > int(x.sum()))
    weights = torch.randn(6, generator=g, dtype=torch.float64)  # a different upstream gradient per user
    results = []
    for use_clicks in (False, True):
        logits = logits64.to(dtype).requires_grad_()
        xx = x.to(torch.float32 if dtype == torch.bfloat16 else dtype)
        if use_clicks:
            clk = clicks._replace(values=clicks.values.to(xx.dtype))
            got = nll(logits, xx, likelihood, 1e-5, clk)
        else:
            got = _old_nll(logits, xx, likelihood, 1e-5)
        (grad,) = torch.autograd.grad((got * weights.to(got.dtype)).sum(), logits)
        results.append((got.detach(), grad))
    (want, want_grad), (got, got_grad) = results
    assert got.dtype == want.dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(got_grad.double(), want_grad.double(), rtol=tol, atol=tol)


def test_the_multinomial_gradient_from_the_clicks_passes_gradcheck_with_repeated_and_padded_clicks():
    """The hand-written backward against finite differences (float64): a click listed twice counts
    twice, a padding click (value 0) not at all, values other than 1 scale their term."""
    from evcf.models.densities import _MultinomialFromClicks

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64).requires_grad_()
    batch_row = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    cols = torch.tensor([1, 1, 4, 0, 6, 3, 3])
    values = torch.tensor([1.0, 1.0, 2.5, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda l: _MultinomialFromClicks.apply(l, batch_row, cols, values), (logits,))
    dense = torch.zeros(3, 7, dtype=torch.float64).index_put_((batch_row, cols), values, accumulate=True)
    torch.testing.assert_close(_MultinomialFromClicks.apply(logits, batch_row, cols, values),
                               -(torch.log_softmax(logits, 1) * dense).sum(1))


# --------------------------------------------------------------------------------------------------
# The first layer's weight stored (items x hidden): same values, outputs and gradients as nn.Linear


VAE_NAMES = ["mult-dae", "mult-vae", "mult-vae-gated", "vamp", "hvamp", "hvamp-gated"]


@pytest.mark.parametrize("name", VAE_NAMES + ["hvamp-2"])
def test_items_first_weights_give_the_old_layouts_outputs(name, monkeypatch):
    """The same model built with every first layer an ``nn.Linear`` (the old layout) and with the
    (items × hidden) storage: equal state_dicts (same init draws), equal loss and gradients up to
    rounding, and each other's checkpoints load."""
    from evcf.batches import clicks_of
    from evcf.models import build_model, layers

    n_items = 40
    hparams = {"hidden_size": 12, **({"n_pseudo": 4} if "vamp" in name else {}),
               **({"num_layers": 2} if name == "hvamp-2" else {})}
    model_name = name.replace("-2", "")
    x = (torch.rand(9, n_items, generator=torch.Generator().manual_seed(1)) < 0.2).double()
    clicks = clicks_of(x)

    def build(old_layout: bool):
        with monkeypatch.context() as m:
            if old_layout:
                m.setattr(layers, "ItemsFirstLinear", nn.Linear)
            torch.manual_seed(5)
            # float64: the two layouts sum in different orders (a sparse gather against a dense
            # product, split over however many threads torch has), which in float32 differs by a
            # few ulps of the largest term; in float64 that is ~1e-15 and the tolerance can be tight
            return build_model(model_name, n_items, **hparams).double()

    def loss_and_grads(model):
        model.train()
        torch.manual_seed(6)
        parts = model.loss(x, 0.3, clicks)
        parts.loss.backward()
        grads = {}
        for key, p in model.named_parameters():  # weight_t's gradient, read as the weight's
            grads[key.replace("weight_t", "weight")] = p.grad.t() if key.endswith("weight_t") else p.grad
        return parts.loss.detach(), grads

    old, new = build(old_layout=True), build(old_layout=False)
    items_first = [m for m in new.modules() if isinstance(m, layers.ItemsFirstLinear)]
    assert items_first and not any(isinstance(m, layers.ItemsFirstLinear) for m in old.modules())
    for m in items_first:  # the table the sparse product reads: contiguous (items (+ extra), hidden)
        assert m.weight_t.is_contiguous() and m.weight_t.shape == (m.in_features, m.out_features)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(old_state) == list(new_state)
    for key in old_state:
        assert torch.equal(old_state[key], new_state[key]), key
    (old_loss, old_grads), (new_loss, new_grads) = loss_and_grads(old), loss_and_grads(new)
    torch.testing.assert_close(new_loss, old_loss, rtol=1e-12, atol=1e-12)
    assert old_grads.keys() == new_grads.keys()
    for key in old_grads:
        torch.testing.assert_close(new_grads[key], old_grads[key], rtol=1e-10, atol=1e-12, msg=key)
    with torch.no_grad():  # a checkpoint of one layout loads into the other
        for p in old.parameters():
            p.add_(0.01)
    new.load_state_dict(old.state_dict())
    torch.testing.assert_close(new.score(x), old.score(x), rtol=1e-6, atol=1e-6)


def test_a_padded_click_list_changes_nothing_in_the_first_layer():
    from evcf.batches import clicks_of

    torch.manual_seed(0)
    layer = Dense(30, 8, items_first=True)
    x = (torch.rand(5, 30, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    dropout = nn.Dropout(0.0)
    exact = first_layer_from_rows(dropout, layer, x, clicks_of(x, pad=False))
    padded = clicks_of(x, pad=True)
    assert padded.batch_row.numel() == 64 > int(x.sum())
    torch.testing.assert_close(first_layer_from_rows(dropout, layer, x, padded), exact, rtol=0, atol=0)
    torch.testing.assert_close(exact, layer(torch.nn.functional.normalize(x, dim=1)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_keeps_each_entry_with_probability_one_minus_p_and_rescales_like_nn_dropout(p):
    """The models' Dropout draws its mask as uniforms < 1 − p (faster on the CPU than bernoulli_):
    the same law as nn.Dropout's.  Checked against that law directly: the kept fraction is within
    5 sd of 1 − p over 10^6 entries, kept entries are x / (1 − p), the rest exactly 0, the gradient
    is the same mask / (1 − p), and rows and columns are not correlated (each entry its own draw)."""
    torch.manual_seed(0)
    x = (torch.rand(1000, 1000) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    out = Dropout(p).train()(x)
    kept = out != 0
    n, keep = kept.numel(), 1.0 - p
    assert abs(kept.float().mean().item() - keep) < 5 * math.sqrt(keep * p / n)
    torch.testing.assert_close(out[kept], x.detach()[kept] / keep)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / keep)
    # independence: the kept fraction of each row (and column) varies as Binomial(1000, keep)'s does
    for dim in (0, 1):
        spread = kept.float().mean(dim=dim).std().item()
        assert 0.8 < spread / math.sqrt(keep * p / 1000) < 1.2, dim
    neighbours = stats.pearsonr(kept[:, :-1].flatten().float(), kept[:, 1:].flatten().float())[0]
    assert abs(neighbours) < 0.01  # sd ~0.001 over 10^6 pairs
    # at p = 0.5 eight entries come from one random byte: all 256 patterns of 8 aligned entries
    # equally likely (125,000 groups, ~488 each; a byte that is never 0 would leave one pattern out)
    if p == 0.5:
        groups = kept.flatten().view(-1, 8).long()
        patterns = torch.bincount((groups << torch.arange(8)).sum(1), minlength=256)
        assert stats.chisquare(patterns.numpy()).pvalue > 1e-4


def test_dropout_is_the_identity_in_eval_mode_and_at_p_0_and_zeros_at_p_1_as_nn_dropout_is():
    x = torch.rand(50, 40) + 0.5
    for p in (0.0, 0.5, 1.0):
        assert torch.equal(Dropout(p).eval()(x), nn.Dropout(p).eval()(x)) and torch.equal(Dropout(p).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), nn.Dropout(1.0).train()(x)) and not Dropout(1.0).train()(x).any()
    # the mask is drawn from torch's generator: a seed gives the same mask, another seed another one
    torch.manual_seed(3)
    a = keep_mask(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(x, 0.5), a) and not torch.equal(keep_mask(x, 0.5), a)
