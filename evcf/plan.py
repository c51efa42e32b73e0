"""``evcf plan``: what a selection will cost before anything runs.

Reads params.yaml (the one subcommand that does: it answers a question about the whole
configuration, as the Snakefile does) with ``--config`` overrides applied as Snakemake applies
them, and prints for each (dataset, model):

* the jobs of each step: search runs (``tune_point`` under ``tuning: full``, ``tune_rung`` under
  ``halving``), Table 1 runs (``train_model``; the first seed's run of a searched row is the
  winning point's run, reused, so it is not counted);
* the epochs trained, under ``full`` and under ``halving``, whichever is selected (an upper bound:
  early stopping can end a run sooner);
* the hours on the chosen device, from ``evcf bench`` figures for the dataset's shape
  (``results/bench/*.json``): epoch seconds (plus the validation pass, scaled to the dataset's
  held-out users) for gradient-trained models, the fit of one setting times the settings for the
  self-fitting ones.  Where no figure exists for that device, shape and model, it says so and
  leaves the cell empty; it never guesses;
* the disk that the finished runs keep (``train.weights``: the best weights) and what the same runs
  kept before this policy (one resumable checkpoint each: the weights, the best copy and the
  optimizer's two moment buffers).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import check_plain_yaml, run_settings, tune_points, validate
from .data.shapes import SHAPES
from .errors import EvcfError
from .tuning import halving_settings, rung_budgets, rung_slots, tuning_mode

__all__ = ["load_config", "bench_figures", "make_plan", "format_plan", "Figure"]

GIB = 1024 ** 3


def load_config(params: Path, overrides: list[str]) -> dict[str, Any]:
    """params.yaml with ``KEY=VALUE`` overrides applied as Snakemake's ``--config`` applies them
    (values read as YAML, nested mappings merged), then validated like the Snakefile does."""
    from snakemake.utils import update_config

    params = Path(params)
    if not params.exists():
        raise EvcfError("no such file", path=params, fix="run evcf plan in the repository root, or pass --params FILE")
    check_plain_yaml(params)
    config = yaml.safe_load(params.read_text())
    given: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvcfError(f"--config {item!r} is not KEY=VALUE", fix="write e.g. --config tuning=halving")
        try:
            given[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise EvcfError(f"--config {item!r}: not valid YAML ({exc})", fix="quote the value as YAML") from None
    update_config(config, copy.deepcopy(given))
    validate(config, source=str(params), overrides=given)
    return config


@dataclass
class Figure:
    """One model's measured cost on one device and shape (from an ``evcf bench`` JSON)."""

    source: str
    epoch_s: float | None = None  # gradient-trained: one training epoch
    eval_s: float | None = None  # the validation pass, for eval_users users
    eval_users: int | None = None
    fit_s: float | None = None  # self-fitting: one setting's fit
    recorded: dict = field(default_factory=dict)  # settings the figure was measured with
    note: str = ""  # the bench's note (e.g. why it skipped the model)


