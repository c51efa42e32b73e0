"""Per-dataset figures of the report, each with the data behind it as a DVC-plottable frame.

Every function returns ``(png_bytes, frame)``: the figure rendered with the Agg canvas (no pyplot, so
no global backend state) and the tidy table it was drawn from — one row per x point, named columns —
which the caller writes next to it as ``<stem>.csv``.  A dataset without data for a figure still gets
one (with a note), so the set of output files depends only on the datasets.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib import cbook
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evcf.report.stats import METRICS
from evcf.report.table import METRIC_LABELS, dataset_label, model_label, order_models

__all__ = ["DPI", "metrics_plot", "learning_curves_plot", "per_user_plot", "train_time_plot"]

DPI = 120

METRICS_COLUMNS = ["model", "label", "metric", "mean", "std", "n", "published"]
CURVE_COLUMNS = ["epoch", "model", "label", "val_ndcg@100", "beta", "train_loss", "n_seeds"]
PER_USER_COLUMNS = ["model", "label", "n_users", "mean", "q1", "median", "q3",
                    "whisker_low", "whisker_high", "min", "max"]
TIME_COLUMNS = ["model", "label", "mean_seconds", "std_seconds", "n", "source"]


def _figure(n_models: int) -> tuple[Figure, object]:
    fig = Figure(figsize=(max(6.0, 1.1 * n_models + 2.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def metrics_plot(dataset: str, table: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Grouped bars (one group per model, one bar per metric): mean ± std over seeds, published as ◆.

    ``table`` is :func:`evcf.report.table.build_table`'s frame.
    """
    ours = table[(table["dataset"] == dataset) & (table["status"] == "ours")]
    models = order_models(ours["model"].unique())
    frame = (ours.assign(model=pd.Categorical(ours["model"], models, ordered=True),
                         metric=pd.Categorical(ours["metric"], METRICS, ordered=True))
             .sort_values(["model", "metric"])[METRICS_COLUMNS])
    frame = frame.astype({"model": str, "metric": str}).reset_index(drop=True)

    fig, ax = _figure(len(models))
    if frame.empty:
        _no_data(ax, "runs")
    else:
        width = 0.8 / len(METRICS)
        x = np.arange(len(models))
        labelled = False
        for j, metric in enumerate(METRICS):
            part = frame[frame["metric"] == metric].set_index("model").reindex(models)
            pos = x + (j - 1) * width
            ax.bar(pos, part["mean"], width, yerr=part["std"].fillna(0.0), capsize=3,
                   label=METRIC_LABELS[metric], color=f"C{j}")
            known = part["published"].notna().to_numpy()
            if known.any():
                ax.scatter(pos[known], part["published"].to_numpy()[known], marker="D", color="black",
                           zorder=3, s=18, label=None if labelled else "published")
                labelled = True
        ax.set_xticks(x, [model_label(m) for m in models], rotation=30, ha="right")
        ax.set_ylabel("test metric (mean ± std over seeds)")
        ax.legend(fontsize="small")
    ax.set_title(f"{dataset_label(dataset)}: test metrics")
    return _png(fig), frame


def learning_curves_plot(dataset: str, history: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Validation NDCG@100 per epoch (mean over seeds) of every iteratively trained model; β dashed.

    ``history`` is long (dataset, model, seed, epoch, train_loss, beta, val_ndcg@100).  Closed-form
    models (no train_loss in any row) are left out.
    """
    h = history[history["dataset"] == dataset]
    iterative = h.groupby("model")["train_loss"].apply(lambda s: s.notna().any())
    models = order_models(iterative[iterative].index)
    h = h[h["model"].isin(models)]
    grouped = h.groupby(["model", "epoch"], sort=True)
    frame = grouped[["val_ndcg@100", "beta", "train_loss"]].mean()
    frame["n_seeds"] = grouped["seed"].nunique()
    frame = frame.reset_index()
    frame["label"] = frame["model"].map(model_label)
    frame["model"] = pd.Categorical(frame["model"], models, ordered=True)
    frame = frame.sort_values(["model", "epoch"]).astype({"model": str})[CURVE_COLUMNS]
    frame = frame.reset_index(drop=True)

    fig, ax = _figure(4)
    if frame.empty:
        _no_data(ax, "iteratively trained models")
    else:
        beta_ax = None
        for i, model in enumerate(models):
            part = frame[frame["model"] == model]
            ax.plot(part["epoch"], part["val_ndcg@100"], color=f"C{i}", label=model_label(model))
            if part["beta"].notna().any():
                beta_ax = beta_ax or ax.twinx()
                beta_ax.plot(part["epoch"], part["beta"], color=f"C{i}", linestyle="--", alpha=0.6)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation NDCG@100 (mean over seeds)")
        if beta_ax is not None:
            beta_ax.set_ylabel("β (dashed)")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"{dataset_label(dataset)}: learning curves")
    return _png(fig), frame


def per_user_plot(dataset: str, averaged: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Box plot of per-user NDCG@100 (averaged over seeds) per model; the mean as a marker.

    ``averaged`` is :func:`evcf.report.stats.average_over_seeds`'s frame.  The CSV holds the box
    statistics (matplotlib's: whiskers at the furthest data within 1.5 IQR) rather than every user.
    """
    a = averaged[averaged["dataset"] == dataset]
    models = order_models(a["model"].unique())
    box_stats, rows = [], []
    for model in models:
        values = a.loc[a["model"] == model, "ndcg@100"].to_numpy(dtype=float)
        s = cbook.boxplot_stats(values)[0]
        s["label"] = model_label(model)
        box_stats.append(s)
        rows.append({"model": model, "label": s["label"], "n_users": values.size, "mean": s["mean"],
                     "q1": s["q1"], "median": s["med"], "q3": s["q3"], "whisker_low": s["whislo"],
                     "whisker_high": s["whishi"], "min": values.min(), "max": values.max()})
    frame = pd.DataFrame(rows, columns=PER_USER_COLUMNS)

    fig, ax = _figure(len(models))
    if not box_stats:
        _no_data(ax, "per-user results")
    else:
        ax.bxp(box_stats, showmeans=True, flierprops={"markersize": 2, "alpha": 0.3})
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_ylabel("per-user NDCG@100 (mean over seeds)")
    ax.set_title(f"{dataset_label(dataset)}: per-user NDCG@100")
    return _png(fig), frame


def train_time_plot(dataset: str, runs: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Training time per model, mean ± std over seeds.

    ``runs`` has one row per run with ``train_seconds`` and ``time_source`` (``benchmark`` for
    Snakemake's benchmark ``s`` column, ``wall_seconds`` for metrics.json's).
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
    frame = pd.DataFrame(rows, columns=TIME_COLUMNS)

    fig, ax = _figure(len(models))
    if frame["n"].sum() == 0:
        _no_data(ax, "timings")
    else:
        x = np.arange(len(models))
        ax.bar(x, frame["mean_seconds"].fillna(0.0), yerr=frame["std_seconds"].fillna(0.0), capsize=3)
        ax.set_xticks(x, frame["label"], rotation=30, ha="right")
        ax.set_ylabel("training time [s] (mean ± std over seeds)")
        positive = frame["mean_seconds"][frame["mean_seconds"] > 0]
        if len(positive) > 1 and positive.max() / positive.min() > 100:  # closed form vs. hours of VAE
            ax.set_yscale("log")
    ax.set_title(f"{dataset_label(dataset)}: training time")
    return _png(fig), frame
