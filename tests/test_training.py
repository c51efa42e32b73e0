"""The training loop: selection, determinism, resume after a kill, divergence, schedules, batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from evcf.data.batches import DeviceCSR
from evcf.data.sparse import load_split
from evcf.data.split import binarize_filter, split_users, write_split
from evcf.data.synthetic import SyntheticSpec, generate_ratings
from evcf.errors import EvcfError
from evcf.schedules import beta_evcf, beta_liang
from evcf.training import CHECKPOINT, TrainingDiverged, run, train_config

SMALL = {"hidden_size": 32, "latent_size": 8}
FAST = {"epochs": 4, "batch_size": 64, "total_anneal_steps": 100}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "toy"
    raw = generate_ratings(SyntheticSpec(n_users=500, n_items=120, mean_items=25, n_topics=6, seed=5))
    write_split(split_users(binarize_filter(raw, 3.5, 5), 50), out)
    return out


def _run(processed, out, seed=1, model="mult-vae", hparams=SMALL, train=FAST):
    return run(load_split(processed), dataset="toy", model_name=model, hparams=dict(hparams), train=dict(train),
               seed=seed, out_dir=out, device="cpu")


def _strip(metrics):
    return {k: v for k, v in metrics.items() if k != "wall_seconds"}


def test_selects_best_validation_epoch_and_writes_outputs(processed, tmp_path):
    metrics = _run(processed, tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert metrics["best_epoch"] == int(history.loc[history["val_ndcg@100"].idxmax(), "epoch"])
    assert metrics["validation_ndcg@100"] == pytest.approx(history["val_ndcg@100"].max(), abs=1e-6)
    assert metrics["epochs_run"] == 4
    # Liang's per-step β = min(0.2, steps / 100), 5 steps an epoch (284 training users / 64)
    stats = json.loads((processed / "stats.json").read_text())
    n_users = stats["filtered"]["users"]
    assert n_users - 100 == 284
    assert list(history["beta"]) == pytest.approx([0.04, 0.09, 0.14, 0.19])
    per_user = pd.read_csv(tmp_path / "per_user.csv")
    assert per_user["uid"].between(n_users - 50, n_users - 1).all()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_same_seed_same_metrics_different_seed_different(processed, tmp_path):
    a = _run(processed, tmp_path / "a", seed=1)
    b = _run(processed, tmp_path / "b", seed=1)
    c = _run(processed, tmp_path / "c", seed=2)
    assert _strip(a) == _strip(b)
    assert (tmp_path / "a/per_user.csv").read_bytes() == (tmp_path / "b/per_user.csv").read_bytes()
    assert a["ndcg@100"] != c["ndcg@100"]


def test_resume_after_kill_gives_identical_results(processed, tmp_path):
    args = [sys.executable, "-m", "evcf.cli", "--log-level", "ERROR", "train", "--data", str(processed),
            "--dataset", "toy", "--model", "mult-vae", "--seed", "3", "--threads", "1",
            "--hparams", json.dumps({"hidden_size": 256, "latent_size": 64}),
            "--train", json.dumps({**FAST, "epochs": 12, "batch_size": 16})]
    subprocess.run([*args, "--out", str(tmp_path / "full")], check=True, capture_output=True)
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")])
    ckpt = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    killed_at = torch.load(ckpt, weights_only=False)["epoch"] if ckpt.exists() else None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_at is not None and killed_at < 12, "the run finished before it could be killed"
    assert not (tmp_path / "killed/metrics.json").exists()
    subprocess.run([*args, "--out", str(tmp_path / "killed")], check=True, capture_output=True)
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed/metrics.json").read_text())
    assert _strip(full) == _strip(resumed)
    for name in ("per_user.csv",):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()
    h_full = pd.read_csv(tmp_path / "full/history.csv").drop(columns="seconds")
    h_resumed = pd.read_csv(tmp_path / "killed/history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h_full, h_resumed)


def test_checkpoint_of_another_configuration_is_set_aside(processed, tmp_path):
    _run(processed, tmp_path, train={**FAST, "epochs": 1})
    first = (tmp_path / CHECKPOINT).read_bytes()
    changed = _run(processed, tmp_path, train={**FAST, "epochs": 2, "lr": 0.01})
    assert changed["epochs_run"] == 2  # trained from scratch, not resumed from the lr=0.001 run
    assert (tmp_path / "checkpoint.stale.pt").read_bytes() == first
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["identity"]["train"]["lr"] == 0.01


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(processed, tmp_path, monkeypatch):
    from evcf import training

    real_build = training.build_model
    calls = {"n": 0}

    def build(name, n_items, **hparams):
        model = real_build(name, n_items, **hparams)
        real_loss = model.loss

        def loss(x, beta):
            calls["n"] += 1
            parts = real_loss(x, beta)
            if calls["n"] > 7:  # the 8th step is in epoch 2 (284 training users / 64 = 5 steps an epoch)
                parts.loss = parts.loss * float("nan")
            return parts

        model.loss = loss
        return model

    monkeypatch.setattr(training, "build_model", build)
    with pytest.raises(TrainingDiverged, match=r"mult-vae: loss became nan at epoch 2") as err:
        _run(processed, tmp_path)
    assert "learning rate" in str(err.value)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()


def test_closed_form_models_pick_a_setting_on_validation(processed, tmp_path):
    metrics = _run(processed, tmp_path, model="ease", hparams={"lambdas": [1.0, 100.0]}, train={})
    assert metrics["best_epoch"] == 0 and metrics["epochs_run"] == 0
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert ckpt["setting"]["lam" if "lam" in ckpt["setting"] else next(iter(ckpt["setting"]))] in (1.0, 100.0)


def test_train_config_errors():
    with pytest.raises(EvcfError, match="unknown training setting 'epoch'"):
        train_config({"epoch": 3})
    with pytest.raises(EvcfError, match="'epochs' must be int"):
        train_config({"epochs": "3"})
    with pytest.raises(EvcfError, match="beta_schedule"):
        train_config({"beta_schedule": "cyclic"})
    assert train_config({"lr": 1}).lr == 1.0


def test_beta_schedules():
    assert beta_liang(0, 200_000, 0.2) == 0.0
    assert beta_liang(20_000, 200_000, 0.2) == pytest.approx(0.1)
    assert beta_liang(10**7, 200_000, 0.2) == 0.2
    assert beta_liang(5, 0, 0.2) == 0.2
    assert beta_evcf(1, 100, 1.0) == pytest.approx(0.01)
    assert beta_evcf(50, 100, 0.3) == pytest.approx(0.15)
    assert beta_evcf(400, 100, 0.3) == pytest.approx(0.3)
    assert beta_evcf(3, 0, 0.5) == 0.5


def test_device_csr_batches_equal_scipy_rows():
    rng = np.random.default_rng(0)
    matrix = sp.random(50, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    matrix.data[:] = 1
    dev = DeviceCSR(matrix)
    for rows in ([0], [5, 3, 3, 49], list(rng.permutation(50)[:17]), []):
        got = dev.dense(torch.tensor(rows, dtype=torch.long)).numpy()
        np.testing.assert_array_equal(got, matrix[rows].toarray() if rows else np.zeros((0, 30)))
