"""Every speed-up is exact: the fast paths against plain dense reference paths, on CPU in float32.

(a) Batches: ``DeviceCSR.dense`` equals scipy's ``toarray()``; every VAE model's loss and gradients
    are identical when fed either (same seed, hence the same dropout mask and noise); an epoch of
    :class:`Batches` built on the device equals the same epoch built on the host, and
    ``train_step`` on either trains the same model, bit for bit.
(b) Pseudo-inputs: read straight from the parameter (``hardtanh(P)``) they equal EVCF's
    ``hardtanh(I_K @ P)``, with identical losses and gradients.
(c) Evaluation: ``evaluate()`` (on-device fold-in masking, ``torch.topk``) equals a numpy reference
    (``toarray()``, fold-in set to −inf, ``argsort``) user by user.
(d) The VampPrior's matrix-product log-density against the brute-force per-component sum is tested
    in ``tests/models/test_vamp.py`` (``test_mixture_log_density_equals_brute_force_float64``,
    ``test_mixture_log_density_float32_and_gradients_match_brute_force``,
    ``test_mixture_log_density_saves_no_batch_by_components_by_latent_tensor``); here it is also
    checked against EVCF's broadcast form, written out as EVCF's ``log_p_z`` does it.

``evcf bench``'s reference style builds batches on the host (``Batches(dense_on_host=True)``) and
takes the same ``train_step``: the test of (a) shows that it trains the same model as the fast path,
so the bench's timings compare the same computation.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from evcf.batches import Batches, DeviceCSR, padded_size
from evcf.data.shapes import heldout_split, synthetic_matrix
from evcf.evaluate import evaluate
from evcf.models import build_model
from evcf.models.layers import LOG_2PI
from evcf.models.vamp import mixture_log_density
from evcf.optim import make_optimizer
from evcf.training import train_step

N_ITEMS = 60
SMALL = {  # every VAE model of the registry, small enough for a unit test
    "mult-dae": {"hidden_size": 16},
    "mult-vae": {"hidden_size": 16, "latent_size": 6},
    "mult-vae-gated": {"hidden_size": 16, "latent_size": 6},
    "mult-vae-evcf": {"hidden_size": 16, "latent_size": 6},
    "vamp": {"hidden_size": 16, "latent_size": 6, "n_pseudo": 5},
    "hvamp": {"hidden_size": 16, "z1_size": 6, "z2_size": 5, "n_pseudo": 5, "num_layers": 2},
    "hvamp-gated": {"hidden_size": 16, "z1_size": 6, "z2_size": 5, "n_pseudo": 5, "num_layers": 2},
}
VAMP_MODELS = ["vamp", "hvamp", "hvamp-gated"]
CPU = torch.device("cpu")


def test_every_vae_model_is_covered():
    from evcf.models import MODEL_NAMES, VAEModel, model_class

    # RecVAE (several passes an epoch) has its own tests of the first layer and the loop (tests/models/test_recvae.py)
    assert {n for n in MODEL_NAMES if issubclass(model_class(n), VAEModel)} - {"recvae"} == set(SMALL)


@pytest.fixture(scope="module")
def matrix() -> sp.csr_matrix:
    return synthetic_matrix(120, N_ITEMS, 1500, seed=4)


def scipy_batch(matrix: sp.csr_matrix, rows) -> torch.Tensor:
    """The reference style: scipy row slice, toarray() on the host."""
    return torch.from_numpy(matrix[np.asarray(rows)].toarray().astype(np.float32))


def loss_and_grads(model, x: torch.Tensor, beta: float = 0.3, seed: int = 7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout mask and the same reparameterisation noise
    parts = model.loss(x, beta)
    parts.loss.backward()
    return parts, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------------------------
# (a) DeviceCSR batches


@pytest.mark.parametrize("rows", [[0], [5, 3, 3, 119], list(range(0, 120, 7)), [], "permutation"])
def test_device_csr_dense_equals_scipy_toarray(matrix, rows):
    if rows == "permutation":
        rows = np.random.default_rng(1).permutation(120)[:50].tolist()
    dev = DeviceCSR(matrix)
    index = torch.tensor(rows, dtype=torch.long)
    expected = matrix[np.asarray(rows, dtype=np.int64)].toarray() if rows else np.zeros((0, N_ITEMS))
    assert torch.equal(dev.dense(index), torch.from_numpy(expected.astype(np.float32)))
    assert torch.equal(dev.dense(index, dtype=torch.bool), torch.from_numpy(expected > 0))
    batch_row, cols = dev.nonzeros(index)  # the stored entries, row by row, columns ascending
    if rows:
        sub = matrix[np.asarray(rows)].tocoo()
        order = np.lexsort((sub.col, sub.row))
        np.testing.assert_array_equal(batch_row.numpy(), sub.row[order])
        np.testing.assert_array_equal(cols.numpy(), sub.col[order])


def test_device_csr_of_an_unsorted_csr_with_wide_indices():
    # columns out of order within rows and int64 indices: DeviceCSR sorts, the dense rows agree
    dense = (np.random.default_rng(3).random((9, 13)) < 0.3).astype(np.float32)
    coo = sp.coo_matrix(dense)
    perm = np.random.default_rng(4).permutation(coo.nnz)
    unsorted = sp.csr_matrix((coo.data[perm], (coo.row[perm], coo.col[perm])), shape=dense.shape)
    unsorted.indices = unsorted.indices.astype(np.int64)
    unsorted.indptr = unsorted.indptr.astype(np.int64)
    got = DeviceCSR(unsorted).dense(torch.arange(9)).numpy()
    np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("name", list(SMALL))
def test_losses_and_gradients_identical_for_device_csr_and_scipy_batches(matrix, name):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, **SMALL[name])
    model.train()
    rows = np.random.default_rng(2).permutation(120)[:40]
    fast = DeviceCSR(matrix).dense(torch.from_numpy(rows))
    ref = scipy_batch(matrix, rows)
    assert torch.equal(fast, ref)
    fast_parts, fast_grads = loss_and_grads(model, fast)
    ref_parts, ref_grads = loss_and_grads(model, ref)
    assert torch.equal(fast_parts.loss, ref_parts.loss)
    assert (fast_parts.nll, fast_parts.kl, fast_parts.penalty) == (ref_parts.nll, ref_parts.kl, ref_parts.penalty)
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) == len(list(model.parameters()))
    for key in fast_grads:
        assert torch.equal(fast_grads[key], ref_grads[key]), key
    assert torch.equal(model.score(fast), model.score(ref))


@pytest.mark.parametrize("batch_size", [40, 33])
def test_an_epoch_of_batches_built_on_the_device_equals_one_built_on_the_host(matrix, batch_size):
    order = torch.randperm(120, generator=torch.Generator().manual_seed(1))
    data = DeviceCSR(matrix)
    on_device = Batches(data, order, batch_size)
    on_host = Batches(data, order.numpy(), batch_size, dense_on_host=True)
    assert len(on_device) == len(on_host) == -(-120 // batch_size)
    pairs = list(zip(on_device, on_host, strict=True))
    for k, (a, b) in enumerate(pairs):
        assert torch.equal(a.x, b) and a.x.dtype == b.dtype == torch.float32
        assert torch.equal(a.x, scipy_batch(matrix, order[k * batch_size : (k + 1) * batch_size].numpy()))
        # the clicks the batch brings are where its ones are, in nonzero's (row-major) order, with
        # value-0 padding up to the bucket size spread over the rows (evcf/batches.py pad_clicks)
        batch_row, cols = torch.nonzero(b, as_tuple=True)
        n, n_padded = batch_row.numel(), a.clicks.batch_row.numel()
        real = a.clicks.values != 0
        assert n_padded == padded_size(n) and int(real.sum()) == n
        assert torch.equal(a.clicks.batch_row[real], batch_row) and torch.equal(a.clicks.cols[real], cols)
        assert bool((a.clicks.batch_row[1:] >= a.clicks.batch_row[:-1]).all())


@pytest.mark.parametrize("name", list(SMALL))
def test_train_step_on_host_built_batches_trains_the_same_model(matrix, name):
    """The bench's reference style (batches densified on the host) and evcf train's batches take the
    same optimisation steps, bit for bit: the bench's two paths differ only in building the batch."""
    optimizer = "adam-normgrad" if name in VAMP_MODELS or name in ("mult-vae-gated", "mult-vae-evcf") else "adam"
    runs = []
    for dense_on_host in (False, True):
        torch.manual_seed(0)
        model = build_model(name, N_ITEMS, **SMALL[name])
        model.train()
        opt = make_optimizer(optimizer, model.parameters(), 1e-3)
        order = torch.randperm(120, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(3)
        losses = [train_step(model, opt, x, 0.2) for x in Batches(DeviceCSR(matrix), order, 40,
                                                                  dense_on_host=dense_on_host)]
        runs.append((torch.stack(losses), {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (fast_losses, fast_state), (ref_losses, ref_state) = runs
    assert torch.equal(fast_losses, ref_losses) and fast_losses.shape == (3,)
    for key in fast_state:
        assert torch.equal(fast_state[key], ref_state[key]), key


# --------------------------------------------------------------------------------------------------
# (b) Pseudo-inputs read from the parameter vs EVCF's identity product


@contextlib.contextmanager
def identity_matmul_pseudo_inputs(model, calls: list):
    """EVCF's way: u = hardtanh(I_K @ P), with a K×K identity (``idle_input``)."""
    prior = model.prior
    eye = torch.eye(prior.pseudo.shape[0])

    def pseudo_inputs() -> torch.Tensor:
        calls.append(1)
        return F.hardtanh(eye @ prior.pseudo, 0.0, 1.0)

    prior.pseudo_inputs = pseudo_inputs
    try:
        yield
    finally:
        del prior.pseudo_inputs


@pytest.mark.parametrize("name", VAMP_MODELS)
def test_pseudo_inputs_from_the_parameter_equal_the_identity_matmul(matrix, name):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, **SMALL[name])
    with torch.no_grad():  # some entries outside [0, 1], so that the hardtanh clips
        model.prior.pseudo[0, :4] = torch.tensor([-0.3, 1.4, 0.5, 1.0])
    model.train()
    x = scipy_batch(matrix, np.arange(30))
    calls: list = []
    with identity_matmul_pseudo_inputs(model, calls):
        reference_u = model.prior.pseudo_inputs()
        ref_parts, ref_grads = loss_and_grads(model, x)
    assert len(calls) == 2  # the loss went through the patched pseudo-inputs
    assert torch.equal(model.prior.pseudo_inputs(), reference_u)
    fast_parts, fast_grads = loss_and_grads(model, x)
    assert torch.equal(fast_parts.loss, ref_parts.loss)
    assert fast_grads.keys() == ref_grads.keys() and "prior.pseudo" in fast_grads
    for key in fast_grads:
        assert torch.equal(fast_grads[key], ref_grads[key]), key


def broadcast_mixture_log_density(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """EVCF's ``log_p_z`` as written: (B, 1, Z) against (1, K, Z), a (B, K, Z) tensor, summed over
    Z, then a max-shifted log-sum-exp over K.  EVCF's ``log_Normal_diag`` leaves out the −½·log 2π
    per dimension; it is added to the (B,) result.  (B, Z), (K, Z) x2 -> (B,)"""
    n_components, dim = means.shape
    z_expand = z.unsqueeze(1)  # (B, 1, Z)
    m, lv = means.unsqueeze(0), logvars.unsqueeze(0)  # (1, K, Z)
    a = torch.sum(-0.5 * (lv + torch.pow(z_expand - m, 2) / torch.exp(lv)), 2) - math.log(n_components)
    a_max, _ = torch.max(a, 1)  # (B,)
    log_prior = a_max + torch.log(torch.sum(torch.exp(a - a_max.unsqueeze(1)), 1))
    return log_prior - 0.5 * dim * LOG_2PI


@pytest.mark.parametrize("seed", [0, 1])
def test_evcf_broadcast_log_density_equals_the_matrix_product_form(seed):
    """EVCF's (B, K, Z) broadcast against mixture_log_density (which tests/models/test_vamp.py
    checks against a brute-force sum)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(7, 4, generator=g, requires_grad=True)
    means = torch.randn(5, 4, generator=g, requires_grad=True)
    logvars = torch.empty(5, 4).uniform_(-3, 2, generator=g).requires_grad_()
    fast = mixture_log_density(z, means, logvars)
    ref = broadcast_mixture_log_density(z, means, logvars)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(fast.sum(), (z, means, logvars)),
                    torch.autograd.grad(ref.sum(), (z, means, logvars))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# (c) Evaluation against a numpy reference


def numpy_metrics(score, fold_in: sp.csr_matrix, heldout: sp.csr_matrix, batch_size: int) -> dict:
    """Per-user Recall@20/50 and NDCG@100 the plain way: dense rows, fold-in = −inf, argsort."""
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    out: dict[str, list] = {"row": [], "recall@20": [], "recall@50": [], "ndcg@100": []}
    for start in range(0, users.size, batch_size):
        rows = users[start : start + batch_size]
        x = fold_in[rows].toarray().astype(np.float32)
        s = score(torch.from_numpy(x)).numpy().astype(np.float64)
        s[x > 0] = -np.inf
        ranking = np.argsort(-s, axis=1, kind="stable")
        truth = heldout[rows].toarray() > 0
        n_held = truth.sum(1)
        for k in (20, 50):
            hits = np.take_along_axis(truth, ranking[:, :k], axis=1).sum(1)
            out[f"recall@{k}"].extend(hits / np.minimum(k, n_held))
        gains = np.take_along_axis(truth, ranking[:, :100], axis=1) / np.log2(np.arange(2, 102))
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(100, n) + 2))) for n in n_held])
        out["ndcg@100"].extend(gains.sum(1) / ideal)
        out["row"].extend(rows)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def eval_data():
    matrix = synthetic_matrix(150, 200, 6000, seed=9)
    return heldout_split(matrix, seed=10)


def exact_scorer(n_items: int):
    """Scores = integer (x @ W, W integer) + a distinct fraction per item: no ties among
    non-fold-in items and exact in float32 whatever the summation order or batch."""
    g = torch.Generator().manual_seed(11)
    weights = torch.randint(-8, 9, (n_items, n_items), generator=g).float()
    base = torch.randperm(n_items, generator=g).float() / 1024.0

    def score(x: torch.Tensor) -> torch.Tensor:
        return x @ weights + base

    return score


@pytest.mark.parametrize("batch_size", [2000, 37])
def test_evaluate_equals_numpy_reference_per_user(eval_data, batch_size):
    fold_in, heldout = eval_data
    score = exact_scorer(200)
    got = evaluate(score, fold_in, heldout, batch_size=batch_size, device="cpu").per_user
    want = numpy_metrics(score, fold_in, heldout, batch_size=batch_size)
    assert len(got) == len(want["row"]) > 100
    np.testing.assert_array_equal(got["row"].to_numpy(), want["row"])
    for name in ("recall@20", "recall@50", "ndcg@100"):
        np.testing.assert_allclose(got[name].to_numpy(), want[name], rtol=1e-12, atol=0, err_msg=name)
    assert 0 < got["ndcg@100"].mean() < 1


def test_evaluate_of_a_trained_shape_model_equals_numpy_reference(eval_data):
    fold_in, heldout = eval_data
    torch.manual_seed(0)
    model = build_model("mult-vae", 200, hidden_size=32, latent_size=8)
    model.eval()
    got = evaluate(model.score, DeviceCSR(fold_in), heldout, batch_size=64, device="cpu").per_user
    want = numpy_metrics(model.score, fold_in, heldout, batch_size=64)
    for name in ("recall@20", "recall@50", "ndcg@100"):
        np.testing.assert_allclose(got[name].to_numpy(), want[name], rtol=1e-12, atol=0, err_msg=name)
    assert not math.isnan(got["ndcg@100"].mean())


# --------------------------------------------------------------------------------------------------
# The sparse first layer (first_layer_from_rows) against the plain dense input step


def _dense_first_layer(dropout, layer, x, clicks=None):
    """The reference path: L2-normalise the dense rows, dropout, then the layer (``clicks`` unused)."""
    return layer(dropout(torch.nn.functional.normalize(x, p=2.0, dim=1)))


@pytest.mark.parametrize("name", ["mult-dae", "mult-vae", "mult-vae-gated", "mult-vae-evcf", "vamp", "hvamp", "hvamp-gated"])
@pytest.mark.parametrize("mode", ["eval", "train-no-dropout"])
def test_sparse_first_layer_equals_dense_path(name, mode, monkeypatch):
    from evcf.models import build_model, layers, multvae, vamp

    n_items = 64
    extra = {"n_pseudo": 4} if "vamp" in name else {}
    x = (torch.rand(12, n_items, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    x[0] = 0
    x[0, 3] = 1  # a user with a single click

    def loss_and_grads(patched: bool):
        torch.manual_seed(7)
        model = build_model(name, n_items, hidden_size=16, dropout=0.0 if mode != "eval" else 0.5, **extra)
        model.train(mode != "eval")
        with monkeypatch.context() as m:
            if patched:
                for module in (layers, multvae, vamp):
                    m.setattr(module, "first_layer_from_rows", _dense_first_layer)
            torch.manual_seed(8)
            parts = model.loss(x, 0.3)
            parts.loss.backward()
        return parts.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    fast_loss, fast_grads = loss_and_grads(patched=False)
    ref_loss, ref_grads = loss_and_grads(patched=True)
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(fast_grads[key], ref_grads[key], rtol=1e-5, atol=1e-6, msg=key)


# --------------------------------------------------------------------------------------------------
# The fused optimizer step (train.fused_optimizer): the same update up to float rounding


def _manual_adam_normgrad(p0, grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """EVCF utils/optimizer.py by hand, in float64: Adam on g / (||g|| + 1e-7)."""
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        g = g / (torch.linalg.vector_norm(g) + 1e-7)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t) * m / (v.sqrt() + eps)
    return p


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_adam_normgrad_is_evcfs_update(dtype):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(30, 7, generator=g, dtype=dtype)
    grads = [torch.randn(30, 7, generator=g, dtype=dtype) * s for s in (10.0, 0.001, 3.0, 1.0)]
    p = torch.nn.Parameter(p0.clone())
    opt = make_optimizer("adam-normgrad", [p], 0.01, fused=True)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    tol = 1e-7 if dtype == torch.float64 else 1e-6  # the kernel takes the norm as a float32 scale
    torch.testing.assert_close(p.detach().double(), _manual_adam_normgrad(p0.double(), [x.double() for x in grads], 0.01),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["mult-vae", "vamp"])
def test_fused_optimizer_takes_the_plain_optimizers_steps(matrix, name):
    """Ten training steps with the fused and the elementwise optimizer: equal up to float32 rounding,
    and the fused optimizer's state round-trips through a checkpoint."""
    optimizer = "adam-normgrad" if name == "vamp" else "adam"
    states = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model(name, N_ITEMS, **SMALL[name])
        model.train()
        opt = make_optimizer(optimizer, model.parameters(), 1e-3, fused=fused)
        order = torch.randperm(120, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(3)
        for epoch in range(4):
            for x in Batches(DeviceCSR(matrix), order, 40):
                train_step(model, opt, x, 0.2)
            if epoch == 1:  # through a checkpoint, as a resumed run
                saved = {k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict()
                opt = make_optimizer(optimizer, model.parameters(), 1e-3, fused=fused)
                model.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(not torch.equal(states[1][k], states[0][k]) for k in states[0])  # truly another kernel
