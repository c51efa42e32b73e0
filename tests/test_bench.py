"""``evcf bench`` times evcf's own training step with params.yaml's recipes, runs end to end on a tiny
shape and writes what it documents; its FLOP count and its synthetic data are what they say.  No
timing is asserted here: speed is read from the bench's table, not from tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evcf.training
from evcf.bench import format_table, gemm_rate, load_params, run_bench, step_flops
from evcf.data.readers import read_ratings
from evcf.data.shapes import SHAPES, synthetic_matrix, write_ml20m_ratings
from evcf.errors import EvcfError
from evcf.models import build_model
from evcf.optim import make_optimizer

EVCF = [sys.executable, "-m", "evcf.cli"]
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TINY = ["--users", "300", "--items", "200", "--nnz", "6000", "--steps", "3", "--warmup", "1", "--eval-users", "100",
        "--device", "cpu"]
TINY_ARGS = {"users": 80, "items": 50, "nnz": 900, "steps": 2, "warmup": 1, "eval_users": 30, "device": "cpu",
             "skip_preprocess": True}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_cli_runs_prints_a_table_and_writes_the_documented_json(tmp_path):
    proc = subprocess.run(
        [*EVCF, "--log-level", "WARNING", "bench", *TINY, "--models", "mult-vae", "vamp", "popularity",
         "--params", str(PARAMS), "--hparams", '{"vamp": {"n_pseudo": 50}}', "--preprocess-rows", "20000",
         "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "bench" / "cpu.json"  # the default --out
    assert f"ok: {Path('results/bench/cpu.json')}" in proc.stdout
    for needle in ("s / epoch", "IQR", "reference s / epoch", "speed-up", "GFLOP / step", "x floor", "mult-vae",
                   "vamp", "popularity", "preprocessing 20,000 ratings rows", "GFLOP/s", "load average"):
        assert needle in proc.stdout, needle

    result = json.loads(out.read_text())
    assert result["command"].startswith("evcf --log-level WARNING bench --users 300")
    assert set(result["models"]) == {"mult-vae", "vamp", "popularity"}
    for name in ("mult-vae", "vamp"):
        m = result["models"][name]
        for key in ("epoch_s", "users_per_s", "reference_epoch_s", "speedup", "step_s", "reference_step_s",
                    "eval_s", "peak_rss_mib", "reference_peak_rss_mib", "eval_peak_rss_mib", "step_flops",
                    "floor_epoch_s", "x_floor"):
            assert positive(m[key]), (name, key, m[key])
        assert len(m["step_times_s"]) == len(m["reference_step_times_s"]) == 3
        spread = m["step_spread_s"]
        assert spread["min"] <= spread["q1"] <= spread["median"] == m["step_s"] <= spread["q3"] <= spread["max"]
        assert m["epoch_s"] == pytest.approx(m["step_s"] * m["steps_per_epoch"], rel=1e-3)
        assert m["x_floor"] == pytest.approx(m["epoch_s"] / m["floor_epoch_s"], rel=1e-3)
        assert m["check_loss_rel_diff"] < 1e-6  # both paths train the same model
        assert m["load_average_start"] is not None
    # the recipes are params.yaml's for ml-20m (the default dataset of a custom shape)
    vae, vamp = result["models"]["mult-vae"], result["models"]["vamp"]
    assert (vae["batch_size"], vae["optimizer"], vae["lr"]) == (300, "adam", 0.001)  # Liang's 500, capped
    assert (vamp["batch_size"], vamp["optimizer"], vamp["lr"]) == (200, "adam-normgrad", 0.0005)  # EVCF's
    assert vamp["hparams"]["n_pseudo"] == 50 and vamp["hparams"]["likelihood"] == "bernoulli"
    assert result["recipes"] == f"{PARAMS}, data.ml-20m"
    assert positive(result["models"]["popularity"]["fit_s"]) and result["models"]["popularity"]["speedup"] is None
    for key in ("peak_rss_mib", "train_peak_rss_mib"):
        assert positive(result[key]), key
    assert positive(result["gemm"]["gflops"]) and result["gemm"]["dtype"] == "float32"
    assert result["shape"] == {"name": "custom", "users": 300, "items": 200, "nnz": 6000}
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert (result["device"], result["threads"], result["steps"]) == ("cpu", 1, 3)
    assert result["interop_threads"] >= 1 and len(result["load_average_start"]) == 3
    pre = result["preprocess"]
    assert pre["rows"] == 20000 and pre["users"] > 20 and pre["train_clicks"] > 0 and positive(pre["preprocess_s"])
    assert 80 < result["eval_users"] <= 100  # rows with >= 5 clicks have int(0.2 n) held out


def test_the_bench_times_the_training_step_of_evcf_train(monkeypatch):
    """Every step the bench takes, ours and the reference style, is training.train_step."""
    calls = []
    real = evcf.training.train_step

    def counting(model, optimizer, x, beta, *, autocast=False):
        calls.append(tuple(x.shape))
        return real(model, optimizer, x, beta, autocast=autocast)

    monkeypatch.setattr(evcf.training, "train_step", counting)
    result = run_bench(**{**TINY_ARGS, "steps": 3, "warmup": 2}, models=["mult-vae"], batch_size=20)
    # ours: 2 warm-up (the first counts FLOPs) + 3 timed; the reference: 1 alone (memory) + 2 warm-up + 3 timed
    assert calls == [(20, 50)] * ((2 + 3) + (1 + 2 + 3))
    assert len(result["models"]["mult-vae"]["step_times_s"]) == 3


def test_recipes_come_from_params_yaml_and_overrides_apply():
    params = load_params(PARAMS)
    result = run_bench(**TINY_ARGS, models=["mult-dae", "hvamp-gated"], params=params, dataset="ml-20m",
                       hparams={"hvamp-gated": {"n_pseudo": 4}}, reference_steps=0)
    dae, hvamp = result["models"]["mult-dae"], result["models"]["hvamp-gated"]
    assert dae["beta"] == 0.0 and dae["hparams"]["hidden_size"] == 200  # beta_schedule none; [I-200-I]
    assert hvamp["optimizer"] == "adam-normgrad" and hvamp["hparams"]["num_layers"] == 2
    assert hvamp["beta"] == 0.3  # params.yaml: max_beta 0.3 for H+Vamp (Gated)
    defaults = run_bench(**TINY_ARGS, models=["vamp"], hparams={"vamp": {"n_pseudo": 4}}, reference_steps=0,
                         batch_size=16, precision="bf16")
    assert defaults["recipes"] == "code defaults"
    assert (defaults["models"]["vamp"]["batch_size"], defaults["models"]["vamp"]["optimizer"]) == (16, "adam")
    assert defaults["models"]["vamp"]["precision"] == "bf16" and defaults["gemm"]["dtype"] == "bfloat16"


def test_run_bench_skips_preprocessing_and_reference_when_asked():
    result = run_bench(**{**TINY_ARGS, "steps": 1}, models=["mult-dae"], reference_steps=0, preprocess_rows=5000)
    m = result["models"]["mult-dae"]
    assert positive(m["epoch_s"]) and m["reference_epoch_s"] is None and m["speedup"] is None
    assert result["preprocess"] is None and result["preprocess_note"] == "skipped"
    table = format_table(result)
    assert "mult-dae" in table and "preprocessing: skipped" in table


@pytest.mark.parametrize("kwargs, needle", [
    ({"models": ["nope"]}, "unknown model 'nope'"),
    ({"users": 10, "items": 5, "nnz": None}, "--users, --items and --nnz go together"),
    ({"shape": "ml-1b"}, "unknown shape"),
    ({"steps": 0}, "--steps"),
    ({"models": ["mult-vae", "mult-vae"]}, "twice"),
    ({"hparams": {"vamp": {}}, "models": ["mult-vae"]}, "not benchmarked"),
    ({"reference_hparams": {"vamp": {}}, "models": ["mult-vae"]}, "not benchmarked"),
    ({"users": 10, "items": 4, "nnz": 100}, "cannot make a 10 x 4 matrix"),
    ({"precision": "fp8"}, "fp32 or bf16"),
    ({"models": ["vamp"], "hparams": {"vamp": {"n_pseudoinputs": 5}}}, "has no hyperparameter 'n_pseudoinputs'"),
    ({"models": ["vamp"], "train": {"optimiser": "adam"}}, "unknown training setting 'optimiser'"),
    ({"dataset": "ml-1b", "params": {"data": {"ml-20m": {}}}}, "--dataset 'ml-1b' is not in the params file"),
])
def test_bad_arguments_raise_one_evcf_error(kwargs, needle):
    args = {"users": 50, "items": 40, "nnz": 400, "skip_preprocess": True, "device": "cpu", **kwargs}
    if "shape" in kwargs:
        args.update(users=None, items=None, nnz=None)
    with pytest.raises(EvcfError) as info:
        run_bench(**args)
    assert needle in str(info.value)


def test_cli_bad_argument_is_one_line(tmp_path):
    proc = subprocess.run([*EVCF, "bench", "--models", "nope", "--skip-preprocess", "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'"), proc.stderr


# --------------------------------------------------------------------------------------------------
# The FLOP floor


def test_step_flops_of_mult_vae_is_the_formula():
    """6·B·(H·2Z + Z·H + H·I): the sparse first layer is not a matrix product."""
    n_items, batch, hidden, latent = 70, 9, 12, 5
    torch.manual_seed(0)
    model = build_model("mult-vae", n_items, hidden_size=hidden, latent_size=latent)
    x = (torch.rand(batch, n_items) < 0.2).float()
    flops = step_flops(model, make_optimizer("adam", model.parameters(), 1e-3), x, 0.2, autocast=False)
    assert flops == 6 * batch * (hidden * 2 * latent + latent * hidden + hidden * n_items)


def test_step_flops_of_vamp_adds_the_pseudo_inputs_through_the_encoder():
    n_items, batch, hidden, latent, k = 70, 9, 12, 5, 4
    torch.manual_seed(0)
    model = build_model("vamp", n_items, hidden_size=hidden, latent_size=latent, n_pseudo=k)
    x = (torch.rand(batch, n_items) < 0.2).float()
    flops = step_flops(model, make_optimizer("adam-normgrad", model.parameters(), 1e-3), x, 0.2, autocast=False)
    network = 6 * batch * (hidden * 2 * latent + latent * hidden + hidden * n_items)
    pseudo = 6 * k * (n_items * hidden + hidden * 2 * latent)
    mixture = 6 * 2 * batch * latent * k  # the mixture density's two (B, Z) x (Z, K) products, 3x for backward
    assert flops == network + pseudo + mixture


def test_gemm_rate_is_a_positive_rate():
    rate = gemm_rate(torch.device("cpu"), torch.float32, 128, repeats=3)
    assert rate["size"] == 128 and 0 < rate["gflops_min"] <= rate["gflops"] <= rate["gflops_max"]


# --------------------------------------------------------------------------------------------------
# The synthetic data (evcf/data/shapes.py)


def test_synthetic_matrix_is_exact_seeded_binary_and_skewed():
    a = synthetic_matrix(2000, 500, 40_000, seed=1)
    assert a.shape == (2000, 500) and a.nnz == 40_000
    assert a.has_canonical_format and set(np.unique(a.data)) == {1.0}
    lengths = np.diff(a.indptr)
    assert lengths.min() >= 5 and lengths.max() <= 250
    assert np.median(lengths) < lengths.mean()  # a long tail of heavy users
    popularity = np.sort(np.asarray(a.sum(0)).ravel())[::-1]
    assert popularity[0] > 4 * popularity.mean() and popularity[0] > 10 * popularity[-1]  # a popular head
    b = synthetic_matrix(2000, 500, 40_000, seed=1)
    assert (a != b).nnz == 0
    assert (a != synthetic_matrix(2000, 500, 40_000, seed=2)).nnz > 0


def test_named_shapes_are_the_papers_splits():
    assert (SHAPES["ml-20m"].users, SHAPES["ml-20m"].items, SHAPES["ml-20m"].preprocess_rows) == \
        (116_677, 20_108, 20_000_263)
    assert (SHAPES["netflix"].users, SHAPES["netflix"].items) == (383_435, 17_769)
    assert 7_000_000 <= SHAPES["ml-20m"].nnz <= 8_500_000


def test_ml20m_like_ratings_csv_reads_back(tmp_path):
    path = tmp_path / "ratings.csv"
    info = write_ml20m_ratings(path, 5000, seed=3)
    assert info["rows"] == 5000
    lines = path.read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp" and len(lines) == 5001
    user, movie, rating, stamp = lines[1].split(",")
    assert user == "1" and rating in {f"{h / 2:.1f}" for h in range(1, 11)} and len(stamp) == 10
    frame = read_ratings(path, "movielens-20m")
    assert len(frame) == 5000
    users = frame["user"].to_numpy()
    assert (np.diff(users) >= 0).all() and np.bincount(users)[1:].min() >= 20  # ML-20M: >= 20 per user
    assert not frame.duplicated(["user", "item"]).any()
    assert set(np.unique(frame["rating"])) <= {h / 2 for h in range(1, 11)}
    assert 0.3 < (frame["rating"] > 3.5).mean() < 0.7
