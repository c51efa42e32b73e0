"""Per-dataset figures of the report, each with the data behind it as a DVC-plottable frame.

Every function returns ``(png_bytes, frame)``: the figure rendered with the Agg canvas (no pyplot, so
no global backend state) and the tidy table it was drawn from — one row per x point, named columns —
which the caller writes next to it as ``<stem>.csv``.  A dataset without data for a figure still gets
one (with a note), so the set of output files depends only on the datasets.

Conventions shared by the figures: every model has one colour in every figure (:func:`model_color`);
the number of seeds behind each model is printed under its name (``n=3``) and in the title when all
models share it; legends sit outside the axes, so they never cover data.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pandas as pd
from matplotlib import cbook
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from evcf.models import model_entry
from evcf.report.rows import METRIC_LABELS, canonical_model, dataset_label, model_label, order_models
from evcf.report.stats import METRICS

__all__ = ["DPI", "model_color", "metrics_plot", "learning_curves_plot", "per_user_plot",
           "train_time_plot"]

DPI = 120

METRICS_COLUMNS = ["model", "label", "metric", "mean", "std", "n", "published", "published_source"]
CURVE_COLUMNS = ["epoch", "model", "label", "val_ndcg@100", "val_ndcg@100_min", "val_ndcg@100_max",
                 "beta", "train_loss", "n_seeds"]
PER_USER_COLUMNS = ["model", "label", "n_seeds", "n_users", "mean", "q1", "median", "q3",
                    "whisker_low", "whisker_high", "min", "max"]
TIME_COLUMNS = ["model", "label", "mean_seconds", "std_seconds", "n", "source", "measures"]

# What each source of a run's time measures (evcf/report/__init__.py picks the benchmark when it exists).
TIME_MEASURES = {
    # Snakemake's benchmark file of the train_model job: the process from start to exit
    "benchmark": "the whole job: Python and torch start-up, data loading, training with validation, "
                 "test evaluation, writing the results (Snakemake's benchmark)",
    # evcf.training.run(): perf_counter from the start of run() to just before metrics.json is written;
    # the split is loaded before run() is called (evcf/cli.py cmd_train), and a resumed run counts only
    # the execution that finished it.  It is the time `evcf train` prints on its "ok:" line.
    "wall_seconds": "training only: model building, training with validation and test evaluation, without "
                    "start-up or data loading (metrics.json wall_seconds, the time evcf train prints; after a "
                    "resume, the last execution only)",
}
_TIME_SHORT = {"benchmark": "the whole job", "wall_seconds": "training only"}
_TIME_DETAIL = {"benchmark": "the whole job = Snakemake's benchmark (start-up, data loading, training, test)",
                "wall_seconds": "training only = metrics.json wall_seconds, the time evcf train prints "
                                "(training and test, no start-up or data loading)"}

# A model's colour is its class's ``colour`` (evcf/models); a model without one takes one of these by name.
_OTHER_COLORS = ["#1b9e77", "#e6ab02", "#a6761d", "#000000", "#66a61e", "#b15928"]
_METRIC_COLORS = {"recall@20": "#4c72b0", "recall@50": "#dd8452", "ndcg@100": "#55a868"}


def model_color(model: str) -> str:
    """The colour of ``model`` in every figure: its class's ``colour``, or one chosen by name for a model
    without one."""
    entry = model_entry(canonical_model(model))
    return entry.colour if entry and entry.colour else _OTHER_COLORS[sum(map(ord, model)) % len(_OTHER_COLORS)]


def _figure(n_models: int, *, height: float = 4.8, min_width: float = 7.0) -> Figure:
    fig = Figure(figsize=(max(min_width, 1.0 * n_models + 2.5), height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _tick_label(model: str, n: int) -> str:
    """``Mult-VAE\nn=3``; a "(Gated)" suffix goes on its own line to keep the labels narrow."""
    return f"{model_label(model).replace(' (', chr(10) + '(')}\nn={n}"


def _titles(fig: Figure, ax, main: str, detail: str = "") -> None:
    """The figure's title, with a smaller line of detail (what the marks mean, n) under it."""
    # wrapped to the axes' width too: a long dataset label ("Synthetic (generated, no published values)")
    # would otherwise run into the legend beside the axes
    fig.suptitle(textwrap.fill(main, max(30, int((fig.get_figwidth() - 3.2) * 9))), fontsize="large")
    if detail:  # wrapped to about the axes' width (the figure less the legend and the y label)
        chars = max(40, int((fig.get_figwidth() - 3.2) * 15))
        ax.set_title(textwrap.fill(detail, chars), fontsize="small", color="#444444")


