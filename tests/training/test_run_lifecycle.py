"""A run's life: stopped at a budget and resumed, reused when it is the same run, interrupted by a
signal and resumed, and what it leaves on disk (evcf.training.run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import write_synthetic_split
from evcf.data.sparse import load_split
from evcf.training import CHECKPOINT, PARTIAL, PROGRESS, WEIGHTS_FILE, run

SMALL = {"hidden_size": 32, "latent_size": 8}
FAST = {"epochs": 6, "batch_size": 64, "total_anneal_steps": 100}
MOMENT = ("wall_seconds", "resumed_from_epoch")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 50, n_users=500, n_items=120,
                                 mean_items=25, n_topics=6, seed=5)


def _run(processed, out, *, train=FAST, **kwargs):
    return run(load_split(processed), dataset="toy", model_name="mult-vae", hparams=dict(SMALL), train=dict(train),
               seed=1, out_dir=out, device="cpu", **kwargs)


def _same(a, b):
    return {k: v for k, v in a.items() if k not in MOMENT} == {k: v for k, v in b.items() if k not in MOMENT}


def _history(folder):
    return pd.read_csv(folder / "history.csv").drop(columns="seconds")


def test_budgets_resume_and_end_as_the_uninterrupted_run(processed, tmp_path):
    whole = _run(processed, tmp_path / "whole")
    first = _run(processed, tmp_path / "rungs", stop_at=1)
    assert first["finished"] is False and [h["epoch"] for h in first["history"]] == [1]
    assert (tmp_path / "rungs" / CHECKPOINT).exists() and (tmp_path / "rungs" / PARTIAL).exists()
    assert not (tmp_path / "rungs/metrics.json").exists()
    second = _run(processed, tmp_path / "rungs", stop_at=3)
    assert second["resumed_from_epoch"] == 1 and [h["epoch"] for h in second["history"]] == [1, 2, 3]
    last = _run(processed, tmp_path / "rungs", stop_at=6)
    assert last["resumed_from_epoch"] == 3  # trained epochs 4, 5, 6 only
    assert _same(last, whole)
    pd.testing.assert_frame_equal(_history(tmp_path / "rungs"), _history(tmp_path / "whole"))
    assert (tmp_path / "rungs/per_user.csv").read_bytes() == (tmp_path / "whole/per_user.csv").read_bytes()
    # finished: the resumable state is gone, the best weights stay (half precision by default)
    assert not (tmp_path / "rungs" / CHECKPOINT).exists() and not (tmp_path / "rungs" / PARTIAL).exists()
    kept = torch.load(tmp_path / "rungs" / WEIGHTS_FILE, weights_only=False)
    assert kept["weights"] == "fp16" and all(v.dtype == torch.float16 for v in kept["state"].values()
                                             if v.is_floating_point())


def test_a_budget_already_reached_is_answered_from_the_record(processed, tmp_path, monkeypatch):
    from evcf.training import loop

    _run(processed, tmp_path, stop_at=3)
    monkeypatch.setattr(loop, "train_pass", lambda *a, **k: pytest.fail("trained again"))
    again = _run(processed, tmp_path, stop_at=2)  # an earlier budget: read from the history, not trained
    assert again["reused"] and [h["epoch"] for h in again["history"]] == [1, 2, 3]


def test_the_same_run_is_reused_not_retrained(processed, tmp_path, monkeypatch):
    from evcf.training import loop

    point = _run(processed, tmp_path / "point")
    real = loop.train_pass
    monkeypatch.setattr(loop, "train_pass", lambda *a, **k: pytest.fail("trained again"))
    table = _run(processed, tmp_path / "table", reuse_from=tmp_path / "point")
    assert table["reused_from"] == str(tmp_path / "point") and _same({**table, "reused_from": None},
                                                                      {**point, "reused_from": None})
    for name in ("per_user.csv", "history.csv", WEIGHTS_FILE):
        assert (tmp_path / "table" / name).read_bytes() == (tmp_path / "point" / name).read_bytes()
    # another setting is another run: it trains
    monkeypatch.setattr(loop, "train_pass", real)
    other = _run(processed, tmp_path / "other", train={**FAST, "lr": 0.01}, reuse_from=tmp_path / "point")
    assert "reused_from" not in other and other["epochs_run"] == 6


def test_weights_none_keeps_no_weights(processed, tmp_path):
    _run(processed, tmp_path, train={**FAST, "epochs": 2, "weights": "none"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "metrics.json", "per_user.csv", PROGRESS]


@pytest.mark.slow  # evcf train as a subprocess, signalled
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_the_rerun_trains_the_later_epochs_only(processed, tmp_path, signum):
    """A scheduler's preemption (SIGTERM) or Ctrl-C (SIGINT) at epoch N: the run finishes epoch N,
    writes a checkpoint (the 10-minute interval has not passed) and exits 128 + the signal; the
    rerun says it resumes and trains epochs N+1 onwards only, ending as the uninterrupted run."""
    train = {**FAST, "epochs": 30, "batch_size": 16, "checkpoint_minutes": 10}
    args = [sys.executable, "-m", "evcf.cli", "--log-level", "ERROR", "train", "--data", str(processed),
            "--dataset", "toy", "--model", "mult-vae", "--seed", "1", "--threads", "1",
            "--hparams", json.dumps({"hidden_size": 128, "latent_size": 32}), "--train", json.dumps(train)]
    subprocess.run([*args, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    progress = tmp_path / "run" / PROGRESS
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, out
    stopped_at = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["epoch"]
    assert 2 <= stopped_at < 30
    assert f"stopped after epoch {stopped_at}" in out and "run the same command again to resume" in out
    assert json.loads(progress.read_text())["state"] == "interrupted"
    assert not (tmp_path / "run/metrics.json").exists()
    again = subprocess.run([*args, "--out", str(tmp_path / "run")], check=True, capture_output=True, text=True)
    assert f"resuming from epoch {stopped_at} of 30" in again.stdout  # on the terminal, not only in the log
    resumed = json.loads((tmp_path / "run/metrics.json").read_text())
    whole = json.loads((tmp_path / "whole/metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == stopped_at and _same(resumed, whole)
    pd.testing.assert_frame_equal(_history(tmp_path / "run"), _history(tmp_path / "whole"))


def test_progress_file_follows_the_run(processed, tmp_path):
    metrics = _run(processed, tmp_path, train={**FAST, "epochs": 2})
    progress = json.loads((tmp_path / PROGRESS).read_text())
    assert progress["state"] == "done" and progress["epoch"] == 2 and progress["epochs"] == 2
    assert progress["model"] == "mult-vae" and progress["seed"] == 1 and progress["epoch_seconds"] > 0
    assert f"{metrics['ndcg@100']:.4f}" in progress["message"]
    assert abs(progress["updated"] - time.time()) < 600 and os.path.getsize(tmp_path / PROGRESS) < 1000


def test_a_stopped_slim_search_resumes_its_warm_path_as_the_uninterrupted_one(processed, tmp_path, monkeypatch):
    """SLIM's settings start from the previous setting's W: the checkpoint keeps that W, so a search
    stopped after two settings ends with the uninterrupted search's scores and weights, bit for bit
    (a cold third fit would differ within the stopping rule's slack)."""
    from evcf.models.slim import SLIM

    grid = {"l1_penalties": [0.5, 2.0], "l2_penalties": [1.0, 20.0], "tol": 1e-2}
    kwargs = dict(dataset="toy", model_name="slim", train={"checkpoint_minutes": 0, "weights": "fp32"}, seed=1,
                  device="cpu")
    whole = run(load_split(processed), hparams=dict(grid), out_dir=tmp_path / "whole", **kwargs)
    real_fit, fits = SLIM.fit, []

    def failing_third(self, *args, **kw):
        fits.append(kw)
        if len(fits) == 3:
            raise RuntimeError("node lost")
        return real_fit(self, *args, **kw)

    monkeypatch.setattr(SLIM, "fit", failing_third)
    with pytest.raises(RuntimeError, match="node lost"):
        run(load_split(processed), hparams=dict(grid), out_dir=tmp_path / "stopped", **kwargs)
    kept = torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=False)
    assert len(kept["tried"]) == 2 and kept["path"] is not None
    monkeypatch.setattr(SLIM, "fit", real_fit)
    resumed = run(load_split(processed), hparams=dict(grid), out_dir=tmp_path / "stopped", **kwargs)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stopped/tuning.csv"), pd.read_csv(tmp_path / "whole/tuning.csv"))
    assert _same(resumed, whole)
    a = torch.load(tmp_path / "stopped" / WEIGHTS_FILE, weights_only=False)["state"]["W"]
    b = torch.load(tmp_path / "whole" / WEIGHTS_FILE, weights_only=False)["state"]["W"]
    assert (a != b).nnz == 0

