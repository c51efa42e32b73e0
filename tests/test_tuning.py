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


def _history(scores):
    return [{"epoch": e, "val_ndcg@100": s} for e, s in enumerate(scores, start=1)]


def test_replay_reads_each_rung_from_the_full_histories_and_keeps_the_late_bloomer_out():
    from evcf.tuning import replay_halving

    # 4 points, 4 epochs, eta 2, rungs 3: budgets 1, 2, 4 for 4, 2, 1 points (worked by hand)
    histories = {0: _history([0.30, 0.31, 0.32, 0.33]),  # leads early, ends second
                 1: _history([0.20, 0.25, 0.30, 0.32]),
                 2: _history([0.10, 0.20, 0.40, 0.50]),  # the full grid's winner, but last at epoch 1
                 3: _history([0.25, 0.35, 0.36, 0.30])}  # best at epoch 3 (0.36), ends lower
    replay = replay_halving(histories, dict.fromkeys(histories, 4), Halving(eta=2, rungs=3))
    # rung 0 at 1 epoch: 0 (0.30), 3 (0.25) go on; rung 1 at 2 epochs: 3 (0.35) beats 0 (0.31);
    # rung 2 trains 3 to 4 epochs: its best is 0.36 at epoch 3
    assert [r["promoted"] for r in replay["rung_decisions"]] == [[0, 3], [3], [3]]
    assert (replay["winner"], replay["validation_ndcg@100"], replay["best_epoch"]) == (3, 0.36, 3)
    assert replay["epochs"] == 1 + 1 + 2 + 4  # points 1 and 2 one epoch each, 0 two, 3 all four


def test_replay_counts_a_run_that_stopped_early_to_its_last_epoch():
    from evcf.tuning import replay_halving

    histories = {0: _history([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
                 1: _history([0.2, 0.35, 0.2])}  # early stopping ended it at epoch 3 of 9
    replay = replay_halving(histories, {0: 9, 1: 9}, Halving(eta=3, rungs=2))  # budgets 3, 9
    assert replay["rung_decisions"][0]["promoted"] == [1] and replay["winner"] == 1
    assert replay["epochs"] == 3 + 3  # point 1 stops at its third epoch in the last rung as well


def _full_search(root, curves, seeds):
    """A finished full search written by hand: results/tune/d/m/point-<i>/ and the winner's seeds."""
    tune = root / "results/tune/d/m"
    for i, scores in enumerate(curves):
        point = tune / f"point-{i}"
        point.mkdir(parents=True)
        pd.DataFrame(_history(scores)).to_csv(point / "history.csv", index=False)
        (point / "metrics.json").write_text(json.dumps({"validation_ndcg@100": max(scores), "best_epoch": 1,
                                                        "epochs_run": len(scores)}))
        (point / "progress.json").write_text(json.dumps({"epochs": len(scores)}))
    best = max(range(len(curves)), key=lambda i: max(curves[i]))
    pd.DataFrame([{"point": i, "train.lr": 0.1 * (i + 1), "validation_ndcg@100": max(c), "best_epoch": 1,
                   "epochs_run": len(c), "selected": i == best} for i, c in enumerate(curves)]
                 ).to_csv(tune / "summary.csv", index=False)
    (tune / "winner.json").write_text(json.dumps({"source": "search", "search": "full", "setting": {"train.lr": 0.1},
                                                  "validation_ndcg@100": max(curves[best]),
                                                  "point": f"results/tune/d/m/point-{best}"}))
    for seed, value in enumerate(seeds, start=1):
        (root / f"results/d/m/seed-{seed}").mkdir(parents=True)
        (root / f"results/d/m/seed-{seed}/metrics.json").write_text(json.dumps({"validation_ndcg@100": value}))
    return tune


def test_a_replayed_winner_is_judged_against_the_range_of_the_full_winners_seeds(tmp_path):
    from evcf.tuning import replay_search

    # eta 3, 2 rungs on 3 epochs: budgets 1 and 3; point 0 leads at epoch 1, point 1 wins at 3
    tune = _full_search(tmp_path, [[0.30, 0.31, 0.32], [0.20, 0.30, 0.34], [0.10, 0.11, 0.12]], [0.33, 0.34, 0.36])
    report = replay_search(tune, [Halving(eta=3, rungs=2)], tmp_path / "results/d/m")
    (replay,) = report["replays"]
    assert (report["full_winner"], replay["winner"]) == (1, 0)
    assert replay["difference"] == pytest.approx(-0.02) and report["seeds_range"] == pytest.approx(0.03)
    assert replay["within_seed_spread"] is True  # |−0.02| <= the seeds' range 0.03
    assert replay["epochs"] == 1 + 1 + 3 and report["full_epochs"] == 9
    assert report["seeds_sd"] == pytest.approx(0.015275, abs=1e-6)  # sample sd of 0.33, 0.34, 0.36
    # a difference equal to the range counts as within (binary-exact numbers: no rounding at the edge)
    edge = _full_search(tmp_path / "edge", [[0.5, 0.5, 0.5], [0.25, 0.25, 0.75]], [0.5, 0.75])
    (at_edge,) = replay_search(edge, [Halving(eta=3, rungs=2)], tmp_path / "edge/results/d/m")["replays"]
    assert (at_edge["difference"], at_edge["within_seed_spread"]) == (-0.25, True)
    narrow = _full_search(tmp_path / "narrow", [[0.30, 0.31, 0.32], [0.20, 0.30, 0.34], [0.1, 0.1, 0.1]], [0.345, 0.35])
    assert replay_search(narrow, [Halving(eta=3, rungs=2)], tmp_path / "narrow/results/d/m")[
        "replays"][0]["within_seed_spread"] is False  # range 0.01


def test_a_replay_refuses_a_search_whose_points_did_not_all_finish(tmp_path):
    from evcf.tuning import replay_search

    tune = _full_search(tmp_path, [[0.3, 0.31, 0.32], [0.2, 0.3, 0.34]], [])
    winner = json.loads((tune / "winner.json").read_text())
    (tune / "winner.json").write_text(json.dumps({**winner, "search": "halving"}))
    with pytest.raises(EvcfError, match="not a full grid"):
        replay_search(tune, [Halving()])
    (tune / "winner.json").write_text(json.dumps(winner))
    metrics = json.loads((tune / "point-1/metrics.json").read_text())
    (tune / "point-1/metrics.json").write_text(json.dumps({**metrics, "epochs_run": 5}))  # history ends at 3
    with pytest.raises(EvcfError, match="history does not match"):
        replay_search(tune, [Halving()])
    (tune / "point-1/metrics.json").unlink()  # a point that never finished its run
    with pytest.raises(EvcfError, match="metrics.json"):
        replay_search(tune, [Halving()])
