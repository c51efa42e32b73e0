"""Table 1 of Kim & Suh (2019), regenerated from our runs: layout, then Markdown, LaTeX and HTML.

:func:`build_table` turns the per-run metrics into a tidy frame; the renderers only format it.

**Rows.**  The paper's order: WMF, SLIM, CDAE, Mult-DAE, Mult-VAE, Mult-VAE (Gated), Vamp, H+Vamp,
H+Vamp (Gated); then, below a rule, the additional baselines Popularity and EASE; then any other
model that ran (an ablation, say), labelled with its registry name, in name order.  A model has
cells on a dataset only where it ran there: a dataset's table has no row for a model that did not
run on it.

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
  row), ``extra`` (Popularity, EASE) or ``other`` (any other model); ``model`` (registry name),
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

**Verdicts and claims.**  :func:`render_markdown` and :func:`render_html` add per dataset the
verdict of every cell with a published value, and the paper's claims checked by paired tests and the
seeds' signs (:func:`evcf.report.stats.claims_table`), each with a one-line verdict
(:func:`claim_verdict`).  On a dataset that is not the paper's (:data:`PAPER_DATASETS`), the claims are
headed as directions on that dataset, and the verdict section says why nothing is compared.

Markdown has no column groups, so :func:`render_markdown` writes one table per dataset (each a few
columns wide); :func:`render_latex` and :func:`render_html` group the columns per dataset as the
paper does.
"""

from __future__ import annotations

import functools
import html
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from scipy import stats as scipy_stats

from evcf.report.published import Published, load_published
from evcf.report.stats import CLAIMS, METRICS, STRONGEST

__all__ = [
    "METRIC_LABELS",
    "TABLE_COLUMNS",
    "SIGNIFICANCE_LEVEL",
    "MARK",
    "canonical_model",
    "model_label",
    "model_section",
    "dataset_label",
    "order_datasets",
    "order_models",
    "aggregate",
    "build_table",
    "render_markdown",
    "render_latex",
    "render_html",
    "reproduction",
    "half_width",
    "published_rounding",
    "seeds_needed",
    "seed_spreads",
    "tolerance_for",
    "title",
    "claim_verdict",
    "NO_PUBLISHED",
    "PAPER_ROWS",
    "PAPER_DATASETS",
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

# The rows of the paper's Table 1, in its order (docs/models.md).
_PAPER = {
    "wmf": "WMF",
    "slim": "SLIM",
    "cdae": "CDAE",
    "mult-dae": "Mult-DAE",
    "mult-vae": "Mult-VAE",
    "mult-vae-gated": "Mult-VAE (Gated)",
    "vamp": "Vamp",
    "hvamp": "H+Vamp",
    "hvamp-gated": "H+Vamp (Gated)",
}
PAPER_ROWS = tuple(_PAPER)  # the rows the headline claim is judged against (evcf.report.stats.claims_table)

# our additional rows: the like-for-like gating ablation, then the extra baselines
_EXTRA = {"mult-vae-evcf": "Mult-VAE (EVCF recipe)", "popularity": "Popularity", "ease": "EASE", "recvae": "RecVAE"}
_ALIASES = {"h-vamp": "hvamp", "h-vamp-gated": "hvamp-gated"}  # spellings used in some configs

SEPARATOR_TEXT = "not in the paper's Table 1"

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

NO_PUBLISHED = "no published value"
CONFIDENCE = 0.95  # the interval of the reproduction verdict (two-sided, as a t interval is usually read)


def canonical_model(name: str) -> str:
    """The registry name used for display and published look-ups (``h-vamp-gated`` → ``hvamp-gated``)."""
    return _ALIASES.get(name, name)


def model_label(name: str) -> str:
    """Display name of a model: ``mult-vae`` → ``Mult-VAE``; unknown names are shown as they are."""
    name = canonical_model(name)
    return _PAPER.get(name) or _EXTRA.get(name) or name


def model_section(name: str) -> str:
    """``paper`` for a Table 1 row, ``extra`` for Popularity and EASE, ``other`` for anything else."""
    name = canonical_model(name)
    return "paper" if name in _PAPER else "extra" if name in _EXTRA else "other"


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
    known = [*_PAPER, *_EXTRA]
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


def published_rounding(value: float) -> float:
    """Half a unit in the last decimal the source printed: ±0.0005 for a value printed with 3 decimals.

    The decimals are those :func:`_fmt_published` prints (at least three; more where the file has more),
    so 0.41308 (Kim & Suh print five) gives 0.000005 and 0.36 (Liang et al. print 0.360) 0.0005.
    """
    text = f"{value:.6f}".rstrip("0")
    decimals = max(3, len(text.split(".")[1]) if "." in text else 0)
    return 0.5 * 10.0 ** -decimals


def half_width(sd: float, df: int, n: int, rounding: float) -> float:
    """Half-width of the interval for Δ = ours − published: t(0.975, df) · sd · √(1 + 1/n) + rounding.

    A prediction-style interval: our mean over n seeds has variance sd²/n and the published value is
    one more run of the same law (variance sd²), so Δ has variance sd² · (1 + 1/n); the published
    value's rounding (±half a unit of its last decimal) is added whole, as a bound and not a variance.
    """
    return _t_quantile(df) * sd * math.sqrt(1.0 + 1.0 / n) + rounding


@functools.lru_cache(maxsize=None)
def _t_quantile(df: int) -> float:
    return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df))


