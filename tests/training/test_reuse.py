"""A checkpoint or a finished run is reused only when its stored identity is the run's: a new split,
other code or another device trains from scratch; a resume trains only the epochs left."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
import torch

from conftest import write_synthetic_split
from evcf.data.sparse import load_split
from evcf.training import CHECKPOINT, loop, run


SMALL = {"hidden_size": 32, "latent_size": 8}


FAST = {"epochs": 4, "batch_size": 64, "total_anneal_steps": 100}


def make_split(out, seed):
    return write_synthetic_split(out, 40, n_users=400, n_items=100, mean_items=25, n_topics=5, seed=seed)


def train(processed, out, **kw):
    args = dict(dataset="toy", model_name="mult-vae", hparams=dict(SMALL), train=dict(FAST), seed=1,
                out_dir=out, device="cpu")
    args.update(kw)
    return run(load_split(processed), **args)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 50, n_users=500, n_items=120,
                                 mean_items=25, n_topics=6, seed=5)


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
