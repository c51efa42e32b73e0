"""Table 1 of Kim & Suh (2019), regenerated from our runs: the tidy frame (``table1.csv``).

:func:`build_table` turns the per-run metrics into a tidy frame; the renderers only format it.  The
table's parts, each a module with one job:

* :mod:`evcf.report.rows` — the rows (each model's label, section and place, declared by its class)
  and the columns, and the layout every renderer shares;
* :mod:`evcf.report.verdicts` — the reproduction verdicts of the cells and the claims' verdicts;
* :mod:`evcf.report.markdown`, :mod:`evcf.report.latex`, :mod:`evcf.report.html_page` — the renderers.

Every public name of those modules that the table had before it was split is importable from here.

**Cells.**  Ours is the mean over seeds ± the sample standard deviation (ddof = 1), with n the
number of seeds; a model fitted once (n = 1: the deterministic models) shows its value and "(n=1)"
without ±.  Bold marks the best of our rows in each dataset × metric column, † a significant
difference from the reference model (Holm-corrected Wilcoxon, see :mod:`evcf.report.stats`).

**Published values** come from :mod:`evcf.report.published` (``published.yaml``).  They are printed
in a separate comparison table per dataset — ours, published, Δ = ours − published — only for
datasets where at least one model that ran has a published value, and only for those models.

**table1.csv** (:func:`build_table`'s frame) is long: one row per (dataset, model, metric) that ran,
columns :data:`TABLE_COLUMNS`:

* ``row_order`` — the row's position in the table (0 = first); ``section`` — ``paper`` (a Table 1
  row), ``extra`` (ours beyond it) or ``other`` (any other model); ``model`` (registry name),
  ``label`` (as printed), ``dataset``, ``metric`` (``recall@20``, ``recall@50``, ``ndcg@100``);
* ``mean``, ``std`` (ddof = 1, empty for n = 1), ``n`` (seeds);
* ``published``, ``published_source`` (empty where none), ``diff`` = mean − published;
* ``best`` (True for the best mean of the dataset × metric), ``wilcoxon_p_holm``, ``ttest_p_holm``
  (empty for the reference model and where no test was possible), ``significant`` (Wilcoxon
  p < :data:`SIGNIFICANCE_LEVEL`);
* the reproduction verdict (:func:`reproduction`), an equivalence decision with tolerance δ:
  ``sd_used``, ``sd_df``, ``sd_source`` (the seed spread the cell is judged by, :func:`seed_spreads`),
  ``tolerance`` (δ), ``rounding`` (half a unit of the published value's last decimal), ``half_width``,
  ``diff_low``, ``diff_high`` (the interval for Δ = ours − published), ``verdict`` (``reproduced``,
  ``above``, ``below``, ``inconclusive`` or ``no published value``), ``seeds_needed`` (inconclusive: the
  seeds in all that would settle it, empty when none would) and ``reason``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evcf.report.published import Published, load_published
from evcf.report.rows import SIGNIFICANCE_LEVEL, model_label, model_section, order_datasets, order_models
from evcf.report.stats import METRICS
from evcf.report.verdicts import reproduction, seed_spreads, tolerance_for

__all__ = ["TABLE_COLUMNS", "aggregate", "build_table"]


TABLE_COLUMNS = [
    "row_order",
    "section",  # paper | extra | other
    "model",
    "label",
    "dataset",
    "metric",
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
    "sd_used",
    "sd_df",
    "sd_source",
    "tolerance",
    "rounding",
    "half_width",
    "diff_low",
    "diff_high",
    "verdict",
    "seeds_needed",
    "reason",
]


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and n of each metric per dataset × model.

    ``runs`` has one row per run with columns dataset, model, seed and the metrics.
    """
    long = runs.melt(id_vars=["dataset", "model", "seed"], value_vars=list(METRICS),
                     var_name="metric", value_name="value")
    grouped = long.groupby(["dataset", "model", "metric"], sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return out.reset_index()


def build_table(runs: pd.DataFrame, significance: pd.DataFrame | None = None,
                published: Published | None = None, tolerance: dict | None = None) -> pd.DataFrame:
    """The tidy Table 1: one row per (dataset, model, metric) that ran, columns TABLE_COLUMNS.

    ``significance`` is :func:`evcf.report.stats.significance_table`'s output (may be None/empty);
    ``published`` is :func:`evcf.report.published.load_published`'s (None: the package's file);
    ``tolerance`` the reproduction verdicts' δ per dataset (:func:`tolerance_for`; None: no verdicts,
    each cell with a published value says that no tolerance was given).
    """
    if published is None:
        published = load_published()
    stats = aggregate(runs)
    models = order_models(runs["model"].unique())
    datasets = order_datasets(runs["dataset"].unique())

    sig: dict[tuple[str, str, str], tuple[float, float]] = {}
    if significance is not None and not significance.empty:
        for rec in significance.itertuples(index=False):
            sig[(rec.dataset, rec.model, rec.metric)] = (rec.wilcoxon_p_holm, rec.ttest_p_holm)

    # the seed spread each cell is judged by: pooled over the seeded rows of its dataset × metric
    spread: dict[tuple[str, str, str], tuple[float, int, str]] = {}
    for (dataset, metric), group in stats.groupby(["dataset", "metric"]):
        for model, chosen in zip(group["model"], seed_spreads(group["n"], group["std"])):
            spread[(dataset, model, metric)] = chosen

    records = []
    for s in stats.itertuples(index=False):
        pub = published.get((s.dataset, s.model, s.metric))
        p_w, p_t = sig.get((s.dataset, s.model, s.metric), (np.nan, np.nan))
        sd, df, sd_source = spread[(s.dataset, s.model, s.metric)]
        verdict = reproduction(float(s.mean), pub.value if pub else np.nan, sd=sd, df=df, n=int(s.n),
                               tolerance=tolerance_for(tolerance, s.dataset, s.metric))
        records.append({
            "row_order": models.index(s.model), "section": model_section(s.model),
            "model": s.model, "label": model_label(s.model), "dataset": s.dataset,
            "metric": s.metric, "mean": float(s.mean), "std": float(s.std), "n": int(s.n),
            "published": pub.value if pub else np.nan,
            "published_source": pub.source if pub else "",
            "diff": float(s.mean) - pub.value if pub else np.nan,
            "best": False, "wilcoxon_p_holm": p_w, "ttest_p_holm": p_t,
            "significant": bool(p_w < SIGNIFICANCE_LEVEL),
            "sd_used": sd, "sd_df": df, "sd_source": sd_source,
            **verdict,
        })
    table = pd.DataFrame(records, columns=TABLE_COLUMNS)
    if table.empty:
        return table
    best = table.groupby(["dataset", "metric"])["mean"].transform("max")
    table["best"] = (table["mean"] >= best - 1e-12).astype(bool)
    table["_d"] = table["dataset"].map(datasets.index)
    table["_m"] = table["metric"].map(list(METRICS).index)
    table = table.sort_values(["_d", "row_order", "_m"]).drop(columns=["_d", "_m"])
    return table.reset_index(drop=True)
