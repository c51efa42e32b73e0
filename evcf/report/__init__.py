"""The report step: Table 1, significance tests, plots and DVC summary metrics from finished runs.

:func:`make_report` reads every run folder (``results/<dataset>/<model>/seed-<seed>/`` with
``metrics.json``, ``history.csv`` and ``per_user.csv``), validates all of them before anything is
written, builds every output in memory, then writes each file to a temporary name and renames it into
place.  Outputs, relative to ``out_dir``:

* ``table1.md`` / ``table1.csv`` / ``table1.tex`` / ``table1.html`` — :mod:`evcf.report.table` (the
  frame, the CSV), :mod:`~evcf.report.rows`, :mod:`~evcf.report.verdicts` and one renderer per format
  (the HTML page is what Snakemake's report shows; published values come from
  :mod:`evcf.report.published`)
* ``significance.csv`` — :mod:`evcf.report.stats`
* ``claims.csv`` — the paper's claims, each against the paper's comparison row and the ablation's,
  with the per-seed differences (:func:`evcf.report.stats.claims_table`; their verdicts are in
  ``table1.md`` / ``table1.html``)
* ``plots/{metrics,learning_curves,per_user_ndcg,train_time}_<dataset>.{png,csv}`` —
  :mod:`evcf.report.plots`
* ``summary.json`` — ``{dataset: {model: {"recall@20": mean, "recall@50": mean, "ndcg@100": mean,
  "n_seeds": n}}}`` for ``dvc metrics``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evcf.errors import EvcfError
from evcf.io import write_atomic
from evcf.report import plots
from evcf.report.published import load_published
from evcf.report.stats import CLAIM_COLUMNS, METRICS, SIGNIFICANCE_COLUMNS, average_over_seeds, claims_table, \
    significance_table
from evcf.report.html_page import render_html
from evcf.report.latex import render_latex
from evcf.report.markdown import render_markdown, render_settings_markdown
from evcf.report.rows import PAPER_ROWS, canonical_model, order_datasets, order_models
from evcf.report.table import build_table

__all__ = ["make_report", "load_runs", "RunData"]

log = logging.getLogger(__name__)

_REQUIRED_KEYS = ("dataset", "model", "seed", *METRICS)
_HISTORY_REQUIRED = ("epoch", "val_ndcg@100")
_HISTORY_OPTIONAL = ("train_loss", "beta", "seconds")
_PER_USER_REQUIRED = ("uid", *METRICS)


@dataclass
class RunData:
    """Everything the report reads from the inputs, as tidy frames (one row per run / epoch / user)."""

    runs: pd.DataFrame  # dataset, model, seed, metrics, train_seconds, time_source, path
    history: pd.DataFrame  # dataset, model, seed, epoch, train_loss, beta, val_ndcg@100
    per_user: pd.DataFrame  # dataset, model, seed, uid, metrics


def _command_line(metrics: dict) -> str:
    """(issue 19) ``train.lr = 0.002, ...`` for the settings the command line changed, or ''."""
    typed = metrics.get("settings_source") or {}
    return ", ".join(f"{key} = {entry['value']}" for key, entry in sorted(typed.items()))


def _fix(folder: Path) -> str:
    return (f"re-run the training for this run ({folder}) so that it writes complete "
            "metrics.json, history.csv and per_user.csv, or leave the run out of the report")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        problem = "run folder does not exist" if not folder.is_dir() else "metrics.json is missing"
        raise EvcfError(problem, path=path if folder.is_dir() else folder, fix=_fix(folder))
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvcfError(f"not valid JSON ({exc})", path=path, fix=_fix(folder)) from exc
    if not isinstance(metrics, dict):
        raise EvcfError("expected a JSON object", path=path, fix=_fix(folder))
    missing = [k for k in _REQUIRED_KEYS if k not in metrics]
    if missing:
        raise EvcfError(f"missing key(s) {', '.join(missing)}", path=path, fix=_fix(folder))
    for key in ("dataset", "model"):
        if not isinstance(metrics[key], str) or not metrics[key]:
            raise EvcfError(f"{key!r} must be a non-empty string, got {metrics[key]!r}",
                            path=path, fix=_fix(folder))
    seed = metrics["seed"]
    if isinstance(seed, str) and seed.isdigit():
        seed = int(seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EvcfError(f"'seed' must be an integer, got {metrics['seed']!r}", path=path, fix=_fix(folder))
    metrics["seed"] = seed
    for key in METRICS:
        value = metrics[key]
        if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise EvcfError(f"{key!r} must be a number in [0, 1], got {value!r}", path=path, fix=_fix(folder))
    expected = (metrics["dataset"], metrics["model"], f"seed-{seed}")
    actual = (folder.parent.parent.name, folder.parent.name, folder.name)
    if expected != actual:
        log.warning("%s: metrics.json says %s/%s/%s; using the values in metrics.json",
                    folder, *expected)
    return metrics


def _read_csv(path: Path, folder: Path, required, optional=()) -> pd.DataFrame:
    if not path.is_file():
        raise EvcfError(f"{path.name} is missing", path=path, fix=_fix(folder))
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvcfError(f"cannot be read as CSV ({exc})", path=path, fix=_fix(folder)) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EvcfError(f"missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})",
                        path=path, fix=_fix(folder))
    if frame.empty:
        raise EvcfError("has no rows", path=path, fix=_fix(folder))
    for column in [c for c in (*required, *optional) if c in frame.columns and c != "uid"]:
        values = pd.to_numeric(frame[column], errors="coerce")
        if (values.isna() & frame[column].notna()).any():
            raise EvcfError(f"column {column!r} has non-numeric values", path=path, fix=_fix(folder))
        frame[column] = values
    for column in optional:
        if column not in frame.columns:
            frame[column] = float("nan")
    return frame


def _read_per_user(folder: Path) -> pd.DataFrame:
    path = folder / "per_user.csv"
    frame = _read_csv(path, folder, _PER_USER_REQUIRED)
    if frame["uid"].duplicated().any():
        raise EvcfError("uid values repeat; expected one row per test user", path=path, fix=_fix(folder))
    values = frame[list(METRICS)]
    if values.isna().any().any() or ((values < 0) | (values > 1)).any().any():
        raise EvcfError("metric values must be numbers in [0, 1] for every user", path=path, fix=_fix(folder))
    return frame[list(_PER_USER_REQUIRED)]


def _read_history(folder: Path) -> pd.DataFrame:
    path = folder / "history.csv"
    frame = _read_csv(path, folder, _HISTORY_REQUIRED, _HISTORY_OPTIONAL)
    if frame["epoch"].isna().any():
        raise EvcfError("column 'epoch' has empty values", path=path, fix=_fix(folder))
    return frame[["epoch", "train_loss", "beta", "val_ndcg@100"]]


def _benchmark_seconds(benchmarks_dir: Path | None, dataset: str, model: str, seed: int,
                       reused_from: str | None = None) -> float | None:
    """Mean of the ``s`` column of Snakemake's benchmark TSV for this run, or None where unavailable.

    ``benchmarks_dir`` may be ``benchmarks/`` or ``benchmarks/train_model/``.  A run whose results
    were copied from its grid point (``reused_from``: ``results/tune/<d>/<m>/point-<k>``) took the
    point's job to train, not the copy's: the point's benchmark is used.
    """
    if benchmarks_dir is None:
        return None
    relative = Path(dataset, model, f"seed-{seed}.tsv")
    candidates = [benchmarks_dir / "train_model" / relative, benchmarks_dir / relative]
    if reused_from:
        point = Path(reused_from)
        candidates = [benchmarks_dir / "tune_point" / dataset / model / f"{point.name}.tsv"]
    for path in candidates:
        if path.is_file():
            break
    else:
        return None
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        seconds = pd.to_numeric(frame["s"], errors="coerce").dropna()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as exc:
        log.warning("%s: unreadable benchmark file (%s); using wall_seconds from metrics.json", path, exc)
        return None
    return float(seconds.mean()) if len(seconds) else None


def load_runs(runs: list[Path], benchmarks_dir: Path | None = None) -> RunData:
    """Read and validate every run folder; raises :class:`EvcfError` on the first bad one."""
    if not runs:
        raise EvcfError("no run folders given", fix="train at least one model before making the report")
    run_rows, histories, per_users = [], [], []
    seen: dict[tuple[str, str, int], Path] = {}
    for folder in map(Path, runs):
        metrics = _read_metrics(folder)
        history = _read_history(folder)
        per_user = _read_per_user(folder)
        dataset, raw_model, seed = metrics["dataset"], metrics["model"], metrics["seed"]
        model = canonical_model(raw_model)
        key = (dataset, model, seed)
        if key in seen:
            raise EvcfError(f"same dataset/model/seed {dataset}/{model}/{seed} as {seen[key]}",
                            path=folder / "metrics.json", fix="pass each run folder once")
        seen[key] = folder

        seconds = _benchmark_seconds(benchmarks_dir, dataset, raw_model, seed, metrics.get("reused_from"))
        source = "benchmark"
        if seconds is None:
            wall = metrics.get("wall_seconds")
            seconds, source = (float(wall), "wall_seconds") if _is_number(wall) else (float("nan"), "")
        tuning = metrics.get("tuning") or {}
        run_rows.append({"dataset": dataset, "model": model, "seed": seed,
                         **{m: float(metrics[m]) for m in METRICS},
                         # the run's standard error over its test users (the verdict of a single run)
                         **{f"{m}_se": float(metrics[f"{m}_se"]) if _is_number(metrics.get(f"{m}_se"))
                            else float("nan") for m in METRICS},
                         "train_seconds": seconds, "time_source": source, "path": str(folder),
                         "setting_source": tuning.get("source", "as given"),
                         # (issue 18) which search chose it, and the dataset it was searched on
                         "search": tuning.get("search", ""), "tuned_on": tuning.get("tuned_on", ""),
                         "setting": json.dumps(tuning.get("setting", {}), sort_keys=True),
                         # a model's own search inside the run (WMF, SLIM, CDAE, EASE): its pick
                         "in_run_selected": json.dumps((metrics.get("in_run_search") or {}).get("selected"),
                                                       sort_keys=True),
                         "in_run_tried": (metrics.get("in_run_search") or {}).get("settings_tried"),
                         # (issue 19) values typed on the command line, credited as such in the table
                         "command_line": _command_line(metrics)})
        ids = {"dataset": dataset, "model": model, "seed": seed}
        histories.append(history.assign(**ids))
        per_users.append(per_user.assign(**ids))
    return RunData(
        runs=pd.DataFrame(run_rows),
        history=pd.concat(histories, ignore_index=True)[
            ["dataset", "model", "seed", "epoch", "train_loss", "beta", "val_ndcg@100"]],
        per_user=pd.concat(per_users, ignore_index=True)[["dataset", "model", "seed", *_PER_USER_REQUIRED]],
    )


def _summary(runs: pd.DataFrame) -> dict:
    summary: dict = {}
    for dataset in order_datasets(runs["dataset"].unique()):
        ds = runs[runs["dataset"] == dataset]
        summary[dataset] = {
            model: {**{m: float(ds.loc[ds["model"] == model, m].mean()) for m in METRICS},
                    "n_seeds": int((ds["model"] == model).sum())}
            for model in order_models(ds["model"].unique())
        }
    return summary


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def make_report(runs: list[Path], out_dir: Path, *, benchmarks_dir: Path | None = None,
                reference: str = "mult-vae", tolerance: dict | None = None) -> dict[str, Path]:
    """Write Table 1, significance tests, plots and summary metrics for ``runs`` into ``out_dir``.

    ``tolerance``: the reproduction verdicts' δ, ``{dataset: number}`` or ``{dataset: {metric: number}}``
    (params.yaml ``report.tolerance``, passed by ``evcf report --tolerance``); without one, no cell with a
    published value is settled.

    Returns a mapping from each output's path relative to ``out_dir`` (e.g. ``"table1.md"``,
    ``"plots/metrics_ml-20m.png"``) to its path.  All inputs are validated before anything is written;
    a bad run raises :class:`~evcf.errors.EvcfError` and leaves ``out_dir`` untouched.
    """
    out_dir = Path(out_dir)
    data = load_runs(runs, None if benchmarks_dir is None else Path(benchmarks_dir))
    published = load_published()
    reference = canonical_model(reference)

    averaged = average_over_seeds(data.per_user)
    significance = significance_table(averaged, reference)
    if significance.empty:
        log.warning("reference model %r has no runs next to another model; significance.csv has a "
                    "header only and the table has no significance marks", reference)
    table = build_table(data.runs, significance, published, tolerance)
    claims = claims_table(data.per_user, paper_rows=PAPER_ROWS)

    outputs: dict[str, bytes] = {
        "table1.md": (render_markdown(table, reference, claims, data.runs)
                      + render_settings_markdown(data.runs)).encode("utf-8"),
        "table1.csv": _csv(table),
        "table1.tex": render_latex(table, reference).encode("utf-8"),
        "table1.html": render_html(table, reference, claims, data.runs).encode("utf-8"),
        "significance.csv": _csv(significance if not significance.empty
                                 else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)),
        "claims.csv": _csv(claims if not claims.empty else pd.DataFrame(columns=CLAIM_COLUMNS)),
        "summary.json": (json.dumps(_summary(data.runs), indent=2) + "\n").encode("utf-8"),
    }
    for dataset in order_datasets(data.runs["dataset"].unique()):
        figures = {
            "metrics": plots.metrics_plot(dataset, table),
            "learning_curves": plots.learning_curves_plot(dataset, data.history),
            "per_user_ndcg": plots.per_user_plot(dataset, averaged),
            "train_time": plots.train_time_plot(dataset, data.runs),
        }
        for stem, (png, frame) in figures.items():
            outputs[f"plots/{stem}_{dataset}.png"] = png
            outputs[f"plots/{stem}_{dataset}.csv"] = _csv(frame)

    written: dict[str, Path] = {}
    for name, payload in outputs.items():
        path = out_dir / name
        write_atomic(path, payload)
        written[name] = path
    log.info("report: %d runs, %d datasets, %d files written to %s", len(data.runs),
             data.runs["dataset"].nunique(), len(written), out_dir)
    return written
