"""The search before the Table 1 runs: grid summaries, successive halving, and the winner's use.

Two searches are available (params.yaml ``tuning``):

* ``full``: every grid point trains its whole schedule with the first seed; the point with the best
  validation NDCG@100 wins (the paper's protocol).
* ``halving``: synchronous successive halving over epochs, a budgeted deviation.  With ``rungs`` R
  and ``eta`` η, rung r (0 … R−1) trains each of its points to ``ceil(E / η^(R−1−r))`` epochs
  (E: the point's full schedule, so the last rung trains the full schedule) and promotes the best
  ``ceil(n_r / η)`` of them, by the best validation NDCG@100 seen so far, to the next rung, where
  they resume from their checkpoint.  Ties go to the lower point index, so the same inputs always
  promote the same points.  Stopping a run at a budget does not change it: the learning-rate and β
  schedules depend on the epoch or the step, never on the planned total, and a resumed run
  continues exactly (``evcf.training``).

Selection reads validation users only: test metrics of the points are never read here.

The winner (``winner.json``) records the point folder and seed it came from, so that the first
seed's Table 1 run reuses that point's result when the two runs are the same run (equal identity,
``evcf.training.run(reuse_from=...)``) instead of training it twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import apply_setting
from .errors import EvcfError
from .io import write_csv, write_json

__all__ = ["MODES", "Halving", "tuning_mode", "halving_settings", "rung_budgets", "rung_slots", "decide_rung",
           "summarize_full", "summarize_halving", "borrow_winner", "rung_result", "read_winner", "winner_for_run",
           "replay_halving", "replay_search", "SELECT_KEY"]

MODES = ("full", "halving")  # params.yaml `tuning`; false switches the search off
SELECT_KEY = "validation_ndcg@100"  # in metrics.json, rung results and winner.json
HISTORY_KEY = "val_ndcg@100"  # the same score per epoch, in history.csv


@dataclass(frozen=True)
class Halving:
    """params.yaml ``halving``: how the budgeted search cuts the grid."""

    eta: int = 3  # keep the best 1/eta of each rung (Jamieson & Talwalkar 2016; Li et al. 2018 use 3)
    rungs: int = 3  # rungs of budgets E/eta^2, E/eta, E: about a third of the full grid's epochs at 16+ points

    def __post_init__(self) -> None:
        if self.eta < 2:
            raise EvcfError(f"halving.eta must be >= 2, got {self.eta}", path="params.yaml",
                            fix="set halving.eta to 2 or more (3 keeps a third of each rung)")
        if self.rungs < 1:
            raise EvcfError(f"halving.rungs must be >= 1, got {self.rungs}", path="params.yaml",
                            fix="set halving.rungs to 1 or more (1 is the full grid)")


def tuning_mode(config: dict[str, Any]) -> str | None:
    """``full``, ``halving``, or None when the search is off (``tuning: false``)."""
    mode = config.get("tuning", "full")
    return None if mode is False else mode


def halving_settings(config: dict[str, Any]) -> Halving:
    return Halving(**config.get("halving", {}))


def rung_budgets(epochs: int, halving: Halving) -> list[int]:
    """The epochs a point has trained after each rung: ceil(E / eta^(R-1-r)), the last one E."""
    return [max(1, math.ceil(epochs / halving.eta ** (halving.rungs - 1 - r))) for r in range(halving.rungs)]


def rung_slots(n_points: int, halving: Halving) -> list[int]:
    """How many points train at each rung: all of them, then ceil(n_r / eta) of the previous rung."""
    slots = [n_points]
    for _ in range(1, halving.rungs):
        slots.append(max(1, math.ceil(slots[-1] / halving.eta)))
    return slots


def _rank(results: list[dict]) -> list[dict]:
    """Best validation score first; equal scores in point order (deterministic)."""
    return sorted(results, key=lambda r: (-r[SELECT_KEY], r["point"]))


def decide_rung(results: list[dict], keep: int) -> dict:
    """The rung's ranking and the ``keep`` points promoted from it (in rank order)."""
    if not results:
        raise EvcfError("a rung with no results", fix="run the rung's points first (snakemake tune)")
    ranking = _rank(results)
    return {"ranking": ranking, "promoted": [r["point"] for r in ranking[:keep]]}