@functools.lru_cache(maxsize=None)
def _f_quantile(df1: int, df2: int) -> float:
    return float(scipy_stats.f.ppf(0.95, df1, df2))


MAX_SEEDS = 100  # the most seeds :func:`seeds_needed` looks at before it says no number will do


def seeds_needed(diff: float, sd: float, df: int, n: int, tolerance: float, rounding: float) -> float:
    """The fewest seeds (in all) at which the same Δ and sd would settle the cell, or NaN if none would.

    Settled: the interval lies within ± tolerance (reproduced) or wholly beyond it (above, below).
    Each added seed adds one degree of freedom to ``df``.  Because the published value is one run, the
    interval never gets narrower than about 1.96 · sd + rounding, whatever the number of seeds: when that
    alone is wider than the band, no number of seeds will do (NaN).
    """
    floor = float(scipy_stats.norm.ppf(0.5 + CONFIDENCE / 2)) * sd + rounding  # the half-width as m → ∞
    if abs(diff) + floor > tolerance and abs(diff) - floor <= tolerance:
        return float("nan")
    for m in range(n + 1, MAX_SEEDS + 1):
        half = half_width(sd, df + (m - n), m, rounding)
        if abs(diff) + half <= tolerance or abs(diff) - half > tolerance:
            return float(m)
    return float("nan")


def reproduction(mean: float, published: float, *, sd: float, df: int, n: int, tolerance: float | None,
                 rounding: float | None = None) -> dict:
    """The reproduction verdict of one cell: an equivalence decision with tolerance ``tolerance`` (δ).

    Δ = ``mean`` − ``published`` with the interval Δ ± :func:`half_width` (``sd`` with ``df`` degrees of
    freedom: see :func:`seed_spreads`; ``n`` the row's own seeds; ``rounding`` defaults to
    :func:`published_rounding`).  ``reproduced`` when the whole interval lies within ± δ; ``above`` /
    ``below`` when it lies wholly above + δ / below − δ; ``inconclusive`` otherwise, with
    ``seeds_needed`` (:func:`seeds_needed`).  Without a published value: ``no published value``; without a
    spread to judge by (no seeded row) or without a tolerance: ``inconclusive`` and why.
    """
    out = {"tolerance": np.nan, "rounding": np.nan, "half_width": np.nan, "diff_low": np.nan,
           "diff_high": np.nan, "verdict": NO_PUBLISHED, "seeds_needed": np.nan, "reason": ""}
    if published is None or math.isnan(published):
        return out
    rounding = published_rounding(published) if rounding is None else rounding
    out.update(rounding=rounding, verdict="inconclusive")
    if tolerance is None or math.isnan(tolerance):
        out["reason"] = "no tolerance δ given (params.yaml report.tolerance)"
        return out
    out["tolerance"] = tolerance
    if sd is None or math.isnan(sd) or df < 1:
        out["reason"] = "no seed spread (no row here ran two seeds or more)"
        return out
    diff = mean - published
    half = half_width(sd, df, n, rounding)
    low, high = diff - half, diff + half
    out.update(half_width=half, diff_low=low, diff_high=high)
    if -tolerance <= low and high <= tolerance:
        out["verdict"] = "reproduced"
    elif low > tolerance:
        out["verdict"] = "above"
    elif high < -tolerance:
        out["verdict"] = "below"
    else:
        needed = seeds_needed(diff, sd, df, n, tolerance, rounding)
        out["seeds_needed"] = needed
        if math.isnan(needed):
            out["reason"] = "more seeds will not settle it (seed sd too wide for δ)"
        elif n == 1:  # a deterministic model gives the same value at every seed: only a closer match settles it
            out["reason"] = f"one run; about {int(needed)} seeds would settle it, if the model depends on the seed"
        else:
            out["reason"] = f"more seeds needed (about {int(needed)} in all)"
    return out


