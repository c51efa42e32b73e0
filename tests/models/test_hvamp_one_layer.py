"""H+Vamp and H+Vamp (Gated) with one hidden layer: EVCF's ``HVamp_1layer.py`` network.

q(z1 | x, z2) is one layer over [dropout(x) ⊕ z2] and p(x | z1, z2) one layer over [z1 ⊕ z2];
the deeper network (``HVamp.py``) is tested in test_vamp.py.
"""

from __future__ import annotations

import pytest
import torch

from evcf.models import GatedHVamp, HVamp, build_model
from evcf.models.layers import Dense, GatedDense, JointInput

I, H, Z1, Z2, K = 7, 5, 3, 2, 4


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def rows(n=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, I, generator=g) < 0.5).float()
    x[:, 0] = 1.0
    return x


def small(name="hvamp", **kw) -> HVamp:
    return build_model(name, I, hidden_size=H, z1_size=Z1, z2_size=Z2, n_pseudo=K, **kw)


def test_one_layer_is_the_default():
    assert HVamp(20).config.num_layers == 1 and HVamp(20).one_layer
    assert small().one_layer and not small(num_layers=2).one_layer


def test_parameter_count_by_hand():
    # a Linear(d_in, d_out) holds d_in * d_out weights and d_out biases; I, H, Z1, Z2, K = 7, 5, 3, 2, 4
    q_z2 = (I * H + H) + 2 * (H * Z2 + Z2)  # 7->5 (35+5), heads mu and logvar 5->2 (10+2 each) = 64
    q_z1 = ((I + Z2) * H + H) + 2 * (H * Z1 + Z1)  # joint 9->5 (45+5), heads 5->3 (15+3 each) = 86
    p_z1 = (Z2 * H + H) + 2 * (H * Z1 + Z1)  # 2->5 (10+5), heads 5->3 (15+3 each)          = 51
    p_x = ((Z1 + Z2) * H + H) + (H * I + I)  # joint 5->5 (25+5), out 5->7 (35+7)           = 72
    pseudo = K * I  # 4 x 7                                                                  = 28
    assert (q_z2, q_z1, p_z1, p_x, pseudo) == (64, 86, 51, 72, 28)
    assert n_params(small()) == q_z2 + q_z1 + p_z1 + p_x + pseudo == 301


def test_gated_parameter_count_by_hand():
    # each of the four hidden layers gets a gate (V, c) of its own size; heads and output do not
    gates = (I * H + H) + ((I + Z2) * H + H) + (Z2 * H + H) + ((Z1 + Z2) * H + H)  # 40+50+15+30
    model = small("hvamp-gated")
    assert isinstance(model, GatedHVamp) and gates == 135
    assert n_params(model) == 301 + gates == 436
    assert sum(isinstance(m, GatedDense) for m in model.modules()) == 4
    assert not any(isinstance(m, Dense) for m in model.modules())


@pytest.mark.parametrize("name", ["hvamp", "hvamp-gated"])
def test_joint_layers_read_the_concatenations_with_one_weight_matrix(name):
    model = small(name)
    kind = GatedDense if name == "hvamp-gated" else Dense
    assert isinstance(model.q_z1_joint, kind) and isinstance(model.p_x_joint, kind)
    assert model.q_z1_joint.linear.weight.shape == (H, I + Z2)  # [dropout(x) ⊕ z2] -> H
    assert model.p_x_joint.linear.weight.shape == (H, Z1 + Z2)  # [z1 ⊕ z2] -> H
    assert isinstance(model.q_z1_x, torch.nn.Dropout)  # the x input of q(z1|.) is only dropped out
    for branch in ("q_z1_z2", "p_x_z1", "p_x_z2"):  # HVamp.py's per-input layers are absent
        assert not hasattr(model, branch)
    assert len(model.q_z2.layers) == len(model.p_z1) == 1


@pytest.mark.parametrize("name", ["hvamp", "hvamp-gated"])
def test_shapes_of_forward_loss_and_score(name):
    torch.manual_seed(1)
    model = small(name)
    x = rows(4)
    out = model(x)
    assert out.logits.shape == (4, I)
    assert out.z1.shape == out.z1_mu.shape == out.z1_logvar.shape == (4, Z1)
    assert out.p_z1_mu.shape == out.p_z1_logvar.shape == (4, Z1)
    assert out.z2.shape == out.z2_mu.shape == out.z2_logvar.shape == (4, Z2)
    parts = model.loss(x, 0.3)
    assert parts.loss.shape == () and parts.loss.requires_grad
    assert parts.loss.item() == pytest.approx(float(parts.nll) + 0.3 * float(parts.kl), rel=1e-5)
    parts.loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every layer is on the path
    scores = model.score(x)
    assert scores.shape == (4, I) and not scores.requires_grad


