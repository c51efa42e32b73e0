"""CDAE: shapes, the loss by hand, held-out users (zero and fitted user vectors), determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from evcf.errors import EvcfError
from evcf.models import CDAE, build_model
from evcf.models.cdae import logistic_loss, loss_weights

N_ITEMS = 30
FAST = {"hidden_size": 8, "epochs": 3, "batch_size": 16, "weight_decays": [1e-3]}


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(0)
    return sp.csr_matrix((rng.random((60, N_ITEMS)) < 0.2).astype(np.float32))


def fitted(train, seed=0, **hparams):
    model = build_model("cdae", N_ITEMS, **{**FAST, **hparams})
    model.fit(train, seed=seed, weight_decay=model.config.weight_decays[0])
    return model


def params(model):
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def test_shapes_and_fresh_scores(train):
    model = fitted(train)
    assert CDAE.seeded is True
    assert model.network.encoder.weight.shape == (8, N_ITEMS)  # W (H, I)
    assert model.network.decoder.weight.shape == (N_ITEMS, 8)  # W' (I, H)
    assert len(model.history) == 3 and all(math.isfinite(v) for v in model.history)
    x = torch.from_numpy(train[:5].toarray())
    scores = model.score(x)
    assert scores.shape == (5, N_ITEMS) and scores.dtype == torch.float32
    scores[0, 0] = -float("inf")  # the caller masks in place: a fresh tensor every call
    assert torch.isfinite(model.score(x)).all()
    assert model.score(torch.zeros(0, N_ITEMS)).shape == (0, N_ITEMS)


def test_zero_user_vector_score_is_a_function_of_the_row_alone(train):
    model = fitted(train)
    net = model.network
    held_out = torch.tensor((np.random.default_rng(5).random((4, N_ITEMS)) < 0.3), dtype=torch.float32)
    # by hand: h = σ(W x + b), logits = W' h + b', with V_u = 0
    w, b = net.encoder.weight.detach(), net.encoder.bias.detach()
    w2, b2 = net.decoder.weight.detach(), net.decoder.bias.detach()
    expected = torch.sigmoid(held_out @ w.T + b) @ w2.T + b2
    torch.testing.assert_close(model.score(held_out), expected)
    # a row scores the same whatever else is in the batch
    alone = model.score(held_out[2:3])
    torch.testing.assert_close(alone[0], model.score(held_out)[2])
    assert torch.equal(model.fold_in_user_vectors(held_out), torch.zeros(4, 8))


def test_fitted_user_vector_leaves_the_network_alone_and_lowers_the_loss(train):
    model = fitted(train, user_vector="fit", fold_in_steps=30)
    before = params(model)
    held_out = torch.tensor((np.random.default_rng(6).random((4, N_ITEMS)) < 0.3), dtype=torch.float32)
    v = model.fold_in_user_vectors(held_out)
    scores = model.score(held_out)
    after = params(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # the network is frozen while fitting V_u
    assert all(p.requires_grad for p in model.network.parameters())  # and restored afterwards
    assert v.shape == (4, 8) and v.abs().sum() > 0
    weights = loss_weights(held_out, model.config.negative_ratio, None)
    with torch.no_grad():
        zero_loss = logistic_loss(model.network(held_out, torch.zeros(4, 8)), held_out, weights)
        fit_loss = logistic_loss(model.network(held_out, v), held_out, weights)
    assert (fit_loss < zero_loss).all()
    torch.testing.assert_close(scores, model.network(held_out, v).detach())
    assert torch.equal(model.score(held_out), scores)  # deterministic
    with torch.inference_mode():  # the evaluation loop may score without autograd
        assert torch.equal(model.score(held_out), scores)


def test_seeded_determinism(train):
    x = torch.from_numpy(train[:6].toarray())
    a, b, c = fitted(train, seed=1), fitted(train, seed=1), fitted(train, seed=2)
    assert a.history == b.history
    assert torch.equal(a.score(x), b.score(x))
    assert not torch.equal(a.score(x), c.score(x))
    restored = CDAE(N_ITEMS, a.config)
    restored.load_state(a.state())
    assert torch.equal(restored.score(x), a.score(x))


def test_loss_weights_and_loss_by_hand():
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    # k = 1: each of user 0's 3 unclicked items is in the loss with probability 1 · 2 / 3
    expected = torch.tensor([[1.0, 2 / 3, 2 / 3, 2 / 3, 1.0], [0.0] * 5])
    torch.testing.assert_close(loss_weights(x, 1.0, None), expected)
    assert torch.equal(loss_weights(x, 0.0, None), torch.ones(2, 5))  # full loss
    gen = torch.Generator().manual_seed(0)
    drawn = torch.stack([loss_weights(x, 1.0, gen) for _ in range(3000)])  # (draws, 2, 5)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert (drawn[:, 0, [0, 4]] == 1).all() and (drawn[:, 1] == 0).all()
    assert abs(drawn[:, 0, 1:4].mean().item() - 2 / 3) < 0.02
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5, -0.5]])
    w = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    sig = torch.sigmoid(logits[0])
    by_hand = -(math.log(sig[0]) + math.log(1 - sig[1]) + math.log(1 - sig[3]) + math.log(sig[4]))
    assert logistic_loss(logits, x[:1], w).item() == pytest.approx(by_hand, rel=1e-6)


def test_bad_settings_are_errors():
    with pytest.raises(EvcfError, match="user_vector"):
        build_model("cdae", 5, user_vector="mean")
    with pytest.raises(EvcfError, match="corruption"):
        build_model("cdae", 5, corruption=1.0)
    with pytest.raises(EvcfError, match="weight_decays"):
        build_model("cdae", 5, weight_decays=[])
    with pytest.raises(EvcfError, match="4 items"):
        build_model("cdae", 4).fit(sp.csr_matrix(np.eye(5, dtype=np.float32)), weight_decay=0.0)


def loop_before_the_trainer(model, train, seed, weight_decay):
    """CDAE.fit as it was written before CDAETrainer (one loop, the loss read back every step),
    kept here to pin that the refactored fit trains exactly the same network."""
    from evcf.batches import DeviceCSR
    from evcf.models.cdae import CDAENetwork

    c = model.config
    n_users = train.shape[0]
    init_gen = torch.Generator().manual_seed(seed)
    step_gen = torch.Generator().manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed + 1)
    model.weight_decay = weight_decay
    model.network = CDAENetwork(N_ITEMS, c.hidden_size)
    model.network.reset(init_gen)
    users = torch.nn.Embedding(n_users, c.hidden_size, sparse=True)
    torch.nn.init.zeros_(users.weight)
    opt = torch.optim.Adam(model.network.parameters(), lr=c.lr)
    opt_users = torch.optim.SparseAdam(users.parameters(), lr=c.lr)
    rows_of = DeviceCSR(sp.csr_matrix(train), "cpu")
    history = []
    model.network.train()
    for _ in range(c.epochs):
        perm = torch.randperm(n_users, generator=order_gen)
        total = 0.0
        for start in range(0, n_users, c.batch_size):
            rows = perm[start:start + c.batch_size]
            x = rows_of.dense(rows)
            keep = 1.0 - c.corruption
            noisy = x * (torch.rand(x.shape, generator=step_gen) < keep) / keep if c.corruption > 0 else x
            v = users(rows)
            weights = loss_weights(x, c.negative_ratio, step_gen)
            loss = logistic_loss(model.network(noisy, v), x, weights).mean() + model.penalty(v)
            opt.zero_grad(set_to_none=True)
            opt_users.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt_users.step()
            total += loss.item() * rows.numel()
        history.append(total / n_users)
    model.network.eval()
    return history


@pytest.mark.parametrize("hparams", [{}, {"corruption": 0.0, "negative_ratio": 0.0, "batch_size": 7}])
def test_fit_trains_exactly_what_the_loop_before_the_trainer_trained(train, hparams):
    """Same seed, same network to the bit, same epoch losses, same global RNG state afterwards."""
    torch.manual_seed(123)
    new = fitted(train, seed=3, **hparams)
    new_rng = torch.get_rng_state()
    torch.manual_seed(123)
    old = build_model("cdae", N_ITEMS, **{**FAST, **hparams})
    old_history = loop_before_the_trainer(old, train, 3, old.config.weight_decays[0])
    assert new.history == old_history
    for key, value in params(old).items():
        assert torch.equal(params(new)[key], value), key
    assert torch.equal(torch.get_rng_state(), new_rng)  # nn.Linear/nn.Embedding drew in the same order