def seed_spreads(ns, sds) -> list[tuple[float, int, str]]:
    """(sd, degrees of freedom, source) to judge each row of one dataset × metric by.

    ``ns`` and ``sds`` are the rows' seed counts and sample sds (NaN for n = 1).  The seed spread is
    pooled over the seeded rows (n ≥ 2): s² = Σ (nᵢ − 1) sᵢ² / Σ (nᵢ − 1) with Σ (nᵢ − 1) degrees of
    freedom — three seeds alone give t(0.975, 2) = 4.3, too wide to tell anything.  A seeded row whose own
    variance is significantly larger than the other rows' pooled one (one-sided F-test at 5%) is judged
    by its own sd and n − 1 degrees of freedom instead.  A row fitted once borrows the pooled spread
    (two fits of a seeded row are the nearest thing to two fits of it); with no seeded row: (NaN, 0, '').
    """
    ns = [int(n) for n in ns]
    sds = [float(s) for s in sds]
    seeded = [i for i, (n, s) in enumerate(zip(ns, sds)) if n >= 2 and not math.isnan(s)]
    df_all = sum(ns[i] - 1 for i in seeded)
    if not seeded:
        return [(math.nan, 0, "")] * len(ns)
    pooled = math.sqrt(sum((ns[i] - 1) * sds[i] ** 2 for i in seeded) / df_all)
    pooled_source = f"seeds pooled over {len(seeded)} rows"
    out = []
    for i, (n, s) in enumerate(zip(ns, sds)):
        if i in seeded:
            df_other = df_all - (n - 1)
            var_other = (sum((ns[j] - 1) * sds[j] ** 2 for j in seeded if j != i) / df_other
                         if df_other else math.nan)
            if df_other and (var_other == 0 and s > 0 or var_other > 0 and s ** 2 / var_other
                             > _f_quantile(n - 1, df_other)):
                out.append((s, n - 1, "this row's seeds (noisier than the other rows)"))
                continue
        out.append((pooled, df_all, pooled_source if i in seeded else f"fitted once; {pooled_source}"))
    return out


def claim_verdict(rows: pd.DataFrame) -> str:
    """One line for a claim on one dataset from its :func:`~evcf.report.stats.claims_table` rows."""
    n = len(rows)
    holds = [METRIC_LABELS[m] for m in rows.loc[rows["outcome"] == "holds", "metric"]]
    reversed_ = [METRIC_LABELS[m] for m in rows.loc[rows["outcome"] == "reversed", "metric"]]
    unshown = {reason: [METRIC_LABELS[m] for m in group["metric"]]
               for reason, group in rows[rows["outcome"] == "not shown"].groupby("reason", sort=True)}
    if len(holds) == n:
        return f"holds on all {n} metrics"
    if len(reversed_) == n:
        return f"reversed on all {n} metrics (the model is worse)"
    why = [f"{reason} on {', '.join(metrics)}" for reason, metrics in unshown.items()]
    if not holds and not reversed_:
        if len(unshown) == 1:
            return f"not shown: {next(iter(unshown))} on {'any metric' if n > 1 else 'the metric'}"
        return "not shown: " + "; ".join(why)
    parts = [f"holds on {', '.join(holds)}" if holds else "",
             f"reversed on {', '.join(reversed_)}" if reversed_ else "",
             *(f"not shown ({w})" for w in why)]
    return "partly: " + "; ".join(p for p in parts if p)


def tolerance_for(tolerance: dict | None, dataset: str, metric: str) -> float:
    """δ of one dataset × metric from ``tolerance`` (params.yaml ``report.tolerance``, passed by the CLI):
    ``{dataset: number}`` or ``{dataset: {metric: number}}``; NaN where it names none."""
    value = (tolerance or {}).get(dataset)
    if isinstance(value, dict):
        value = value.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


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


# --- the layout shared by the renderers -----------------------------------------------------------

@dataclass(frozen=True)
class _Row:
    model: str
    label: str
    section: str
    cells: dict  # (dataset, metric) -> table record (namedtuple); absent where the model did not run


def _datasets(table: pd.DataFrame) -> list[str]:
    return order_datasets(table["dataset"].unique())


def _rows(table: pd.DataFrame, datasets: list[str] | None = None) -> list[_Row]:
    """The table's rows in order, restricted to models that ran on one of ``datasets``."""
    part = table if datasets is None else table[table["dataset"].isin(datasets)]
    rows = []
    for _, group in part.groupby("row_order", sort=True):
        first = group.iloc[0]
        rows.append(_Row(first["model"], first["label"], first["section"],
                         {(r.dataset, r.metric): r for r in group.itertuples(index=False)}))
    return rows


def _needs_separator(rows: list[_Row], i: int) -> bool:
    """True before the first row outside the paper's Table 1 (when the table has paper rows)."""
    return rows[i].section != "paper" and (i == 0 or rows[i - 1].section == "paper") \
        and any(r.section == "paper" for r in rows)


def _comparison_datasets(table: pd.DataFrame) -> list[str]:
    """Datasets where at least one model that ran has a published value, in table order."""
    with_pub = set(table.loc[table["published"].notna(), "dataset"])
    return [d for d in _datasets(table) if d in with_pub]


def _comparison_rows(table: pd.DataFrame, dataset: str) -> list[_Row]:
    models = set(table.loc[(table["dataset"] == dataset) & table["published"].notna(), "model"])
    return [r for r in _rows(table, [dataset]) if r.model in models]


def _without_published(table: pd.DataFrame, dataset: str) -> list[str]:
    ds = table[table["dataset"] == dataset]
    have = set(ds.loc[ds["published"].notna(), "model"])
    return [r.label for r in _rows(table, [dataset]) if r.model not in have]


