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

from conftest import write_synthetic_split
from evcf.batches import DeviceCSR
from evcf.data.sparse import load_split
from evcf.errors import EvcfError
from evcf.schedules import beta_evcf, beta_liang
from evcf.training import CHECKPOINT, TrainingDiverged, run, train_config

SMALL = {"hidden_size": 32, "latent_size": 8}
FAST = {"epochs": 4, "batch_size": 64, "total_anneal_steps": 100}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 50, n_users=500, n_items=120,
                                 mean_items=25, n_topics=6, seed=5)


def _run(processed, out, seed=1, model="mult-vae", hparams=SMALL, train=FAST):
    return run(load_split(processed), dataset="toy", model_name=model, hparams=dict(hparams), train=dict(train),
               seed=seed, out_dir=out, device="cpu")


def _strip(metrics):
    """Everything but how this execution went (time, and the epoch it resumed from)."""
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "resumed_from_epoch")}


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


@pytest.mark.slow  # evcf train as a subprocess, SIGKILLed
def test_resume_after_kill_gives_identical_results(processed, tmp_path):
    args = [sys.executable, "-m", "evcf.cli", "--log-level", "ERROR", "train", "--data", str(processed),
            "--dataset", "toy", "--model", "mult-vae", "--seed", "3", "--threads", "1",
            "--hparams", json.dumps({"hidden_size": 256, "latent_size": 64}),
            "--train", json.dumps({**FAST, "epochs": 12, "batch_size": 16, "checkpoint_minutes": 0})]
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
    # it resumed (a restart from scratch ends with the same numbers on the CPU: only this tells them apart)
    assert full["resumed_from_epoch"] == 0 and resumed["resumed_from_epoch"] >= killed_at
    assert _strip(full) == _strip(resumed)
    for name in ("per_user.csv",):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()
    h_full = pd.read_csv(tmp_path / "full/history.csv").drop(columns="seconds")
    h_resumed = pd.read_csv(tmp_path / "killed/history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h_full, h_resumed)


def test_checkpoint_of_another_configuration_is_set_aside(processed, tmp_path):
    # a run stopped at a budget keeps its checkpoint (a finished one deletes it)
    stopped = run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=dict(SMALL),
                  train={**FAST, "epochs": 4}, seed=1, out_dir=tmp_path, device="cpu", stop_at=1)
    assert stopped["finished"] is False
    first = (tmp_path / CHECKPOINT).read_bytes()
    changed = _run(processed, tmp_path, train={**FAST, "epochs": 2, "lr": 0.01})
    assert changed["epochs_run"] == 2 and changed["resumed_from_epoch"] == 0  # not resumed from the lr=0.001 run
    assert (tmp_path / "checkpoint.stale.pt").read_bytes() == first
    assert not (tmp_path / CHECKPOINT).exists()  # finished: its resumable state is gone
    assert torch.load(tmp_path / "model.pt", weights_only=False)["identity"]["train"]["lr"] == 0.01


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(processed, tmp_path, monkeypatch):
    from evcf import training

    real_build = training.build_model
    calls = {"n": 0}

    def build(name, n_items, **hparams):
        model = real_build(name, n_items, **hparams)
        real_loss = model.loss

        def loss(x, beta, clicks=None):
            calls["n"] += 1
            parts = real_loss(x, beta, clicks)
            if calls["n"] > 7:  # the 8th step is in epoch 2 (284 training users / 64 = 5 steps an epoch)
                parts.loss = parts.loss * float("nan")
            return parts

        model.loss = loss
        return model

    monkeypatch.setattr(training, "build_model", build)
    with pytest.raises(TrainingDiverged, match=r"mult-vae: loss became nan at epoch 2") as err:
        _run(processed, tmp_path, train={**FAST, "checkpoint_minutes": 0})
    assert "learning rate" in str(err.value) and "The last checkpoint (epoch 1) is kept" in str(err.value)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()


