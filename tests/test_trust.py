"""A number means what it says: run identity, model selection, ties, seedless runs, integrity.

Each test here reproduces a way a wrong number could reach the table without a warning, and checks
that it no longer can.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_synthetic_split
from evcf.data.sparse import load_split
from evcf.data.split import binarize_filter, check_fingerprint, split_users
from evcf.data.synthetic import SyntheticSpec, generate_ratings
from evcf.errors import EvcfError
from evcf.evaluate import evaluate
from evcf.metrics import topk_hits
from evcf.models import MODEL_NAMES, build_model, model_class
from evcf.training import CHECKPOINT, run

SMALL = {"hidden_size": 32, "latent_size": 8}
FAST = {"epochs": 4, "batch_size": 64, "total_anneal_steps": 100}


def make_split(out, seed):
    return write_synthetic_split(out, 40, n_users=400, n_items=100, mean_items=25, n_topics=5, seed=seed)


def train(processed, out, **kw):
    args = dict(dataset="toy", model_name="mult-vae", hparams=dict(SMALL), train=dict(FAST), seed=1,
                out_dir=out, device="cpu")
    args.update(kw)
    return run(load_split(processed), **args)


# -- 1. a rerun never scores old weights on new data --------------------------------------------------


def test_a_new_split_in_the_same_folder_retrains_from_scratch(tmp_path, caplog):
    data = tmp_path / "processed"
    make_split(data, seed=1)
    train(data, tmp_path / "run", stop_at=2)  # unfinished: its checkpoint stays (a finished run deletes it)
    first = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    shutil.rmtree(data)
    make_split(data, seed=2)  # another split, same folder: only its content differs
    with caplog.at_level(logging.WARNING, logger="evcf.training"):
        second = train(data, tmp_path / "run")
    fresh = train(data, tmp_path / "fresh")  # what the new split gives when nothing is cached
    assert any("belongs to another run" in r.getMessage() and "data" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "checkpoint.stale.pt").exists()
    assert second["identity"]["data"] != first["identity"]["data"]
    for key in ("validation_ndcg@100", "ndcg@100", "recall@20", "best_epoch"):
        assert second[key] == fresh[key], key
    assert second["epochs_run"] == FAST["epochs"]


def test_changed_code_or_device_does_not_reuse_a_checkpoint(tmp_path, monkeypatch, caplog):
    data = make_split(tmp_path / "processed", seed=1)
    train(data, tmp_path / "run", stop_at=2)
    import evcf.identity

    monkeypatch.setattr(evcf.identity, "code_hash", lambda model=None: "another version of the code")
    with caplog.at_level(logging.WARNING, logger="evcf.training"):
        again = train(data, tmp_path / "run", stop_at=2)
    assert any("differs in code" in r.getMessage() for r in caplog.records)
    assert again["resumed_from_epoch"] == 0
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["identity"]["code"] == \
        "another version of the code"
    # a checkpoint written on a GPU is never finished on the CPU
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    ckpt["identity"]["device"] = "cuda"
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="evcf.training"):
        train(data, tmp_path / "run")
    assert any("differs in device" in r.getMessage() for r in caplog.records)


def test_metrics_record_the_identity_and_the_library_versions(tmp_path):
    data = make_split(tmp_path / "processed", seed=1)
    metrics = train(data, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["identity"] == metrics["identity"]
    assert set(on_disk["identity"]) == {"model", "hparams", "train", "seed", "data", "code", "libraries", "device"}
    assert on_disk["identity"]["data"] == load_split(data).fingerprint and len(on_disk["identity"]["data"]) == 64
    assert {"numpy", "scipy", "pandas", "torch", "python", "evcf", "implicit", "scikit-learn"} <= set(on_disk["versions"])
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=False)["identity"] == on_disk["identity"]


def test_a_resumed_checkpoint_of_the_same_run_is_still_used(tmp_path):
    data = make_split(tmp_path / "processed", seed=1)
    first = train(data, tmp_path / "whole")
    train(data, tmp_path / "run", stop_at=2)
    again = train(data, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.stale.pt").exists() and again["resumed_from_epoch"] == 2
    moment = ("wall_seconds", "resumed_from_epoch")
    assert {k: v for k, v in again.items() if k not in moment} == {k: v for k, v in first.items() if k not in moment}


# -- model selection: validation users only; test = the best epoch's weights -------------------------


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


def test_self_fitting_setting_is_the_argmax_of_tuning_csv(tmp_path):
    data = make_split(tmp_path / "processed", seed=1)
    run(load_split(data), dataset="toy", model_name="ease", hparams={"lambdas": [1.0, 30.0, 300.0, 3000.0]},
        train={}, seed=1, out_dir=tmp_path / "run", device="cpu")
    tuning = pd.read_csv(tmp_path / "run" / "tuning.csv")
    assert tuning["selected"].sum() == 1
    winner = tuning.loc[tuning["val_ndcg@100"].idxmax(), "lambda"]
    assert tuning.loc[tuning["selected"], "lambda"].item() == winner
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["in_run_search"]["selected"] == {"lambda": winner}


# -- seedless models run once -----------------------------------------------------------------------


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


# -- deterministic ties ------------------------------------------------------------------------------


def reference_ranking(scores: np.ndarray, k: int) -> np.ndarray:
    """Independent: sort by (score descending, item index ascending)."""
    items = np.arange(scores.shape[1])
    return np.stack([np.lexsort((items, -row))[:k] for row in scores])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_rank_the_lower_item_index_first(dtype):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 57)).astype(np.float64)  # many ties, as popularity counts have
    scores[:, 5] = -np.inf  # masked fold-in items tie too
    heldout = rng.random((30, 57)) < 0.2
    hits, n = topk_hits(torch.tensor(scores, dtype=dtype), torch.tensor(heldout), 20)
    want = np.take_along_axis(heldout, reference_ranking(scores, 20), axis=1)
    np.testing.assert_array_equal(hits.numpy(), want)
    np.testing.assert_array_equal(n.numpy(), heldout.sum(1))


def test_all_equal_scores_give_the_first_k_items():
    heldout = torch.zeros(2, 10, dtype=torch.bool)
    heldout[:, [0, 1, 9]] = True
    hits, _ = topk_hits(torch.ones(2, 10), heldout, 3)
    assert hits.tolist() == [[True, True, False]] * 2


def test_popularity_evaluation_is_independent_of_the_row_batching(tmp_path):
    data = load_split(make_split(tmp_path / "processed", seed=1))
    model = build_model("popularity", data.n_items)
    model.fit(data.train)
    one = evaluate(model.score, data.test_tr, data.test_te, batch_size=1000).per_user
    many = evaluate(model.score, data.test_tr, data.test_te, batch_size=7).per_user
    pd.testing.assert_frame_equal(one, many)


# -- integrity ---------------------------------------------------------------------------------------


def test_fingerprint_checks_filtered_counts(tmp_path):
    raw = generate_ratings(SyntheticSpec(n_users=300, n_items=80, mean_items=20, n_topics=4, seed=1))
    filtered = binarize_filter(raw, 3.5, 5)
    split = split_users(filtered, 30)
    right = {"ratings": len(filtered), "users": filtered["user"].nunique(),
             "filtered_items": filtered["item"].nunique()}
    check_fingerprint(split, right, source="x")
    with pytest.raises(EvcfError, match="ratings: expected"):
        check_fingerprint(split, {**right, "ratings": right["ratings"] + 1}, source="x")
    with pytest.raises(EvcfError, match="filtered_items: expected"):
        check_fingerprint(split, {**right, "filtered_items": 17769}, source="x")


def test_a_checkpoint_is_loaded_to_the_cpu_whatever_the_runs_device(tmp_path, monkeypatch):
    """A CUDA run's resume used to load the checkpoint with map_location=<cuda>, which moves the saved
    RNG state off the CPU, and torch.set_rng_state then refuses it.  Emulated here on the CPU: a
    load that honours a non-CPU map_location hands back RNG states that set_rng_state rejects."""
    data = make_split(tmp_path / "processed", seed=1)
    settings = {**FAST, "checkpoint_minutes": 0}
    first = train(data, tmp_path / "whole", train=settings)
    train(data, tmp_path / "run", train=settings, stop_at=2)  # unfinished: its checkpoint stays
    real_load, seen = torch.load, []

    def load(path, *args, map_location=None, **kw):
        seen.append(map_location)
        ckpt = real_load(path, *args, map_location="cpu", **kw)
        if map_location != "cpu" and isinstance(ckpt, dict) and "rng" in ckpt:
            ckpt["rng"]["torch"] = ckpt["rng"]["torch"].float()  # what a move off the CPU amounts to
        return ckpt

    import evcf.training

    monkeypatch.setattr(evcf.training.torch, "load", load)
    resumed = train(data, tmp_path / "run", train=settings)  # the same run: its checkpoint is resumed
    assert seen and all(m == "cpu" for m in seen)
    assert not (tmp_path / "run" / "checkpoint.stale.pt").exists() and resumed["resumed_from_epoch"] == 2
    assert resumed["ndcg@100"] == first["ndcg@100"]
