"""AdamNormGrad against a manual Adam on normalised gradients; make_optimizer."""

from __future__ import annotations

import io
import math

import pytest
import torch

from evcf.errors import EvcfError
from evcf.optim import AdamNormGrad, make_optimizer


def manual_steps(p0, grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """EVCF utils/optimizer.py by hand, in float64: Adam on g / (||g|| + 1e-7)."""
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        g = g / (math.sqrt((g**2).sum().item()) + 1e-7)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        step = lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        p = p - step * m / (v.sqrt() + eps)
    return p


def test_steps_equal_manual_adam_on_normalised_gradients():
    torch.manual_seed(0)
    w0, b0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = AdamNormGrad([w, b], lr=0.01)
    grads_w = [torch.randn(3, 4, dtype=torch.float64) * s for s in (10.0, 0.001, 3.0)]
    grads_b = [torch.randn(4, dtype=torch.float64) * s for s in (0.5, 7.0, 1.0)]
    for gw, gb in zip(grads_w, grads_b):
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        assert torch.equal(w.grad, gw)  # the stored gradient is left alone
    # each parameter is normalised by its own norm
    torch.testing.assert_close(w.detach(), manual_steps(w0, grads_w, 0.01), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.detach(), manual_steps(b0, grads_b, 0.01), rtol=1e-12, atol=1e-12)


def test_first_step_moves_each_entry_by_about_lr_whatever_the_gradient_scale():
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = AdamNormGrad([p], lr=0.1)
    p.grad = torch.tensor([1e6, -2e6, 3e6, 1e6, 1e6], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(p.grad), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(1)
    grads = [torch.randn(6) for _ in range(4)]
    a = torch.nn.Parameter(torch.randn(6))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = AdamNormGrad([a], lr=0.05)
    for g in grads[:2]:
        a.grad = g.clone()
        opt_a.step()
    buffer = io.BytesIO()
    torch.save({"param": a.detach().clone(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    with torch.no_grad():
        b.copy_(saved["param"])
    opt_b = AdamNormGrad([b], lr=0.05)
    opt_b.load_state_dict(saved["opt"])
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)
    assert opt_b.state_dict()["state"][0]["step"] == 4


def test_make_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer("adam", p, lr=1e-3)
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-3
    normgrad = make_optimizer("adam-normgrad", p, lr=5e-4)
    assert isinstance(normgrad, AdamNormGrad) and normgrad.defaults["lr"] == 5e-4
    assert normgrad.defaults["betas"] == (0.9, 0.999) and normgrad.defaults["eps"] == 1e-8
    with pytest.raises(EvcfError, match="adam, adam-normgrad"):
        make_optimizer("sgd", p, lr=0.1)


# --------------------------------------------------------------------------------------------------
# The fused form (train.fused_optimizer, on by default) against the elementwise one


def _steps(name: str, fused: bool, n_steps: int = 25) -> list[torch.Tensor]:
    """``n_steps`` updates of three float32 parameters (a matrix, a long vector, a scalar-like one),
    gradients of scales from 1e-4 to 1e3, through ``make_optimizer`` (as training builds them)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((40, 7), (300,), (1,))]
    opt = make_optimizer(name, params, 1e-3, fused=fused)
    for t in range(n_steps):
        scale = 10.0 ** ((t % 8) - 4)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * scale
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["adam", "adam-normgrad"])
def test_fused_and_elementwise_updates_agree_up_to_rounding(name):
    """25 steps of each form from the same start and gradients: the parameters agree to float32
    rounding (the parameters move by up to 25 · lr = 0.025; 2e-6 is ~100 float32 ulps of 1)."""
    plain, fused = _steps(name, fused=False), _steps(name, fused=True)
    start = _steps(name, fused=False, n_steps=0)
    for a, b, p0 in zip(plain, fused, start):
        assert (a - p0).abs().max() > 1e-3  # they moved
        torch.testing.assert_close(b, a, rtol=0, atol=2e-6)


def test_adam_normgrad_keeps_its_step_count_on_the_parameters_device():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer("adam-normgrad", [p], 1e-3, fused=False)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    step = opt.state[p]["step"]
    assert isinstance(step, torch.Tensor) and step.device == p.device and step.dtype == torch.float64
    assert step.item() == 3


@pytest.mark.parametrize("fused", [False, True])
def test_a_resumed_optimizer_of_either_form_continues_identically(fused):
    """Each form's state round-trips through torch.save (a checkpoint) and goes on bit for bit."""
    torch.manual_seed(1)
    grads = [torch.randn(6) for _ in range(5)]
    a = torch.nn.Parameter(torch.randn(6))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = AdamNormGrad([a], lr=0.05, fused=fused)
    for g in grads[:2]:
        a.grad = g.clone()
        opt_a.step()
    buffer = io.BytesIO()
    torch.save({"param": a.detach().clone(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    with torch.no_grad():
        b.copy_(saved["param"])
    opt_b = AdamNormGrad([b], lr=0.05, fused=fused)
    opt_b.load_state_dict(saved["opt"])
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)
    assert int(opt_b.state_dict()["state"][0]["step"]) == 5