def test_self_fitting_models_pick_a_setting_on_validation(processed, tmp_path):
    metrics = _run(processed, tmp_path, model="ease", hparams={"lambdas": [1.0, 100.0]}, train={"weights": "fp32"})
    assert metrics["best_epoch"] == 0 and metrics["epochs_run"] == 0
    assert not (tmp_path / CHECKPOINT).exists()
    # metrics.json says what the in-run search selected, out of how many (the report shows it)
    assert metrics["in_run_search"]["settings_tried"] == 2
    assert metrics["in_run_search"]["selected"]["lambda"] in (1.0, 100.0)
    kept = torch.load(tmp_path / "model.pt", weights_only=False)  # train.weights: fp32, the state as fitted
    assert kept["weights"] == "fp32" and kept["identity"] == metrics["identity"]


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


# --------------------------------------------------------------------------------------------------
# Checkpoints every N minutes and at the end


def _count_saves(monkeypatch):
    from evcf.training import loop

    saved = []
    real = loop._atomic_torch_save

    def save(obj, path):
        if path.name == CHECKPOINT:
            saved.append(obj["epoch"])
        real(obj, path)

    monkeypatch.setattr(loop, "_atomic_torch_save", save)
    return saved


@pytest.mark.parametrize("minutes, saved_epochs", [(0, [1, 2, 3, 4]), (60, [4])])
def test_checkpoints_every_n_minutes_and_after_the_last_epoch(processed, tmp_path, monkeypatch, minutes,
                                                              saved_epochs):
    saved = _count_saves(monkeypatch)
    _run(processed, tmp_path, train={**FAST, "checkpoint_minutes": minutes})
    assert saved == saved_epochs
    assert not (tmp_path / CHECKPOINT).exists()  # deleted once the results are written (train.weights keeps model.pt)


def test_the_checkpoint_interval_is_counted_in_minutes(processed, tmp_path, monkeypatch):
    from evcf.training import loop

    now = iter(range(0, 10_000, 240))  # every reading of the clock: 4 more minutes
    monkeypatch.setattr(loop, "_clock", lambda: next(now))
    saved = _count_saves(monkeypatch)
    _run(processed, tmp_path, train={**FAST, "checkpoint_minutes": 10})
    # read at the start (0), after epochs 1 (4 min), 2 (8), 3 (12: save, then 16), 4 (20 - 16 < 10); the end
    assert saved == [3, 4]


def test_the_checkpoint_interval_and_the_kept_weights_are_not_part_of_a_runs_identity(processed, tmp_path,
                                                                                         caplog):
    whole = _run(processed, tmp_path / "whole", train={**FAST, "checkpoint_minutes": 0})
    run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=dict(SMALL),
        train={**FAST, "checkpoint_minutes": 0}, seed=1, out_dir=tmp_path / "run", device="cpu", stop_at=2)
    with caplog.at_level("WARNING", logger="evcf.training"):
        again = _run(processed, tmp_path / "run", train={**FAST, "checkpoint_minutes": 30, "weights": "none"})
    assert not (tmp_path / "run/checkpoint.stale.pt").exists() and "belongs to another run" not in caplog.text
    assert again["resumed_from_epoch"] == 2  # the other interval and weights setting resumed the same run
    assert _strip(again) == _strip(whole)
    assert "checkpoint_minutes" not in whole["identity"]["train"] and "weights" not in whole["identity"]["train"]
    assert not (tmp_path / "run/model.pt").exists() and (tmp_path / "whole/model.pt").exists()


# --------------------------------------------------------------------------------------------------
# TF32, deterministic mode, devices


def test_new_training_settings_are_checked():
    cfg = train_config({"checkpoint_minutes": 5, "tf32": True, "deterministic": True})
    assert (cfg.checkpoint_minutes, cfg.tf32, cfg.deterministic) == (5.0, True, True)
    with pytest.raises(EvcfError, match="'tf32' must be bool.*write tf32 as true or false"):
        train_config({"tf32": 1})
    with pytest.raises(EvcfError, match="checkpoint_minutes must be >= 0"):
        train_config({"checkpoint_minutes": -1})


