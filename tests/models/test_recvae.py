"""RecVAE: the composite prior, the alternating passes, the frozen encoder, resume, determinism, and
the loop's default contract (an existing model trains exactly as the plain loop)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_synthetic_split
from evcf import training
from evcf.batches import Batches, DeviceCSR
from evcf.data.shapes import synthetic_matrix
from evcf.data.sparse import load_split
from evcf.errors import EvcfError
from evcf.evaluate import evaluate
from evcf.models import RecVAE, build_model
from evcf.models.recvae import DECODER, ENCODER, composite_log_prior
from evcf.schedules import beta_liang

SMALL = {"hidden_size": 24, "latent_size": 6, "num_layers": 3}
FAST = {"epochs": 4, "batch_size": 64, "lr": 0.001, "beta_schedule": "none", "checkpoint_minutes": 0}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 50, n_users=500, n_items=120,
                                 mean_items=25, n_topics=6, seed=5)


def _run(processed, out, *, seed=1, model="recvae", hparams=SMALL, train=FAST):
    return training.run(load_split(processed), dataset="toy", model_name=model, hparams=dict(hparams),
                        train=dict(train), seed=seed, out_dir=out, device="cpu")


def _strip(metrics):
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "resumed_from_epoch")}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(not torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# The composite prior and the KL term


def _normal_pdf(z: float, mu: float, var: float) -> float:
    return math.exp(-(z - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)


def test_composite_prior_density_matches_a_hand_computation():
    z = torch.tensor([[0.3, -1.2], [2.5, 0.0]], dtype=torch.float64)
    old_mu = torch.tensor([[0.1, -1.0], [-0.4, 3.0]], dtype=torch.float64)
    old_logvar = torch.tensor([[-1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)
    got = composite_log_prior(z, old_mu, old_logvar, (0.15, 0.75, 0.1), 10.0)
    for b in range(2):
        for j in range(2):
            zz, m, v = z[b, j].item(), old_mu[b, j].item(), math.exp(old_logvar[b, j].item())
            # 3/20 N(z; 0, 1) + 3/4 N(z; old posterior) + 1/10 N(z; 0, e^10), per coordinate
            hand = math.log(0.15 * _normal_pdf(zz, 0.0, 1.0) + 0.75 * _normal_pdf(zz, m, v)
                            + 0.1 * _normal_pdf(zz, 0.0, math.exp(10.0)))
            assert got[b, j].item() == pytest.approx(hand, rel=1e-12)


def test_the_kl_term_is_the_one_sample_estimate_against_the_frozen_encoders_posterior():
    torch.manual_seed(0)
    model = build_model("recvae", 30, **SMALL)
    with torch.no_grad():  # make the frozen copy differ from the encoder
        for p in model.encoder_old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = (torch.rand(4, 30) < 0.3).float()
    x[:, 0] = 1.0
    model.train()
    out = model(x)
    kl = model.kl(out, x, None)  # (B,)
    old_mu, old_logvar = model.encoder_old(x, None, model.no_dropout)
    for b in range(4):
        total = 0.0
        for j in range(6):
            zz, mu, lv = out.z[b, j].item(), out.mu[b, j].item(), out.logvar[b, j].item()
            log_q = math.log(_normal_pdf(zz, mu, math.exp(lv)))
            log_p = math.log(0.15 * _normal_pdf(zz, 0.0, 1.0)
                             + 0.75 * _normal_pdf(zz, old_mu[b, j].item(), math.exp(old_logvar[b, j].item()))
                             + 0.1 * _normal_pdf(zz, 0.0, math.exp(10.0)))
            total += log_q - log_p
        assert kl[b].item() == pytest.approx(total, rel=1e-4, abs=1e-4)


def test_the_kl_weight_is_gamma_times_the_users_clicks():
    """loss = NLL + mean_u(γ · |x_u| · KL_u) in an encoder pass; NLL alone in a decoder pass."""
    torch.manual_seed(0)
    model = build_model("recvae", 30, **SMALL, gamma=0.02)
    x = (torch.rand(5, 30) < 0.3).float()
    x[:, 0] = 1.0
    model.train()
    model.begin_phase(ENCODER)
    torch.manual_seed(1)
    parts = model.loss(x)
    torch.manual_seed(1)
    out = model(x)
    rec = -(torch.log_softmax(out.logits, 1) * x).sum(1).mean()
    expected = rec + (0.02 * x.sum(1) * model.kl(out, x, None)).mean()
    assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts.nll.item() == pytest.approx(rec.item(), rel=1e-6)
    model.begin_phase(DECODER)
    parts = model.loss(x)
    assert parts.loss.item() == pytest.approx(parts.nll.item()) and parts.kl.item() == 0.0


def test_the_decoder_pass_feeds_the_encoder_without_dropout():
    """The authors' code (RecVAE wsdm notebook) runs the encoder with dropout_rate 0 in the decoder
    passes: the decoder pass's loss is the NLL of z drawn around the encoder's mean of the *clean* rows,
    recomputed here by hand from the same random stream; the encoder passes drop inputs (p = 0.5)."""
    torch.manual_seed(0)
    model = build_model("recvae", 30, **SMALL)
    x = (torch.rand(6, 30) < 0.3).float()
    x[:, 0] = 1.0
    model.train()
    model.begin_phase(DECODER)
    seen = []
    real = model.encoder.forward

    def spy(rows, clicks, dropout):
        seen.append(dropout.p)
        return real(rows, clicks, dropout)

    model.encoder.forward = spy
    torch.manual_seed(3)
    parts = model.loss(x)
    assert seen == [0.0]
    with torch.no_grad():
        torch.manual_seed(3)
        mu, logvar = real(x, None, torch.nn.Dropout(0.0))  # (B, Z) the clean rows' posterior
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        expected = -(torch.log_softmax(model.decoder(z), 1) * x).sum(1).mean()
    assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    seen.clear()
    model.begin_phase(ENCODER)
    model.loss(x)
    assert seen[0] == model.config.dropout == 0.5


# --------------------------------------------------------------------------------------------------
# The training contract: alternating passes, the frozen encoder


def test_each_pass_updates_only_its_half():
    torch.manual_seed(0)
    model = build_model("recvae", 60, **SMALL)
    cfg = training.train_config({"batch_size": 40, "beta_schedule": "none", "lr": 0.01})
    train = DeviceCSR(synthetic_matrix(120, 60, 1500, seed=4))
    optimizers = training.make_optimizers(model, cfg)
    assert set(optimizers) == {"encoder", "decoder"}
    passes = training.epoch_passes(model, train, torch.Generator().manual_seed(1), cfg.batch_size, epoch=1)
    assert [phase for phase, _ in passes] == [ENCODER, ENCODER, ENCODER, DECODER]

    snapshots, real_begin = [], model.begin_phase

    def begin(phase):
        snapshots.append((phase, _snapshot(model.encoder), _snapshot(model.decoder), _snapshot(model.encoder_old)))
        real_begin(phase)

    model.begin_phase = begin
    model.train()
    training.train_epoch(model, optimizers, passes, cfg, epoch=1, update_count=0, device=train.device)
    snapshots.append((None, _snapshot(model.encoder), _snapshot(model.decoder), _snapshot(model.encoder_old)))
    for (phase, enc0, dec0, old0), (_, enc1, dec1, old1) in zip(snapshots, snapshots[1:]):
        assert _same(old0, old1)  # the frozen copy never moves within an epoch
        if phase == ENCODER:
            assert _all_changed(enc0, enc1) and _same(dec0, dec1)
        else:
            assert _all_changed(dec0, dec1) and _same(enc0, enc1)
    # a decoder pass computes no gradient for the encoder at all (nor for the frozen copy)
    model.zero_grad(set_to_none=True)
    real_begin(DECODER)
    batch = train.batch([0, 1, 2])
    model.loss(batch.x, 0.0, batch.clicks).loss.backward()
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.encoder_old.parameters()])
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_the_frozen_encoder_is_refreshed_once_per_epoch(processed, tmp_path, monkeypatch):
    seen = []  # (epoch, the frozen copy equals the encoder right after the refresh)
    real_refresh = RecVAE.refresh_prior
    state = {}

    def refresh(self):
        real_refresh(self)
        seen.append(_same(_snapshot(self.encoder_old), _snapshot(self.encoder)))
        state["after_refresh"] = _snapshot(self.encoder_old)

    def begin(self, phase):  # within the epoch the copy stays as refreshed
        assert _same(_snapshot(self.encoder_old), state["after_refresh"])
        self.phase = phase

    monkeypatch.setattr(RecVAE, "refresh_prior", refresh)
    monkeypatch.setattr(RecVAE, "begin_phase", begin)
    _run(processed, tmp_path, train={**FAST, "epochs": 3})
    assert seen == [True, True, True]


def test_the_loop_refuses_a_beta_schedule_recvae_would_ignore(processed, tmp_path):
    with pytest.raises(EvcfError, match=r"recvae weighs its KL term itself; train.beta_schedule = 'liang'"):
        _run(processed, tmp_path, train={**FAST, "beta_schedule": "liang"})


# --------------------------------------------------------------------------------------------------
# Resume and determinism


def test_resume_after_a_crash_in_the_middle_of_a_pass_gives_the_uninterrupted_result(processed, tmp_path,
                                                                                     monkeypatch):
    full = _run(processed, tmp_path / "full")

    calls = {"n": 0}
    real_begin = RecVAE.begin_phase

    def crash(self, phase):  # the 2nd encoder pass of epoch 3 (4 passes an epoch): after 2 of its steps
        calls["n"] += 1
        real_begin(self, phase)
        if calls["n"] == 10:
            real_loss, steps = self.loss, {"n": 0}

            def loss(*args, **kwargs):
                steps["n"] += 1
                if steps["n"] == 3:
                    raise KeyboardInterrupt("killed")
                return real_loss(*args, **kwargs)

            self.loss = loss

    monkeypatch.setattr(RecVAE, "begin_phase", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(processed, tmp_path / "killed")
    ckpt = torch.load(tmp_path / "killed" / training.CHECKPOINT, weights_only=False)
    assert ckpt["epoch"] == 2 and not (tmp_path / "killed/metrics.json").exists()
    # the checkpoint holds both optimizers' states and the frozen encoder
    assert set(ckpt["optimizers"]) == {"encoder", "decoder"}
    assert all(sd["state"] for sd in ckpt["optimizers"].values())
    assert any(k.startswith("encoder_old.") for k in ckpt["model"])
    monkeypatch.setattr(RecVAE, "begin_phase", real_begin)

    resumed = _run(processed, tmp_path / "killed")
    assert _strip(full) == _strip(resumed)
    assert (tmp_path / "full/per_user.csv").read_bytes() == (tmp_path / "killed/per_user.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full/history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "killed/history.csv").drop(columns="seconds"))


def test_same_seed_same_result_other_seed_other_result(processed, tmp_path):
    train = {**FAST, "epochs": 2}
    a = _run(processed, tmp_path / "a", seed=1, train=train)
    b = _run(processed, tmp_path / "b", seed=1, train=train)
    c = _run(processed, tmp_path / "c", seed=2, train=train)
    assert _strip(a) == _strip(b)
    assert (tmp_path / "a/per_user.csv").read_bytes() == (tmp_path / "b/per_user.csv").read_bytes()
    assert a["ndcg@100"] != c["ndcg@100"]


# --------------------------------------------------------------------------------------------------
# The default contract: every other model trains as the plain loop did


def test_an_existing_model_trains_exactly_as_the_plain_loop(processed, tmp_path):
    """Mult-VAE through the loop (optimizer groups, phases, hooks at their defaults) against the
    plain loop written out here: one Adam over all parameters, one shuffle per epoch, one step per
    batch with Liang's β, validation after each epoch.  Equal bit for bit."""
    data, out = load_split(processed), tmp_path
    hparams, seed = {"hidden_size": 32, "latent_size": 8}, 3
    cfg = training.train_config({"epochs": 3, "batch_size": 64, "total_anneal_steps": 100, "fused_optimizer": False})

    torch.manual_seed(seed)
    model = build_model("mult-vae", data.n_items, **hparams)
    _, history, *_ = training._fit_vae(model, data, cfg, model_name="mult-vae", identity={"test": 1}, seed=seed,
                                         device=torch.device("cpu"), out_dir=out)
    loop_state = _snapshot(model)

    torch.manual_seed(seed)
    plain = build_model("mult-vae", data.n_items, **hparams)
    optimizer = torch.optim.Adam(plain.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    shuffle = torch.Generator().manual_seed(seed)
    train, val_in = DeviceCSR(data.train), DeviceCSR(data.validation_tr)
    updates, losses, vals = 0, [], []
    for _ in range(cfg.epochs):
        plain.train()
        total, n = torch.zeros((), dtype=torch.float64), 0
        for batch in Batches(train, torch.randperm(train.n_rows, generator=shuffle), cfg.batch_size):
            parts = plain.loss(batch.x, beta_liang(updates, cfg.total_anneal_steps, cfg.anneal_cap), batch.clicks)
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            optimizer.step()
            total += parts.loss.detach()
            updates, n = updates + 1, n + 1
        losses.append(float(total) / n)
        plain.eval()
        vals.append(float(evaluate(plain.score, val_in, data.validation_te, batch_size=cfg.eval_batch_size,
                                   metrics=("ndcg@100",), with_clicks=True).per_user["ndcg@100"].mean()))
    assert [h["train_loss"] for h in history] == losses
    assert [h["val_ndcg@100"] for h in history] == vals
    assert _same(loop_state, _snapshot(plain))
    assert np.isfinite(losses).all()


def test_recvae_learns_through_its_alternating_epochs():
    """On test_models_learn's clustered toy data, RecVAE trained by the loop's epoch (train_epoch)
    beats popularity by as much as the other VAE models must there."""
    import scipy.sparse as sp
    from test_models_learn import N_ITEMS, ndcg_at_k, synthetic_data

    train, fold_in, heldout = synthetic_data()
    popularity = build_model("popularity", N_ITEMS)
    popularity.fit(sp.csr_matrix(train))
    pop_ndcg = ndcg_at_k(popularity.score(torch.from_numpy(fold_in)).numpy(), fold_in, heldout)
    torch.manual_seed(0)
    model = build_model("recvae", N_ITEMS, hidden_size=64, latent_size=16)
    cfg = training.train_config({"batch_size": 100, "lr": 1e-2, "beta_schedule": "none"})
    optimizers, rows, order = training.make_optimizers(model, cfg), DeviceCSR(sp.csr_matrix(train)), \
        torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(1, 16):
        passes = training.epoch_passes(model, rows, order, cfg.batch_size, epoch)
        training.train_epoch(model, optimizers, passes, cfg, epoch=epoch, update_count=0, device=rows.device)
    ndcg = ndcg_at_k(model.score(torch.from_numpy(fold_in)).numpy(), fold_in, heldout)
    assert pop_ndcg < 0.3
    assert ndcg > pop_ndcg + 0.2, f"recvae: NDCG@100 {ndcg:.3f} vs popularity {pop_ndcg:.3f}"


def test_a_pass_may_step_several_groups():
    """A pass naming two groups steps both optimizers: Mult-VAE split into two Adams stepped together
    trains exactly as with one Adam over all its parameters (Adam works per element)."""
    from evcf.models import MultVAE
    from evcf.models.base import Phase

    class TwoGroups(MultVAE):
        def optimizer_groups(self):
            return {"enc": list(self.encoder.parameters()), "dec": list(self.decoder.parameters())}

        def epoch_phases(self, epoch):
            return (Phase("both", ("enc", "dec")),)

    cfg = training.train_config({"batch_size": 40, "total_anneal_steps": 10})
    train = DeviceCSR(synthetic_matrix(120, 60, 1500, seed=4))
    states = []
    for cls in (MultVAE, TwoGroups):
        torch.manual_seed(0)
        model = cls(60, MultVAE.Config(hidden_size=16, latent_size=6))
        optimizers = training.make_optimizers(model, cfg)
        passes = training.epoch_passes(model, train, torch.Generator().manual_seed(1), cfg.batch_size, 1)
        model.train()
        training.train_epoch(model, optimizers, passes, cfg, epoch=1, update_count=0, device=train.device)
        states.append(_snapshot(model))
    assert len(training.make_optimizers(TwoGroups(60, MultVAE.Config(hidden_size=16, latent_size=6)), cfg)) == 2
    assert _same(*states)