def _read_json(path: Path, fix: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EvcfError(f"cannot read {Path(path).name} ({exc})", path=path, fix=fix) from None


def _write_summary(out_dir: Path, table: list[dict], winner: dict) -> None:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "summary.csv", pd.DataFrame(table))
    write_json(out_dir / "winner.json", winner)  # last: the Table 1 runs depend on it


def summarize_full(points: list[Path], settings: list[dict], out_dir: Path, *, dataset: str, seed: int) -> dict:
    """The full grid: every point's validation NDCG@100 (its best epoch), the best one wins.

    Writes ``summary.csv`` (one row a point, ``selected`` marks the winner) and ``winner.json``.
    With no points (no grid, or tuning off) the winner is params.yaml's setting, unchanged.
    """
    if len(settings) != len(points):
        raise EvcfError(f"--settings must be a JSON list with one setting per point ({len(points)})",
                        fix="pass the grid points in the order of --points")
    rows = []
    for index, (point, setting) in enumerate(zip(points, settings)):
        metrics = _read_json(Path(point) / "metrics.json", fix="re-run that grid point (snakemake tune)")
        rows.append({"point": index, "folder": str(point), "setting": setting, SELECT_KEY: metrics[SELECT_KEY],
                     "best_epoch": metrics["best_epoch"], "epochs_run": metrics.get("epochs_run")})
    if not rows:
        winner = {"source": "params.yaml", "setting": {}, "points": 0}
        _write_summary(out_dir, [{"point": "params.yaml", "selected": True}], winner)
        return winner
    best = _rank(rows)[0]
    winner = {"source": "search", "search": "full", "setting": best["setting"], SELECT_KEY: best[SELECT_KEY],
              "points": len(rows), "point": best["folder"], "dataset": dataset, "seed": seed}
    table = [{"point": r["point"], **r["setting"], SELECT_KEY: r[SELECT_KEY], "best_epoch": r["best_epoch"],
              "epochs_run": r["epochs_run"], "selected": r is best} for r in rows]
    _write_summary(out_dir, table, winner)
    return winner


def summarize_halving(decisions: list[Path], out_dir: Path, *, dataset: str, seed: int) -> dict:
    """Successive halving: the winner is the best point of the last rung.

    ``decisions`` are the rungs' decision files (:func:`decide_rung`) in rung order; ``summary.csv``
    lists every point with the last rung it reached, its budget there and its validation NDCG@100
    at that budget.
    """
    reached: dict[int, dict] = {}
    last: dict = {}
    for rung, path in enumerate(decisions):
        last = _read_json(path, fix="re-run that rung (snakemake tune)")
        for result in last["ranking"]:
            reached[result["point"]] = {**result, "rung": rung}
    if not reached:
        raise EvcfError("no rung results", fix="pass the decision files of every rung (--decisions)")
    best = last["ranking"][0]
    winner = {"source": "search", "search": "halving", "setting": best["setting"], SELECT_KEY: best[SELECT_KEY],
              "points": len(reached), "point": best["folder"], "dataset": dataset, "seed": seed}
    table = [{"point": index, **result["setting"], "rung": result["rung"], "budget_epochs": result["budget"],
              SELECT_KEY: result[SELECT_KEY], "best_epoch": result["best_epoch"],
              "epochs_trained": result["epochs_reached"], "selected": index == best["point"]}
             for index, result in sorted(reached.items())]
    _write_summary(out_dir, table, winner)
    return winner


def borrow_winner(source: Path, out_dir: Path, *, dataset: str) -> dict:
    """``tune_from``: the winner of another dataset's search, for this dataset's Table 1 runs.

    winner.json keeps the source dataset (``dataset``), so each run records ``tuned_on`` and the
    table marks the row; no run of this dataset is the winner's run, so nothing is reused.
    """
    winner = read_winner(source)
    table = [{"point": f"from {winner.get('dataset', source.parent.parent.name)}", **winner["setting"],
              SELECT_KEY: winner.get(SELECT_KEY), "selected": True}]
    _write_summary(out_dir, table, {**winner, "borrowed_by": dataset})
    return winner


