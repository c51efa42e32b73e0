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
  (``results/bench/*.json``; a generated dataset such as ``synthetic`` is benched on its own split:
  ``evcf bench --shape synthetic --params params.yaml``): epoch seconds (plus the validation pass,
  scaled to the dataset's held-out users) for gradient-trained models, each grid point at its own
  batch size and network (a figure measured at another batch size or depth is not used), the
  fit of one setting times the settings for the self-fitting ones; each job also pays the
  measured start-up of a process and one test evaluation.  On CUDA the epoch is the pipelined one
  (steps queued back to back, as training runs them), not the synchronised one.  Where no figure
  exists for that device, shape, model and settings, it says so (with the bench command that would
  measure it) and leaves it out; it never guesses;
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
WIDTH = 120  # the printed plan's lines (a terminal, a README's code block)
# model settings that change no operation's size or count (a weight in the loss): a figure measured
# with another value still costs the run
COST_NEUTRAL = frozenset({
    "model.gamma",  # RecVAE's KL weight
    "model.likelihood",  # one pass over the (B, I) logits either way; the figure's note names the other
})


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
    startup_s: float | None = None  # a job's process start-up on that machine (the bench's job_startup)
    items: int | None = None  # the items of the bench's matrix (a generated dataset's own)
    pipelined: bool = False  # epoch_s is the pipelined epoch (a CUDA figure)


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
            # on CUDA an epoch of training is the pipelined one: the host queues steps while the
            # device runs (a synchronised step also pays the host's time)
            pipelined = device == "cuda" and m.get("pipelined_epoch_s") is not None
            figure = Figure(source=path.name, epoch_s=m["pipelined_epoch_s"] if pipelined else m.get("epoch_s"),
                            eval_s=m.get("eval_s"), eval_users=data.get("eval_users"), recorded=recorded,
                            # a fit too long to time is extrapolated; a short one (popularity) timed whole
                            fit_s=m.get("fit_s_extrapolated", m.get("fit_s")), note=str(m.get("note") or ""),
                            startup_s=(data.get("job_startup") or {}).get("seconds"), pipelined=pipelined,
                            items=data["shape"].get("items"))
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

    def sizes(figure: Figure) -> list[str]:  # settings that change what a step computes
        return [k for k in mismatches(figure) if k == "batch_size" or (k.startswith("model.") and k not in COST_NEUTRAL)]

    # no setting that sizes the step differs; then fewest other differences; then the figure that
    # recorded most settings (a figure from before a setting existed says nothing about it)
    ranked = sorted(figures, key=lambda f: (len(sizes(f)), len(mismatches(f)), -matches(f)))
    best = ranked[0]
    if sizes(best):  # another batch size, network or search: its cost says nothing about this one
        return None, "no figure at " + ", ".join(f"{k.removeprefix('model.')}={wanted[k]}" for k in sizes(best))
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
    hours: dict = field(default_factory=dict)  # mode (None: no search) -> hours of the row, where costed
    epoch_h: float | None = None  # hours of one epoch (with its validation) at the recipe, or of one run
    unit: str = "epoch"
    notes: list = field(default_factory=list)  # what the reader should know (printed as footnotes)
    uncosted: int = 0  # grid points (or the recipe) without a figure at their settings
    weights_bytes: float | None = None  # one finished run's model.pt
    checkpoint_bytes: float | None = None  # one run's resumable checkpoint
    kept_runs: int = 0  # finished runs that keep their weights (points that trained to the end, table runs)
    old_runs: int = 0  # runs that kept a checkpoint before the disk policy (every point and table run)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


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
    from .models import build_model, model_class
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
    bench_shapes = {key[1] for key in figures}
    rows = []
    for dataset in config["datasets"]:
        n_items, heldout = _n_items(config, dataset), config["data"][dataset]["heldout_users"]
        # a paper's shape, or a dataset benched on its own split (a generated one: evcf bench --shape synthetic)
        shape = dataset if dataset in SHAPES or dataset in bench_shapes else None
        if n_items is None and shape is not None:  # not split here yet: the items of its bench
            n_items = next((f.items for key, fs in figures.items() if key[1] == shape for f in fs if f.items), None)
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
            budgets = rung_budgets(max(epochs), halving) if points and gradient else []
            if budgets:
                # the slots of rung r train the promoted points from the previous budget to this one
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
            eval_h = lambda f: (f.eval_s or 0.0) * heldout / (f.eval_users or heldout) / 3600  # noqa: E731
            # every job: a process start-up and the test evaluation at its end
            job_h = lambda f: (f.startup_s or 0.0) / 3600 + eval_h(f)  # noqa: E731

            def bench_hint(h: dict, t: dict) -> str:
                extra = ("" if t.get("batch_size") == train.get("batch_size") else f" --batch-size {t['batch_size']}")
                changed = {k: v for k, v in h.items() if hparams.get(k) != v}
                if changed:
                    extra += f" --hparams '{json.dumps({model: changed})}'"
                return (f"evcf bench --shape {shape} --models {model} --device {device} --params params.yaml"
                        f"{'' if shape == dataset else f' --dataset {dataset}'}{extra}")

            if shape is None:
                row.notes.append(f"no figure: {dataset} is neither a bench shape ({', '.join(SHAPES)}) nor "
                                 f"benched on its own split (evcf bench --shape {dataset} --params params.yaml)")
                row.uncosted = max(1, len(points))
            elif gradient:
                # each grid point at its own settings; the Table 1 runs at the recipe (no grid) or at
                # the grid's mean (the winner is not known before the search)
                costs, missing, hint = [], [], ""
                for h, t in ([(q["hparams"], q["train"]) for q in points] or [(hparams, train)]):
                    figure, why = _pick(found, h, t)
                    if figure is None or figure.epoch_s is None:
                        costs.append(None)
                        reason = why.removeprefix("no figure at ") if figure is None else "no epoch figure"
                        missing += [r for r in reason.split(", ") if r not in missing]
                        hint = hint or (bench_hint(h, t) if figure is None else "")
                        continue
                    costs.append((figure.epoch_s / 3600 + eval_h(figure), job_h(figure)))
                    if why and why not in row.notes:
                        row.notes.append(why)
                    if figure.pipelined and "pipelined epoch (CUDA)" not in row.notes:
                        row.notes.append("pipelined epoch (CUDA)")
                known = [c for c in costs if c is not None]
                row.uncosted = len(costs) - len(known)
                if known:
                    mean_epoch = sum(c[0] for c in known) / len(known)
                    mean_job = sum(c[1] for c in known) / len(known)
                    row.epoch_h = mean_epoch
                    table = row.table_jobs * (cfg.epochs * mean_epoch + mean_job)
                    if points:
                        full = sum(e * c[0] + c[1] for e, c in zip(epochs, costs) if c is not None)
                        # rung 0 trains every point to the first budget at its own cost; which points
                        # later rungs train is decided by the search: at the grid's mean cost
                        first = sum(budgets[0] * c[0] + c[1] for c in known)
                        later = sum(n * ((b - budgets[r - 1]) * mean_epoch + mean_job)
                                    for r, (n, b) in enumerate(zip(slots, budgets)) if r)
                        row.hours = {"full": full + table, "halving": first + later + table, None: table}
                        if row.table_jobs:
                            row.notes.append("Table 1 runs at the grid's mean epoch (the winner is not known yet)")
                    else:
                        row.hours = {"full": table, "halving": table, None: table}
                if row.uncosted:
                    what = (f"{row.uncosted} of {len(costs)} grid points" if points else "the recipe")
                    row.notes.append(f"not counted: {what}, no figure at {', '.join(missing)}"
                                     + (f" (e.g. {hint})" if hint else ""))
            else:
                figure, why = _pick(found, hparams, train)
                if figure is not None and figure.fit_s is not None:
                    built = build_model(model, n_items or 2, **hparams)
                    settings = len(list(built.candidates()))
                    # a fit that selects its epoch (CDAE) scores the validation users after every epoch
                    validations = built.config.epochs if getattr(built, "selects_epochs", False) else 1
                    row.unit = "run"
                    row.epoch_h = (figure.fit_s / 3600 + eval_h(figure) * validations) * settings + job_h(figure)
                    hours = row.epoch_h * row.table_jobs
                    row.hours = {"full": hours, "halving": hours, None: hours}
                    row.notes += [x for x in (why, f"{settings} settings fitted in each run" if settings > 1 else "",
                                              f"validated after each of {validations} epochs" if validations > 1
                                              else "") if x]
                elif figure is not None and figure.note.startswith("skipped"):
                    row.notes.append(f"no figure: the bench {figure.note}")
                    row.uncosted = 1
                elif figure is None:
                    row.notes.append(f"{why} ({bench_hint(hparams, train)})")
                    row.uncosted = 1
                else:
                    row.notes.append("no figure of this kind for this model")
                    row.uncosted = 1
            count = _parameter_count(model, n_items, hparams) if (n_items and gradient) else None
            if count is not None:
                row.weights_bytes = count * weights[cfg.weights]
                # weights, the best epoch's copy, Adam's two moment buffers (AdamNormGrad: the same)
                row.checkpoint_bytes = count * 4 * 4
            rows.append(row)
    return rows


def _hours(row: Row, mode: str | None) -> float | None:
    """Hours of a row's search under ``mode`` (None: no search) and of its Table 1 runs."""
    return row.hours.get(mode) if row.hours else None


def _fmt_h(value: float | None, per_hour: int = 1) -> str:
    """Hours (or minutes, ``per_hour`` = 60) with one decimal, thousands separated: one unit per column."""
    return "—" if value is None else f"{value * per_hour:,.1f}"


def _fmt_gb(value: float | None) -> str:
    return "—" if value is None else f"{value / GIB:,.2f}"


def _fmt_total(hours: float) -> str:
    return f"{hours:,.1f} h ({hours / 24:,.1f} days)" if hours >= 1 else f"{hours:,.2f} h ({hours * 60:,.0f} min)"


def format_plan(config: dict[str, Any], rows: list[Row], *, device: str, params: str, figures_dir: str) -> str:
    """The plan as people read it: a table within 120 columns (long notes become numbered
    footnotes under it), hours in one unit per column, totals in hours and days."""
    import textwrap

    from .bench.table import columns

    mode = tuning_mode(config)
    other = {"full": "halving", "halving": "full"}.get(mode or "")
    footnotes: list[str] = []

    def refs(row: Row) -> str:
        marks = []
        for note in row.notes:
            if note not in footnotes:
                footnotes.append(note)
            marks.append(str(footnotes.index(note) + 1))
        return ",".join(marks)

    # one unit for both time columns: minutes when every row takes less than an hour (the quick start)
    largest = max((h for r in rows for h in r.hours.values() if h is not None), default=0.0)
    unit, per_hour = ("min", 60) if largest < 1 else ("h", 1)
    table = [[r.dataset, r.model, f"{r.search_jobs:,}", f"{r.search_epochs.get(mode, 0) if mode else 0:,}",
              f"{r.table_jobs:,}", f"{r.table_epochs:,}", _fmt_h(_hours(r, mode), per_hour),
              *([_fmt_h(_hours(r, other), per_hour)] if other else []),
              _fmt_gb(None if r.weights_bytes is None else r.weights_bytes * r.kept_runs), refs(r)] for r in rows]
    headers = ["dataset", "model", "tune jobs", "tune epochs", "table runs", "table epochs",
               f"{mode} ({unit})" if mode else f"time ({unit})", *([f"{other} ({unit})"] if other else []),
               "kept GB", "notes"]
    known = [r for r in rows if r.hours]
    partial = [r for r in rows if r.uncosted]
    total = sum(_hours(r, mode) or 0 for r in known)
    epochs = {m: sum(r.search_epochs.get(m, 0) for r in rows) for m in ("full", "halving")}
    kept = sum((r.weights_bytes or 0) * r.kept_runs for r in rows)
    before = sum((r.checkpoint_bytes or 0) * r.old_runs for r in rows)
    lines = [f"evcf plan: {params}, tuning: {mode or 'false'}, device: {device} (figures: {figures_dir}/*.json)",
             "", *columns(table, headers, left=2).splitlines(), ""]
    lines += [f"[{i}] {note}" for i, note in enumerate(footnotes, start=1)]
    if footnotes:
        lines.append("")
    lines.append(f"jobs: {sum(r.search_jobs for r in rows)} search "
                 f"({'tune_rung' if mode == 'halving' else 'tune_point'}), {sum(r.table_jobs for r in rows)} "
                 "Table 1 runs (train_model; the first seed of a searched row is its winner's run, reused)")
    if epochs["full"]:
        lines.append(f"search epochs: {epochs['full']:,} under tuning: full, {epochs['halving']:,} under tuning: "
                     f"halving ({epochs['halving'] / epochs['full']:.0%} of full)")
    hours = f"hours on {device}, one job after another: {_fmt_total(total)} under tuning: {mode or 'false'}"
    if other:
        hours += f", {_fmt_total(sum(_hours(r, other) or 0 for r in known))} under tuning: {other}"
    lines.append(hours)
    if partial:
        lines.append(f"not counted: {len(partial)} of {len(rows)} rows lack figures for some or all of their runs "
                     "(see the notes): the hours are a lower bound")
    lines += [f"disk kept by finished runs (train.weights): {kept / GIB:,.1f} GB; the same runs' checkpoints "
              f"before this policy: {before / GIB:,.1f} GB (gradient-trained rows; self-fitting rows not estimated)",
              "epochs and hours are upper bounds: early stopping (patience) can end a run sooner"]
    # 120 columns: the table fits as it is; footnotes and sentences wrap (a footnote's later lines indented)
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False) if len(line) > WIDTH else line for line in lines)