def test_numerics_sets_tf32_and_deterministic_mode_on_cuda_and_restores_them(monkeypatch):
    from evcf.training import numerics

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    with numerics(train_config({"tf32": True, "deterministic": True}), torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice is kept
    with numerics(train_config({"deterministic": True}), torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and not torch.backends.cuda.matmul.allow_tf32
    with numerics(train_config({"tf32": True}), torch.device("cpu")):  # TF32 is a CUDA setting
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_is_on_while_training_and_recorded(processed, tmp_path, monkeypatch):
    from evcf.training import loop

    seen = []
    real_epoch = loop.train_pass

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_pass", spy)
    metrics = _run(processed, tmp_path, train={**FAST, "deterministic": True, "tf32": True})
    assert seen == [True] * 4 and not torch.are_deterministic_algorithms_enabled()
    assert (metrics["deterministic"], metrics["tf32"], metrics["precision"]) == (True, False, "fp32")  # CPU: no TF32
    assert metrics["identity"]["train"]["deterministic"] is True


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "GPU-5f1c"},
                                 {"SLURM_JOB_GPUS": "3"}, {"SLURM_STEP_GPUS": "0,1"}])
def test_a_gpu_given_but_not_seen_by_torch_is_a_clear_error(monkeypatch, env):
    from evcf.training import resolve_device

    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvcfError) as err:
        resolve_device("auto")
    name, value = next(iter(env.items()))
    assert f"given a GPU ({name}={value}) but torch cannot see CUDA" in str(err.value)
    assert "install the CUDA build of torch" in str(err.value) and "device: cpu" in str(err.value)
    assert resolve_device("cpu") == torch.device("cpu")  # asking for the CPU is always allowed


@pytest.mark.parametrize("visible", [None, "", "-1", "NoDevFiles"])
def test_no_gpu_given_means_auto_is_the_cpu(monkeypatch, visible):
    from evcf.training import resolve_device

    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(EvcfError, match="torch cannot see CUDA"):
        resolve_device("cuda:0")


def test_early_stopping_counts_like_evcf(processed, tmp_path, monkeypatch):
    """EVCF stops when MORE than `patience` epochs in a row did not improve (`e > 50`), not at 50."""
    from evcf.training import loop

    scores = iter([0.5] + [0.1] * 20)  # epoch 1 is the best; nothing improves afterwards
    real = loop.evaluate

    def fake_validation(score, fold_in, heldout, **kw):
        result = real(score, fold_in, heldout, **kw)
        if kw.get("metrics") == ("ndcg@100",):  # the per-epoch validation, not the final test
            result.per_user["ndcg@100"] = next(scores)
        return result

    monkeypatch.setattr(loop, "evaluate", fake_validation)
    settings = {**FAST, "epochs": 20, "patience": 2, "beta_schedule": "none", "checkpoint_minutes": 0}
    metrics = _run(processed, tmp_path / "run", train=settings)
    # epoch 1 best, epochs 2, 3, 4 without improvement: 3 > 2 stops before epoch 5
    assert metrics["epochs_run"] == 4 and metrics["best_epoch"] == 1