def _error_bars(ax, x, means, stds, ns) -> None:
    """± std bars where there is more than one seed; none at all (not even a cap) for n = 1."""
    x, means, stds = (np.asarray(v, dtype=float) for v in (x, means, stds))
    keep = (np.asarray(ns) > 1) & np.isfinite(stds)
    if keep.any():
        ax.errorbar(x[keep], means[keep], yerr=stds[keep], fmt="none", ecolor="#333333",
                    elinewidth=1, capsize=3, zorder=3)


def _seeds_phrase(counts) -> str:
    """``"3 seeds each"`` when every model has the same count, else ``"n seeds per model"``."""
    counts = {int(c) for c in counts}
    if len(counts) == 1:
        n = counts.pop()
        return f"{n} seed{'s' if n != 1 else ''} each"
    return "n under each name"


def metrics_plot(dataset: str, table: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Grouped bars (one group per model, one bar per metric): mean ± std over seeds.

    Published values (``published.yaml``) are drawn as a black bar across the top of the matching
    bar.  ``table`` is :func:`evcf.report.table.build_table`'s frame.
    """
    ours = table[table["dataset"] == dataset]
    models = order_models(ours["model"].unique())
    frame = (ours.assign(model=pd.Categorical(ours["model"], models, ordered=True),
                         metric=pd.Categorical(ours["metric"], METRICS, ordered=True))
             .sort_values(["model", "metric"])[METRICS_COLUMNS])
    frame = frame.astype({"model": str, "metric": str}).reset_index(drop=True)

    fig = _figure(len(models))
    ax = fig.subplots()
    title, detail = f"{dataset_label(dataset)}: test metrics", ""
    if frame.empty:
        _no_data(ax, "runs")
    else:
        width = 0.8 / len(METRICS)
        x = np.arange(len(models))
        n_per_model = frame.groupby("model", sort=False)["n"].first().reindex(models)
        handles = []
        for j, metric in enumerate(METRICS):
            part = frame[frame["metric"] == metric].set_index("model").reindex(models)
            pos = x + (j - 1) * width
            ax.bar(pos, part["mean"], width * 0.95, color=_METRIC_COLORS[metric])
            _error_bars(ax, pos, part["mean"], part["std"], part["n"])
            handles.append(Patch(color=_METRIC_COLORS[metric], label=METRIC_LABELS[metric]))
            known = part["published"].notna().to_numpy()
            if known.any():
                ax.hlines(part["published"].to_numpy()[known], pos[known] - width / 2,
                          pos[known] + width / 2, colors="black", linewidths=2.5, zorder=4)
        if frame["published"].notna().any():
            handles.append(Line2D([], [], color="black", linewidth=2.5,
                                  label="published (see Table 1)"))
        ax.set_xticks(x, [_tick_label(m, n) for m, n in n_per_model.items()])
        ax.set_ylabel("test metric")
        ax.set_ylim(0, max(frame["mean"].max() + frame["std"].fillna(0).max(),
                           frame["published"].max() if frame["published"].notna().any() else 0) * 1.1)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
        detail = f"bars: mean ± std over seeds ({_seeds_phrase(n_per_model)}"
        detail += "; n=1: a single fit, no error bar)" if (n_per_model == 1).any() else ")"
        detail += ("; black line: published value" if frame["published"].notna().any()
                   else "; no published values for this dataset")
    _titles(fig, ax, title, detail)
    return _png(fig), frame


def learning_curves_plot(dataset: str, history: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Validation NDCG@100 per epoch of every iteratively trained model, and β in a panel below.

    The line is the mean over seeds, the band the range over seeds (an epoch counts the seeds that
    reached it: early stopping ends seeds at different epochs).  The lower panel draws the KL weight
    β of each model whose β is ever non-zero (Mult-DAE has none), in the model's colour.
    ``history`` is long (dataset, model, seed, epoch, train_loss, beta, val_ndcg@100).  Closed-form
    models (no train_loss in any row) are left out.
    """
    h = history[history["dataset"] == dataset]
    iterative = h.groupby("model")["train_loss"].apply(lambda s: s.notna().any())
    models = order_models(iterative[iterative].index)
    h = h[h["model"].isin(models)]
    grouped = h.groupby(["model", "epoch"], sort=True)
    frame = grouped[["val_ndcg@100", "beta", "train_loss"]].mean()
    frame["val_ndcg@100_min"] = grouped["val_ndcg@100"].min()
    frame["val_ndcg@100_max"] = grouped["val_ndcg@100"].max()
    frame["n_seeds"] = grouped["seed"].nunique()
    frame = frame.reset_index()
    frame["label"] = frame["model"].map(model_label)
    frame["model"] = pd.Categorical(frame["model"], models, ordered=True)
    frame = frame.sort_values(["model", "epoch"]).astype({"model": str})[CURVE_COLUMNS]
    frame = frame.reset_index(drop=True)

    title = f"{dataset_label(dataset)}: learning curves"
    if frame.empty:
        fig = _figure(4)
        ax = fig.subplots()
        _no_data(ax, "iteratively trained models")
        _titles(fig, ax, title)
        return _png(fig), frame

    with_beta = [m for m in models
                 if frame.loc[frame["model"] == m, "beta"].fillna(0.0).abs().gt(0).any()]
    fig = _figure(4, height=5.8 if with_beta else 4.6, min_width=8.5)
    if with_beta:
        ax, beta_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        ax, beta_ax = fig.subplots(), None
    seeds = h.groupby("model")["seed"].nunique()
    for model in models:
        part = frame[frame["model"] == model]
        color = model_color(model)
        ax.plot(part["epoch"], part["val_ndcg@100"], color=color, linewidth=1.6,
                label=f"{model_label(model)} (n={seeds[model]})")
        if seeds[model] > 1:
            ax.fill_between(part["epoch"], part["val_ndcg@100_min"], part["val_ndcg@100_max"],
                            color=color, alpha=0.15, linewidth=0)
    if beta_ax is not None:
        _plot_betas(beta_ax, frame, with_beta)
    ax.set_ylabel("validation NDCG@100")
    ax.grid(alpha=0.3)
    if beta_ax is not None:
        beta_ax.set_ylabel("KL weight β")
        beta_ax.set_xlabel("epoch")
        beta_ax.set_ylim(bottom=0)
        beta_ax.grid(alpha=0.3)
    else:
        ax.set_xlabel("epoch")
    handles, labels = ax.get_legend_handles_labels()
    if (seeds > 1).any():
        handles.append(Patch(color="#999999", alpha=0.3, label="range over seeds"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    _titles(fig, ax, title, "line: mean over seeds; band: range over seeds"
            + ("; lower panel: KL weight β" if beta_ax is not None else ""))
    return _png(fig), frame


def _plot_betas(ax, frame: pd.DataFrame, models: list[str]) -> None:
    """β per epoch of each model; models with the same schedule share one line, drawn dashed in
    alternating colours so that each of them stays visible."""
    groups: dict[tuple, list[str]] = {}
    for model in models:
        part = frame[frame["model"] == model]
        key = tuple(zip(part["epoch"], part["beta"].round(9).fillna(-1.0)))
        groups.setdefault(key, []).append(model)
    for same in groups.values():
        g = len(same)
        for i, model in enumerate(same):
            part = frame[frame["model"] == model]
            style = "-" if g == 1 else (4.0 * i, (4.0, 4.0 * (g - 1)))
            ax.plot(part["epoch"], part["beta"], color=model_color(model), linewidth=1.4,
                    linestyle=style)


def per_user_plot(dataset: str, averaged: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Box plot of per-user test NDCG@100 (averaged over seeds) per model; the mean as a marker.

    ``averaged`` is :func:`evcf.report.stats.average_over_seeds`'s frame.  The CSV holds the box
    statistics (matplotlib's: whiskers at the furthest data within 1.5 IQR) rather than every user.
    """
    a = averaged[averaged["dataset"] == dataset]
    models = order_models(a["model"].unique())
    box_stats, rows = [], []
    for model in models:
        part = a[a["model"] == model]
        values = part["ndcg@100"].to_numpy(dtype=float)
        n_seeds = int(part["n_seeds"].max())
        s = cbook.boxplot_stats(values)[0]
        s["label"] = _tick_label(model, n_seeds)
        box_stats.append(s)
        rows.append({"model": model, "label": model_label(model), "n_seeds": n_seeds,
                     "n_users": values.size, "mean": s["mean"], "q1": s["q1"], "median": s["med"],
                     "q3": s["q3"], "whisker_low": s["whislo"], "whisker_high": s["whishi"],
                     "min": values.min(), "max": values.max()})
    frame = pd.DataFrame(rows, columns=PER_USER_COLUMNS)

    fig = _figure(len(models))
    ax = fig.subplots()
    title, detail = f"{dataset_label(dataset)}: per-user test NDCG@100", ""
    if not box_stats:
        _no_data(ax, "per-user results")
    else:
        boxes = ax.bxp(box_stats, showmeans=True, patch_artist=True,
                       flierprops={"markersize": 2, "alpha": 0.3},
                       medianprops={"color": "black", "linewidth": 1.5},
                       meanprops={"marker": "D", "markerfacecolor": "white",
                                  "markeredgecolor": "black", "markersize": 5})
        for patch, model in zip(boxes["boxes"], models):
            patch.set_facecolor(model_color(model))
            patch.set_alpha(0.55)
        ax.set_ylabel("per-user NDCG@100 (mean over seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        handles = [Line2D([], [], color="black", linewidth=1.5, label="median"),
                   Line2D([], [], marker="D", linestyle="", markerfacecolor="white",
                          markeredgecolor="black", label="mean"),
                   Patch(facecolor="#bbbbbb", edgecolor="black", label="quartiles"),
                   Line2D([], [], color="black", linewidth=1, label="whiskers: 1.5 IQR")]
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
        users = sorted(set(frame["n_users"]))
        n_users = f"{users[0]:,} test users" if len(users) == 1 else "test users"
        detail = (f"one value per user ({n_users}), averaged over seeds "
                  f"({_seeds_phrase(frame['n_seeds'])})")
    _titles(fig, ax, title, detail)
    return _png(fig), frame


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def train_time_plot(dataset: str, runs: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Time per run per model, mean ± std over seeds, each bar labelled with its mean.

    ``runs`` has one row per run with ``train_seconds`` and ``time_source`` (``benchmark`` for
    Snakemake's benchmark ``s`` column, ``wall_seconds`` for metrics.json's): the two measure different
    things (:data:`TIME_MEASURES`), and the title and the frame's ``measures`` say which.
    """
    r = runs[runs["dataset"] == dataset]
    models = order_models(r["model"].unique())
    rows = []
    for model in models:
        part = r[r["model"] == model]
        seconds = part["train_seconds"].dropna()
        rows.append({
            "model": model, "label": model_label(model),
            "mean_seconds": seconds.mean() if len(seconds) else np.nan,
            "std_seconds": seconds.std(ddof=1) if len(seconds) > 1 else np.nan,
            "n": len(seconds),
            "source": "+".join(sorted(part.loc[part["train_seconds"].notna(), "time_source"].unique())),
        })
        sources = rows[-1]["source"].split("+")
        rows[-1]["measures"] = (TIME_MEASURES.get(sources[0], sources[0]) if len(sources) == 1
                                else "mixed: " + " / ".join(_TIME_SHORT.get(x, x) for x in sources))
    frame = pd.DataFrame(rows, columns=TIME_COLUMNS)

    fig = _figure(len(models))
    ax = fig.subplots()
    sources = sorted({x for part in frame["source"] for x in part.split("+") if x})
    what = _TIME_SHORT.get(sources[0], sources[0]) if len(sources) == 1 else "mixed sources"
    title, detail = f"{dataset_label(dataset)}: time per run ({what})", ""
    if frame["n"].sum() == 0:
        _no_data(ax, "timings")
    else:
        x = np.arange(len(models))
        means = frame["mean_seconds"].to_numpy(dtype=float)
        ax.bar(x, np.nan_to_num(means), color=[model_color(m) for m in models], alpha=0.8)
        _error_bars(ax, x, means, frame["std_seconds"], frame["n"])
        ax.set_xticks(x, [_tick_label(m, n) for m, n in zip(models, frame["n"])])
        positive = frame["mean_seconds"][frame["mean_seconds"] > 0]
        log_scale = len(positive) > 1 and positive.max() / positive.min() > 100
        if log_scale:  # closed form vs. hours of VAE training
            ax.set_yscale("log")
        ax.set_ylabel("seconds per run" + (" (log scale)" if log_scale else ""))
        tops = means + frame["std_seconds"].fillna(0.0).to_numpy()
        ax.set_ylim(top=np.nanmax(tops) * (4.0 if log_scale else 1.15))
        for xi, mean, top, source in zip(x, means, tops, frame["source"]):
            if np.isfinite(mean) and mean > 0:  # the label sits above the error bar
                text = _duration(mean) + (f"\n{' + '.join(_TIME_SHORT.get(p, p) for p in source.split('+'))}"
                                          if len(sources) > 1 else "")
                ax.annotate(text, (xi, top), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        detail = (f"mean ± std over seeds ({_seeds_phrase(frame.loc[frame['n'] > 0, 'n'])}); measured: "
                  + "; ".join(_TIME_DETAIL.get(x, x) for x in sources))
    _titles(fig, ax, title, detail)
    return _png(fig), frame
