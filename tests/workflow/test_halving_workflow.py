"""`tuning: halving` run for real under both front-ends on a tiny synthetic configuration."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from conftest import dump_params, make_workflow_copy, run, tool

pytestmark = pytest.mark.slow

# 6 points, 9 epochs, eta 3, 3 rungs: budgets 1 / 3 / 9 epochs for 6 / 2 / 1 points
GRID = {"synthetic-tiny": {"mult-vae": {"train.lr": [0.001, 0.003, 0.01], "model.hidden_size": [32, 64]}}}
TUNE = "results/tune/synthetic-tiny/mult-vae"


def _copy(dest):
    root = make_workflow_copy(dest, tune=GRID, tuning="halving", models=["mult-vae"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["synthetic-tiny"]["train"]["epochs"] = 9
    dump_params(root / "params.yaml", params)
    return root


@pytest.fixture(scope="module")
def halving_run(tmp_path_factory):
    root = _copy(tmp_path_factory.mktemp("halving") / "wf")
    dry = run([tool("snakemake"), "--cores", "2", "all", "--dry-run"], cwd=root)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout.split("Job stats:")[1].split("\n\n")[0], re.M))
    assert counts["tune_rung"] == "9" and counts["decide_rung"] == "3"  # the whole search is planned up front
    run([tool("snakemake"), "--cores", "2", "all"], cwd=root)
    return root


def _slots(root):
    return [json.loads(p.read_text()) for p in sorted((root / TUNE).glob("rung-*/slot-*.json"))]


def test_promoted_points_resume_and_train_a_fraction_of_the_grid(halving_run):
    slots = _slots(halving_run)
    by_rung = {}
    for s in slots:
        by_rung.setdefault(s["rung"], []).append(s)
    assert [len(by_rung[r]) for r in range(3)] == [6, 2, 1] and [by_rung[r][0]["budget"] for r in range(3)] == [1, 3, 9]
    # each job trained only the epochs past the previous budget: a promoted point resumed
    for s in by_rung[0]:
        assert s["trained_epochs"] == [1]
    for s in by_rung[1]:
        assert s["trained_epochs"] == [2, 3]
    assert by_rung[2][0]["trained_epochs"] == [4, 5, 6, 7, 8, 9]
    decision0 = json.loads((halving_run / TUNE / "rung-0/decision.json").read_text())
    ranked = sorted(by_rung[0], key=lambda s: (-s["validation_ndcg@100"], s["point"]))
    assert [p["point"] for p in decision0["promoted"]] == [s["point"] for s in ranked[:2]]
    # counted from the runs' histories: every epoch any point trained, against 6 points x 9 epochs
    trained = sum(len(pd.read_csv(p / "history.csv")) for p in (halving_run / TUNE).glob("point-*"))
    assert trained == 6 * 1 + 2 * 2 + 1 * 6 and trained / (6 * 9) <= 0.4
    # eliminated points keep no resumable state; the winner, finished, keeps its weights only
    winner = json.loads((halving_run / TUNE / "winner.json").read_text())
    for point in (halving_run / TUNE).glob("point-*"):
        assert not (point / "checkpoint.pt").exists()
        assert (point / "model.pt").exists() == (str(point.relative_to(halving_run)) == winner["point"])


def test_the_first_seeds_run_is_the_winners_run(halving_run):
    winner = json.loads((halving_run / TUNE / "winner.json").read_text())
    assert winner["search"] == "halving" and winner["points"] == 6
    table = json.loads((halving_run / "results/synthetic-tiny/mult-vae/seed-1/metrics.json").read_text())
    point = json.loads((halving_run / winner["point"] / "metrics.json").read_text())
    assert table["reused_from"] == winner["point"] and table["identity"] == point["identity"]
    assert table["ndcg@100"] == point["ndcg@100"] and table["tuning"]["search"] == "halving"
    log = (halving_run / "logs/train_model/synthetic-tiny/mult-vae/seed-1.log").read_text()
    assert "epoch 1:" not in log  # nothing trained in that job
    summary = pd.read_csv(halving_run / TUNE / "summary.csv")
    assert summary["selected"].sum() == 1 and list(summary["rung"]).count(2) == 1


def test_dvc_repro_runs_the_same_search_and_picks_the_same_winner(halving_run, tmp_path):
    root = _copy(tmp_path / "dvc")
    run(["git", "init", "-q"], cwd=root)
    run([tool("dvc"), "init", "-q"], cwd=root)
    run([tool("dvc"), "repro"], cwd=root)
    for name in ("summary.csv", "winner.json"):
        assert (root / TUNE / name).read_text() == (halving_run / TUNE / name).read_text()
    assert [s["validation_ndcg@100"] for s in _slots(root)] == [s["validation_ndcg@100"] for s in _slots(halving_run)]


def test_a_replay_of_the_full_grid_picks_what_the_halving_search_picked(halving_run, tmp_path):
    """`evcf tune-replay` over a full search of the same grid: the same promotions, winner and epochs
    as the halving search that really ran (a run stopped at a budget is the full run's first epochs)."""
    full = _copy(tmp_path / "full")
    params = yaml.safe_load((full / "params.yaml").read_text())
    params["tuning"] = "full"
    dump_params(full / "params.yaml", params)
    run([tool("snakemake"), "--cores", "2", f"{TUNE}/winner.json"], cwd=full)
    run([tool("evcf"), "tune-replay", TUNE, "--halving", "3:3", "--out", "replay.json"], cwd=full)
    (replay,) = json.loads((full / "replay.json").read_text())["searches"][0]["replays"]
    decisions = [json.loads((halving_run / TUNE / f"rung-{r}/decision.json").read_text()) for r in range(3)]
    assert [d["promoted"] for d in replay["rung_decisions"]] == [[p["point"] for p in d["promoted"]] for d in decisions]
    winner = json.loads((halving_run / TUNE / "winner.json").read_text())
    assert f"point-{replay['winner']}" == winner["point"].rsplit("/", 1)[1]
    assert replay["validation_ndcg@100"] == pytest.approx(winner["validation_ndcg@100"], abs=1e-6)  # history.csv rounds
    trained = sum(len(pd.read_csv(p / "history.csv")) for p in (halving_run / TUNE).glob("point-*"))
    assert replay["epochs"] == trained
