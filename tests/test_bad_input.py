"""Every bad input gets one clear line, a non-zero exit and no partial output (via the real CLI)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_workflow_copy, run, tool
from grouplens_fixtures import make_ml100k_zip, random_ratings, serve_directory

pytestmark = pytest.mark.slow  # the CLI and Snakemake as subprocesses

EVCF = [sys.executable, "-m", "evcf.cli"]


def evcf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EVCF, "--log-level", "ERROR", *args], cwd=cwd, capture_output=True, text=True)


def assert_one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def split_args(raw: Path, fmt: str, out: Path, heldout: int = 10) -> list[str]:
    return ["split", "--raw", str(raw), "--format", fmt, "--threshold", "3.5", "--min-items", "5",
            "--heldout", str(heldout), "--out", str(out)]


def test_corrupt_and_truncated_archive(tmp_path):
    good = make_ml100k_zip(tmp_path / "good.zip", random_ratings(0, half_stars=False))
    truncated = tmp_path / "ml-100k.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "processed"
    proc = evcf(*split_args(truncated, "movielens-100k", out), cwd=tmp_path)
    assert_one_clear_error(proc, str(truncated), "corrupt or truncated")
    assert not out.exists()
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    assert_one_clear_error(evcf(*split_args(garbage, "movielens-100k", out), cwd=tmp_path), "garbage.zip")
    assert not out.exists()


def test_checksum_mismatch_leaves_nothing(tmp_path):
    served = tmp_path / "server"
    served.mkdir()
    archive = make_ml100k_zip(served / "ml-100k.zip", random_ratings(1, half_stars=False))
    dest = tmp_path / "data/raw/ml-100k/ml-100k.zip"
    with serve_directory(served) as url:
        proc = evcf("download", "--url", f"{url}/ml-100k.zip", "--md5", "0" * 32, "--dest", str(dest), cwd=tmp_path)
        assert_one_clear_error(proc, "md5")
        assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
        # the right checksum verifies a good download
        proc = evcf("download", "--url", f"{url}/ml-100k.zip", "--md5", hashlib.md5(archive.read_bytes()).hexdigest(),
                    "--dest", str(dest), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert hashlib.md5(dest.read_bytes()).hexdigest() == hashlib.md5(archive.read_bytes()).hexdigest()


def test_existing_file_with_wrong_checksum_is_kept(tmp_path):
    dest = tmp_path / "ml-100k.zip"
    dest.write_bytes(b"user's own bytes")
    proc = evcf("download", "--url", "http://127.0.0.1:9/ml-100k.zip", "--md5", "1" * 32, "--dest", str(dest),
                cwd=tmp_path)
    assert_one_clear_error(proc, str(dest))
    assert dest.read_bytes() == b"user's own bytes"


def test_missing_netflix_archive(tmp_path):
    raw = tmp_path / "data/raw/netflix"
    proc = evcf(*split_args(raw, "netflix", tmp_path / "out"), cwd=tmp_path)
    assert_one_clear_error(proc, "data/raw/netflix", "combined_data")
    assert not (tmp_path / "out").exists()


def test_malformed_rating_rows(tmp_path):
    raw = tmp_path / "ratings.csv"
    raw.write_text("user,item,rating\n1,2,4.0\n1,x,5.0\n")
    proc = evcf(*split_args(raw, "csv", tmp_path / "out"), cwd=tmp_path)
    assert_one_clear_error(proc, str(raw), "line 3")
    assert not (tmp_path / "out").exists()


def test_too_few_users_for_heldout(tmp_path):
    raw = make_ml100k_zip(tmp_path / "ml-100k.zip", random_ratings(2, n_users=30, n_rows=600, half_stars=False))
    out = tmp_path / "out"
    proc = evcf(*split_args(raw, "movielens-100k", out, heldout=100), cwd=tmp_path)
    assert_one_clear_error(proc, "too few", "heldout_users")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k.zip"]


def test_unknown_model_name_in_cli(tmp_path):
    proc = evcf("train", "--data", str(tmp_path), "--dataset", "x", "--model", "mult-vea", "--seed", "1",
                "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "error:" in proc.stderr


@pytest.mark.parametrize(
    "override,needles",
    [
        ("datasets=[ml-2m]", ["unknown dataset 'ml-2m'", "--config (command line)"]),
        ("models=[mult-vea]", ["unknown model 'mult-vea'"]),
        ("seeds=[one]", ["seeds.0", "'one' is not of type 'integer'"]),
        ("threads=two", ["threads", "not of type 'integer'"]),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, override, needles):
    root = make_workflow_copy(tmp_path / "wf")
    proc = run([tool("snakemake"), "--cores", "1", "all", "--dry-run", "--config", override], cwd=root, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (root / "results").exists() and not (root / "data").exists()


def test_wrong_training_setting_type(tmp_path):
    root = make_workflow_copy(tmp_path / "wf")
    params = (root / "params.yaml").read_text().replace("lr: 0.001", "lr: fast", 1)
    (root / "params.yaml").write_text(params)
    proc = run([tool("snakemake"), "--cores", "1", "all", "--dry-run"], cwd=root, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: train.lr: 'fast' is not of type 'number'" in proc.stderr
    assert "fix: write a number" in proc.stderr


def test_bad_tune_grid_key(tmp_path):
    root = make_workflow_copy(tmp_path / "wf", tune={"synthetic-tiny": {"mult-vae": {"lr": [0.1]}}})
    proc = run([tool("snakemake"), "--cores", "1", "tune", "--dry-run"], cwd=root, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "tune.synthetic-tiny.mult-vae" in errors[0], proc.stderr


@pytest.mark.parametrize("args,option", [
    (["train", "--data", "d", "--dataset", "d", "--model", "mult-vae", "--seed", "1", "--out", "o",
      "--hparams", "[1, 2]"], "--hparams"),
    (["bench", "--train", "3"], "--train"),
    (["bench", "--hparams", '"vamp"'], "--hparams"),
])
def test_a_json_option_that_is_not_an_object_is_a_usage_error(tmp_path, args, option):
    """evcf and evcf bench share one JSON-object argument type (evcf/args.py)."""
    proc = evcf(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"argument {option}: expected a JSON object" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_tune_replay_names_a_bad_halving_setting_and_a_folder_that_is_no_full_search(tmp_path):
    assert_one_clear_error(evcf("tune-replay", "results/tune/d/m", "--halving", "3", cwd=tmp_path),
                           "--halving '3' is not ETA:RUNGS", "e.g. --halving 3:3")
    assert_one_clear_error(evcf("tune-replay", "results/tune/d/m", "--halving", "1:3", cwd=tmp_path),
                           "--halving '1:3' is not ETA:RUNGS with ETA >= 2")
    assert_one_clear_error(evcf("tune-replay", "nowhere", cwd=tmp_path), "winner.json", "re-run the search")
    assert not any(tmp_path.iterdir())  # nothing written
