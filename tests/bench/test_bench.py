"""``evcf bench`` times evcf's own training step with params.yaml's recipes, runs end to end on a tiny
shape and writes what it documents; its FLOP count and its synthetic data are what they say.  WMF,
SLIM and CDAE are timed through their own training code, and their extrapolations are the formulas
they state.  No timing is asserted here: speed is read from the bench's table, not from tests."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evcf.bench
import evcf.models.slim
import evcf.optim
import evcf.training
from evcf.bench import format_table, gemm_rate, load_params, run_bench, step_flops
from evcf.bench import vae
from evcf.bench.baselines import SLIM_CHUNKS
from evcf.bench.table import fmt
from evcf.data.readers import read_ratings
from evcf.data.shapes import SHAPES, synthetic_matrix, write_ml20m_ratings
from evcf.errors import EvcfError
from evcf.models import WMF, build_model
from evcf.models.cdae import CDAETrainer
from evcf.optim import make_optimizer

EVCF = [sys.executable, "-m", "evcf.cli"]
# The JSON keeps 4 significant digits (evcf.bench.timer.rounded): each figure is within 5e-4 of its
# value, so a figure recomputed from other rounded figures (a ratio, a sum) can differ from the written
# one by up to ~1.5e-3; a wrong formula differs by far more.
ROUNDED = 2e-3
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TINY = ["--users", "300", "--items", "200", "--nnz", "6000", "--steps", "3", "--warmup", "1", "--eval-users", "100",
        "--device", "cpu"]
TINY_ARGS = {"users": 80, "items": 50, "nnz": 900, "steps": 2, "warmup": 1, "eval_users": 30, "device": "cpu",
             "skip_preprocess": True}
BASELINE_ARGS = {**TINY_ARGS, "gemm_size": 256, "reference_steps": 0}  # no VAE here: the GEMM rate is not used


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow  # evcf bench as a subprocess
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
    assert result["command"].startswith("evcf --log-level WARNING bench --users 300") and result["complete"] is True
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
        assert m["epoch_s"] == pytest.approx(m["step_s"] * m["steps_per_epoch"], rel=ROUNDED)
        assert m["x_floor"] == pytest.approx(m["epoch_s"] / m["floor_epoch_s"], rel=ROUNDED)
        # the floor: the epoch's FLOPs at the GEMM rate measured around this model's own bench
        window = m["gemm_window"]
        assert positive(window["before_gflops"]) and positive(window["after_gflops"])
        assert m["gemm_gflops"] == window["gflops"] == pytest.approx(
            (window["before_gflops"] + window["after_gflops"]) / 2, rel=ROUNDED)
        assert m["epoch_flops"] == m["step_flops"] * m["steps_per_epoch"]
        assert m["floor_epoch_s"] == pytest.approx(m["epoch_flops"] / (m["gemm_gflops"] * 1e9), rel=ROUNDED)
        assert m["reference_x_floor"] == pytest.approx(m["reference_epoch_s"] / m["floor_epoch_s"], rel=ROUNDED)
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

    def counting(model, optimizer, batch, beta, *, autocast=False):
        calls.append(tuple(getattr(batch, "x", batch).shape))  # a RowBatch (ours) or the dense rows (reference)
        return real(model, optimizer, batch, beta, autocast=autocast)

    monkeypatch.setattr(evcf.training, "train_step", counting)
    result = run_bench(**{**TINY_ARGS, "steps": 3, "warmup": 2}, models=["mult-vae"], batch_size=20)
    # ours: 2 warm-up (the first counts FLOPs) + 3 timed; the reference: 1 alone (memory) + 2 warm-up + 3 timed
    assert calls == [(20, 50)] * ((2 + 3) + (1 + 2 + 3))
    assert len(result["models"]["mult-vae"]["step_times_s"]) == 3


def test_pipelined_steps_are_more_training_steps_timed_in_rounds(monkeypatch):
    """--pipelined-steps takes that many more real train_step calls, after the synchronised ones."""
    calls = []
    real = evcf.training.train_step

    def counting(model, optimizer, batch, beta, *, autocast=False):
        calls.append(autocast)
        return real(model, optimizer, batch, beta, autocast=autocast)

    monkeypatch.setattr(evcf.training, "train_step", counting)
    result = run_bench(**{**TINY_ARGS, "steps": 2, "warmup": 1}, models=["mult-vae"], batch_size=20,
                       reference_steps=0, pipelined_steps=7, precision="bf16")
    m = result["models"]["mult-vae"]
    assert len(calls) == 1 + 2 + 7 and all(calls)  # warm-up, timed, pipelined; bf16 autocast in each
    assert sorted(m["pipelined_round_steps"]) == [1, 1, 1, 2, 2] and len(m["pipelined_round_step_s"]) == 5
    assert m["pipelined_step_s"] == pytest.approx(sorted(m["pipelined_round_step_s"])[2], rel=ROUNDED)  # the median
    assert m["pipelined_users_per_s"] == pytest.approx(20 / m["pipelined_step_s"], rel=ROUNDED)
    assert m["pipelined_steps_per_s"] == pytest.approx(1 / m["pipelined_step_s"], rel=ROUNDED)
    assert m["pipelined_epoch_s"] == pytest.approx(m["pipelined_step_s"] * m["steps_per_epoch"], rel=ROUNDED)
    assert m["pipelined_x_floor"] == pytest.approx(m["pipelined_epoch_s"] / m["floor_epoch_s"], rel=ROUNDED)
    assert (result["precision"], m["precision"], m["tf32"], result["gemm"]["dtype"]) == ("bf16", "bf16", False,
                                                                                         "bfloat16")
    assert "pipelined s / epoch" in format_table(result)
    assert "pipelined_steps" not in run_bench(**TINY_ARGS, models=["mult-vae"], reference_steps=0)["models"][
        "mult-vae"]  # off by default


@pytest.mark.parametrize("precision, want", [("tf32", ("fp32", True)), ("fp32", ("fp32", False))])
def test_precision_names_set_the_training_settings(precision, want):
    result = run_bench(**TINY_ARGS, models=["mult-vae"], reference_steps=0, precision=precision,
                       train={"tf32": not want[1]})  # --precision wins over the recipe
    m = result["models"]["mult-vae"]
    assert (m["precision"], m["tf32"]) == want and result["precision"] == precision
    assert (result["gemm"]["dtype"], result["gemm"]["tf32"]) == ("float32", want[1])


@pytest.mark.slow  # evcf bench as a subprocess
def test_the_reference_path_can_be_todays_step_with_its_own_settings(monkeypatch):
    """--reference-batches device and --reference-train: the reference takes ours's batches and its own
    optimizer settings (by default: the reference codes' way, densified on the host and unfused)."""
    seen = []
    real_step, real_optimizer = evcf.training.train_step, evcf.optim.make_optimizer

    def counting(model, optimizer, batch, beta, *, autocast=False):
        seen.append(("step", type(batch).__name__))
        return real_step(model, optimizer, batch, beta, autocast=autocast)

    def optimizer(name, params, lr, *, fused=False):
        seen.append(("optimizer", name, fused))
        return real_optimizer(name, params, lr, fused=fused)

    monkeypatch.setattr(evcf.training, "train_step", counting)
    monkeypatch.setattr(evcf.optim, "make_optimizer", optimizer)
    args = {**TINY_ARGS, "steps": 1, "warmup": 1, "models": ["mult-vae"], "batch_size": 20}
    result = run_bench(**args, train={"fused_optimizer": True}, reference_batches="device",
                       reference_train={"fused_optimizer": False, "optimizer": "adam-normgrad"})
    m = result["models"]["mult-vae"]
    assert {s[1] for s in seen if s[0] == "step"} == {"RowBatch"}  # no dense batch on either path
    assert ("optimizer", "adam", True) in seen and ("optimizer", "adam-normgrad", False) in seen
    assert m["reference_train"]["optimizer"] == "adam-normgrad" and m["reference_batches"] == "device"
    assert m["reference_x_floor"] == pytest.approx(m["reference_epoch_s"] / m["floor_epoch_s"], rel=ROUNDED)
    assert result["reference_style"] == "batches built on the device, as ours"
    seen.clear()
    run_bench(**args, train={"fused_optimizer": True})  # the default reference: dense rows, unfused
    assert {s[1] for s in seen if s[0] == "step"} == {"RowBatch", "Tensor"}
    assert sorted(s[2] for s in seen if s[0] == "optimizer") == [False, False, False, True, True]
    with pytest.raises(EvcfError, match="--reference-train sets batch_size"):
        run_bench(**args, reference_train={"batch_size": 10})


def test_the_results_so_far_are_handed_on_after_each_model():
    """A bench cut short keeps the models it measured: the CLI writes its JSON after each one."""
    seen = []
    result = run_bench(**TINY_ARGS, models=["mult-vae", "popularity"], reference_steps=0,
                       on_model=lambda r: seen.append((r["complete"], list(r["models"]))))
    assert seen == [(False, ["mult-vae"]), (False, ["mult-vae", "popularity"])] and result["complete"] is True


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
    ({"precision": "fp8"}, "is not one of fp32, tf32, bf16"),
    ({"models": ["vamp"], "hparams": {"vamp": {"n_pseudoinputs": 5}}}, "has no hyperparameter 'n_pseudoinputs'"),
    ({"models": ["vamp"], "train": {"optimiser": "adam"}}, "unknown training setting 'optimiser'"),
    ({"dataset": "ml-1b", "params": {"data": {"ml-20m": {}}}}, "--dataset 'ml-1b' is not in the params file"),
    ({"wmf_sweeps": 0}, "--wmf-sweeps must be a whole number of at least 1"),
    ({"wmf_sweeps": 2.5}, "--wmf-sweeps must be a whole number of at least 1"),
    ({"slim_items": -4}, "--slim-items must be a whole number of at least 1"),
    ({"slim_items": True}, "--slim-items must be a whole number of at least 1"),
    ({"models": ["wmf"], "reference_hparams": {"wmf": {}}}, "'wmf', which has no reference style"),
    ({"models": ["cdae"], "hparams": {"cdae": {"hidden": 5}}}, "has no hyperparameter 'hidden'"),
    ({"models": ["slim"], "hparams": {"slim": {"l1_penalties": []}}}, "l1_penalties = [] must be a non-empty list"),
    ({"models": ["cdae"], "batch_size": 0}, "--batch-size must be at least 1"),
])
def test_bad_arguments_raise_one_evcf_error(kwargs, needle):
    args = {"users": 50, "items": 40, "nnz": 400, "skip_preprocess": True, "device": "cpu", **kwargs}
    if "shape" in kwargs:
        args.update(users=None, items=None, nnz=None)
    with pytest.raises(EvcfError) as info:
        run_bench(**args)
    assert needle in str(info.value)