def _sources(table: pd.DataFrame, datasets: list[str]) -> list[str]:
    part = table[table["dataset"].isin(datasets)]
    return list(dict.fromkeys(s for s in part.sort_values("row_order")["published_source"] if s))


def _fmt_published(value: float) -> str:
    """As printed in the source: at least three decimals, more only where the source has them."""
    text = f"{value:.5f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{value:.{max(3, decimals)}f}"


def _fmt_diff(value: float) -> str:
    return f"{value:+.4f}"


def _notes(table: pd.DataFrame, reference: str, *, grouped: bool = False) -> list[str]:
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
    compared = _comparison_datasets(table)
    if compared:
        notes.append("Published: the values in evcf/report/published.yaml, each from the paper and "
                     "table named in the Source column. Δ = ours − published.")
    else:
        notes.append("evcf/report/published.yaml has no published values for these datasets, "
                     "so there is no comparison with published results.")
    return notes


def _ours_parts(rec) -> tuple[str, str, str]:
    """(mean, spread, suffix) of one cell: ``"0.3185"``, ``"0.0036"`` or ``""`` for n = 1, ``"(n=3)"``."""
    spread = "" if rec.n < 2 or math.isnan(rec.std) else f"{rec.std:.4f}"
    return f"{rec.mean:.4f}", spread, f"(n={rec.n})"


# --- Markdown -------------------------------------------------------------------------------------

def _md_cell(rec) -> str:
    if rec is None:
        return "—"
    mean, spread, n = _ours_parts(rec)
    if rec.best:
        mean = f"**{mean}**"
    text = f"{mean} ± {spread} {n}" if spread else f"{mean} {n}"
    return text + (MARK if rec.significant else "")


# which search chose a row's setting (metrics.json tuning.search; runs from before the field: "")
SEARCH_LABELS = {"full": "full grid search (validation NDCG@100)",
                 "halving": "successive halving over the grid (validation NDCG@100; a budgeted search)",
                 "": "grid search (validation NDCG@100)"}


