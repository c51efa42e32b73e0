"""The plan as people read it (``evcf plan``'s output)."""

from __future__ import annotations

from typing import Any

from ..tuning import tuning_mode
from .cost import GIB, WIDTH, Row

__all__ = ["format_plan"]


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


def format_plan(config: dict[str, Any], rows: list[Row], *, device: str, params: str, figures_dir: str,
                measured: list[tuple[str, float, float, str]] | None = None,
                measured_cpu: float | None = None) -> str:
    """The plan as people read it: a table within 120 columns (long notes become numbered
    footnotes under it), hours in one unit per column, totals in hours and days."""
    import textwrap

    from ..bench.table import columns

    mode = tuning_mode(config)
    other = {"full": "halving", "halving": "full"}.get(mode or "")
    footnotes: list[str] = []
    # one unit for both time columns: minutes when every row takes less than an hour (the quick start)
    largest = max((h for r in rows for h in r.hours.values() if h is not None), default=0.0)
    unit, per_hour = ("min", 60) if largest < 1 else ("h", 1)

    def refs(row: Row) -> str:
        marks = []
        bound = _hours(row, mode) if not row.bound_hours else row.bound_hours.get(mode)
        extra = [f"{row.model}: at most {_fmt_h(bound, per_hour)} {unit} at the bound"] if row.bound_hours else []
        for note in row.notes + extra:
            if note not in footnotes:
                footnotes.append(note)
            marks.append(str(footnotes.index(note) + 1))
        return ",".join(marks)

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
    trained, copied = sum(r.table_jobs for r in rows), sum(r.copied_jobs for r in rows)
    lines.append(f"jobs: {sum(r.search_jobs for r in rows)} search ({'tune_rung' if mode == 'halving' else 'tune_point'}), "
                 f"{trained + copied} Table 1 runs (train_model): {trained} trained, {copied} copied from the "
                 "search's winner (a searched row's first seed)")
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
              "epochs are upper bounds, and so are the hours of a run with patience unless a recorded run of its "
              "dataset says how soon early stopping ended it (its note says so)"]
    if measured:
        share = f"{measured_cpu:.0f}%" if measured_cpu is not None else "an unknown share"
        lines += ["", f"measured: the recorded run ({', '.join(sorted({m[3] for m in measured}))}): each row's "
                  f"jobs as Snakemake timed them, beside this plan's estimate; its jobs used a median {share} of "
                  "a CPU (Snakemake's mean_load, which reads well below 100% even for a job alone on an idle "
                  "machine, and far lower beside other work)", ""]
        lines += columns([[key, _fmt_h(plan / 3600, per_hour), _fmt_h(seconds / 3600, per_hour),
                           f"{plan / seconds - 1:+.0%}"] for key, plan, seconds, _ in measured],
                         ["row", f"plan ({unit})", f"measured ({unit})", "plan vs measured"]).splitlines()
    # 120 columns: the table fits as it is; footnotes and sentences wrap (a footnote's later lines indented)
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False) if len(line) > WIDTH else line for line in lines)