def rung_result(history: list[dict], budget: int, *, finished: bool) -> dict:
    """A point's standing at a budget, from its history: the best validation NDCG@100 of the epochs
    up to the budget (and its epoch), and the last epoch trained."""
    seen = [h for h in history if h["epoch"] <= budget]
    if not seen:
        raise EvcfError(f"no epoch up to the budget of {budget} in the run's history",
                        fix="delete the point's folder and run its rung again")
    best = max(seen, key=lambda h: (h[HISTORY_KEY], -h["epoch"]))  # the first epoch of the best score
    return {SELECT_KEY: float(best[HISTORY_KEY]), "best_epoch": int(best["epoch"]),
            "epochs_reached": int(seen[-1]["epoch"]), "finished": bool(finished)}


def read_winner(path: Path) -> dict:
    winner = _read_json(path, fix="re-run the search (snakemake tune), or delete the file to run it again")
    if not isinstance(winner, dict) or not isinstance(winner.get("setting"), dict) or "source" not in winner:
        raise EvcfError("not a tuning result (no setting/source)", path=path,
                        fix="re-run the search (snakemake tune), or delete the file to run it again")
    return winner


def winner_for_run(path: Path, hparams: dict, train: dict, *, dataset: str, seed: int
                   ) -> tuple[dict, dict, dict, Path | None]:
    """Apply a search's winner to one Table 1 run.

    Returns (hparams, train, the record of where the setting came from, the winning point's folder
    when this run may be that point's run: same dataset and the search's seed, else None).
    """
    winner = read_winner(path)
    hparams, train = apply_setting(hparams, train, winner["setting"])
    record = {"source": winner["source"], "setting": winner["setting"], "summary": str(path)}
    if winner.get("search"):
        record["search"] = winner["search"]
    tuned_on = winner.get("dataset")
    if tuned_on and tuned_on != dataset:
        record["tuned_on"] = tuned_on  # a winner searched on another dataset (params.yaml tune_from)
    same_run = winner.get("point") and tuned_on == dataset and winner.get("seed") == seed
    return hparams, train, record, (Path(winner["point"]) if same_run else None)


def _point_index(folder: Path) -> int:
    """``i`` of a grid point's folder ``point-<i>``."""
    return int(Path(folder).name.split("-", 1)[1])


def replay_halving(histories: dict[int, list[dict]], schedules: dict[int, int], halving: Halving) -> dict:
    """What ``tuning: halving`` would pick from a full grid's histories, without training.

    A point stopped at a budget has trained the first epochs of its full run, unchanged (the
    schedules depend on the epoch, and a resumed run continues exactly), so each rung's standings
    are the full histories read up to the budget, and they are ranked and promoted by the search's
    own :func:`rung_result` and :func:`decide_rung`.  ``histories``: point -> its ``history.csv``
    rows (``epoch``, ``val_ndcg@100``), the whole run; ``schedules``: point -> its full schedule E.
    Returns the winner, its standing, each rung's budgets and promotions, and the epochs the search
    would have trained (a point's last rung budget, or fewer where its run ended earlier).
    """
    if not histories:
        raise EvcfError("no grid points to replay", fix="pass a full search's folder (results/tune/<dataset>/<model>)")
    alive = sorted(histories)
    slots = rung_slots(len(alive), halving)
    trained = dict.fromkeys(alive, 0)
    rungs: list[dict] = []
    results: list[dict] = []
    for rung in range(halving.rungs):
        results = []
        for point in alive:
            budget = rung_budgets(schedules[point], halving)[rung]
            last = int(histories[point][-1]["epoch"])
            trained[point] = min(budget, last)
            results.append({"point": point, "budget": budget,
                            **rung_result(histories[point], budget, finished=last <= budget)})
        keep = slots[rung + 1] if rung + 1 < halving.rungs else 1
        decision = decide_rung(results, keep)
        rungs.append({"rung": rung, "points": list(alive), "budgets": sorted({r["budget"] for r in results}),
                      "promoted": decision["promoted"]})
        alive = decision["promoted"]
    best = next(r for r in results if r["point"] == alive[0])
    return {"eta": halving.eta, "rungs": halving.rungs, "winner": best["point"], SELECT_KEY: best[SELECT_KEY],
            "best_epoch": best["best_epoch"], "epochs": sum(trained.values()), "rung_decisions": rungs}


