"""What only a GPU can show: resume, bf16, CPU-vs-CUDA agreement and host syncs, on CUDA.

Skipped without CUDA (CI never depends on a GPU); ``scripts/gpu_check.sh`` runs them.  Tolerances:

* resume after a kill, in deterministic mode: the same metrics as an uninterrupted run to 1e-6;
* CPU against CUDA with the same weights (evaluation, and one step's loss and gradients in eval mode,
  TF32 off): scores agree to float32 rounding (rtol 1e-4), so metric means agree to 1e-3 (a near-tie
  may swap two items for a few users);
* a whole run on CPU against one on CUDA: their random streams differ (dropout, ε), so they are two
  draws of the same training: test NDCG@100 within 0.03, about three times the seed-to-seed spread
  of this toy set;
* bf16 against fp32 on CUDA: test NDCG@100 within 0.03;
* train.compile (inductor) against eager, in eval mode: losses to 1e-4.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_synthetic_split
from evcf.batches import Batches, DeviceCSR
from evcf.data.sparse import load_split
from evcf.evaluate import evaluate
from evcf.models import build_model
from evcf.optim import make_optimizer
from evcf.training import CHECKPOINT, run, train_config, train_pass, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVCF = Path(__file__).resolve().parents[1] / "evcf"
SMALL = {"hidden_size": 64, "latent_size": 16}
FAST = {"epochs": 6, "batch_size": 64, "total_anneal_steps": 100, "checkpoint_minutes": 0}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("data") / "toy", 80, n_users=800, n_items=150,
                                 mean_items=25, n_topics=6, seed=5)


def _run(processed, out, device="cuda", model="mult-vae", hparams=SMALL, train=FAST, seed=1):
    return run(load_split(processed), dataset="toy", model_name=model, hparams=dict(hparams), train=dict(train),
               seed=seed, out_dir=out, device=device)


def _strip(metrics):
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "device")}


def test_train_kill_and_resume_on_cuda_gives_the_same_results(processed, tmp_path):
    args = [sys.executable, "-m", "evcf.cli", "--log-level", "ERROR", "train", "--data", str(processed),
            "--dataset", "toy", "--model", "vamp", "--seed", "3", "--device", "cuda",
            "--hparams", json.dumps({**SMALL, "n_pseudo": 20}),
            "--train", json.dumps({**FAST, "epochs": 30, "batch_size": 16, "deterministic": True})]
    subprocess.run([*args, "--out", str(tmp_path / "full")], check=True, capture_output=True)
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")])
    ckpt = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] if ckpt.exists() else None
    assert killed_at is not None and killed_at < 30, "the run finished before it could be killed"
    assert not (tmp_path / "killed/metrics.json").exists()
    subprocess.run([*args, "--out", str(tmp_path / "killed")], check=True, capture_output=True)  # resumes
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed/metrics.json").read_text())
    assert resumed["identity"]["device"] == "cuda" and resumed["device"].startswith("cuda")
    for key in ("ndcg@100", "recall@20", "recall@50", "validation_ndcg@100"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    assert resumed["best_epoch"] == full["best_epoch"]
    h_full = pd.read_csv(tmp_path / "full/history.csv").drop(columns="seconds")
    h_resumed = pd.read_csv(tmp_path / "killed/history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h_full, h_resumed, atol=1e-6)


def test_deterministic_mode_repeats_a_cuda_run_bit_for_bit(processed, tmp_path):
    """Also: nothing in training or evaluation throws under torch.use_deterministic_algorithms."""
    train = {**FAST, "deterministic": True}
    a = _run(processed, tmp_path / "a", model="hvamp-gated", hparams={"hidden_size": 32, "z1_size": 8,
                                                                      "z2_size": 8, "n_pseudo": 10}, train=train)
    b = _run(processed, tmp_path / "b", model="hvamp-gated", hparams={"hidden_size": 32, "z1_size": 8,
                                                                      "z2_size": 8, "n_pseudo": 10}, train=train)
    assert _strip(a) == _strip(b) and a["deterministic"] is True
    assert (tmp_path / "a/per_user.csv").read_bytes() == (tmp_path / "b/per_user.csv").read_bytes()


def test_bf16_on_cuda_trains_to_about_the_fp32_result(processed, tmp_path):
    fp32 = _run(processed, tmp_path / "fp32")
    bf16 = _run(processed, tmp_path / "bf16", train={**FAST, "precision": "bf16"})
    assert bf16["precision"] == "bf16" and np.isfinite(bf16["ndcg@100"])
    assert bf16["ndcg@100"] == pytest.approx(fp32["ndcg@100"], abs=0.03)


def test_tf32_is_recorded_on_cuda(processed, tmp_path):
    metrics = _run(processed, tmp_path, train={**FAST, "epochs": 1, "tf32": True})
    assert metrics["tf32"] is True
    assert not torch.backends.cuda.matmul.allow_tf32  # restored after the run


def test_cpu_and_cuda_score_the_same_weights_alike(processed):
    data = load_split(processed)
    torch.manual_seed(0)
    model = build_model("vamp", data.n_items, **SMALL, n_pseudo=20).eval()
    on_cpu = evaluate(model.score, data.test_tr, data.test_te, device="cpu").per_user
    on_cuda = evaluate(model.to("cuda").score, data.test_tr, data.test_te, device="cuda").per_user
    for name in ("recall@20", "recall@50", "ndcg@100"):
        assert on_cuda[name].mean() == pytest.approx(on_cpu[name].mean(), abs=1e-3), name
    x = torch.from_numpy(data.test_tr[:50].toarray().astype(np.float32))
    torch.testing.assert_close(model.score(x.cuda()).cpu(), model.cpu().score(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mult-vae", "vamp", "hvamp-gated"])
def test_cpu_and_cuda_take_the_same_step_in_eval_mode(processed, name):
    """No dropout, z = the posterior mean: the loss and the gradients are deterministic."""
    data = load_split(processed)
    hparams = {"hidden_size": 32, "z1_size": 8, "z2_size": 8, "n_pseudo": 10} if "hvamp" in name else \
        {**SMALL, **({"n_pseudo": 10} if name == "vamp" else {})}
    torch.manual_seed(0)
    model = build_model(name, data.n_items, **hparams).eval()
    x = DeviceCSR(data.train).dense(np.arange(64))
    grads = {}
    for device in ("cpu", "cuda"):
        model.to(device).zero_grad(set_to_none=True)
        loss = model.loss(x.to(device), 0.3).loss
        loss.backward()
        grads[device] = (loss.detach().cpu(), {k: p.grad.cpu() for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(grads["cuda"][0], grads["cpu"][0], rtol=1e-4, atol=1e-4)
    for key, grad in grads["cpu"][1].items():
        torch.testing.assert_close(grads["cuda"][1][key], grad, rtol=1e-3, atol=1e-5, msg=key)


def test_a_whole_run_on_cpu_and_on_cuda_reach_about_the_same_ndcg(processed, tmp_path):
    on_cpu = _run(processed, tmp_path / "cpu", device="cpu")
    on_cuda = _run(processed, tmp_path / "cuda")
    assert on_cuda["ndcg@100"] == pytest.approx(on_cpu["ndcg@100"], abs=0.03)


# --------------------------------------------------------------------------------------------------
# Host synchronisation: torch.cuda.set_sync_debug_mode sees every sync, from Python or not


def _two_epochs(name: str, processed, watch, fused: bool = False) -> torch.Tensor:
    """Two epochs of ``name`` on CUDA, each inside ``watch()`` (the first allocates the optimizer's state)."""
    data = load_split(processed)
    hparams = {**SMALL, **({"n_pseudo": 10} if "vamp" in name else {})}
    torch.manual_seed(0)
    model = build_model(name, data.n_items, **hparams).to("cuda").train()
    optimizer = make_optimizer("adam-normgrad" if "vamp" in name else "adam", model.parameters(), 1e-3, fused=fused)
    train = DeviceCSR(data.train, "cuda")
    cfg = train_config({"batch_size": 64})
    # as in the loop: the epoch's order is copied to the device once, before its steps
    epochs = [Batches(train, torch.randperm(train.n_rows), cfg.batch_size) for _ in range(2)]
    torch.cuda.synchronize()
    totals = []
    for batches in epochs:
        with watch():
            total, *_ = train_pass(model, optimizer, batches, cfg, epoch=1, update_count=0,
                                    device=torch.device("cuda"))
        totals.append(total)
    return torch.stack(totals)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ["mult-vae", "vamp"])
