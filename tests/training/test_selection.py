"""Model selection sees validation users only: the VAE loop's best epoch, the self-fitting models'
in-run search, early stopping after the warm-up, the seeded and seedless models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import evcf.training as training
from conftest import write_synthetic_split
from evcf.data.sparse import load_split
from evcf.models import MODEL_NAMES, build_model, model_class
from evcf.training import TrainConfig, _warmed_up, run, self_fitting


SMALL = {"hidden_size": 32, "latent_size": 8}


FAST = {"epochs": 4, "batch_size": 64, "total_anneal_steps": 100}


def make_split(out, seed):
    return write_synthetic_split(out, 40, n_users=400, n_items=100, mean_items=25, n_topics=5, seed=seed)


# small grids: two settings each, so that the in-run search has something to choose
SELF_FITTING = {
    "wmf": {"factors": [4], "regularizations": [1.0, 30.0], "alphas": [2.0], "iterations": 3},
    "slim": {"l1_penalties": [0.5], "l2_penalties": [1.0, 50.0], "max_iter": 50},
    "cdae": {"hidden_size": 8, "weight_decays": [1e-4, 1e-1], "epochs": 2, "batch_size": 100},
    "ease": {"lambdas": [5.0, 500.0]},
}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 50, n_users=500, n_items=120,
                                 mean_items=25, n_topics=6, seed=5)


def test_selection_sees_only_validation_users_and_test_uses_the_best_epoch(tmp_path, monkeypatch):
    data_dir = make_split(tmp_path / "processed", seed=1)
    data = load_split(data_dir)
    import evcf.training
    from evcf.training import loop

    seen = []
    real_evaluate = evcf.training.evaluate

    def spy(score, fold_in, heldout, **kw):
        seen.append(heldout.shape[0] and id(heldout))
        return real_evaluate(score, fold_in, heldout, **kw)

    for module in (loop, evcf.training):  # the epochs' validation, the run's test
        monkeypatch.setattr(module, "evaluate", spy)
    # a learning rate that makes later epochs worse than an earlier one
    settings = {**FAST, "epochs": 10, "lr": 1.0}
    metrics = run(data, dataset="toy", model_name="mult-vae", hparams=dict(SMALL), train=settings, seed=3,
                  out_dir=tmp_path / "run", device="cpu")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # every evaluation but the last was on the validation users, the last on the test users
    assert seen[:-1] == [id(data.validation_te)] * settings["epochs"]
    assert seen[-1] == id(data.test_te)
    best = int(history["val_ndcg@100"].idxmax()) + 1
    assert metrics["best_epoch"] == best and best < settings["epochs"], history
    # the reported test metrics equal a fresh evaluation of the best epoch's weights (refit to there)
    refit = run(data, dataset="toy", model_name="mult-vae", hparams=dict(SMALL),
                train={**settings, "epochs": best, "weights": "fp32"}, seed=3, out_dir=tmp_path / "refit", device="cpu")
    model = build_model("mult-vae", data.n_items, **SMALL)
    model.load_state_dict(torch.load(tmp_path / "refit" / "model.pt", weights_only=False)["state"])
    model.eval()
    fresh = real_evaluate(model.score, data.test_tr, data.test_te, device="cpu").per_user.mean()
    for key in ("recall@20", "recall@50", "ndcg@100"):
        assert metrics[key] == pytest.approx(fresh[key], abs=1e-6), key
        assert refit[key] == pytest.approx(metrics[key], abs=1e-6), key


@pytest.mark.parametrize("model", sorted(SELF_FITTING))
def test_self_fitting_models_select_their_setting_on_validation_users_only(processed, tmp_path, monkeypatch, model):
    """Mutation: _fit_self_fitting scores its candidates on data.test_tr / data.test_te."""
    data = load_split(processed)
    calls = []
    real = training.evaluate

    def spy(score, fold_in, heldout, **kw):
        calls.append("test" if heldout is data.test_te else "validation" if heldout is data.validation_te else "?")
        return real(score, fold_in, heldout, **kw)

    for module in (self_fitting, training):  # the search's validation, the run's test
        monkeypatch.setattr(module, "evaluate", spy)
    metrics = run(data, dataset="toy", model_name=model, hparams=dict(SELF_FITTING[model]),
                  train={"eval_batch_size": 64}, seed=1, out_dir=tmp_path, device="cpu")
    assert calls == ["validation", "validation", "test"], calls
    tried = pd.read_csv(tmp_path / "tuning.csv")
    assert len(tried) == 2 and metrics["in_run_search"]["settings_tried"] == 2
    assert metrics["validation_ndcg@100"] == pytest.approx(tried["val_ndcg@100"].max(), abs=1e-6)


def _ndcg100(scores: np.ndarray, fold_in, heldout) -> float:
    """NDCG@100 as docs/protocol.md defines it, written here independently of evcf.metrics."""
    scores = scores.copy()
    scores[fold_in.toarray() > 0] = -np.inf
    values = []
    for u in range(scores.shape[0]):
        truth = set(heldout[u].indices)
        if not truth:
            continue
        top = np.argsort(-scores[u], kind="stable")[:100]
        dcg = sum(1.0 / np.log2(r + 2) for r, item in enumerate(top) if item in truth)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(100, len(truth))))
        values.append(dcg / idcg)
    return float(np.mean(values))


def test_eases_in_run_scores_are_validation_ndcg_recomputed_here(processed, tmp_path):
    """EASE's search, recomputed: Steck's closed form and NDCG@100 on the validation users."""
    data = load_split(processed)
    run(data, dataset="toy", model_name="ease", hparams=dict(SELF_FITTING["ease"]), train={}, seed=1,
        out_dir=tmp_path, device="cpu")
    tried = pd.read_csv(tmp_path / "tuning.csv")
    x = data.train.toarray().astype(np.float64)
    for lam, reported in zip(SELF_FITTING["ease"]["lambdas"], tried["val_ndcg@100"]):
        p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        ours = _ndcg100(data.validation_tr.toarray() @ b, data.validation_tr, data.validation_te)
        assert reported == pytest.approx(ours, abs=1e-5)


def test_early_stopping_counts_only_after_the_warm_up():
    """Mutation: _warmed_up always True (patience would run out during β's warm-up)."""
    evcf = TrainConfig(beta_schedule="evcf", warmup_epochs=10)
    assert not _warmed_up(evcf, 9, 10_000) and _warmed_up(evcf, 10, 0)
    liang = TrainConfig(beta_schedule="liang", total_anneal_steps=1000, anneal_cap=0.2)
    assert not _warmed_up(liang, 100, 199) and _warmed_up(liang, 1, 200)
    assert _warmed_up(TrainConfig(beta_schedule="none"), 1, 0)


def test_self_fitting_setting_is_the_argmax_of_tuning_csv(tmp_path):
    data = make_split(tmp_path / "processed", seed=1)
    run(load_split(data), dataset="toy", model_name="ease", hparams={"lambdas": [1.0, 30.0, 300.0, 3000.0]},
        train={}, seed=1, out_dir=tmp_path / "run", device="cpu")
    tuning = pd.read_csv(tmp_path / "run" / "tuning.csv")
    assert tuning["selected"].sum() == 1
    winner = tuning.loc[tuning["val_ndcg@100"].idxmax(), "lambda"]
    assert tuning.loc[tuning["selected"], "lambda"].item() == winner
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["in_run_search"]["selected"] == {"lambda": winner}


def test_every_registered_model_says_whether_it_is_seeded():
    seeded = {name: model_class(name).seeded for name in MODEL_NAMES}
    assert seeded["popularity"] is False and seeded["ease"] is False and seeded["mult-vae"] is True
    assert all(isinstance(v, bool) for v in seeded.values())


def test_a_seedless_model_gives_the_same_result_for_every_seed(tmp_path):
    """Why one fit is enough: the identity of a seedless run leaves the seed out."""
    data = make_split(tmp_path / "processed", seed=1)
    a = run(load_split(data), dataset="toy", model_name="popularity", hparams={}, train={}, seed=1,
            out_dir=tmp_path / "a", device="cpu")
    b = run(load_split(data), dataset="toy", model_name="popularity", hparams={}, train={}, seed=2,
            out_dir=tmp_path / "b", device="cpu")
    assert a["identity"] == b["identity"] and a["identity"]["seed"] is None
    assert a["ndcg@100"] == b["ndcg@100"] and a["seeded"] is False
