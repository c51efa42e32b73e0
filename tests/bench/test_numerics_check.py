"""scripts/numerics_check.py: the same runs in fp32, TF32 and bf16, compared seed by seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # scripts/numerics_check.py trains through the pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def numerics():
    spec = importlib.util.spec_from_file_location("numerics_check", ROOT / "scripts" / "numerics_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_pairs_each_setting_with_fp32_of_the_same_seed(numerics):
    runs = [
        {"model": "m", "setting": "fp32", "seed": 1, "ndcg@100": 0.30, "recall@20": 0.20, "train_s": 2.0},
        {"model": "m", "setting": "fp32", "seed": 2, "ndcg@100": 0.40, "recall@20": 0.30, "train_s": 4.0},
        {"model": "m", "setting": "bf16", "seed": 2, "ndcg@100": 0.38, "recall@20": 0.30, "train_s": 1.0},
        {"model": "m", "setting": "bf16", "seed": 1, "ndcg@100": 0.31, "recall@20": 0.25, "train_s": 3.0},
    ]
    fp32, bf16 = numerics.summarize(runs)
    assert (fp32["setting"], fp32["n"], fp32["train_s"]) == ("fp32", 2, 3.0)
    assert fp32["ndcg@100_diff"] == 0.0
    assert bf16["ndcg@100"] == pytest.approx(0.345)
    assert bf16["ndcg@100_sd"] == pytest.approx(0.04949747, rel=1e-6)  # sample sd of 0.31, 0.38
    # paired by seed: seed 1 +0.01, seed 2 -0.02 (not 0.345 - 0.35 by accident of the order)
    assert bf16["ndcg@100_diff"] == pytest.approx(-0.005)
    assert (bf16["ndcg@100_diff_min"], bf16["ndcg@100_diff_max"]) == pytest.approx((-0.02, 0.01))
    assert (bf16["recall@20_diff_min"], bf16["recall@20_diff_max"]) == pytest.approx((0.0, 0.05))


def test_a_tiny_check_trains_each_setting_and_writes_the_json(numerics, tmp_path, capsys):
    out = tmp_path / "numerics.json"
    code = numerics.main(["--params", str(ROOT / "params.yaml"), "--models", "mult-vae", "--seeds", "1",
                          "--settings", "fp32", "tf32", "bf16", "--epochs", "1", "--device", "cpu",
                          "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["skipped"] == ["tf32 (CUDA only)"]  # no TF32 on a CPU: said, not faked
    assert [(r["setting"], r["precision"], r["tf32"]) for r in result["runs"]] == [
        ("fp32", "fp32", False), ("bf16", "bf16", False)]
    assert all(0.0 < r["ndcg@100"] < 1.0 for r in result["runs"])
    assert [s["setting"] for s in result["summary"]] == ["fp32", "bf16"]
    assert "mult-vae        bf16" in capsys.readouterr().out
    assert result["complete"] is True and result["params_check"] == "schema"  # jsonschema is installed here


def test_the_json_is_rewritten_after_each_run(numerics, tmp_path):
    """A check cut short keeps what it finished: after each run, the runs so far, marked incomplete."""
    params = numerics.load_params_checked(ROOT / "params.yaml")[0]
    seen = []
    result = numerics.check(params, dataset="synthetic", models=["mult-vae"], seeds=[1], settings=["fp32", "bf16"],
                            device="cpu", epochs=1, folder=tmp_path,
                            on_run=lambda r: seen.append((r["complete"], [x["setting"] for x in r["runs"]],
                                                          [x["setting"] for x in r["summary"]])))
    assert seen == [(False, ["fp32"], ["fp32"]), (False, ["fp32", "bf16"], ["fp32", "bf16"])]
    assert result["complete"] is True and len(result["runs"]) == 2


@pytest.mark.parametrize("argv, needle", [
    (["--settings", "bf16"], "must include fp32"),
    (["--settings", "fp32", "fp8"], "must include fp32"),
    (["--dataset", "ml-20m"], "not a synthetic dataset"),
    (["--models", "mult-vea"], "mult-vea"),
])
def test_bad_arguments_give_one_error_line(numerics, capsys, argv, needle):
    assert numerics.main(["--params", str(ROOT / "params.yaml"), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