def test_the_loop_batches_and_optimizers_make_no_host_sync_on_cuda(processed, name, fused):
    """Syncs reported by CUDA during whole epochs, outside the models' own files: none."""
    caught: list = []

    @contextlib.contextmanager
    def watch():
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
            caught.extend(seen)

    assert torch.isfinite(_two_epochs(name, processed, watch, fused)).all()
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    ours = [s for s in syncs if not s.startswith(str(EVCF / "models"))]
    assert ours == [], ours


WHOLE_STEP = {  # model: (hyperparameters, optimizer)
    "mult-vae": (SMALL, "adam"),
    "vamp": ({**SMALL, "n_pseudo": 10}, "adam-normgrad"),
    "hvamp-gated": ({"hidden_size": 64, "z1_size": 16, "z2_size": 16, "n_pseudo": 10}, "adam-normgrad"),
}


@pytest.mark.parametrize("name", list(WHOLE_STEP))
def test_a_whole_training_step_makes_no_host_sync_on_cuda(processed, name):
    """The loop and the models' own code: CUDA raises on the first sync."""
    data = load_split(processed)
    hparams, optimizer_name = WHOLE_STEP[name]
    torch.manual_seed(0)
    model = build_model(name, data.n_items, **hparams).to("cuda").train()
    optimizer = make_optimizer(optimizer_name, model.parameters(), 1e-3)
    batches = Batches(DeviceCSR(data.train, "cuda"), torch.randperm(data.train.shape[0]), 64)
    x = next(iter(batches))
    train_step(model, optimizer, x, 0.2)  # allocates Adam's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in batches:
            train_step(model, optimizer, x, 0.2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["mult-vae", "hvamp-gated"])