@pytest.mark.parametrize("args, start", [
    (["--models", "nope"], "error: unknown model 'nope'"),
    (["--models", "slim", "--slim-items", "0"], "error: --slim-items must be a whole number of at least 1"),
])
def test_cli_bad_argument_is_one_line(tmp_path, args, start):
    proc = subprocess.run([*EVCF, "bench", *args, "--skip-preprocess", "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr


# --------------------------------------------------------------------------------------------------
# WMF, SLIM and CDAE: their own training code, and what is extrapolated from it


@pytest.fixture(scope="module")
def baselines():
    """One bench of the three, with params.yaml's ml-20m recipes (their grids, CDAE's batch of 500)."""
    return run_bench(**{**BASELINE_ARGS, "steps": 3, "warmup": 2}, models=["wmf", "slim", "cdae"],
                     params=load_params(PARAMS), dataset="ml-20m", wmf_sweeps=3, slim_items=20)


def test_wmf_times_implicit_sweeps_and_extrapolates_the_recipes_fit(baselines):
    m = baselines["models"]["wmf"]
    assert m["setting"] == {"factors": 100, "regularization": 1.0, "alpha": 1.0}  # the grid's first point
    assert (m["iterations"], m["sweeps_timed"], m["grid_points"]) == (15, 3, 2 * 6 * 3)
    assert len(m["sweep_times_s"]) == 3 and all(positive(t) for t in m["sweep_times_s"])
    spread = m["sweep_spread_s"]
    assert spread["min"] <= spread["q1"] <= spread["median"] == m["sweep_s"] == m["epoch_s"] <= spread["q3"]
    assert m["measured_fit_s"] >= sum(m["sweep_times_s"]) * 0.999  # the sweeps are part of the measured fit
    setup = m["measured_fit_s"] - sum(m["sweep_times_s"])
    assert m["fit_s_extrapolated"] == pytest.approx(setup + 15 * m["sweep_s"], rel=ROUNDED)
    assert m["grid_s_extrapolated"] == pytest.approx(36 * (m["fit_s_extrapolated"] + m["eval_s"]), rel=ROUNDED)
    for key in ("eval_s", "peak_rss_mib", "eval_peak_rss_mib"):
        assert positive(m[key]), key


def test_slim_fits_a_seeded_sample_along_its_path_and_extrapolates_per_item_times_items_over_threads(baselines):
    m, items = baselines["models"]["slim"], baselines["shape"]["items"]
    assert m["grid_points"] == 16 and m["warm_start"] is True
    assert m["setting"] == {"l1": 5.0, "l2": 5.0} == m["path"][0]  # the path starts most penalised
    assert m["items_fitted"] == 20 and sum(m["chunk_items"]) == 20 and len(m["chunk_items"]) == SLIM_CHUNKS
    for style in ("cold", "warm"):  # each setting of the path timed, both ways
        assert len(m["path_setting_s"][style]) == 16 and all(positive(t) for t in m["path_setting_s"][style])
        assert m["path_item_s"][style] == pytest.approx(sum(m["path_setting_s"][style]) / 20, rel=ROUNDED)
    assert m["grid_fit_s_extrapolated"] == pytest.approx(
        16 * m["setup_s"] + m["path_item_s"]["warm"] * items / m["threads"], rel=ROUNDED)
    assert m["fit_s_extrapolated"] == pytest.approx(m["grid_fit_s_extrapolated"] / 16, rel=ROUNDED)
    assert m["warm_start_speedup"] == pytest.approx(m["path_item_s"]["cold"] / m["path_item_s"]["warm"], rel=ROUNDED)
    assert 0 <= m["warm_vs_cold_max_rel_diff"] < 0.05  # the same solutions up to the stopping rule
    assert 0 <= m["warm_vs_cold_objective_max_rel_diff"] < 1e-3
    # different weights (the stopping rule's slack) give different objectives: the figure is computed
    assert (m["warm_vs_cold_objective_max_rel_diff"] > 0) == (m["warm_vs_cold_max_rel_diff"] > 0)
    assert m["threads"] == torch.get_num_threads()
    assert m["grid_s_extrapolated"] == pytest.approx(16 * m["fit_s_extrapolated"], rel=ROUNDED)
    assert m["w_mib_extrapolated"] == pytest.approx(m["w_nnz_per_item"] * items * 12 / 2**20, rel=ROUNDED)
    assert 0 < m["w_nnz_per_item"] <= m["w_nnz_per_item_max"] < items
    assert m["item_spread_s"]["min"] <= m["item_spread_s"]["median"] <= m["item_spread_s"]["max"]
    assert positive(m["peak_rss_mib"]) and m["eval_s"] is None and m["epoch_s"] is None


def test_cdae_times_its_step_and_extrapolates_epochs_and_grid(baselines):
    m = baselines["models"]["cdae"]
    # Liang et al.'s CDAE (params.yaml): weight decay {0.01, ..., 100}, up to 200 epochs (early stopping
    # can end a setting sooner: the fit is an upper bound)
    assert m["setting"] == {"weight_decay": 0.01} and m["grid_points"] == 5 and m["epochs"] == 200
    assert m["hparams"]["batch_size"] == 500 and m["batch_size"] == 80  # the recipe's, capped at the users
    assert m["steps_per_epoch"] == 1 and len(m["step_times_s"]) == 3
    assert m["epoch_s"] == pytest.approx(m["step_s"] * m["steps_per_epoch"], rel=ROUNDED)
    assert m["fit_s_extrapolated"] == pytest.approx(m["epoch_s"] * 200, rel=ROUNDED)
    assert m["grid_s_extrapolated"] == pytest.approx(5 * (m["fit_s_extrapolated"] + m["eval_s"]), rel=ROUNDED)
    for key in ("step_s", "users_per_s", "eval_s", "peak_rss_mib", "eval_peak_rss_mib"):
        assert positive(m[key]), key


def test_the_table_marks_what_is_extrapolated(baselines):
    table = format_table(baselines)
    assert "~: extrapolated" in table and "fit (s)" in table
    rows = {line.split()[0]: line for line in table.splitlines() if line.split()[:1] in (["wmf"], ["slim"], ["cdae"])}
    assert set(rows) == {"wmf", "slim", "cdae"}
    for name, row in rows.items():
        m = baselines["models"][name]
        assert f"~{fmt(m['fit_s_extrapolated'])}" in row, (name, row)
        assert f"~grid of {m['grid_points']} points {fmt(m['grid_s_extrapolated'])} s" in row, (name, row)
    assert "reference s / epoch" not in table  # no model filled it: the empty columns are left out


def test_slim_bench_calls_the_real_solver_on_a_seeded_sample(monkeypatch):
    calls = []
    real = evcf.models.slim.slim_weights

    def recording(train, l1, l2, *, items=None, threads=1, start=None, **kwargs):
        calls.append((l1, l2, list(items), threads, start))
        return real(train, l1, l2, items=items, threads=threads, start=start, **kwargs)

    monkeypatch.setattr(evcf.models.slim, "slim_weights", recording)
    # a two-setting path: each chunk fits (1.0, 2.0) then (0.5, 2.0), cold and warm
    path = {"slim": {"l1_penalties": [0.5, 1.0], "l2_penalties": [2.0]}}
    run_bench(**{**BASELINE_ARGS, "models": ["slim"], "hparams": path}, slim_items=10)
    assert [call[:2] for call in calls[:4]] == [(1.0, 2.0)] * 2 + [(0.5, 2.0)] * 2 and len(calls) == 4 * SLIM_CHUNKS
    assert calls[0][4] is None and calls[1][4] is None and calls[2][4] is None  # cold, and the path's first warm fit
    assert calls[3][4] is not None and calls[3][4][:, calls[3][2]].nnz > 0  # warm: from the previous W's columns
    calls.clear()
    args = {**BASELINE_ARGS, "models": ["slim"], "hparams": {"slim": {"l1_penalties": [0.5], "l2_penalties": [2.0],
                                                                         "warm_start": False}}}
    first = run_bench(**args, slim_items=10)
    sample = [j for call in calls for j in call[2]]
    assert len(calls) == SLIM_CHUNKS and {call[:2] for call in calls} == {(0.5, 2.0)}
    assert all(call[3] == 1 for call in calls)  # one thread: the time of an item is its own
    assert len(set(sample)) == 10 and all(0 <= j < 50 for j in sample)
    calls.clear()
    run_bench(**args, slim_items=10)
    assert [j for call in calls for j in call[2]] == sample  # seeded
    calls.clear()
    run_bench(**{**args, "seed": 1}, slim_items=10)
    assert [j for call in calls for j in call[2]] != sample
    calls.clear()
    whole = run_bench(**args, slim_items=500)  # more than there are: every item, once
    assert sorted(j for call in calls for j in call[2]) == list(range(50))
    assert whole["models"]["slim"]["items_fitted"] == 50
    assert first["models"]["slim"]["grid_points"] == 1


def test_wmf_bench_runs_wmf_fit_with_the_timed_sweeps(monkeypatch):
    calls = []
    real = WMF.fit

    def recording(self, train, **kwargs):
        calls.append((self.config.iterations, kwargs))
        return real(self, train, **kwargs)

    monkeypatch.setattr(WMF, "fit", recording)
    result = run_bench(**BASELINE_ARGS, models=["wmf"], wmf_sweeps=4,
                       hparams={"wmf": {"factors": [8], "iterations": 6}})
    assert len(calls) == 1 and calls[0][0] == 4 and calls[0][1]["factors"] == 8
    m = result["models"]["wmf"]
    assert len(m["sweep_times_s"]) == 4 and m["iterations"] == 6


def test_wmf_fit_is_extrapolated_from_the_median_sweep(monkeypatch):
    real = WMF.fit

    def scripted(self, train, *, sweep_callback, **kwargs):
        real(self, train, **kwargs)
        for i, elapsed in enumerate([0.3, 0.1, 0.2]):  # as if implicit had timed these three sweeps
            sweep_callback(i, elapsed, None)

    monkeypatch.setattr(WMF, "fit", scripted)
    m = run_bench(**BASELINE_ARGS, models=["wmf"], wmf_sweeps=3, hparams={"wmf": {"factors": [4]}})["models"]["wmf"]
    assert m["sweep_s"] == m["epoch_s"] == 0.2
    assert (m["sweep_spread_s"]["min"], m["sweep_spread_s"]["max"]) == (0.1, 0.3)
    assert m["fit_s_extrapolated"] == pytest.approx(m["measured_fit_s"] - 0.6 + 15 * 0.2, rel=ROUNDED)


def test_wmf_fit_reports_each_als_sweep_to_its_callback():
    train = synthetic_matrix(60, 40, 600, seed=0)
    calls = []
    build_model("wmf", 40, factors=[4], iterations=3).fit(train, sweep_callback=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [0, 1, 2] and all(c[1] >= 0 for c in calls)


def test_the_bench_times_the_step_that_cdae_fit_takes(monkeypatch):
    calls = []
    real = CDAETrainer.step

    def counting(self, rows, clicks=None):
        calls.append(int(rows.numel()))
        return real(self, rows, clicks)

    monkeypatch.setattr(CDAETrainer, "step", counting)
    result = run_bench(**{**BASELINE_ARGS, "steps": 3, "warmup": 2}, models=["cdae"], batch_size=30)
    assert calls == [30, 30, 20, 30, 30] and result["models"]["cdae"]["steps_per_epoch"] == 3  # 80 users by 30
    calls.clear()
    model = build_model("cdae", 50, epochs=2, batch_size=30, hidden_size=4)
    model.fit(synthetic_matrix(80, 50, 900, seed=0))
    assert calls == [30, 30, 20] * 2


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


def test_the_bench_package_has_no_private_imports_no_cycles_and_a_light_top():
    """evcf/bench/: its files import no private name of each other, import each other without a
    cycle, and import only the standard library (and evcf.errors) at their tops, so that the CLI's
    parser loads them without torch, numpy, scipy or pandas (its start-up stays fast)."""
    import ast

    package = Path(evcf.bench.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        edges[path.stem] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from .{node.module}"
        for node in tree.body:  # the top level only
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import a; from . import x
                edges[path.stem].update([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module == "errors", f"{path.name} imports ..{node.module} at its top"
            elif isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name} at its top"
    done: set[str] = set()

    def visit(module: str, trail: tuple) -> None:
        assert module not in trail, f"import cycle: {' -> '.join((*trail, module))}"
        if module in done:
            return
        for nxt in edges.get(module, ()):
            visit(nxt, (*trail, module))
        done.add(module)

    for module in edges:
        visit(module, ())
    assert {"timer", "vae", "baselines", "run", "table", "preprocess", "__init__"} <= set(edges)
    loaded = subprocess.run([sys.executable, "-c", "import sys, evcf.cli, evcf.bench; evcf.cli.build_parser(); "
                             "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'pandas') if m in sys.modules))"],
                            capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_a_multi_pass_model_is_timed_pass_by_pass_as_the_loop_trains_it(monkeypatch):
    """RecVAE's epoch is 3 encoder passes and 1 decoder pass (its params.yaml row): the bench times each
    pass's steps with that pass's optimizer and adds the passes up; a single-pass step would count
    one pass."""

    stepped = []
    real = evcf.training.train_step

    def spy(model, optimizer, batch, beta, **kw):
        stepped.append((model.phase.name, id(optimizer)))
        return real(model, optimizer, batch, beta, **kw)

    monkeypatch.setattr(evcf.training, "train_step", spy)
    result = run_bench(**{**TINY_ARGS, "steps": 2, "warmup": 1}, models=["recvae"], reference_steps=0,
                       batch_size=20)
    entry = result["models"]["recvae"]
    assert [p["phase"] for p in entry["passes"]] == ["encoder", "encoder", "encoder", "decoder"]
    steps_per_pass = math.ceil(80 / 20)
    assert entry["epoch_s"] == pytest.approx(sum(p["step_s"] for p in entry["passes"]) * steps_per_pass, rel=ROUNDED)
    assert entry["steps_per_epoch"] == 4 * steps_per_pass and positive(entry["x_floor"])
    assert entry["epoch_flops"] == sum(p["step_flops"] for p in entry["passes"]) * steps_per_pass
    assert entry["floor_epoch_s"] == pytest.approx(entry["epoch_flops"] / (entry["gemm_gflops"] * 1e9), rel=ROUNDED)
    # each pass stepped its own optimizer: the encoder passes one, the decoder pass another
    encoder = {opt for phase, opt in stepped if phase == "encoder"}
    decoder = {opt for phase, opt in stepped if phase == "decoder"}
    assert len(encoder) == 1 and len(decoder) == 1 and encoder != decoder
    assert len(stepped) == 4 * (1 + 2)  # per pass: the FLOP-counted step (warm-up 1), 2 timed
    assert vae.bench_phases is not None


def test_slims_objective_as_the_bench_computes_it():
    """½ ‖x_j − X w_j‖² + (l2/2) ‖w_j‖² + l1 Σ w_j, recomputed densely here, in both units."""
    import scipy.sparse as sp

    from evcf.bench.baselines import _slim_objectives

    rng = np.random.default_rng(3)
    x = (rng.random((30, 6)) < 0.4).astype(float)
    w = rng.random((6, 6)) * (rng.random((6, 6)) < 0.5)
    np.fill_diagonal(w, 0.0)
    items = np.array([1, 4])
    for units, scale in (("ning-karypis", 1.0), ("sklearn", 30.0)):
        got = _slim_objectives(sp.csc_matrix(x), sp.csc_matrix(w), items, {"l1": 0.3, "l2": 2.0}, units)
        for k, j in enumerate(items):
            r = x[:, j] - x @ w[:, j]
            want = 0.5 * r @ r + 0.5 * 2.0 * scale * w[:, j] @ w[:, j] + 0.3 * scale * w[:, j].sum()
            assert got[k] == pytest.approx(want, rel=1e-12), (units, j)


def test_the_floor_divides_the_epochs_flops_by_the_rate_of_the_models_own_window():
    """By hand: 2e12 FLOPs an epoch at the mean of 100 and 300 GFLOP/s is a 10-s floor; each path's
    × floor is its epoch over that; a path the entry did not time gets none."""
    window = vae.gemm_window({"gflops": 100.0, "size": 8}, {"gflops": 300.0, "size": 8})
    assert window == {"gflops": 200.0, "before_gflops": 100.0, "after_gflops": 300.0}
    entry = {"epoch_flops": 2e12, "epoch_s": 25.0, "reference_epoch_s": 40.0, "pipelined_epoch_s": None}
    vae.set_floor(entry, window)
    assert entry["floor_epoch_s"] == 10.0 and entry["gemm_gflops"] == 200.0 and entry["gemm_window"] is window
    assert (entry["x_floor"], entry["reference_x_floor"]) == (2.5, 4.0) and "pipelined_x_floor" not in entry


def test_each_vae_rows_floor_uses_the_gemm_rates_measured_just_before_and_after_its_own_bench(monkeypatch):
    """A machine whose speed drifts: the run's rates are 100, 200, 300, ... GFLOP/s in the order they
    are measured.  The first is the run's; each VAE row gets the next two, around its own steps."""
    import evcf.bench.run as bench_run

    rates = iter(range(100, 10_000, 100))
    monkeypatch.setattr(bench_run, "gemm_rate", lambda *a, **k: {"gflops": float(next(rates)), "dtype": "float32",
                                                                   "size": 8, "tf32": False})
    result = run_bench(**TINY_ARGS, models=["mult-vae", "vamp"], reference_steps=0)
    assert result["gemm"]["gflops"] == 100.0
    for name, (before, after) in (("mult-vae", (200.0, 300.0)), ("vamp", (400.0, 500.0))):
        m = result["models"][name]
        assert (m["gemm_window"]["before_gflops"], m["gemm_window"]["after_gflops"]) == (before, after), name
        assert m["floor_epoch_s"] == pytest.approx(m["epoch_flops"] / ((before + after) / 2 * 1e9), rel=ROUNDED)


# --------------------------------------------------------------------------------------------------
# The memory-traffic floor beside the FLOP floor


def test_step_traffic_charges_each_operations_reads_and_writes():
    """By hand, a model of one weight w (n floats) whose loss is (w * x).sum() with plain SGD: the
    forward is a mul (reads w and x, writes the product) and a sum (reads the product); the backward
    writes a gradient; the optimizer reads it and reads and writes w in place.  At least the
    forward's 3 n floats and the update's 3 n; far below that is an undercount, and a step whose
    data is 10x larger moves about 10x more."""
    from evcf.bench.traffic import step_traffic

    class One(torch.nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(n))

        def loss(self, x, beta, clicks):
            from evcf.models.base import LossParts

            value = (self.w * x).sum()
            zero = torch.zeros(())
            return LossParts(loss=value, nll=value.detach(), kl=zero, penalty=zero)

    counts = []
    for n in (10_000, 100_000):
        model = One(n)
        counted = step_traffic(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.ones(n), 0.0, False)
        assert 6 * 4 * n <= counted <= 20 * 4 * n, (n, counted)
        counts.append(counted)
    assert counts[1] / counts[0] == pytest.approx(10, rel=0.01)


def test_an_indexing_operation_is_charged_the_rows_it_reaches():
    """An embedding_bag over 3 rows of a 10,000-row table moves those rows, not the table."""
    from evcf.bench.traffic import step_traffic

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.ones(10_000, 8))

        def loss(self, x, beta, clicks):
            from evcf.models.base import LossParts

            value = torch.nn.functional.embedding_bag(torch.tensor([1, 5, 7]), self.table, torch.tensor([0])).sum()
            zero = torch.zeros(())
            return LossParts(loss=value, nll=value.detach(), kl=zero, penalty=zero)

    model = Bag()
    counted = step_traffic(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.ones(1), 0.0, False)
    table = 10_000 * 8 * 4
    # the backward writes a dense gradient (one table) and SGD's in-place update reads it and reads
    # and writes the table (three): four tables, and the bag's 3 rows (the whole table would be five)
    assert 4 * table < counted < 4.01 * table, counted / table


def test_the_traffic_floor_divides_the_epochs_bytes_by_the_copy_rate():
    """By hand: 4e11 bytes an epoch at 100 GB/s is a 4-s traffic floor; 2e12 FLOPs at 200 GFLOP/s a
    10-s FLOP floor: the epoch is bound by FLOPs, and each path's × traffic floor is its epoch / 4."""
    entry = {"epoch_flops": 2e12, "epoch_bytes": 4e11, "epoch_s": 25.0, "reference_epoch_s": 40.0,
             "pipelined_epoch_s": 20.0}
    vae.set_floor(entry, {"gflops": 200.0}, {"gbs": 100.0})
    assert entry["traffic_floor_epoch_s"] == 4.0 and entry["copy_gbs"] == 100.0 and entry["bound"] == "FLOPs"
    assert (entry["x_traffic_floor"], entry["reference_x_traffic_floor"], entry["pipelined_x_traffic_floor"]) == (
        6.25, 10.0, 5.0)
    slow_memory = {"epoch_flops": 2e12, "epoch_bytes": 4e11, "epoch_s": 25.0}
    vae.set_floor(slow_memory, {"gflops": 200.0}, {"gbs": 10.0})
    assert slow_memory["traffic_floor_epoch_s"] == 40.0 and slow_memory["bound"] == "memory traffic"


def test_each_vae_row_reports_its_traffic_floor_beside_its_flop_floor():
    result = run_bench(**TINY_ARGS, models=["mult-vae", "vamp"], reference_steps=0)
    assert positive(result["bandwidth"]["gbs"])
    for name, m in result["models"].items():
        assert positive(m["step_bytes"]) and m["epoch_bytes"] == m["step_bytes"] * m["steps_per_epoch"], name
        assert m["traffic_floor_epoch_s"] == pytest.approx(m["epoch_bytes"] / (result["bandwidth"]["gbs"] * 1e9),
                                                           rel=ROUNDED)
        assert m["bound"] in ("FLOPs", "memory traffic")
    # Vamp moves its pseudo-inputs (K x I) through the encoder each step: more bytes than Mult-VAE
    assert result["models"]["vamp"]["step_bytes"] > result["models"]["mult-vae"]["step_bytes"]
    table = format_table(result)
    assert "traffic floor s / epoch" in table and "GB / step" in table


def test_a_generated_dataset_is_benched_on_its_own_split_with_its_recipes():
    """--shape synthetic (a dataset of params.yaml with a `synthetic` spec): the bench generates and
    splits it as the pipeline does, trains on its training users, evaluates its validation users,
    and uses data.synthetic's recipes; it also times a job's start-up (evcf plan counts it per job)."""
    from evcf.bench.run import generated_split

    params = load_params(PARAMS)
    params["data"]["synthetic"]["synthetic"].update(n_users=400, n_items=100, mean_items=15)
    params["data"]["synthetic"]["heldout_users"] = 40
    result = run_bench(shape="synthetic", params=params, params_source="params.yaml", models=["mult-vae", "vamp"],
                       steps=2, warmup=1, reference_steps=0, skip_preprocess=True, device="cpu", gemm_size=128)
    split = generated_split(params, "synthetic")
    assert result["shape"] == {"name": "synthetic", "users": split.train.shape[0], "items": 100,
                               "nnz": split.train.nnz}
    assert result["eval_users"] == int((np.diff(split.validation_te.indptr) > 0).sum()) == 40
    assert result["recipes"] == "params.yaml, data.synthetic" and result["synthetic_data"].startswith("the dataset")
    vamp = result["models"]["vamp"]  # data.synthetic's Vamp: batch 50, 100 pseudo-inputs
    assert (vamp["batch_size"], vamp["hparams"]["n_pseudo"]) == (50, 100)
    assert positive(result["job_startup"]["seconds"]) and "evcf.training" in result["job_startup"]["imports"]


def test_show_renders_committed_figures_and_refuses_what_is_not_a_bench_result(tmp_path):
    """`evcf bench --show FILE...`: the committed JSONs reach a page as the bench printed them."""
    figures = sorted((PARAMS.parent / "results" / "bench").glob("cpu*.json"))
    proc = subprocess.run([*EVCF, "bench", "--show", *map(str, figures)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for path in figures:
        result = json.loads(path.read_text())
        assert f"{path}: {result['command']}" in proc.stdout, path
        for name in result["models"]:
            assert re.search(rf"^{re.escape(name)}\s", proc.stdout, re.M), (path, name)
    (tmp_path / "x.json").write_text("[1]")
    bad = subprocess.run([*EVCF, "bench", "--show", str(tmp_path / "x.json")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "not an evcf bench result" in bad.stderr and "Traceback" not in bad.stderr
