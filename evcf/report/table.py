"""Table 1 of Kim & Suh (2019), regenerated from our runs: layout, then Markdown, CSV and LaTeX.

:func:`build_table` turns the per-run metrics into a tidy frame with one row per
(table row, dataset, metric) — ours (mean, sample std over seeds, n), the published value where
``published.py`` has one, the difference, the best-in-column flag and the significance against the
reference model.  That frame is ``table1.csv``; :func:`render_markdown` and :func:`render_latex` only
format it.

Row order follows the paper: WMF, SLIM, CDAE (numbers the paper copied from Liang et al. 2018; we
don't run them), Mult-DAE, Mult-VAE, Mult-VAE (Gated), Vamp, H+Vamp, H+Vamp (Gated); then, after a
separator, our additional baselines (Popularity, EASE, then any other model names, sorted).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from evcf.report.published import published_value
from evcf.report.stats import METRICS

__all__ = [
    "METRIC_LABELS",
    "TABLE_COLUMNS",
    "SIGNIFICANCE_LEVEL",
    "canonical_model",
    "model_label",
    "dataset_label",
    "order_datasets",
    "order_models",
    "aggregate",
    "build_table",
    "render_markdown",
    "render_latex",
]

SIGNIFICANCE_LEVEL = 0.05  # Holm-corrected Wilcoxon p below this gets the mark
MARK = "†"

METRIC_LABELS = {"recall@20": "Recall@20", "recall@50": "Recall@50", "ndcg@100": "NDCG@100"}

_DATASET_LABELS = {
    "ml-20m": "ML-20M",
    "netflix": "Netflix",
    "ml-1m": "ML-1M",
    "ml-100k": "ML-100K",
    "synthetic": "Synthetic",
}
_DATASET_FIRST = ("ml-20m", "netflix")  # the paper's column order; other datasets follow, sorted

# Rows the paper shows with numbers copied from Liang et al. (2018); we do not implement these models.
_CITED = {"wmf": "WMF", "slim": "SLIM", "cdae": "CDAE"}
_CITED_DATASETS = ("ml-20m", "netflix")
CITED_TEXT = "cited, Liang et al. 2018"

_PAPER = {
    "mult-dae": "Mult-DAE",
    "mult-vae": "Mult-VAE",
    "mult-vae-gated": "Mult-VAE (Gated)",
    "vamp": "Vamp",
    "hvamp": "H+Vamp",
    "hvamp-gated": "H+Vamp (Gated)",
}
_EXTRA = {"popularity": "Popularity", "ease": "EASE"}
_ALIASES = {"h-vamp": "hvamp", "h-vamp-gated": "hvamp-gated"}  # spellings used in some configs

SEPARATOR_TEXT = "additional baselines (not in the paper)"

TABLE_COLUMNS = [
    "row_order",
    "section",  # cited | paper | extra
    "model",
    "label",
    "dataset",
    "metric",
    "status",  # ours | cited | no runs
    "mean",
    "std",
    "n",
    "published",
    "published_source",
    "diff",
    "best",
    "wilcoxon_p_holm",
    "ttest_p_holm",
    "significant",
]


def canonical_model(name: str) -> str:
    """The registry name used for display and published look-ups (``h-vamp-gated`` → ``hvamp-gated``)."""
    return _ALIASES.get(name, name)


def model_label(name: str) -> str:
    """Display name of a model: ``mult-vae`` → ``Mult-VAE``; unknown names are shown as they are."""
    name = canonical_model(name)
    return _CITED.get(name) or _PAPER.get(name) or _EXTRA.get(name) or name


def dataset_label(name: str) -> str:
    """Display name of a dataset: ``ml-20m`` → ``ML-20M``; unknown names are shown as they are."""
    return _DATASET_LABELS.get(name, name)


def order_datasets(names) -> list[str]:
    """ML-20M first, Netflix second, then the others sorted."""
    names = set(names)
    return [d for d in _DATASET_FIRST if d in names] + sorted(names - set(_DATASET_FIRST))


def order_models(names) -> list[str]:
    """Paper models in the paper's order, then Popularity, EASE, then unknown names sorted."""
    names = set(names)
    known = [*_CITED, *_PAPER, *_EXTRA]
    return [m for m in known if m in names] + sorted(names - set(known))


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and n of each metric per dataset × model.

    ``runs`` has one row per run with columns dataset, model, seed and the metrics.
    """
    long = runs.melt(id_vars=["dataset", "model", "seed"], value_vars=list(METRICS),
                     var_name="metric", value_name="value")
    grouped = long.groupby(["dataset", "model", "metric"], sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return out.reset_index()


def build_table(runs: pd.DataFrame, significance: pd.DataFrame | None = None) -> pd.DataFrame:
    """The tidy Table 1: one row per (table row, dataset, metric), columns TABLE_COLUMNS.

    Paper and cited rows are always present; extra rows only for models with at least one run.
    ``significance`` is :func:`evcf.report.stats.significance_table`'s output (may be None/empty).
    """
    stats = aggregate(runs).set_index(["dataset", "model", "metric"])
    datasets = order_datasets(runs["dataset"].unique())
    run_models = set(runs["model"].unique())
    extra = [m for m in order_models(run_models) if m not in _CITED and m not in _PAPER]
    rows_spec = ([(m, "cited") for m in _CITED] + [(m, "paper") for m in _PAPER]
                 + [(m, "extra") for m in extra])

    sig: dict[tuple[str, str, str], tuple[float, float]] = {}
    if significance is not None and not significance.empty:
        for rec in significance.itertuples(index=False):
            sig[(rec.dataset, rec.model, rec.metric)] = (rec.wilcoxon_p_holm, rec.ttest_p_holm)

    records = []
    for order, (model, section) in enumerate(rows_spec):
        for dataset in datasets:
            for metric in METRICS:
                pub = published_value(dataset, model, metric)
                rec = {
                    "row_order": order, "section": section, "model": model,
                    "label": model_label(model), "dataset": dataset, "metric": metric,
                    "status": "no runs", "mean": np.nan, "std": np.nan, "n": 0,
                    "published": pub.value if pub else np.nan,
                    "published_source": pub.source if pub else "",
                    "diff": np.nan, "best": False,
                    "wilcoxon_p_holm": np.nan, "ttest_p_holm": np.nan, "significant": False,
                }
                if section == "cited" and dataset in _CITED_DATASETS:
                    rec["status"] = "cited"
                elif (dataset, model, metric) in stats.index:
                    s = stats.loc[(dataset, model, metric)]
                    rec.update(status="ours", mean=float(s["mean"]), std=float(s["std"]), n=int(s["n"]))
                    if pub:
                        rec["diff"] = rec["mean"] - pub.value
                    p_w, p_t = sig.get((dataset, model, metric), (np.nan, np.nan))
                    rec.update(wilcoxon_p_holm=p_w, ttest_p_holm=p_t,
                               significant=bool(p_w < SIGNIFICANCE_LEVEL))
                records.append(rec)
    table = pd.DataFrame(records, columns=TABLE_COLUMNS)
    ours = table["status"] == "ours"
    best = table[ours].groupby(["dataset", "metric"])["mean"].transform("max")
    table.loc[ours, "best"] = table.loc[ours, "mean"] >= best - 1e-12
    table["best"] = table["best"].astype(bool)
    return table


# --- formatting ----------------------------------------------------------------------------------

def _fmt_published(value: float) -> str:
    """As printed in the source: at least three decimals, more only where the source has them."""
    text = f"{value:.5f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{max(3, decimals)}f}"


def _cells(rec, *, latex: bool) -> tuple[str, str, str]:
    """The (ours, published, difference) cells of one table record."""
    dash = "---" if latex else "—"
    if rec.status == "cited":
        return CITED_TEXT, "n/a", "n/a"
    if rec.status != "ours":
        return dash, dash, dash
    pm = r"$\pm$" if latex else "±"
    std = dash if math.isnan(rec.std) else f"{rec.std:.4f}"
    text = f"{rec.mean:.4f}"
    if rec.best:
        text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
    ours = f"{text} {pm} {std} (n={rec.n})"
    if rec.significant:
        ours += r"$^{\dagger}$" if latex else MARK
    if math.isnan(rec.published):
        return ours, "n/a", "n/a"
    diff = f"{rec.diff:+.4f}"
    if latex and diff.startswith("-"):
        diff = "$-$" + diff[1:]
    return ours, _fmt_published(rec.published), diff


def _footnotes(table: pd.DataFrame, reference: str, *, latex: bool) -> list[str]:
    sources = sorted({s for s in table["published_source"] if s})
    ref = model_label(reference)
    if table["wilcoxon_p_holm"].notna().any():
        marks = (f"{MARK} significantly different from {ref} (two-sided Wilcoxon signed-rank test over "
                 "test users, per-user values averaged over seeds, Holm-corrected within each "
                 f"dataset × metric, p < {SIGNIFICANCE_LEVEL}).")
    else:
        marks = f"No significance marks: {ref} has no runs on a dataset alongside another model."
    lines = [
        "ours: mean ± sample std (ddof=1) over seeds, n = number of seeds; best ours per column in bold.",
        "published: " + ("; ".join(sources) if sources else "none for these datasets")
        + "; n/a where no published value is available here. Δ = ours − published.",
        marks,
        f"WMF, SLIM, CDAE: not run here; the paper copies their numbers from Liang et al. (2018). "
        f"—: no runs of that model on that dataset.",
    ]
    if latex:
        lines = [_latex_escape(line) for line in lines]
    return lines


def _row_groups(table: pd.DataFrame):
    """(section, label, records by (dataset, metric)) for each table row, in order."""
    for _, group in table.groupby("row_order", sort=True):
        first = group.iloc[0]
        yield first["section"], first["label"], {
            (r.dataset, r.metric): r for r in group.itertuples(index=False)}


def render_markdown(table: pd.DataFrame, reference: str = "mult-vae") -> str:
    """Table 1 as a GitHub-flavoured Markdown table (via tabulate) plus footnote lines."""
    datasets = list(dict.fromkeys(table["dataset"]))
    headers = ["Model"]
    for dataset in datasets:
        for metric in METRICS:
            name = f"{dataset_label(dataset)} {METRIC_LABELS[metric]}"
            headers += [name, f"{name} published", f"{name} Δ"]
    rows: list[list[str]] = []
    previous = None
    for section, label, cells in _row_groups(table):
        if section == "extra" and previous != "extra":
            rows.append([f"*{SEPARATOR_TEXT}*"] + [""] * (len(headers) - 1))
        previous = section
        row = [label]
        for dataset in datasets:
            for metric in METRICS:
                row += list(_cells(cells[(dataset, metric)], latex=False))
        rows.append(row)
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    notes = _footnotes(table, reference, latex=False)
    return "# Table 1 (regenerated)\n\n" + body + "\n\n" + "\n".join(f"{n}  " for n in notes) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "×": r"$\times$", "—": "---",
    MARK: r"$^{\dagger}$", "<": r"$<$", ">": r"$>$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: pd.DataFrame, reference: str = "mult-vae") -> str:
    """Table 1 as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``) with footnotes below."""
    datasets = list(dict.fromkeys(table["dataset"]))
    n_cols = 1 + 9 * len(datasets)
    lines = [
        "% Table 1 (regenerated) -- written by evcf.report; needs \\usepackage{booktabs}",
        r"\begin{tabular}{l" + "rrr" * 3 * len(datasets) + "}",
        r"\toprule",
    ]
    top, top_rules, mid, mid_rules = ["Model"], [], [""], []
    for i, dataset in enumerate(datasets):
        start = 2 + 9 * i
        top.append(rf"\multicolumn{{9}}{{c}}{{{_latex_escape(dataset_label(dataset))}}}")
        top_rules.append(rf"\cmidrule(lr){{{start}-{start + 8}}}")
        for j, metric in enumerate(METRICS):
            s = start + 3 * j
            mid.append(rf"\multicolumn{{3}}{{c}}{{{METRIC_LABELS[metric]}}}")
            mid_rules.append(rf"\cmidrule(lr){{{s}-{s + 2}}}")
    lines += [" & ".join(top) + r" \\", " ".join(top_rules),
              " & ".join(mid) + r" \\", " ".join(mid_rules),
              " & ".join([""] + ["ours", "published", r"$\Delta$"] * 3 * len(datasets)) + r" \\",
              r"\midrule"]
    previous = None
    for section, label, cells in _row_groups(table):
        if section == "extra" and previous != "extra":
            lines += [r"\midrule",
                      rf"\multicolumn{{{n_cols}}}{{l}}{{\emph{{{_latex_escape(SEPARATOR_TEXT)}}}}} \\"]
        previous = section
        row = [_latex_escape(label)]
        for dataset in datasets:
            for metric in METRICS:
                ours, pub, diff = _cells(cells[(dataset, metric)], latex=True)
                if cells[(dataset, metric)].status == "cited":
                    ours = _latex_escape(ours)
                row += [ours, pub, diff]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", r"{\footnotesize"]
    lines += [line + r"\\" for line in _footnotes(table, reference, latex=True)]
    lines += ["}", ""]
    return "\n".join(lines)
