"""The search (evcf/tuning.py): successive halving's rungs, promotion, the winner, and its reuse."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from evcf.errors import EvcfError
from evcf.tuning import (Halving, decide_rung, rung_budgets, rung_result, rung_slots, summarize_full,
                         summarize_halving, winner_for_run)


def test_budgets_end_at_the_full_schedule_and_divide_by_eta():
    assert rung_budgets(400, Halving(eta=3, rungs=3)) == [45, 134, 400]  # ceil(400/9), ceil(400/3), 400
    assert rung_budgets(30, Halving(eta=3, rungs=3)) == [4, 10, 30]
    assert rung_budgets(9, Halving(eta=2, rungs=4)) == [2, 3, 5, 9]
    assert rung_budgets(200, Halving(eta=3, rungs=1)) == [200]  # one rung: the full grid
    assert rung_budgets(1, Halving(eta=3, rungs=3)) == [1, 1, 1]


def test_slots_keep_a_ceiling_of_one_eta_of_each_rung():
    assert rung_slots(32, Halving(eta=3, rungs=3)) == [32, 11, 4]
    assert rung_slots(16, Halving(eta=3, rungs=3)) == [16, 6, 2]
    assert rung_slots(2, Halving(eta=3, rungs=3)) == [2, 1, 1]
    assert rung_slots(6, Halving(eta=2, rungs=4)) == [6, 3, 2, 1]


def test_halving_settings_are_checked():
    with pytest.raises(EvcfError, match="halving.eta must be >= 2"):
        Halving(eta=1)
    with pytest.raises(EvcfError, match="halving.rungs must be >= 1"):
        Halving(rungs=0)


def _result(point, score):
    return {"point": point, "folder": f"p/point-{point}", "setting": {"train.lr": point / 10},
            "validation_ndcg@100": score, "best_epoch": 1, "budget": 3, "epochs_reached": 3}


def test_promotion_is_by_score_with_ties_to_the_lower_point():
    results = [_result(0, 0.30), _result(1, 0.35), _result(2, 0.35), _result(3, 0.10), _result(4, 0.34)]
    decision = decide_rung(results, keep=2)
    assert decision["promoted"] == [1, 2]
    assert [r["point"] for r in decision["ranking"]] == [1, 2, 4, 0, 3]
    # the same inputs in another order: the same decision
    assert decide_rung(list(reversed(results)), keep=2)["promoted"] == [1, 2]
    assert decide_rung(results, keep=1)["promoted"] == [1]


def test_a_rung_standing_reads_only_the_epochs_up_to_its_budget():
    history = [{"epoch": e, "val_ndcg@100": v} for e, v in enumerate([0.1, 0.3, 0.3, 0.2, 0.9], start=1)]
    at3 = rung_result(history, 3, finished=False)
    assert at3 == {"validation_ndcg@100": 0.3, "best_epoch": 2, "epochs_reached": 3, "finished": False}
    # a point trained further before (a checkpoint of an earlier, longer rung) is judged at this budget
    assert rung_result(history, 4, finished=False)["validation_ndcg@100"] == 0.3
    assert rung_result(history, 5, finished=True)["best_epoch"] == 5
    with pytest.raises(EvcfError, match="no epoch up to the budget"):
        rung_result(history[2:], 2, finished=False)


def _metrics(folder, score, best_epoch):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"validation_ndcg@100": score, "best_epoch": best_epoch,
                                                     "epochs_run": 5, "ndcg@100": 0.99}))


def test_full_grid_summary_selects_on_validation_only(tmp_path):
    _metrics(tmp_path / "point-0", 0.30, 4)
    _metrics(tmp_path / "point-1", 0.32, 2)
    # a test score that would pick point-0 is never read
    (tmp_path / "point-0/metrics.json").write_text(json.dumps({"validation_ndcg@100": 0.30, "best_epoch": 4,
                                                               "epochs_run": 5, "ndcg@100": 1.0}))
    settings = [{"train.lr": 0.001}, {"train.lr": 0.01}]
    winner = summarize_full([tmp_path / "point-0", tmp_path / "point-1"], settings, tmp_path / "out",
                            dataset="d", seed=7)
    assert winner == {"source": "search", "search": "full", "setting": {"train.lr": 0.01},
                      "validation_ndcg@100": 0.32, "points": 2, "point": str(tmp_path / "point-1"),
                      "dataset": "d", "seed": 7}
    summary = pd.read_csv(tmp_path / "out/summary.csv")
    assert list(summary["selected"]) == [False, True] and list(summary["train.lr"]) == [0.001, 0.01]
    assert json.loads((tmp_path / "out/winner.json").read_text()) == winner
    empty = summarize_full([], [], tmp_path / "none", dataset="d", seed=7)
    assert empty["source"] == "params.yaml" and empty["setting"] == {}


def test_halving_summary_lists_every_point_at_the_last_rung_it_reached(tmp_path):
    rung0 = decide_rung([{**_result(i, s), "budget": 1} for i, s in enumerate([0.2, 0.4, 0.3])], keep=1)
    rung1 = decide_rung([{**_result(1, 0.45), "budget": 3}], keep=1)
    for rung, decision in enumerate((rung0, rung1)):
        (tmp_path / f"rung-{rung}.json").write_text(json.dumps(decision))
    winner = summarize_halving([tmp_path / "rung-0.json", tmp_path / "rung-1.json"], tmp_path / "out",
                               dataset="d", seed=1)
    assert winner["search"] == "halving" and winner["point"] == "p/point-1" and winner["setting"] == {"train.lr": 0.1}
    assert winner["validation_ndcg@100"] == 0.45 and winner["points"] == 3
    summary = pd.read_csv(tmp_path / "out/summary.csv")
    assert list(summary["rung"]) == [0, 1, 0] and list(summary["budget_epochs"]) == [1, 3, 1]
    assert list(summary["selected"]) == [False, True, False]


def test_the_winner_names_its_run_only_for_the_same_dataset_and_seed(tmp_path):
    path = tmp_path / "winner.json"
    path.write_text(json.dumps({"source": "search", "search": "halving", "setting": {"model.x": 2, "train.lr": 0.1},
                                "point": "results/tune/d/m/point-3", "dataset": "d", "seed": 1}))
    hparams, train, record, same = winner_for_run(path, {"x": 1, "y": 5}, {"lr": 1.0}, dataset="d", seed=1)
    assert hparams == {"x": 2, "y": 5} and train == {"lr": 0.1}
    assert str(same) == "results/tune/d/m/point-3" and record["search"] == "halving" and "tuned_on" not in record
    assert winner_for_run(path, {}, {}, dataset="d", seed=2)[3] is None  # another seed: another run
    _, _, record, same = winner_for_run(path, {}, {}, dataset="other", seed=1)
    assert same is None and record["tuned_on"] == "d"  # tune_from: marked, never reused
    path.write_text("{}")
    with pytest.raises(EvcfError, match="not a tuning result"):
        winner_for_run(path, {}, {}, dataset="d", seed=1)


def test_halving_trains_a_fraction_of_the_full_grid_at_the_papers_grid_sizes():
    """The count `evcf plan` prints: at 16 and 32 points, E = 400, eta 3, three rungs."""
    halving = Halving()
    for points in (16, 32):
        budgets, slots = rung_budgets(400, halving), rung_slots(points, halving)
        epochs = sum(n * (b - (budgets[r - 1] if r else 0)) for r, (n, b) in enumerate(zip(slots, budgets)))
        assert epochs / (points * 400) < 0.4
    assert math.ceil(400 / 9) == rung_budgets(400, halving)[0]