def settings_rows(runs: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(dataset, model label, where its setting came from, the setting) per row that ran.

    ``runs`` carries ``setting_source`` ("search": the winner of its grid; "params.yaml": no grid
    or tuning off) and ``setting`` (the winning grid values as JSON) from each run's metrics.json.
    Runs of one row that disagree (a rerun mixed with older runs) are listed as such.  A model that
    searches its own settings inside each run (``in_run_selected``, ``in_run_tried``) shows that
    search and what it selected, per seed where the seeds selected differently.
    """
    if "setting_source" not in runs:
        return []
    rows = []
    for dataset in order_datasets(runs["dataset"].unique()):
        here = runs[runs["dataset"] == dataset]
        for model in order_models(here["model"].unique()):
            mine = here[here["model"] == model]
            columns = [c for c in ("setting_source", "setting", "search", "tuned_on") if c in mine]
            found = mine[columns].fillna("").drop_duplicates()
            if len(found) != 1:
                rows.append((dataset, model_label(model), "mixed", "the runs of this row used different settings"))
                continue
            chosen = found.iloc[0].to_dict()
            source, setting = chosen["setting_source"], chosen["setting"]
            shown = _values(json.loads(setting))
            label = {"search": SEARCH_LABELS.get(chosen.get("search", ""), SEARCH_LABELS[""]),
                     "params.yaml": "params.yaml (no grid)",
                     "as given": "as given (not run through the tuning step)"}.get(source, source)
            if source == "search" and chosen.get("tuned_on"):  # params.yaml tune_from
                label += f", searched on {dataset_label(chosen['tuned_on'])}"
            # (issue 19) settings typed on the command line are credited to it, not to params.yaml
            typed = sorted(set(mine["command_line"].fillna(""))) if "command_line" in mine else [""]
            if typed != [""]:
                label += "; command line: " + " | ".join(t or "(none)" for t in typed)
            picks = _in_run_picks(mine)
            if picks:
                tried, selected = picks
                label += f"; in-run search of {tried} settings (validation NDCG@100)"
                shown = selected if shown == "—" else f"{shown}; {selected}"
            rows.append((dataset, model_label(model), label, shown))
    return rows


def _values(setting: dict | None) -> str:
    return ", ".join(f"{k} = {v}" for k, v in (setting or {}).items()) or "—"


def _in_run_picks(runs: pd.DataFrame) -> tuple[str, str] | None:
    """(settings tried, what was selected) of a row's in-run searches, or None without one."""
    if "in_run_tried" not in runs or not (runs["in_run_tried"].fillna(0) > 1).any():
        return None  # no search (popularity's one setting is none either)
    tried = "/".join(str(int(n)) for n in sorted(runs["in_run_tried"].dropna().unique()))
    picks = runs.sort_values("seed").groupby("in_run_selected", sort=False)["seed"].apply(list)
    if len(picks) == 1:
        return tried, _values(json.loads(picks.index[0]))
    return tried, "; ".join(f"seed {', '.join(map(str, seeds))}: {_values(json.loads(pick))}"
                            for pick, seeds in picks.items())


def render_settings_markdown(runs: pd.DataFrame) -> str:
    """What each row ran with: the source of its setting and the searched values it used."""
    rows = settings_rows(runs)
    if not rows:
        return ""
    body = [[dataset_label(d), m, source, setting] for d, m, source, setting in rows]
    return "\n".join(["", "**What each row ran with**", "",
                      tabulate(body, headers=["Dataset", "Model", "Setting from", "Searched values used"],
                               tablefmt="github", disable_numparse=True),
                      "", "Every other value is the row's entry in params.yaml "
                      "(results/tune/<dataset>/<model>/summary.csv lists every grid point). "
                      "WMF, SLIM, CDAE and EASE search their own lists of settings inside each run: "
                      "tuning.csv in the run folder lists every setting tried.", ""])


# --- verdicts and claims, shared by Markdown and HTML --------------------------------------------

def _fmt_verdict(rec) -> str:
    return f"{rec.verdict}: {rec.reason}" if rec.reason else rec.verdict


def _verdict_rows(table: pd.DataFrame, dataset: str) -> list[list[str]]:
    """Model, metric, ours, published, the interval for Δ, ± δ, verdict: every cell with a published value."""
    body = []
    for row in _comparison_rows(table, dataset):
        for metric in METRICS:
            rec = row.cells.get((dataset, metric))
            if rec is None or math.isnan(rec.published):
                continue
            interval = (f"{_fmt_diff(rec.diff)} [{rec.diff_low:+.4f}, {rec.diff_high:+.4f}]"
                        if not math.isnan(rec.diff_low) else _fmt_diff(rec.diff))
            kind = "own" if rec.sd_source.startswith("this row") else "pooled"
            spread = f"{rec.sd_used:.4f} ({kind}, df {rec.sd_df})" if rec.sd_source else "none"
            tol = "—" if math.isnan(rec.tolerance) else f"±{rec.tolerance:g}"
            body.append([row.label, METRIC_LABELS[metric], str(rec.n), interval, spread, tol, _fmt_verdict(rec)])
    return body


VERDICT_HEADERS = ["Model", "Metric", "n", "Δ [interval]", "Seed sd", "δ", "Verdict"]

VERDICT_NOTE = ("Verdict: Δ = ours − published with the interval Δ ± (t(0.975, df) · sd · √(1 + 1/n) + half a unit "
                "of the published value's last decimal) — the published value counted as one more run — is "
                "reproduced when the whole interval lies within ± δ, above or below when it lies wholly beyond "
                "+δ or −δ, and inconclusive otherwise; sd is the seed spread pooled over the dataset's seeded "
                "rows (a row's own when an F-test finds it noisier; a row fitted once borrows the pooled one), "
                "n the row's seeds (Δ, ours and published are in the table above).")


def _tolerance_note(table: pd.DataFrame, dataset: str) -> str:
    values = sorted(set(table.loc[(table["dataset"] == dataset) & table["tolerance"].notna(), "tolerance"]))
    if not values:
        return "No tolerance δ was given for this dataset (params.yaml report.tolerance), so no cell is settled."
    return (f"δ = {' / '.join(f'{v:g}' for v in values)} on {dataset_label(dataset)}: params.yaml "
            "report.tolerance (the defaults are Liang et al. 2018's published standard errors).")


CLAIMS_NOTE = ("Each claim: the model against its baseline per test user (values averaged over seeds), "
               "two-sided Wilcoxon signed-rank test, Holm-corrected over every claim and metric of the dataset; "
               "a cell gives the mean difference (model − baseline), the range of the per-seed differences "
               "[min, max] and the corrected p. Holds (reversed): better (worse) with p < 0.05 and in every "
               "seed pair; otherwise not shown, with the reason (n.s. per user, seeds disagree). Compared as: the "
               "paper's — the comparison Kim & Suh 2019 make (each ingredient against Liang et al.'s Mult-VAE or "
               "the row it extends; the headline against the strongest other paper row per metric); the "
               "ablation's — against the EVCF recipe's Mult-VAE, the row that differs by that ingredient alone; "
               "not in the paper — rows the paper did not run.")

COMPARISON_LABELS = {"paper": "the paper's", "ablation": "the ablation's", "beyond the paper": "not in the paper"}

UNCHECKED = "Not checked here (one of its two rows did not run): "

PAPER_DATASETS = _DATASET_FIRST  # the datasets the paper's claims are about

DIRECTIONS_HEADING = "Directions on this dataset (the paper's claims are about ML-20M and Netflix)"


def _claim_cell(r) -> str:
    spread = (f" [{r.seed_diff_min:+.4f}, {r.seed_diff_max:+.4f}]" if r.n_seed_pairs > 1 else "")
    against = f" vs {model_label(r.baseline)}" if r.claim == "best-row" else ""
    return f"{r.mean_diff:+.4f}{spread}{against} (p={r.wilcoxon_p_holm:.2g})"


def _claim_parts(claims: pd.DataFrame | None, dataset: str) -> tuple[list[list[str]], list[str]]:
    """(rows of the claims table: claim, compared as, one cell per metric, verdict; claims not checked)."""
    here = pd.DataFrame() if claims is None or claims.empty else claims[claims["dataset"] == dataset]
    body, unchecked = [], []
    for claim in CLAIMS:
        rows = here[here["claim"] == claim.id] if len(here) else here
        if not len(rows):
            unchecked.append(claim.text)
            continue
        cells = {r.metric: _claim_cell(r) for r in rows.itertuples()}
        verdict = claim_verdict(rows)
        beaten = [METRIC_LABELS[m] for m in rows.loc[rows["outcome"] == "reversed", "metric"]]
        if claim.comparison == "beyond the paper" and beaten:
            verdict += (f" — {model_label(claim.baseline)} is better on {', '.join(beaten)}: the paper's best row "
                        "is not the best there")
        body.append([claim.text[0].upper() + claim.text[1:], COMPARISON_LABELS[claim.comparison],
                     *(cells.get(m, "not tested") for m in METRICS), verdict])
    return body, unchecked


def _claims_heading(dataset: str) -> str:
    if dataset in PAPER_DATASETS:
        return f"{dataset_label(dataset)}: the paper's claims"
    return f"{dataset_label(dataset)}: {DIRECTIONS_HEADING}"


def _no_verdicts_line(table: pd.DataFrame, dataset: str) -> str:
    """Why nothing is compared on a dataset without published values."""
    return (f"Nothing is compared on {dataset_label(dataset)}: no published values exist for it (the papers "
            "report ML-20M and Netflix; evcf/report/published.yaml holds theirs), so no cell has a verdict.")


def _seeds_lines(table: pd.DataFrame, dataset: str, runs: pd.DataFrame | None) -> list[str]:
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
    datasets = _datasets(table)
    if all(d in PAPER_DATASETS for d in datasets):
        return "Table 1 (regenerated)"
    return "Table 1's rows on " + ", ".join(dataset_label(d) for d in datasets)


def render_markdown(table: pd.DataFrame, reference: str = "mult-vae", claims: pd.DataFrame | None = None,
                    runs: pd.DataFrame | None = None) -> str:
    """Table 1 as GitHub-flavoured Markdown: per dataset our table, the published comparison, the
    reproduction verdicts and the paper's claims (``claims``: :func:`evcf.report.stats.claims_table`);
    ``runs`` (one row per run, with ``seed``) lists each row's seeds."""
    lines = [f"# {title(table)}", ""]
    for dataset in _datasets(table):
        rows = _rows(table, [dataset])
        headers = ["Model", *(METRIC_LABELS[m] for m in METRICS)]
        body = []
        for i, row in enumerate(rows):
            if _needs_separator(rows, i):
                body.append([f"*{SEPARATOR_TEXT}:*", "", "", ""])
            body.append([row.label, *(_md_cell(row.cells.get((dataset, m))) for m in METRICS)])
        lines += [f"## {dataset_label(dataset)}", "",
                  tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]
        if dataset in _comparison_datasets(table):
            lines += [f"### {dataset_label(dataset)}: ours and published", "",
                      _md_comparison(table, dataset), ""]
            missing = _without_published(table, dataset)
            if missing:
                lines += [f"No published value for {', '.join(missing)} on {dataset_label(dataset)}.",
                          ""]
        lines += _md_verdicts(table, dataset) + _md_claims(claims, dataset)
    notes = _notes(table, reference) + [line for d in _datasets(table) for line in _seeds_lines(table, d, runs)]
    lines += ["**Notes**", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _md_verdicts(table: pd.DataFrame, dataset: str) -> list[str]:
    name = dataset_label(dataset)
    lines = [f"### {name}: did the published results reproduce?", ""]
    body = _verdict_rows(table, dataset)
    if body:
        lines += [tabulate(body, headers=VERDICT_HEADERS, tablefmt="github", disable_numparse=True), "",
                  VERDICT_NOTE + " " + _tolerance_note(table, dataset), ""]
    else:
        lines += [_no_verdicts_line(table, dataset), ""]
    missing = _without_published(table, dataset)
    if missing and body:
        lines += [f"Verdict for {', '.join(missing)} on {name}: {NO_PUBLISHED}.", ""]
    return lines


def _md_claims(claims: pd.DataFrame | None, dataset: str) -> list[str]:
    body, unchecked = _claim_parts(claims, dataset)
    lines = [f"### {_claims_heading(dataset)}", ""]
    if body:
        lines += [tabulate(body, headers=["Claim", "Compared as", *(METRIC_LABELS[m] for m in METRICS), "Verdict"],
                           tablefmt="github", disable_numparse=True), "", CLAIMS_NOTE, ""]
    if unchecked:
        lines += [UNCHECKED + "; ".join(unchecked) + ".", ""]
    return lines


def _md_comparison(table: pd.DataFrame, dataset: str) -> str:
    """Ours (mean), published and Δ per metric; the source as a number listed under the table."""
    sources = _sources(table, [dataset])
    headers = ["Model"]
    for metric in METRICS:
        headers += [METRIC_LABELS[metric], "publ.", "Δ"]
    headers.append("Source")
    body = []
    for row in _comparison_rows(table, dataset):
        line = [row.label]
        for metric in METRICS:
            rec = row.cells[(dataset, metric)]
            line += [f"{rec.mean:.4f}", _fmt_published(rec.published), _fmt_diff(rec.diff)]
        line.append(f"[{sources.index(row.cells[(dataset, METRICS[0])].published_source) + 1}]")
        body.append(line)
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    refs = ["Per metric: our mean, the published value (publ.), Δ = ours − published. Sources:",
            *(f"[{i}] {source}" for i, source in enumerate(sources, start=1))]
    return text + "\n\n" + "  \n".join(refs)


# --- LaTeX ----------------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "×": r"$\times$", "—": "---",
    MARK: r"$^{\dagger}$", "<": r"$<$", ">": r"$>$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(rec) -> str:
    if rec is None:
        return "---"
    mean, spread, n = _ours_parts(rec)
    if rec.best:
        mean = rf"\textbf{{{mean}}}"
    text = rf"{mean} $\pm$ {spread} {n}" if spread else f"{mean} {n}"
    return text + (r"$^{\dagger}$" if rec.significant else "")


def _latex_diff(value: float) -> str:
    text = _fmt_diff(value)
    return "$-$" + text[1:] if text.startswith("-") else text


def render_latex(table: pd.DataFrame, reference: str = "mult-vae") -> str:
    """Table 1 as booktabs ``tabular``s (needs ``\\usepackage{booktabs}``) with notes below.

    One table with a column group per dataset, then one comparison table per dataset that has
    published values.
    """
    datasets = _datasets(table)
    rows = _rows(table)
    n_cols = 1 + 3 * len(datasets)
    lines = [
        f"% {title(table)} -- written by evcf.report; needs \\usepackage{{booktabs}}",
        r"\begin{tabular}{l" + "r" * 3 * len(datasets) + "}",
        r"\toprule",
        " & ".join(["Model", *(rf"\multicolumn{{3}}{{c}}{{{_latex_escape(dataset_label(d))}}}"
                               for d in datasets)]) + r" \\",
        " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(datasets))),
        " & ".join(["", *(METRIC_LABELS[m] for _ in datasets for m in METRICS)]) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(rows):
        if _needs_separator(rows, i):
            lines += [r"\midrule",
                      rf"\multicolumn{{{n_cols}}}{{l}}{{\emph{{{_latex_escape(SEPARATOR_TEXT)}}}}} \\"]
        cells = [_latex_cell(row.cells.get((d, m))) for d in datasets for m in METRICS]
        lines.append(" & ".join([_latex_escape(row.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]

    for dataset in _comparison_datasets(table):
        lines += [
            "",
            f"% {dataset_label(dataset)}: ours and published",
            r"\begin{tabular}{l" + "rrr" * len(METRICS) + "l}",
            r"\toprule",
            " & ".join([_latex_escape(dataset_label(dataset)),
                        *(rf"\multicolumn{{3}}{{c}}{{{METRIC_LABELS[m]}}}" for m in METRICS),
                        ""]) + r" \\",
            " ".join(rf"\cmidrule(lr){{{2 + 3 * j}-{4 + 3 * j}}}" for j in range(len(METRICS))),
            " & ".join(["Model", *(["ours", "published", r"$\Delta$"] * len(METRICS)), "Source"])
            + r" \\",
            r"\midrule",
        ]
        for row in _comparison_rows(table, dataset):
            cells = []
            for metric in METRICS:
                rec = row.cells[(dataset, metric)]
                cells += [f"{rec.mean:.4f}", _fmt_published(rec.published), _latex_diff(rec.diff)]
            source = _latex_escape(row.cells[(dataset, METRICS[0])].published_source)
            lines.append(" & ".join([_latex_escape(row.label), *cells, source]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", ""]

    lines += [r"\smallskip", r"{\footnotesize"]
    lines += [_latex_escape(note) + r"\\" for note in _notes(table, reference, grouped=True)]
    lines += ["}", ""]
    return "\n".join(lines)


# --- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.95em; }
th, td { padding: 0.3em 0.8em; }
thead th { border-bottom: 1px solid #444; }
thead tr:first-child th { border-top: 2px solid #444; }
tbody tr:last-child td { border-bottom: 2px solid #444; }
th.group { border-bottom: 1px solid #999; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.label { white-space: nowrap; }
tr.separator td { font-style: italic; color: #555; border-top: 1px solid #999; padding-top: 0.5em; }
.n { color: #666; font-size: 0.9em; }
p.note { max-width: 60em; font-size: 0.9em; margin: 0.3em 0; }
""".strip()


def _html_cell(rec) -> str:
    if rec is None:
        return '<td class="num">—</td>'
    mean, spread, n = _ours_parts(rec)
    if rec.best:
        mean = f"<strong>{mean}</strong>"
    text = f"{mean} ± {spread}" if spread else mean
    mark = MARK if rec.significant else ""
    return f'<td class="num">{text} <span class="n">{n}</span>{mark}</td>'


def render_html(table: pd.DataFrame, reference: str = "mult-vae", claims: pd.DataFrame | None = None,
                runs: pd.DataFrame | None = None) -> str:
    """Table 1 as a standalone HTML page (for Snakemake's report): the same content as the Markdown,
    with the columns grouped per dataset as in the paper."""
    esc = html.escape
    datasets = _datasets(table)
    rows = _rows(table)
    n_cols = 1 + 3 * len(datasets)
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title(table))}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
        f"<h1>{esc(title(table))}</h1>",
        "<table>", "<thead>",
        '<tr><th rowspan="2">Model</th>'
        + "".join(f'<th class="group" colspan="3">{esc(dataset_label(d))}</th>' for d in datasets)
        + "</tr>",
        "<tr>" + "".join(f"<th>{METRIC_LABELS[m]}</th>" for _ in datasets for m in METRICS) + "</tr>",
        "</thead>", "<tbody>",
    ]
    for i, row in enumerate(rows):
        if _needs_separator(rows, i):
            out.append(f'<tr class="separator"><td colspan="{n_cols}">{esc(SEPARATOR_TEXT)}</td></tr>')
        cells = "".join(_html_cell(row.cells.get((d, m))) for d in datasets for m in METRICS)
        out.append(f'<tr><td class="label">{esc(row.label)}</td>{cells}</tr>')
    out += ["</tbody>", "</table>"]

    for dataset in _comparison_datasets(table):
        out += [f"<h2>{esc(dataset_label(dataset))}: ours and published</h2>", "<table>", "<thead>",
                '<tr><th rowspan="2">Model</th>'
                + "".join(f'<th class="group" colspan="3">{METRIC_LABELS[m]}</th>' for m in METRICS)
                + '<th rowspan="2">Source</th></tr>',
                "<tr>" + "<th>ours</th><th>published</th><th>Δ</th>" * len(METRICS) + "</tr>",
                "</thead>", "<tbody>"]
        for row in _comparison_rows(table, dataset):
            cells = ""
            for metric in METRICS:
                rec = row.cells[(dataset, metric)]
                cells += (f'<td class="num">{rec.mean:.4f}</td>'
                          f'<td class="num">{_fmt_published(rec.published)}</td>'
                          f'<td class="num">{_fmt_diff(rec.diff)}</td>')
            source = esc(row.cells[(dataset, METRICS[0])].published_source)
            out.append(f'<tr><td class="label">{esc(row.label)}</td>{cells}<td>{source}</td></tr>')
        out += ["</tbody>", "</table>"]
        missing = _without_published(table, dataset)
        if missing:
            out.append(f'<p class="note">No published value for {esc(", ".join(missing))} on '
                       f"{esc(dataset_label(dataset))}.</p>")
    for dataset in datasets:
        out += _html_verdicts_and_claims(table, claims, dataset)
    notes = _notes(table, reference, grouped=True) + [line for d in datasets for line in _seeds_lines(table, d, runs)]
    out += [f'<p class="note">{esc(note)}</p>' for note in notes]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_table(headers: list[str], body: list[list[str]]) -> list[str]:
    esc = html.escape
    return (["<table>", "<thead>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>", "</thead>",
             "<tbody>"]
            + ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body]
            + ["</tbody>", "</table>"])


def _html_verdicts_and_claims(table: pd.DataFrame, claims: pd.DataFrame | None, dataset: str) -> list[str]:
    esc, name = html.escape, dataset_label(dataset)
    out = [f"<h2>{esc(name)}: did the published results reproduce?</h2>"]
    body = _verdict_rows(table, dataset)
    if body:
        out += _html_table(VERDICT_HEADERS, body)
        out.append(f'<p class="note">{esc(VERDICT_NOTE + " " + _tolerance_note(table, dataset))}</p>')
    else:
        out.append(f'<p class="note">{esc(_no_verdicts_line(table, dataset))}</p>')
    missing = _without_published(table, dataset)
    if missing and body:
        out.append(f'<p class="note">Verdict for {esc(", ".join(missing))} on {esc(name)}: {NO_PUBLISHED}.</p>')
    body, unchecked = _claim_parts(claims, dataset)
    out.append(f"<h2>{esc(_claims_heading(dataset))}</h2>")
    if body:
        out += _html_table(["Claim", "Compared as", *(METRIC_LABELS[m] for m in METRICS), "Verdict"], body)
        out.append(f'<p class="note">{esc(CLAIMS_NOTE)}</p>')
    if unchecked:
        out.append(f'<p class="note">{esc(UNCHECKED + "; ".join(unchecked))}.</p>')
    return out
