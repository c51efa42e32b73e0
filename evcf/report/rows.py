"""Table 1's rows: what each row and dataset is called, their order, and the layout every renderer shares.

**Rows.**  A model's row is declared by its class (:mod:`evcf.models`, docs/extending.md): its
``label`` as printed, its ``section`` — ``paper`` for a row of Kim & Suh's Table 1, ``extra`` for a
row of ours beyond it — and its ``row`` within the section.  The table lists the paper's rows in the
paper's order (WMF, SLIM, CDAE, Mult-DAE, Mult-VAE, Mult-VAE (Gated), Vamp, H+Vamp, H+Vamp (Gated)),
then, below a rule, ours (the EVCF recipe's Mult-VAE, Popularity, EASE, RecVAE), then any other model
that ran (one no class declares, say), labelled with its name, in name order.  A model has cells on a
dataset only where it ran there: a dataset's table has no row for a model that did not run on it.

**Columns.**  The paper's datasets first (ML-20M, Netflix), then the others sorted; the metrics in
the order :data:`evcf.report.stats.METRICS` gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from evcf.models import MODEL_NAMES, model_entry

__all__ = [
    "SIGNIFICANCE_LEVEL",
    "MARK",
    "METRIC_LABELS",
    "PAPER_DATASETS",
    "PAPER_ROWS",
    "SEPARATOR_TEXT",
    "canonical_model",
    "model_label",
    "model_section",
    "dataset_label",
    "order_datasets",
    "order_models",
    "Row",
    "table_datasets",
    "table_rows",
    "needs_separator",
    "comparison_datasets",
    "comparison_rows",
    "without_published",
    "published_sources",
    "fmt_published",
    "fmt_diff",
    "ours_parts",
    "table_notes",
    "seeds_lines",
    "title",
]


SIGNIFICANCE_LEVEL = 0.05  # Holm-corrected Wilcoxon p below this gets the mark

MARK = "†"

METRIC_LABELS = {"recall@20": "Recall@20", "recall@50": "Recall@50", "ndcg@100": "NDCG@100"}

_DATASET_LABELS = {
    "ml-20m": "ML-20M",
    "netflix": "Netflix",
    "ml-1m": "ML-1M",
    "ml-100k": "ML-100K",
    "synthetic": "Synthetic (generated, no published values)",  # evcf/data/synthetic.py makes it
}

_DATASET_FIRST = ("ml-20m", "netflix")  # the paper's column order; other datasets follow, sorted

PAPER_DATASETS = _DATASET_FIRST  # the datasets the paper's claims are about

_ALIASES = {"h-vamp": "hvamp", "h-vamp-gated": "hvamp-gated"}  # spellings used in some configs

SEPARATOR_TEXT = "not in the paper's Table 1"


def canonical_model(name: str) -> str:
    """The registry name used for display and published look-ups (``h-vamp-gated`` → ``hvamp-gated``)."""
    return _ALIASES.get(name, name)


def model_label(name: str) -> str:
    """Display name of a model: its class's ``label`` (``mult-vae`` → ``Mult-VAE``); a name no class
    declares is shown as it is."""
    entry = model_entry(canonical_model(name))
    return entry.label if entry else name


def model_section(name: str) -> str:
    """Its class's ``section``: ``paper`` for a Table 1 row, ``extra`` for ours beyond it; ``other``
    for anything else."""
    entry = model_entry(canonical_model(name))
    return entry.section if entry else "other"


# the rows the headline claim is judged against (evcf.report.stats.claims_table), in the paper's order
PAPER_ROWS = tuple(name for name in MODEL_NAMES if model_section(name) == "paper")


def order_models(names) -> list[str]:
    """The paper's rows in the paper's order, then ours (each section by its classes' ``row``), then
    any other names sorted."""
    names = set(names)
    known = [m for m in MODEL_NAMES if model_section(m) != "other"]
    return [m for m in known if m in names] + sorted(names - set(known))


def dataset_label(name: str) -> str:
    """Display name of a dataset: ``ml-20m`` → ``ML-20M``; unknown names are shown as they are."""
    return _DATASET_LABELS.get(name, name)


def order_datasets(names) -> list[str]:
    """ML-20M first, Netflix second, then the others sorted."""
    names = set(names)
    return [d for d in _DATASET_FIRST if d in names] + sorted(names - set(_DATASET_FIRST))


# --- a table's rows, and the formatting every renderer shares -----------------------------------

@dataclass(frozen=True)
class Row:
    model: str
    label: str
    section: str
    cells: dict  # (dataset, metric) -> table record (namedtuple); absent where the model did not run


def table_datasets(table: pd.DataFrame) -> list[str]:
    return order_datasets(table["dataset"].unique())


def table_rows(table: pd.DataFrame, datasets: list[str] | None = None) -> list[Row]:
    """The table's rows in order, restricted to models that ran on one of ``datasets``."""
    part = table if datasets is None else table[table["dataset"].isin(datasets)]
    rows = []
    for _, group in part.groupby("row_order", sort=True):
        first = group.iloc[0]
        rows.append(Row(first["model"], first["label"], first["section"],
                        {(r.dataset, r.metric): r for r in group.itertuples(index=False)}))
    return rows


def needs_separator(rows: list[Row], i: int) -> bool:
    """True before the first row outside the paper's Table 1 (when the table has paper rows)."""
    return rows[i].section != "paper" and (i == 0 or rows[i - 1].section == "paper") \
        and any(r.section == "paper" for r in rows)


def comparison_datasets(table: pd.DataFrame) -> list[str]:
    """Datasets where at least one model that ran has a published value, in table order."""
    with_pub = set(table.loc[table["published"].notna(), "dataset"])
    return [d for d in table_datasets(table) if d in with_pub]


def comparison_rows(table: pd.DataFrame, dataset: str) -> list[Row]:
    models = set(table.loc[(table["dataset"] == dataset) & table["published"].notna(), "model"])
    return [r for r in table_rows(table, [dataset]) if r.model in models]


def without_published(table: pd.DataFrame, dataset: str) -> list[str]:
    ds = table[table["dataset"] == dataset]
    have = set(ds.loc[ds["published"].notna(), "model"])
    return [r.label for r in table_rows(table, [dataset]) if r.model not in have]


def published_sources(table: pd.DataFrame, datasets: list[str]) -> list[str]:
    part = table[table["dataset"].isin(datasets)]
    return list(dict.fromkeys(s for s in part.sort_values("row_order")["published_source"] if s))


def fmt_published(value: float) -> str:
    """As printed in the source: at least three decimals, more only where the source has them."""
    text = f"{value:.5f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{max(3, decimals)}f}"


def fmt_diff(value: float) -> str:
    return f"{value:+.4f}"


def ours_parts(rec) -> tuple[str, str, str]:
    """(mean, spread, suffix) of one cell: ``"0.3185"``, ``"0.0036"`` or ``""`` for n = 1, ``"(n=3)"``."""
    spread = "" if rec.n < 2 or math.isnan(rec.std) else f"{rec.std:.4f}"
    return f"{rec.mean:.4f}", spread, f"(n={rec.n})"


def table_notes(table: pd.DataFrame, reference: str, *, grouped: bool = False) -> list[str]:
    """Plain-text notes under the table (each renderer escapes them for its format).

    ``grouped``: the renderer puts every dataset in one table (LaTeX, HTML), where a model that ran
    on some datasets only has "—" cells on the others.
    """
    ref = model_label(reference)
    notes = [
        "Ours: mean ± sample standard deviation (ddof = 1) over n seeds. A model fitted once "
        "(n = 1, the models whose fit does not depend on the seed) shows its value without ±. "
        "Bold: the best of our rows in the column. "
        + ("Only models that ran are listed." if grouped
           else "A dataset's table lists only the models that ran on it."),
    ]
    if table["wilcoxon_p_holm"].notna().any():
        notes.append(f"{MARK} significantly different from {ref} on the same dataset and metric: "
                     "two-sided Wilcoxon signed-rank test over the test users (per-user values "
                     "averaged over seeds), Holm-corrected within each dataset and metric, "
                     f"p < {SIGNIFICANCE_LEVEL}. Unmarked: no significant difference, or {ref} itself.")
    else:
        notes.append(f"No significance marks: {ref} has no runs on a dataset alongside another model.")
    if grouped and table.groupby("model")["dataset"].nunique().lt(table["dataset"].nunique()).any():
        notes.append("—: the model did not run on that dataset.")
    compared = comparison_datasets(table)
    if compared:
        notes.append("Published: the values in evcf/report/published.yaml, each from the paper and "
                     "table named in the Source column. Δ = ours − published.")
    else:
        notes.append("evcf/report/published.yaml has no published values for these datasets, "
                     "so there is no comparison with published results.")
    return notes


def seeds_lines(table: pd.DataFrame, dataset: str, runs: pd.DataFrame | None) -> list[str]:
    """Which seeds each row ran (from the runs), grouped: "Seeds 1, 2, 3: Mult-VAE, Vamp"."""
    if runs is None or runs.empty:
        return []
    here = runs[runs["dataset"] == dataset]
    groups: dict[tuple, list[str]] = {}
    for model in order_models(here["model"].unique()):
        seeds = tuple(sorted(here.loc[here["model"] == model, "seed"].astype(int)))
        groups.setdefault(seeds, []).append(model_label(model))
    parts = [f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
             f"{' (one run)' if len(seeds) == 1 else ''}: {', '.join(labels)}" for seeds, labels in groups.items()]
    return [f"Seeds on {dataset_label(dataset)}: " + "; ".join(parts) + "."]


def title(table: pd.DataFrame) -> str:
    """"Table 1 (regenerated)" on the paper's datasets; "Table 1's rows on <datasets>" on any other."""
    datasets = table_datasets(table)
    if all(d in PAPER_DATASETS for d in datasets):
        return "Table 1 (regenerated)"
    return "Table 1's rows on " + ", ".join(dataset_label(d) for d in datasets)
