"""VampPrior, Vamp, H+Vamp and H+Vamp (Gated)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evcf.errors import EvcfError
from evcf.models import GatedHVamp, HVamp, Vamp, build_model
from evcf.models.layers import GatedDense
from evcf.models.vamp import mixture_log_density

I = 7


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def rows(n=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, I, generator=g) < 0.5).float()
    x[:, 0] = 1.0
    return x


def brute_force_mixture(z, means, logvars) -> torch.Tensor:
    """log (1/K) Σ_k Π_d N(z_d; m_kd, v_kd), one component at a time, in float64."""
    z, means, logvars = z.double(), means.double(), logvars.double()
    per_component = []
    for k in range(means.shape[0]):
        var = torch.exp(logvars[k])
        log_pdf = -0.5 * (math.log(2 * math.pi) + logvars[k] + (z - means[k]) ** 2 / var)  # (B, Z)
        per_component.append(log_pdf.sum(1))
    stacked = torch.stack(per_component, dim=1)  # (B, K)
    return torch.logsumexp(stacked, dim=1) - math.log(means.shape[0])


def normal_log_pdf(z, mu, logvar) -> torch.Tensor:
    """Independent reference: torch.distributions.Normal, summed over dimensions."""
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)


# --------------------------------------------------------------------------------------------------
# The mixture log-density


def test_mixture_log_density_equals_brute_force_float64():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvars = torch.empty(5, 3, dtype=torch.float64).uniform_(-12, 4, generator=g)
    z = torch.cat([torch.randn(6, 3, generator=g, dtype=torch.float64),
                   means[:2] + 1e-3])  # two points right next to narrow components
    got = mixture_log_density(z, means, logvars)
    torch.testing.assert_close(got, brute_force_mixture(z, means, logvars), rtol=1e-9, atol=1e-9)


def test_mixture_log_density_float32_and_gradients_match_brute_force():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 3, generator=g).requires_grad_()
    logvars = torch.empty(4, 3).uniform_(-3, 2, generator=g).requires_grad_()
    z = torch.randn(6, 3, generator=g).requires_grad_()
    got = mixture_log_density(z, means, logvars)
    assert got.dtype == torch.float32
    ref = brute_force_mixture(z, means, logvars)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(got.sum(), (z, means, logvars))
    ref_grads = torch.autograd.grad(ref.sum(), (z, means, logvars))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)


def test_mixture_log_density_saves_no_batch_by_components_by_latent_tensor():
    b, k, d = 6, 5, 4
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, d, generator=g, requires_grad=True)
    means = torch.randn(k, d, generator=g, requires_grad=True)
    logvars = torch.randn(k, d, generator=g, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixture_log_density(z, means, logvars).sum().backward()
    assert sizes and max(sizes) < b * k * d  # the largest saved tensor is (B, K), not (B, K, Z)


# --------------------------------------------------------------------------------------------------
# Vamp


def small_vamp(**kw) -> Vamp:
    return build_model("vamp", I, hidden_size=5, latent_size=3, n_pseudo=4, **kw)


def test_vamp_parameter_count_and_defaults():
    # Mult-VAE network (see test_multvae: 138) + K x I pseudo-input matrix 4 * 7 = 28
    assert n_params(small_vamp()) == 138 + 28 == 166
    c = Vamp(20).config
    assert (c.n_pseudo, c.likelihood, c.init, c.logvar_clamp) == (1000, "bernoulli", "he", True)
    assert c.bernoulli_clamp == 1e-5  # EVCF log_Bernoulli
    assert (c.pseudo_mean, c.pseudo_std, c.hidden_size, c.latent_size) == (0.05, 0.01, 600, 200)


def test_pseudo_inputs_initialised_normal_and_read_directly_from_the_parameter():
    torch.manual_seed(3)
    model = build_model("vamp", 500, hidden_size=5, latent_size=3, n_pseudo=200)
    pseudo = model.prior.pseudo
    assert pseudo.shape == (200, 500)  # (K, I), no identity-matrix product in front of it
    assert abs(pseudo.mean().item() - 0.05) < 0.001 and abs(pseudo.std().item() - 0.01) < 0.001
    with torch.no_grad():
        pseudo[0, :3] = torch.tensor([-0.5, 0.3, 1.7])
    assert model.prior.pseudo_inputs()[0, :3].tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_vamp_prior_with_one_standard_normal_component_is_the_standard_normal():
    torch.manual_seed(4)
    model = build_model("vamp", I, hidden_size=5, latent_size=3, n_pseudo=1)
    with torch.no_grad():  # encoder output (mu, logvar) = (0, 0) for any input
        for p in model.encoder.head.parameters():
            p.zero_()
    z = torch.randn(10, 3)
    expected = normal_log_pdf(z, torch.zeros(3), torch.zeros(3))
    for train in (True, False):
        model.train(train)
        torch.testing.assert_close(model.log_prior(z), expected)


def test_pseudo_inputs_go_through_the_encoder_unnormalised_with_its_dropout():
    torch.manual_seed(5)
    model = build_model("vamp", 300, hidden_size=5, latent_size=3, n_pseudo=50)
    seen = []
    model.encoder.layers[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    u = model.prior.pseudo_inputs().detach()
    z = torch.randn(2, 3)
    model.eval()
    model.log_prior(z)
    torch.testing.assert_close(seen[-1], u)  # raw pseudo-inputs: no L2 normalisation, no dropout
    model.train()
    model.log_prior(z)
    kept = seen[-1] != 0
    torch.testing.assert_close(seen[-1][kept], u[kept] / 0.5)  # dropout p = 0.5, as for users
    assert 0.45 < 1 - kept.float().mean().item() < 0.55


def test_vamp_kl_is_log_q_minus_brute_force_log_prior():
    torch.manual_seed(6)
    model = small_vamp(dropout=0.0)  # pseudo-input encoding deterministic even in training mode
    model.train()
    x = rows(5)
    out = model(x)
    means, logvars = model.encoder(model.prior.pseudo_inputs())
    expected = (normal_log_pdf(out.z, out.mu, out.logvar)
                - brute_force_mixture(out.z, means, logvars))
    torch.testing.assert_close(model.kl(out).double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.z, out.mu)  # a one-sample estimate at a sampled z


def test_vamp_loss_uses_clamped_bernoulli_by_default_and_backpropagates_into_pseudo_inputs():
    torch.manual_seed(7)
    model = small_vamp()
    model.eval()
    x = rows(3)
    with torch.no_grad():  # one logit far beyond the clamp: p(x_6 = 1 | z) = σ(-40) for everyone
        model.decoder[1].bias[6] = -40.0
    logits = model.score(x)
    parts = model.loss(x, beta=0.5)
    p = torch.sigmoid(logits.double()).clamp(1e-5, 1 - 1e-5)  # EVCF log_Bernoulli
    evcf = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean().item()
    assert float(parts.nll) == pytest.approx(evcf, rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean().item()
    assert float(parts.nll) < bce - 1.0  # the clamp bound (x_6 = 1 costs -ln 1e-5, not 40)
    assert parts.loss.item() == pytest.approx(float(parts.nll) + 0.5 * float(parts.kl), rel=1e-5)
    model.train()
    model.loss(x, beta=0.5).loss.backward()
    assert model.prior.pseudo.grad is not None and model.prior.pseudo.grad.abs().sum() > 0


def test_init_pseudo_from_training_rows():
    torch.manual_seed(8)
    model = build_model("vamp", 400, hidden_size=5, latent_size=3, n_pseudo=30)
    users = (torch.rand(30, 400) < 0.1).float()
    model.init_pseudo_from(users, generator=torch.Generator().manual_seed(0))
    noise = model.prior.pseudo.detach() - users
    assert abs(noise.mean().item()) < 0.001 and abs(noise.std().item() - 0.01) < 0.001
    model.init_pseudo_from(users.to_sparse())  # sparse rows are fine too
    with pytest.raises(EvcfError, match="30 rows"):
        model.init_pseudo_from(users[:10])


# --------------------------------------------------------------------------------------------------
# H+Vamp


# num_layers >= 2: EVCF's HVamp.py.  The one-layer network (HVamp_1layer.py, the default) is
# tested in test_hvamp_one_layer.py.


def small_hvamp(name="hvamp", num_layers=2, **kw) -> HVamp:
    return build_model(name, I, hidden_size=5, z1_size=3, z2_size=2, n_pseudo=4,
                       num_layers=num_layers, **kw)


def test_hvamp_parameter_count_two_layers():
    # heads: mu 5->Z and logvar 5->Z, (5Z + Z) each
    # q(z2|x):     7->5 (35+5=40), 5->5 (25+5=30), heads 2 * (10+2) = 24                = 94
    # q(z1|x,z2):  x 7->5 (40), z2 2->5 (10+5=15), joint 10->5 (50+5=55),
    #              heads 2 * (15+3) = 36                                                = 146
    # p(z1|z2):    2->5 (15), 5->5 (30), heads 36                                       = 81
    # p(x|z1,z2):  z1 3->5 (15+5=20), z2 2->5 (15), joint 10->5 (55), out 5->7 (35+7=42) = 132
    # pseudo-inputs 4 x 7                                                               = 28
    assert n_params(small_hvamp()) == 94 + 146 + 81 + 132 + 28 == 481


def test_hvamp_num_layers_placement():
    # L = 3: one 5->5 layer (30) more in q(z2|x) and in p(z1|z2), and one in each joint path
    assert n_params(small_hvamp(num_layers=3)) == 481 + 2 * 30 + 2 * 30 == 601
    # L = 4: one more again in each of the four paths
    assert n_params(small_hvamp(num_layers=4)) == 601 + 4 * 30 == 721


def test_gated_hvamp_parameter_count():
    # every hidden layer gets a gate of its own size:
    # 40 + 30 (q_z2) + 40 (q_z1 x) + 15 (q_z1 z2) + 55 (q_z1 joint) + 15 + 30 (p_z1)
    # + 20 + 15 + 55 (p_x) = 315
    model = small_hvamp("hvamp-gated")
    assert isinstance(model, GatedHVamp)
    assert n_params(model) == 481 + 315 == 796
    assert sum(isinstance(m, GatedDense) for m in model.modules()) == 10


def test_hvamp_joins_branches_by_concatenation():
    model = small_hvamp()
    assert model.q_z1_joint[0].linear.in_features == 2 * 5
    assert model.p_x_joint[0].linear.in_features == 2 * 5
    c = HVamp(20).config
    assert (c.hidden_size, c.z1_size, c.z2_size) == (600, 200, 200)
    assert (c.num_layers, c.n_pseudo) == (1, 1000)
    assert (c.likelihood, c.init, c.logvar_clamp) == ("bernoulli", "he", True)
    assert c.bernoulli_clamp == 1e-5  # EVCF log_Bernoulli


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("name", ["hvamp", "hvamp-gated"])
def test_hvamp_shapes_and_loss(name, num_layers):
    torch.manual_seed(9)
    model = small_hvamp(name, num_layers=num_layers)
    x = rows(4)
    out = model(x)
    assert out.logits.shape == (4, I)
    assert out.z1.shape == out.z1_mu.shape == out.p_z1_mu.shape == (4, 3)
    assert out.z2.shape == out.z2_mu.shape == (4, 2)
    parts = model.loss(x, 0.3)
    assert parts.loss.shape == () and parts.loss.requires_grad
    assert parts.loss.item() == pytest.approx(float(parts.nll) + 0.3 * float(parts.kl), rel=1e-5)
    assert model.score(x).shape == (4, I)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_hvamp_kl_is_the_four_term_one_sample_estimate(num_layers):
    torch.manual_seed(10)
    model = small_hvamp(dropout=0.0, num_layers=num_layers)
    model.train()
    out = model(rows(6))
    means, logvars = model.q_z2(model.prior.pseudo_inputs())  # VampPrior components via q(z2|.)
    expected = (normal_log_pdf(out.z1, out.z1_mu, out.z1_logvar)
                + normal_log_pdf(out.z2, out.z2_mu, out.z2_logvar)
                - normal_log_pdf(out.z1, out.p_z1_mu, out.p_z1_logvar)
                - brute_force_mixture(out.z2, means, logvars))
    torch.testing.assert_close(model.kl(out).double(), expected, rtol=1e-5, atol=1e-5)
    # p(z1 | z2) is a function of the sampled z2 only
    p_mu, p_logvar = model.p_z1_head(model.p_z1(out.z2))
    torch.testing.assert_close(p_mu, out.p_z1_mu)
    torch.testing.assert_close(p_logvar, out.p_z1_logvar)


def test_hvamp_score_uses_z2_mean_then_z1_mean_given_it():
    torch.manual_seed(11)
    model = small_hvamp()
    x = rows(5)
    xn = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        model.eval()
        z2_mu, _ = model.q_z2(xn)
        h = torch.cat([model.q_z1_x(xn), model.q_z1_z2(z2_mu)], dim=1)
        z1_mu, _ = model.q_z1_head(model.q_z1_joint(h))
        hx = torch.cat([model.p_x_z1(z1_mu), model.p_x_z2(z2_mu)], dim=1)
        expected = model.p_x_out(model.p_x_joint(hx))
    model.train()
    torch.testing.assert_close(model.score(x), expected)
    assert model.training


def test_hvamp_input_paths_normalised_and_dropped_out_independently(monkeypatch):
    """x enters q(z2|x) and q(z1|x,z2) through first_layer_from_rows (L2-normalise, then dropout:
    tests/models/test_multvae.py), each path with its own dropout module, i.e. its own mask."""
    from evcf.models import layers, vamp

    torch.manual_seed(12)
    model = build_model("hvamp", 300, hidden_size=5, z1_size=3, z2_size=2, n_pseudo=3, num_layers=2)
    calls = []
    real = layers.first_layer_from_rows

    def spy(dropout, layer, x, clicks=None):
        calls.append((dropout, layer, x))
        return real(dropout, layer, x, clicks)

    monkeypatch.setattr(layers, "first_layer_from_rows", spy)
    monkeypatch.setattr(vamp, "first_layer_from_rows", spy)
    x = (torch.rand(40, 300) < 0.3).float()
    model.train()
    model(x)  # forward only: the prior is not evaluated
    assert len(calls) == 2
    (d2, l2, x2), (d1, l1, x1) = calls
    assert l2 is model.q_z2.layers[0] and l1 is model.q_z1_x[1]
    assert d2 is model.q_z2.dropout and d1 is model.q_z1_x[0] and d1 is not d2
    assert d1.p == d2.p == 0.5
    assert torch.equal(x1, x) and torch.equal(x2, x)  # raw rows: normalised inside


def test_hvamp_pseudo_inputs_go_through_q_z2():
    torch.manual_seed(13)
    model = small_hvamp()
    seen = []
    model.q_z2.layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    model.eval()
    model.log_prior_z2(torch.randn(3, 2))
    torch.testing.assert_close(seen[-1], model.prior.pseudo_inputs().detach())
    with pytest.raises(EvcfError):
        model.init_pseudo_from(torch.zeros(3, I))


def test_log_densities_stay_at_least_float32_under_bf16_autocast():
    torch.manual_seed(14)
    model = small_vamp()
    x = rows(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.mu.dtype == torch.bfloat16  # the layers do run in bf16 ...
        kl = model.kl(out)
        parts = model.loss(x, 0.5)
    assert kl.dtype == torch.float32  # ... but the densities are summed in float32
    assert math.isfinite(parts.loss.item())
    z = torch.randn(3, 3, dtype=torch.bfloat16)
    assert mixture_log_density(z, torch.zeros(2, 3), torch.zeros(2, 3)).dtype == torch.float32