def replay_search(tune_dir: Path, halvings: list[Halving], runs_dir: Path | None = None) -> dict:
    """A finished full search (``tune_dir``: its ``point-<i>/`` folders and ``winner.json``) replayed
    under each of ``halvings``; beside each, the full grid's winner and the spread of its Table 1
    seeds' validation NDCG@100 (``runs_dir``: ``seed-*/metrics.json``, where they exist).

    Every point must have finished its run (``metrics.json``): a halving search's eliminated points
    stopped early, so their histories cannot stand for the runs another search would train.
    """
    import csv

    tune_dir = Path(tune_dir)
    winner = read_winner(tune_dir / "winner.json")
    if winner.get("search") != "full":
        raise EvcfError(f"the search in this folder is {winner.get('search') or winner['source']!r}, not a full grid: "
                        "only a full grid's points ran their whole schedule", path=tune_dir / "winner.json",
                        fix="replay a search run with tuning: full")
    histories: dict[int, list[dict]] = {}
    schedules: dict[int, int] = {}
    settings: dict[int, dict] = {}
    for folder in sorted(tune_dir.glob("point-*"), key=_point_index):
        point = _point_index(folder)
        fix = "re-run the full search (snakemake tune) so that every point finishes"
        metrics = _read_json(folder / "metrics.json", fix=fix)
        progress = _read_json(folder / "progress.json", fix=fix)
        try:
            with open(folder / "history.csv", newline="") as handle:
                rows = [{"epoch": int(r["epoch"]), HISTORY_KEY: float(r[HISTORY_KEY])} for r in csv.DictReader(handle)]
        except (OSError, KeyError, ValueError) as exc:
            raise EvcfError(f"cannot read the point's history ({exc!r})", path=folder / "history.csv", fix=fix) from None
        if not rows or rows[-1]["epoch"] != metrics.get("epochs_run"):
            raise EvcfError("the point's history does not match its finished run (metrics.json epochs_run)",
                            path=folder, fix=fix)
        histories[point], schedules[point] = rows, int(progress["epochs"])
    if not histories:
        raise EvcfError("no point-<i> folders", path=tune_dir, fix="pass a full search's folder (results/tune/<dataset>/<model>)")
    with open(tune_dir / "summary.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            settings[int(row["point"])] = {k: v for k, v in row.items()
                                           if k not in ("point", SELECT_KEY, "best_epoch", "epochs_run", "selected")}
    full_point = _point_index(winner["point"])
    seeds = []
    if runs_dir is not None:
        for path in sorted(Path(runs_dir).glob("seed-*/metrics.json")):
            seeds.append(float(_read_json(path, fix="re-run that Table 1 run")[SELECT_KEY]))
    spread = max(seeds) - min(seeds) if len(seeds) > 1 else None
    sd = None
    if len(seeds) > 1:
        mean = sum(seeds) / len(seeds)
        sd = math.sqrt(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1))
    # the full winner's score from its history, as the replay reads every score (history.csv rounds)
    full_score = rung_result(histories[full_point], schedules[full_point], finished=True)[SELECT_KEY]
    replays = []
    for halving in halvings:
        replay = replay_halving(histories, schedules, halving)
        diff = replay[SELECT_KEY] - full_score
        replays.append({**replay, "setting": settings.get(replay["winner"], {}), "difference": diff,
                        "within_seed_spread": None if spread is None else abs(diff) <= spread})
    return {"folder": str(tune_dir), "points": len(histories), "full_epochs": sum(len(h) for h in histories.values()),
            "full_winner": full_point, "full_setting": winner["setting"], SELECT_KEY: full_score,
            "seeds": seeds, "seeds_sd": sd, "seeds_range": spread, "replays": replays}
