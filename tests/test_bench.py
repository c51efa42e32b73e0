"""``evcf bench`` runs end to end on a tiny shape and writes what it documents; its synthetic data is
what it says.  No timing is asserted here: speed is read from the bench's table, not from tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evcf.bench import SHAPES, format_table, run_bench, synthetic_matrix, write_ml20m_ratings
from evcf.data.readers import read_ratings
from evcf.errors import EvcfError

EVCF = [sys.executable, "-m", "evcf.cli"]
TINY = ["--users", "300", "--items", "200", "--nnz", "6000", "--steps", "2", "--eval-users", "100"]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_cli_runs_prints_a_table_and_writes_the_documented_json(tmp_path):
    proc = subprocess.run(
        [*EVCF, "--log-level", "WARNING", "bench", *TINY, "--models", "mult-vae", "vamp", "popularity",
         "--hparams", '{"vamp": {"n_pseudo": 50}}', "--preprocess-rows", "20000", "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "bench" / "cpu.json"  # the default --out
    assert f"ok: {Path('results/bench/cpu.json')}" in proc.stdout
    for needle in ("s / epoch", "users / s", "reference s / epoch", "speed-up", "mult-vae", "vamp",
                   "popularity", "preprocessing 20,000 ratings rows"):
        assert needle in proc.stdout, needle

    result = json.loads(out.read_text())
    assert set(result["models"]) == {"mult-vae", "vamp", "popularity"}
    for name in ("mult-vae", "vamp"):
        m = result["models"][name]
        for key in ("epoch_s", "users_per_s", "reference_epoch_s", "speedup", "step_s", "reference_step_s",
                    "eval_10k_s", "peak_rss_mib", "reference_peak_rss_mib", "eval_peak_rss_mib"):
            assert positive(m[key]), (name, key, m[key])
        assert len(m["step_times_s"]) == len(m["reference_step_times_s"]) == 2
        assert m["epoch_s"] == pytest.approx(m["step_s"] * m["steps_per_epoch"], rel=1e-3)
        assert m["check_loss_rel_diff"] < 1e-4  # the baseline computes the same model
    assert result["models"]["mult-vae"]["batch_size"] == 300  # Liang's 500, capped at the 300 users
    assert result["models"]["vamp"]["batch_size"] == 200  # EVCF's
    assert result["models"]["vamp"]["hparams"] == {"n_pseudo": 50}
    assert positive(result["models"]["popularity"]["fit_s"]) and result["models"]["popularity"]["speedup"] is None
    for key in ("eval_10k_s", "peak_rss_mib", "train_peak_rss_mib", "preprocess_s", "preprocess_peak_rss_mib"):
        assert positive(result[key]), key
    assert result["eval_10k_s"] == result["models"]["mult-vae"]["eval_10k_s"]
    assert result["shape"] == {"name": "custom", "users": 300, "items": 200, "nnz": 6000}
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert (result["device"], result["precision"], result["threads"], result["steps"]) == ("cpu", "fp32", 1, 2)
    pre = result["preprocess"]
    assert pre["rows"] == 20000 and pre["users"] > 20 and pre["train_clicks"] > 0
    assert 80 < result["eval_users"] <= 100  # rows with >= 5 clicks have int(0.2 n) held out


def test_run_bench_skips_preprocessing_and_reference_when_asked(tmp_path):
    result = run_bench(users=80, items=50, nnz=900, models=["mult-dae"], steps=1, warmup=0,
                       reference_steps=0, eval_users=30, skip_preprocess=True, preprocess_rows=5000)
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
    ({"users": 10, "items": 4, "nnz": 100}, "cannot make a 10 x 4 matrix"),
    ({"precision": "fp8"}, "fp32 or bf16"),
    ({"models": ["vamp"], "hparams": {"vamp": {"n_pseudoinputs": 5}}}, "has no hyperparameter 'n_pseudoinputs'"),
])
def test_bad_arguments_raise_one_evcf_error(kwargs, needle):
    args = {"users": 50, "items": 40, "nnz": 400, "skip_preprocess": True, **kwargs}
    if "shape" in kwargs:
        args.update(users=None, items=None, nnz=None)
    with pytest.raises(EvcfError) as info:
        run_bench(**args)
    assert needle in str(info.value)


def test_cli_bad_argument_is_one_line(tmp_path):
    proc = subprocess.run([*EVCF, "bench", "--models", "nope", "--skip-preprocess"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'"), proc.stderr


# --------------------------------------------------------------------------------------------------
# The synthetic data


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