def test_evaluation_syncs_do_not_grow_with_the_batches_on_cuda(processed, name):
    """Scoring and ranking a batch never waits for the GPU: only the final copies do, so 2 batches
    and 12 batches of the same users make the same number of syncs."""
    data = load_split(processed)
    hparams = WHOLE_STEP[name][0]
    torch.manual_seed(0)
    model = build_model(name, data.n_items, **hparams).to("cuda").eval()
    fold_in = DeviceCSR(data.test_tr, "cuda")

    def syncs(batch_size: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                evaluate(model.score, fold_in, data.test_te, batch_size=batch_size, device="cuda",
                         with_clicks=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in seen)

    n_users = int((np.diff(data.test_te.indptr) > 0).sum())
    assert syncs(-(-n_users // 2)) == syncs(-(-n_users // 12))


def test_compiled_training_on_cuda_matches_eager(processed):
    """train.compile with inductor (the option's backend): two epochs in eval mode (no random draw)
    give the eager losses to float32 rounding; the graphs are one per (batch size, click bucket)."""
    from torch._dynamo.utils import counters

    data = load_split(processed)
    train = DeviceCSR(data.train, "cuda")
    results, shapes = [], set()
    for compile in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = build_model("vamp", data.n_items, **{**SMALL, "n_pseudo": 10}).to("cuda").eval()
        optimizer = make_optimizer("adam-normgrad", model.parameters(), 1e-3)
        losses = []
        for epoch in range(2):
            for k, batch in enumerate(Batches(train, torch.randperm(train.n_rows), 64)):
                shapes.add((batch.x.shape[0], batch.clicks.batch_row.numel()))
                losses.append(train_step(model, optimizer, batch, 0.1 * (k + 1), compile=compile))
        results.append(torch.stack(losses).cpu())
        graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)
    assert graphs <= len(shapes), (graphs, shapes)


def test_a_jobs_gpu_memory_cap_comes_from_the_environment():
    """docs/gpu.md: jobs sharing a GPU (--resources gpu_slots=N) each cap their memory with
    PYTORCH_CUDA_ALLOC_CONF=per_process_memory_fraction:F, which torch's allocator reads at start."""
    code = ("import torch; torch.zeros(1, device='cuda'); "
            "print(torch.cuda.get_per_process_memory_fraction(0))")
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "per_process_memory_fraction:0.25"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) == 0.25