@pytest.mark.parametrize("name", ["hvamp", "hvamp-gated"])
def test_score_by_hand_with_dense_concatenations(name):
    torch.manual_seed(2)
    model = small(name)
    x = rows(5)
    xn = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        model.eval()
        z2_mu, _ = model.q_z2(xn)
        z1_mu, _ = model.q_z1_head(model.q_z1_joint(torch.cat([xn, z2_mu], dim=1)))
        expected = model.p_x_out(model.p_x_joint(torch.cat([z1_mu, z2_mu], dim=1)))
    model.train()
    torch.testing.assert_close(model.score(x), expected)
    assert model.training


def test_q_z1_reads_the_rows_through_its_own_dropout_and_z2_undropped(monkeypatch):
    from evcf.models import layers, vamp

    torch.manual_seed(3)
    model = build_model("hvamp", 300, hidden_size=H, z1_size=Z1, z2_size=Z2, n_pseudo=3)
    calls = []
    real = layers.first_layer_from_rows

    def spy(dropout, layer, x, clicks=None):
        calls.append((dropout, layer, x))
        return real(dropout, layer, x, clicks)

    monkeypatch.setattr(layers, "first_layer_from_rows", spy)
    monkeypatch.setattr(vamp, "first_layer_from_rows", spy)
    x = (torch.rand(40, 300) < 0.3).float()
    model.train()
    out = model(x)
    assert len(calls) == 2
    (d2, l2, x2), (d1, l1, x1) = calls
    assert l2 is model.q_z2.layers[0] and d2 is model.q_z2.dropout
    assert isinstance(l1, JointInput) and l1.layer is model.q_z1_joint
    assert torch.equal(l1.extra, out.z2)  # the sampled z2, appended after the item columns
    assert d1 is model.q_z1_x and d1 is not d2 and d1.p == d2.p == 0.5
    assert torch.equal(x1, x) and torch.equal(x2, x)  # raw rows: normalised inside


@pytest.mark.parametrize("name", ["hvamp", "hvamp-gated"])
@pytest.mark.parametrize("mode", ["eval", "train-no-dropout"])
def test_sparse_joint_input_equals_the_dense_concatenation_in_float64(name, mode, monkeypatch):
    """Loss and every gradient of the sparse path equal the dense [dropout(l2(x)) ⊕ z2] path.

    The reference multiplies the concatenation in one product, as EVCF does.  In float64, so that
    the comparison is tight: in float32 that product rounds differently from the split one (item
    columns, then z2 columns), and this network amplifies the difference beyond the float32
    tolerances of tests/test_fast_paths.py, which compare against JointInput's own split product.
    """
    from evcf.models import layers, vamp

    def dense_first_layer(dropout, layer, x, clicks=None):  # the layer over torch.cat([dropout(l2(x)), z2])
        assert isinstance(layer, JointInput) or layer.linear.in_features == x.shape[1]
        x = dropout(torch.nn.functional.normalize(x, p=2.0, dim=1))
        if isinstance(layer, JointInput):
            return layer.layer(torch.cat([x, layer.extra], dim=1))
        return layer(x)

    x = (torch.rand(12, 64, generator=torch.Generator().manual_seed(0)) < 0.15).double()
    x[0] = 0
    x[0, 3] = 1  # a user with a single click

    def loss_and_grads(patched: bool):
        torch.manual_seed(7)
        model = build_model(name, 64, hidden_size=16, dropout=0.5 if mode == "eval" else 0.0,
                            n_pseudo=4).double()
        model.train(mode != "eval")
        with monkeypatch.context() as m:
            if patched:
                for module in (layers, vamp):
                    m.setattr(module, "first_layer_from_rows", dense_first_layer)
            torch.manual_seed(8)
            parts = model.loss(x, 0.3)
            parts.loss.backward()
        return parts.loss.detach(), {k: p.grad for k, p in model.named_parameters()}

    fast_loss, fast_grads = loss_and_grads(patched=False)
    ref_loss, ref_grads = loss_and_grads(patched=True)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-12, atol=1e-10)
    assert fast_grads.keys() == ref_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(fast_grads[key], ref_grads[key], rtol=1e-10, atol=1e-10, msg=key)