def bench_figures(folder: Path) -> dict[tuple[str, str, str], list[Figure]]:
    """(device type, shape name, model) → the figures of every bench JSON in ``folder``."""
    figures: dict[tuple[str, str, str], list[Figure]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            device, shape = str(data["device"]).split(":")[0], data["shape"]["name"]
            models = data["models"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue  # not a bench result (the GPU check writes other JSON files here too)
        for model, m in models.items():
            if not isinstance(m, dict):
                continue
            recorded = {k: m[k] for k in ("batch_size", "fused_optimizer", "precision", "optimizer") if k in m}
            recorded.update({f"model.{k}": v for k, v in (m.get("hparams") or {}).items()})
            figure = Figure(source=path.name, epoch_s=m.get("epoch_s"), eval_s=m.get("eval_s"),
                            eval_users=data.get("eval_users"), recorded=recorded,
                            # a fit too long to time is extrapolated; a short one (popularity) timed whole
                            fit_s=m.get("fit_s_extrapolated", m.get("fit_s")), note=str(m.get("note") or ""))
            figures.setdefault((device, shape, model), []).append(figure)
    return figures


def _pick(figures: list[Figure], hparams: dict, train: dict) -> tuple[Figure | None, str]:
    """The figure measured with the run's own settings where one exists; else why none fits."""
    if not figures:
        return None, "no figure"
    wanted = {**{k: train.get(k) for k in ("batch_size", "fused_optimizer", "precision", "optimizer")},
              **{f"model.{k}": v for k, v in hparams.items()}}

    def mismatches(figure: Figure) -> list[str]:
        return [k for k, v in figure.recorded.items() if k in wanted and wanted[k] is not None and wanted[k] != v]

    def matches(figure: Figure) -> int:
        return sum(1 for k, v in figure.recorded.items() if k in wanted and wanted[k] == v)

    # fewest settings that differ from the run's; then the figure that recorded most of them (a
    # figure from before a setting existed says nothing about it)
    ranked = sorted(figures, key=lambda f: (len(mismatches(f)), -matches(f)))
    best = ranked[0]
    model_keys = [k for k in mismatches(best) if k.startswith("model.")]
    if model_keys:  # another network or search: its cost says nothing about this one
        return None, f"figure is of another configuration ({', '.join(model_keys)})"
    other = mismatches(best)
    return best, (f"measured with other {', '.join(other)}" if other else "")


@dataclass
class Row:
    dataset: str
    model: str
    search_jobs: int = 0
    search_epochs: dict = field(default_factory=dict)  # mode -> epochs of the search
    table_jobs: int = 0
    table_epochs: int = 0
    epoch_h: float | None = None  # hours of one epoch (with its validation), or of one fit
    unit: str = "epoch"
    note: str = ""
    weights_bytes: float | None = None  # one finished run's model.pt
    checkpoint_bytes: float | None = None  # one run's resumable checkpoint
    kept_runs: int = 0  # finished runs that keep their weights (points that trained to the end, table runs)
    old_runs: int = 0  # runs that kept a checkpoint before the disk policy (every point and table run)


def _n_items(config: dict, dataset: str) -> int | None:
    if dataset in SHAPES:
        return SHAPES[dataset].items
    stats = Path("data/processed") / dataset / "stats.json"
    try:
        return int(json.loads(stats.read_text())["n_items"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _parameter_count(model: str, n_items: int, hparams: dict) -> int | None:
    """Parameters of a gradient-trained model at ``n_items``, built on torch's meta device (no memory)."""
    import torch

    from .models import build_model
    from .models.base import VAEModel

    with torch.device("meta"):
        built = build_model(model, n_items, **hparams)
    if not isinstance(built, VAEModel):
        return None
    return sum(p.numel() for p in built.parameters())


def make_plan(config: dict[str, Any], *, device: str, figures: dict) -> list[Row]:
    from .models import model_class
    from .models.base import VAEModel
    from .training import train_config

    mode, halving, seeds = tuning_mode(config), halving_settings(config), config["seeds"]
    if not any(key[0] == device for key in figures):
        raise EvcfError(f"no evcf bench figures for device {device!r} in the bench folder",
                        fix=("on a GPU machine run `bash scripts/gpu_check.sh results/bench` (or `evcf bench "
                             "--device cuda --shape ml-20m`) and commit its JSON; or plan for --device cpu")
                        if device == "cuda" else f"run `evcf bench --device {device}` and save its JSON there")
    tune_from = config.get("tune_from", {})
    weights = {"fp16": 2, "fp32": 4, "none": 0}
    rows = []
    for dataset in config["datasets"]:
        n_items, heldout = _n_items(config, dataset), config["data"][dataset]["heldout_users"]
        shape = dataset if dataset in SHAPES else None
        for model in config["models"]:
            cls = model_class(model)
            hparams, train = run_settings(config, dataset, model)
            cfg = train_config(train)
            row = Row(dataset, model)
            points = [] if dataset in tune_from else tune_points(config, dataset, model)
            gradient = issubclass(cls, VAEModel)
            epochs = [train_config(p["train"]).epochs for p in points]
            row.search_epochs["full"] = sum(epochs)
            slots = rung_slots(len(points), halving) if points else []
            if points and gradient:
                # the slots of rung r train the promoted points from the previous budget to this one
                budgets = rung_budgets(max(epochs), halving)
                row.search_epochs["halving"] = sum(n * (b - (budgets[r - 1] if r else 0))
                                                   for r, (n, b) in enumerate(zip(slots, budgets)))
            else:
                row.search_epochs["halving"] = row.search_epochs["full"]
            row.search_jobs = (sum(slots) if mode == "halving" else len(points)) if points else 0
            runs = len(seeds) if cls.seeded else 1
            row.table_jobs = runs - (1 if points else 0)  # the winner's run is the first seed's
            row.table_epochs = row.table_jobs * cfg.epochs if gradient else 0
            row.kept_runs = row.table_jobs + ((slots[-1] if mode == "halving" and gradient else len(points))
                                              if points else 0)
            row.old_runs = row.table_jobs + len(points)
            found = figures.get((device, shape, model), []) if shape else []
            figure, why = _pick(found, hparams, train)
            if shape is None:
                row.note = f"no figure: {dataset} is not a bench shape ({', '.join(SHAPES)})"
            elif figure is None:
                row.note = f"{why} (evcf bench --shape {shape} --models {model} --device {device})"
            elif gradient and figure.epoch_s is not None:
                eval_s = (figure.eval_s or 0.0) * heldout / (figure.eval_users or heldout)
                row.epoch_h, row.note = (figure.epoch_s + eval_s) / 3600, why
            elif not gradient and figure.fit_s is not None:
                from .models import build_model

                built = build_model(model, n_items or 2, **hparams)
                settings = len(list(built.candidates()))
                # a fit that selects its epoch (CDAE) scores the validation users after every epoch
                validations = built.config.epochs if getattr(built, "selects_epochs", False) else 1
                eval_s = (figure.eval_s or 0.0) * heldout / (figure.eval_users or heldout)
                row.unit, row.epoch_h = "run", (figure.fit_s + eval_s * validations) * settings / 3600
                row.note = "; ".join(x for x in (why, f"{settings} settings fitted in each run" if settings > 1 else "",
                                                 f"validated after each of {validations} epochs" if validations > 1
                                                 else "") if x)
            elif figure.note.startswith("skipped"):
                row.note = f"no figure: the bench {figure.note}"
            else:
                row.note = "no figure of this kind for this model"
            count = _parameter_count(model, n_items, hparams) if (n_items and gradient) else None
            if count is not None:
                row.weights_bytes = count * weights[cfg.weights]
                # weights, the best epoch's copy, Adam's two moment buffers (AdamNormGrad: the same)
                row.checkpoint_bytes = count * 4 * 4
            rows.append(row)
    return rows


def _hours(row: Row, mode: str | None) -> float | None:
    """Hours of a row's search under ``mode`` (None: no search) and of its Table 1 runs."""
    if row.epoch_h is None:
        return None
    if row.unit == "run":  # a self-fitting model: epoch_h is one whole run (its in-run search)
        return row.epoch_h * row.table_jobs
    search = row.search_epochs.get(mode, 0) if mode else 0
    return row.epoch_h * (search + row.table_epochs)


def _fmt_h(value: float | None) -> str:
    return "—" if value is None else (f"{value:,.1f}" if value >= 0.1 else f"{value * 60:,.1f} min")


def _fmt_gb(value: float | None) -> str:
    return "—" if value is None else f"{value / GIB:,.2f}"


def format_plan(config: dict[str, Any], rows: list[Row], *, device: str, params: str, figures_dir: str) -> str:
    from tabulate import tabulate

    mode = tuning_mode(config)
    other = {"full": "halving", "halving": "full"}.get(mode or "")
    table = [[r.dataset, r.model, r.search_jobs, r.search_epochs.get(mode, 0) if mode else 0, r.table_jobs,
              r.table_epochs, _fmt_h(_hours(r, mode)), _fmt_h(_hours(r, other)) if other else "",
              _fmt_gb(None if r.weights_bytes is None else r.weights_bytes * r.kept_runs), r.note] for r in rows]
    headers = ["dataset", "model", "search jobs", "search epochs", "table runs", "table epochs",
               f"hours ({mode or 'no search'})", f"hours ({other})" if other else "", "kept GB", "note"]
    known = [r for r in rows if r.epoch_h is not None]
    missing = len(rows) - len(known)
    total = sum(_hours(r, mode) or 0 for r in known)
    epochs = {m: sum(r.search_epochs.get(m, 0) for r in rows) for m in ("full", "halving")}
    kept = sum((r.weights_bytes or 0) * r.kept_runs for r in rows)
    before = sum((r.checkpoint_bytes or 0) * r.old_runs for r in rows)
    lines = [f"evcf plan: {params}, tuning: {mode or 'false'}, device: {device} (figures: {figures_dir}/*.json)", "",
             tabulate(table, headers=headers, tablefmt="github"), "",
             f"jobs: {sum(r.search_jobs for r in rows)} search ({'tune_rung' if mode == 'halving' else 'tune_point'}), "
             f"{sum(r.table_jobs for r in rows)} Table 1 runs (train_model; the first seed of a searched row is "
             "its winner's run, reused)"]
    if epochs["full"]:
        lines.append(f"search epochs: {epochs['full']:,} under tuning: full, {epochs['halving']:,} under tuning: "
                     f"halving ({epochs['halving'] / epochs['full']:.0%} of full)")
    hours = f"hours on {device}: {total:,.1f} under tuning: {mode or 'false'}"
    if other:
        hours += f", {sum(_hours(r, other) or 0 for r in known):,.1f} under tuning: {other}"
    if missing:
        hours += f"; {missing} of {len(rows)} rows have no figure and are not counted (a lower bound)"
    lines += [hours,
              f"disk kept by finished runs (train.weights): {kept / GIB:,.1f} GB; the same runs' checkpoints "
              f"before this policy: {before / GIB:,.1f} GB (gradient-trained rows; self-fitting rows not estimated)",
              "epochs and hours are upper bounds: early stopping (patience) can end a run sooner"]
    return "\n".join(lines)