@pytest.mark.parametrize("stop", ["killed", "signal"])
def test_a_stopped_in_run_search_resumes_after_the_settings_it_tried(processed, tmp_path, monkeypatch, stop):
    """A self-fitting model's search (EASE's; the loop is SLIM's, WMF's and CDAE's) is checkpointed
    setting by setting.  Killed during its third setting (an exception; checkpoint_minutes 0, so
    every finished setting was saved), or sent a real Ctrl-C during its first (checkpoint_minutes
    10, so only the signal writes the checkpoint; the setting in progress finishes and the run raises
    Interrupted): started again, it fits only the settings not tried and ends as the uninterrupted run."""
    from evcf.models.baselines import EASE
    from evcf.training import Interrupted

    minutes, stop_at, tried = (0, 3, [1.0, 100.0]) if stop == "killed" else (10, 1, [1.0])
    hparams, train = {"lambdas": [1.0, 100.0, 1000.0]}, {"checkpoint_minutes": minutes}
    whole = _run(processed, tmp_path / "whole", model="ease", hparams=hparams, train=train)
    real_fit = EASE.fit
    fits = []

    def stopped(self, matrix, **kwargs):
        fits.append(kwargs["lambda"])
        if len(fits) == stop_at:
            if stop == "killed":
                raise RuntimeError("killed")
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, handled while the fit runs
        return real_fit(self, matrix, **kwargs)

    monkeypatch.setattr(EASE, "fit", stopped)
    with pytest.raises(RuntimeError if stop == "killed" else Interrupted) as raised:
        _run(processed, tmp_path / "run", model="ease", hparams=hparams, train=train)
    if stop == "signal":
        assert raised.value.signum == signal.SIGINT and "checkpoint written" in str(raised.value)
    assert [t["lambda"] for t in torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["tried"]] == tried

    fits.clear()
    monkeypatch.setattr(EASE, "fit", lambda self, matrix, **kwargs: (fits.append(kwargs["lambda"]),
                                                                     real_fit(self, matrix, **kwargs))[1])
    resumed = _run(processed, tmp_path / "run", model="ease", hparams=hparams, train=train)
    assert fits == [lam for lam in hparams["lambdas"] if lam not in tried]  # only the settings not tried
    assert _strip(resumed) == _strip(whole)
    assert (tmp_path / "run" / "tuning.csv").read_text() == (tmp_path / "whole" / "tuning.csv").read_text()


@pytest.mark.parametrize("model, init, drawn", [("vamp", "random-users", 7), ("hvamp", "random-users", 7),
                                                ("vamp", "normal", 0), ("mult-vae", None, 0)])
def test_a_model_that_asks_for_training_rows_gets_them_before_its_first_epoch(processed, tmp_path, monkeypatch,
                                                                              model, init, drawn):
    """The loop draws ``rows_to_init_from()`` training users from the shuffle generator and hands
    their rows to ``init_from_rows`` (VampPrior's pseudo-inputs with ``pseudo_init: random-users``)."""
    from evcf.models import model_class

    handed = []
    monkeypatch.setattr(model_class(model), "init_from_rows", lambda self, rows: handed.append(rows.clone()),
                        raising=False)
    hparams = {**SMALL, **({"n_pseudo": 7, "pseudo_init": init} if init else {})}
    if model == "hvamp":
        hparams = {"hidden_size": 16, "z1_size": 4, "z2_size": 4, "n_pseudo": 7, "pseudo_init": init}
    _run(processed, tmp_path, model=model, hparams=hparams, train={**FAST, "epochs": 1})
    if not drawn:
        assert handed == []
        return
    data = load_split(processed)
    pick = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(1))[:drawn]
    (rows,) = handed
    assert torch.equal(rows, torch.as_tensor(data.train[pick.numpy()].toarray(), dtype=rows.dtype))


def test_the_in_run_search_passes_validation_users_only_to_a_model_that_selects_its_epochs(processed, tmp_path,
                                                                                         monkeypatch):
    """EASE neither selects epochs nor reports a selection of its own: its fits get the setting alone,
    tuning.csv holds the setting and its score, and its cache is dropped once the search is over."""
    from evcf.models import model_class

    ease, fits, cleared = model_class("ease"), [], []
    real_fit, real_clear = ease.fit, ease.clear_cache
    monkeypatch.setattr(ease, "fit", lambda self, train, **kw: fits.append(sorted(kw)) or real_fit(self, train, **kw))
    monkeypatch.setattr(ease, "clear_cache", lambda self: cleared.append(1) or real_clear(self))
    _run(processed, tmp_path, model="ease", hparams={"lambdas": [1.0, 100.0]})
    assert fits == [["device", "lambda", "seed"]] * 2 and cleared == [1]
    assert list(pd.read_csv(tmp_path / "tuning.csv").columns) == ["lambda", "val_ndcg@100", "selected"]
