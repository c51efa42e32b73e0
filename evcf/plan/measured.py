"""A finished run's measured costs, row by row (:func:`record_run`), and what ``evcf plan`` takes
from such a record (:func:`load_records`, :func:`compare`).

``evcf plan --measured ROOT --write results/bench/quickstart-<dataset>.json`` reads a finished
pipeline run in ``ROOT`` (the folder that Snakemake ran in) for the datasets and models of the
plan's selection and writes, per (dataset, model), each job of the row:

* its seconds: the whole job as Snakemake's benchmark timed it
  (``benchmarks/{tune_point,train_model}/<dataset>/<model>/*.tsv``, column ``s``; what the report's
  training-time plot shows), and the seconds of its training with validation and test
  (``metrics.json`` ``wall_seconds``); their difference is what a job pays outside its run
  (start-up, loading the split, writing the results);
* the epochs each fit ran and the most it could run (``metrics.json`` ``epochs_run`` and the run's
  ``identity``; for a model that fits itself with early stopping, such as CDAE, each fit's
  ``epochs_run`` in ``tuning.csv`` and its ``epochs`` setting);
* whether it was a copy of its grid point's run (``reused_from``: the first seed of a searched row).

and the share of a CPU that Snakemake saw the job use (its benchmark's ``mean_load``, sampled over
the job's first 15 s): a single-threaded job far below 100% was timed while other work shared its
core, and its seconds say more about the machine's load than about the job.

The plan takes from a record what no bench measures: the epochs an early-stopping fit runs (as a
share of its bound: a count, whatever the machine's load) and, from a record whose jobs had a CPU
each (a median share of at least :data:`UNCONTENDED` %), what a job costs whatever it trains
(start-up, loading the split, the run's identity, writing the results): the quickest job of the
record, one that trains next to nothing (the quick start's popularity).
Everything else it costs from the bench, and it prints the record's seconds beside its own
estimate, with the record's median CPU share.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..errors import EvcfError

__all__ = ["record_run", "load_records", "compare", "cpu_share", "overhead_s", "epoch_share", "KIND", "UNCONTENDED"]

KIND = "measured run"  # the record's "kind" (bench_figures skips it: it has no "models")
# % of a CPU: a record whose jobs used less (a median) was timed under other load.  Snakemake's
# mean_load reads well below 100% even for a job alone on an idle machine (its samples start with
# the process's own start-up), and far lower beside other work
UNCONTENDED = 50.0


def _benchmark(tsv: Path, column: str) -> float | None:
    """The mean of ``column`` of a Snakemake benchmark file (one row per repeat), None if unreadable."""
    try:
        header, *rows = tsv.read_text().splitlines()
        index = header.split("\t").index(column)
        values = [float(r.split("\t")[index]) for r in rows if r.strip()]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values) / len(values) if values else None


def _epochs(folder: Path, metrics: dict) -> tuple[list[int], int | None, int]:
    """(epochs run by each fit of the run, the most one fit may run, its patience)."""
    identity = metrics.get("identity") or {}
    tuning = folder / "tuning.csv"
    hparams = identity.get("hparams") or {}
    if tuning.is_file() and "epochs" in hparams:  # a model that fits itself epoch by epoch (CDAE)
        import csv

        with tuning.open() as f:
            fits = [int(float(r["epochs_run"])) for r in csv.DictReader(f) if r.get("epochs_run")]
        return fits, int(hparams["epochs"]), int(hparams.get("patience") or 0)
    train = identity.get("train") or {}
    if metrics.get("epochs_run") is None or "epochs" not in train:
        return [], None, 0
    return [int(metrics["epochs_run"])], int(train["epochs"]), int(train.get("patience") or 0)


def _job(root: Path, step: str, dataset: str, model: str, name: str, folder: Path) -> dict[str, Any]:
    tsv = root / "benchmarks" / step / dataset / model / f"{name}.tsv"
    seconds = _benchmark(tsv, "s")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EvcfError(f"not a finished run ({type(exc).__name__})", path=folder / "metrics.json",
                        fix="finish the run (snakemake all with the same --config) before recording it") from None
    if seconds is None:
        raise EvcfError("no benchmark of this job", path=root / "benchmarks" / step / dataset / model / f"{name}.tsv",
                        fix="record a run that Snakemake made (its benchmarks/ folder beside results/)")
    fits, bound, patience = _epochs(folder, metrics)
    return {"step": step, "name": name, "seconds": round(seconds, 3), "cpu_percent": _benchmark(tsv, "mean_load"),
            "run_seconds": metrics.get("wall_seconds"), "reused": bool(metrics.get("reused_from")),
            "fit_epochs": fits, "epochs_bound": bound, "patience": patience}


def record_run(root: Path, config: dict[str, Any], *, command: str) -> dict[str, Any]:
    """The measured record of the finished run in ``root`` for ``config``'s datasets and models
    (full search and Table 1 jobs; a ``tuning: halving`` run is not recorded)."""
    from ..bench.timer import load_average, machine
    from ..config import tune_points
    from ..models import model_class
    from ..tuning import tuning_mode

    root = Path(root)
    if tuning_mode(config) == "halving":
        raise EvcfError("a halving run is not recorded", fix="record a run made with tuning: full (the quick start)")
    rows: dict[str, dict[str, Any]] = {}
    for dataset in config["datasets"]:
        for model in config["models"]:
            jobs = []
            for folder in sorted((root / "results" / "tune" / dataset / model).glob("point-*")):
                jobs.append(_job(root, "tune_point", dataset, model, folder.name, folder))
            for folder in sorted((root / "results" / dataset / model).glob("seed-*")):
                jobs.append(_job(root, "train_model", dataset, model, folder.name, folder))
            points = 0 if dataset in config.get("tune_from", {}) else len(tune_points(config, dataset, model))
            seeds = len(config["seeds"]) if model_class(model).seeded else 1
            counts = (sum(j["step"] == "tune_point" for j in jobs), sum(j["step"] == "train_model" for j in jobs))
            if counts != (points, seeds):
                raise EvcfError(f"{model} on {dataset}: {counts[0]} grid points and {counts[1]} Table 1 runs finished, "
                                f"the selection has {points} and {seeds}", path=root / "results" / dataset / model,
                                fix="record a finished run (snakemake all with the same --config) with that --config")
            rows[f"{dataset}/{model}"] = {"dataset": dataset, "model": model, "tuning": tuning_mode(config), "jobs": jobs,
                                          "seconds": round(sum(j["seconds"] for j in jobs), 3)}
    from ..training import resolve_device

    return {"kind": KIND, "command": command, "root": str(root), "datasets": list(config["datasets"]),
            "machine": machine(resolve_device("cpu")), "snakemake": _snakemake_log(root),
            "load_average_when_recorded": load_average(), "rows": rows}


def _snakemake_log(root: Path) -> dict[str, Any] | None:
    """The command and the cores (jobs at a time, with one thread each) of the run's last Snakemake
    log (``.snakemake/log/``), None where there is none."""
    import re

    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return None
    text = logs[-1].read_text(errors="replace")
    command, cores = re.search(r"Command: (.*)", text), re.search(r"Provided cores: (\d+)", text)
    return {"log": logs[-1].name, "command": command.group(1).strip() if command else None,
            "cores": int(cores.group(1)) if cores else None}


def load_records(folder: Path) -> dict[str, Any]:
    """``dataset/model`` → (the record's row, the record's file name), from every record in ``folder``."""
    found: dict[str, Any] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("kind") == KIND:
            for key, row in (data.get("rows") or {}).items():
                found.setdefault(key, (row, path.name))
    return found


def overhead_s(rows: list[dict[str, Any]]) -> float | None:
    """What a job costs whatever it trains (start-up, loading, the run's identity, writing): the
    quickest job of ``rows`` (not a copy), one that trains next to nothing; None where the jobs did
    not have a CPU each (:data:`UNCONTENDED`), whose seconds measure the load."""
    share = cpu_share(rows)
    jobs = [j["seconds"] for row in rows for j in row["jobs"] if not j.get("reused")]
    return min(jobs) if jobs and share is not None and share >= UNCONTENDED else None


def epoch_share(row: dict[str, Any], bound: int, patience: int) -> float | None:
    """The share of its bound that a fit of ``row`` ran, where the record's fits had the same
    bound and patience and stopped early (None: no such fits, or none stopped early)."""
    fits = [e for j in row["jobs"] if not j.get("reused") and j.get("epochs_bound") == bound
            and j.get("patience") == patience for e in j.get("fit_epochs") or []]
    if not fits or not patience:
        return None
    return sum(fits) / len(fits) / bound


def cpu_share(rows: list[dict[str, Any]]) -> float | None:
    """The median share of a CPU (%) that the records' jobs used, as Snakemake saw it."""
    shares = [j["cpu_percent"] for row in rows for j in row["jobs"] if isinstance(j.get("cpu_percent"), (int, float))]
    return statistics.median(shares) if shares else None


def compare(rows: list[Any], records: dict[str, Any], mode: str | None) -> list[tuple[str, float, float, str]]:
    """(dataset/model, the plan's seconds, the record's seconds, the record's file) of each costed
    row that a record measured under the same ``tuning`` mode."""
    out = []
    for row in rows:
        key = f"{row.dataset}/{row.model}"
        hours = row.hours.get(mode) if row.hours else None
        if key in records and hours is not None and records[key][0].get("tuning") == mode:
            measured, source = records[key]
            out.append((key, hours * 3600, float(measured["seconds"]), source))
    return out
