"""Tests for the breakages that the mutation review of issue 19 found unguarded: each test below
fails with its mutation in place (listed in each docstring) and passes with the code as it is."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

import evcf.training as training
from conftest import write_synthetic_split
from evcf.cli import main
from evcf.data.sparse import load_split
from evcf.training import TrainConfig, _warmed_up, loop, run, self_fitting

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


def test_a_vae_run_resumes_and_trains_only_the_epochs_left(processed, tmp_path, monkeypatch, caplog):
    """Mutation: _fit_vae ignores its checkpoint (a restart gives the same numbers on the CPU)."""
    hparams, train = {"hidden_size": 32, "latent_size": 8}, {"epochs": 5, "batch_size": 64,
                                                              "total_anneal_steps": 100, "checkpoint_minutes": 0}
    real, epochs_trained = loop.train_pass, []

    def counting(*args, epoch, **kw):
        epochs_trained.append(epoch)
        if stop_at is not None and epoch == stop_at:
            raise RuntimeError("killed")  # the process dies during this epoch
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(loop, "train_pass", counting)
    stop_at = 3
    with pytest.raises(RuntimeError, match="killed"):
        run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=hparams, train=train, seed=1,
            out_dir=tmp_path / "run", device="cpu")
    assert epochs_trained == [1, 2, 3]
    epochs_trained.clear()
    stop_at = None
    with caplog.at_level(logging.INFO, logger="evcf.training"):
        resumed = run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=hparams, train=train,
                      seed=1, out_dir=tmp_path / "run", device="cpu")
    assert epochs_trained == [3, 4, 5]  # epochs 1 and 2 came from the checkpoint
    assert any("mult-vae: resuming from epoch 2 of 5" in r.getMessage() for r in caplog.records)
    assert resumed["epochs_run"] == 5 and len(pd.read_csv(tmp_path / "run" / "history.csv")) == 5
    # a finished run started again trains nothing: its results are already there
    epochs_trained.clear()
    again = run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=hparams, train=train, seed=1,
                out_dir=tmp_path / "run", device="cpu")
    assert epochs_trained == [] and again["ndcg@100"] == resumed["ndcg@100"]


def test_evcf_split_checks_the_fingerprint(tmp_path, capsys):
    """Mutation: cmd_split never calls check_fingerprint."""
    from evcf.data.synthetic import SyntheticSpec, generate_ratings, write_ratings

    raw = tmp_path / "ratings.csv"
    write_ratings(generate_ratings(SyntheticSpec(n_users=200, n_items=60, mean_items=20, n_topics=4, seed=1)), raw)
    args = ["split", "--raw", str(raw), "--format", "csv", "--threshold", "3.5", "--min-items", "5",
            "--heldout", "20"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    users = json.loads((tmp_path / "ok" / "stats.json").read_text())["filtered"]["users"]
    capsys.readouterr()
    assert main([*args, "--fingerprint", json.dumps({"users": users + 1}), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "users" in err
    assert not (tmp_path / "bad").exists()
    assert main([*args, "--fingerprint", json.dumps({"users": users}), "--out", str(tmp_path / "good")]) == 0


def test_early_stopping_counts_only_after_the_warm_up():
    """Mutation: _warmed_up always True (patience would run out during β's warm-up)."""
    evcf = TrainConfig(beta_schedule="evcf", warmup_epochs=10)
    assert not _warmed_up(evcf, 9, 10_000) and _warmed_up(evcf, 10, 0)
    liang = TrainConfig(beta_schedule="liang", total_anneal_steps=1000, anneal_cap=0.2)
    assert not _warmed_up(liang, 100, 199) and _warmed_up(liang, 1, 200)
    assert _warmed_up(TrainConfig(beta_schedule="none"), 1, 0)
