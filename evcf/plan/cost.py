"""Each (dataset, model) row of the plan: its jobs, epochs, hours and disk (:func:`make_plan`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import run_settings, tune_points
from ..data.shapes import SHAPES
from ..errors import EvcfError
from ..tuning import halving_settings, rung_budgets, rung_slots, tuning_mode
from .figures import pick
from .measured import epoch_share, overhead_s

__all__ = ["Row", "make_plan", "GIB", "WIDTH"]

GIB = 1024 ** 3
WIDTH = 120  # the printed plan's lines (a terminal, a README's code block)


@dataclass
class Row:
    dataset: str
    model: str
    search_jobs: int = 0
    search_epochs: dict = field(default_factory=dict)  # mode -> epochs of the search
    table_jobs: int = 0  # train_model jobs that train
    copied_jobs: int = 0  # train_model jobs that copy the search winner's run (the first seed's)
    table_epochs: int = 0
    hours: dict = field(default_factory=dict)  # mode (None: no search) -> hours of the row, where costed
    bound_hours: dict = field(default_factory=dict)  # the same at the most epochs (where hours are less)
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

    from ..models import build_model
    from ..models.base import VAEModel

    with torch.device("meta"):
        built = build_model(model, n_items, **hparams)
    if not isinstance(built, VAEModel):
        return None
    return sum(p.numel() for p in built.parameters())


def make_plan(config: dict[str, Any], *, device: str, figures: dict, records: dict | None = None) -> list[Row]:
    """Each (dataset, model) row, costed from ``figures`` (:func:`~evcf.plan.figures.bench_figures`)
    and, where a measured run of the dataset was recorded (``records``,
    :func:`~evcf.plan.measured.load_records`), the share of its bound that an early-stopping fit ran
    there (a count, whatever the machine's load; the bound's hours kept beside) and, if its jobs had
    a CPU each, what a job pays outside its run (:func:`~evcf.plan.measured.overhead_s`)."""
    from ..models import build_model, model_class
    from ..models.base import VAEModel
    from ..training import train_config

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
        recorded = {k: v for k, v in (records or {}).items() if v[0].get("dataset") == dataset}
        sources = sorted({source for _, source in recorded.values()})
        # what a job costs whatever it trains: from an uncontended recorded run of this dataset, else the
        # bench's start-up of a process (its imports only: less than a job pays)
        overhead = overhead_s([row for row, _ in recorded.values()])
        for model in config["models"]:
            cls = model_class(model)
            record = recorded.get(f"{dataset}/{model}", (None, ""))[0]
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
            row.copied_jobs = 1 if points else 0  # the winner's run is the first seed's
            row.table_jobs = runs - row.copied_jobs
            row.table_epochs = row.table_jobs * cfg.epochs if gradient else 0
            row.kept_runs = row.table_jobs + ((slots[-1] if mode == "halving" and gradient else len(points))
                                              if points else 0)
            row.old_runs = row.table_jobs + len(points)
            found = figures.get((device, shape, model), []) if shape else []
            eval_h = lambda f: (f.eval_s or 0.0) * heldout / (f.eval_users or heldout) / 3600  # noqa: E731
            start_h = lambda f: (f.startup_s or 0.0) / 3600 if overhead is None else overhead / 3600  # noqa: E731
            # every job: its start-up (with loading and writing, where recorded) and its test evaluation
            job_h = lambda f: start_h(f) + eval_h(f)  # noqa: E731
            # the first seed of a searched row copies its winning point's run: a job without training
            copies = 1 if points and runs else 0

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
                    figure, why = pick(found, h, t)
                    if figure is None or figure.epoch_s is None:
                        costs.append(None)
                        reason = why.removeprefix("no figure at ") if figure is None else "no epoch figure"
                        missing += [r for r in reason.split(", ") if r not in missing]
                        hint = hint or (bench_hint(h, t) if figure is None else "")
                        continue
                    costs.append((figure.epoch_s / 3600 + eval_h(figure), job_h(figure), start_h(figure)))
                    if why and why not in row.notes:
                        row.notes.append(why)
                    if figure.pipelined and "pipelined epoch (CUDA)" not in row.notes:
                        row.notes.append("pipelined epoch (CUDA)")
                known = [c for c in costs if c is not None]
                row.uncosted = len(costs) - len(known)
                if known:
                    mean_epoch = sum(c[0] for c in known) / len(known)
                    mean_job = sum(c[1] for c in known) / len(known)
                    copy = copies * sum(c[2] for c in known) / len(known)
                    row.epoch_h = mean_epoch
                    # with patience, at the share of its bound that the recorded run's fits ran
                    share = epoch_share(record, cfg.epochs, cfg.patience) if record and cfg.patience else None

                    def hours_at(share: float) -> dict:
                        table = row.table_jobs * (cfg.epochs * share * mean_epoch + mean_job) + copy
                        if not points:
                            return {"full": table, "halving": table, None: table}
                        full = sum(e * share * c[0] + c[1] for e, c in zip(epochs, costs) if c is not None)
                        # rung 0 trains every point to the first budget at its own cost; which points
                        # later rungs train is decided by the search: at the grid's mean cost
                        first = sum(budgets[0] * c[0] + c[1] for c in known)
                        later = sum(n * ((b - budgets[r - 1]) * mean_epoch + mean_job)
                                    for r, (n, b) in enumerate(zip(slots, budgets)) if r)
                        return {"full": full + table, "halving": first + later + table, None: table}

                    row.hours = hours_at(share or 1.0)
                    if share is not None:
                        row.bound_hours = hours_at(1.0)
                        row.notes.append(f"early stopping: each run at {share:.0%} of its {cfg.epochs} epochs, as "
                                         f"the recorded run's ({', '.join(sources)}); an estimate")
                    if points and row.table_jobs:
                        row.notes.append("Table 1 runs at the grid's mean epoch (the winner is not known yet)")
                if row.uncosted:
                    what = (f"{row.uncosted} of {len(costs)} grid points" if points else "the recipe")
                    row.notes.append(f"not counted: {what}, no figure at {', '.join(missing)}"
                                     + (f" (e.g. {hint})" if hint else ""))
            else:
                figure, why = pick(found, hparams, train)
                if figure is not None and figure.fit_s is not None:
                    built = build_model(model, n_items or 2, **hparams)
                    settings = len(list(built.candidates()))
                    # a fit that selects its epoch (CDAE) scores the validation users after every epoch;
                    # its figure is the fit at the most epochs; with patience, the recorded run's share of them
                    selects = getattr(built, "selects_epochs", False)
                    bound, patience = (built.config.epochs, built.config.patience) if selects else (1, 0)
                    share = epoch_share(record, bound, patience) if record and patience else None

                    def run_h(share: float) -> float:
                        return (figure.fit_s * share / 3600 + eval_h(figure) * bound * share) * settings + job_h(figure)

                    row.unit = "run"
                    row.epoch_h = run_h(share or 1.0)
                    row.hours = dict.fromkeys(("full", "halving", None), row.epoch_h * row.table_jobs)
                    if share is not None:
                        row.bound_hours = dict.fromkeys(("full", "halving", None), run_h(1.0) * row.table_jobs)
                    row.notes += [x for x in (why, f"{settings} settings fitted in each run" if settings > 1 else "",
                                              f"validated after each of {bound} epochs" if bound > 1 and share is None
                                              else "",
                                              f"early stopping: each fit at {share:.0%} of its {bound} epochs, as the "
                                              f"recorded run's ({', '.join(sources)}); an estimate"
                                              if share is not None else "") if x]
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
            if overhead is not None and row.hours:
                row.notes.append(f"each job: {overhead:.1f} s whatever it trains (start-up, loading, writing), the "
                                 f"quickest job of the recorded run ({', '.join(sources)})")
            rows.append(row)
    return rows
