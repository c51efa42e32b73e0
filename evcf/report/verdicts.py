"""The reproduction verdicts of Table 1's cells and the verdicts of the paper's claims.

**Reproduction** (:func:`reproduction`): an equivalence decision with tolerance δ per cell that has a
published value.  Δ = ours − published with the interval Δ ± :func:`half_width`, judged by the seed
spread :func:`seed_spreads` chooses; ``reproduced`` when the interval lies within ± δ, ``above`` or
``below`` when it lies wholly beyond, ``inconclusive`` otherwise (with :func:`seeds_needed`), ``no
published value`` without one.  The columns it adds to table1.csv are listed in :mod:`evcf.report.table`.

**Claims** (:func:`claim_verdict`): a one-line verdict per claim and dataset from the rows of
:func:`evcf.report.stats.claims_table`.  On a dataset that is not the paper's
(:data:`~evcf.report.rows.PAPER_DATASETS`), the claims are headed as directions on that dataset, and
the verdict section says why nothing is compared.

The text both renderers print (:mod:`evcf.report.markdown`, :mod:`evcf.report.html_page`) is here too:
the verdict and claims tables' rows and the notes under them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from evcf.report.rows import METRIC_LABELS, PAPER_DATASETS, comparison_rows, dataset_label, fmt_diff, model_label
from evcf.report.stats import CLAIMS, METRICS

__all__ = [
    "NO_PUBLISHED",
    "CONFIDENCE",
    "MAX_SEEDS",
    "published_rounding",
    "half_width",
    "seeds_needed",
    "reproduction",
    "seed_spreads",
    "tolerance_for",
    "claim_verdict",
    "verdict_rows",
    "VERDICT_HEADERS",
    "VERDICT_NOTE",
    "tolerance_note",
    "no_verdicts_line",
    "CLAIMS_NOTE",
    "COMPARISON_LABELS",
    "UNCHECKED",
    "DIRECTIONS_HEADING",
    "claim_parts",
    "claims_heading",
]


NO_PUBLISHED = "no published value"

CONFIDENCE = 0.95  # the interval of the reproduction verdict (two-sided, as a t interval is usually read)


def published_rounding(value: float) -> float:
    """Half a unit in the last decimal the source printed: ±0.0005 for a value printed with 3 decimals.

    The decimals are those :func:`fmt_published` prints (at least three; more where the file has more),
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


def tolerance_for(tolerance: dict | None, dataset: str, metric: str) -> float:
    """δ of one dataset × metric from ``tolerance`` (params.yaml ``report.tolerance``, passed by the CLI):
    ``{dataset: number}`` or ``{dataset: {metric: number}}``; NaN where it names none."""
    value = (tolerance or {}).get(dataset)
    if isinstance(value, dict):
        value = value.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


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


# --- the verdicts and claims as text, shared by Markdown and HTML --------------------------------

def _fmt_verdict(rec) -> str:
    return f"{rec.verdict}: {rec.reason}" if rec.reason else rec.verdict


def verdict_rows(table: pd.DataFrame, dataset: str) -> list[list[str]]:
    """Model, metric, ours, published, the interval for Δ, ± δ, verdict: every cell with a published value."""
    body = []
    for row in comparison_rows(table, dataset):
        for metric in METRICS:
            rec = row.cells.get((dataset, metric))
            if rec is None or math.isnan(rec.published):
                continue
            interval = (f"{fmt_diff(rec.diff)} [{rec.diff_low:+.4f}, {rec.diff_high:+.4f}]"
                        if not math.isnan(rec.diff_low) else fmt_diff(rec.diff))
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


def tolerance_note(table: pd.DataFrame, dataset: str) -> str:
    values = sorted(set(table.loc[(table["dataset"] == dataset) & table["tolerance"].notna(), "tolerance"]))
    if not values:
        return "No tolerance δ was given for this dataset (params.yaml report.tolerance), so no cell is settled."
    return (f"δ = {' / '.join(f'{v:g}' for v in values)} on {dataset_label(dataset)}: params.yaml "
            "report.tolerance (the defaults are Liang et al. 2018's published standard errors).")


def no_verdicts_line(table: pd.DataFrame, dataset: str) -> str:
    """Why nothing is compared on a dataset without published values."""
    return (f"Nothing is compared on {dataset_label(dataset)}: no published values exist for it (the papers "
            "report ML-20M and Netflix; evcf/report/published.yaml holds theirs), so no cell has a verdict.")


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

DIRECTIONS_HEADING = "Directions on this dataset (the paper's claims are about ML-20M and Netflix)"


def _claim_cell(r) -> str:
    spread = (f" [{r.seed_diff_min:+.4f}, {r.seed_diff_max:+.4f}]" if r.n_seed_pairs > 1 else "")
    against = f" vs {model_label(r.baseline)}" if r.claim == "best-row" else ""
    return f"{r.mean_diff:+.4f}{spread}{against} (p={r.wilcoxon_p_holm:.2g})"


def claim_parts(claims: pd.DataFrame | None, dataset: str) -> tuple[list[list[str]], list[str]]:
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


def claims_heading(dataset: str) -> str:
    if dataset in PAPER_DATASETS:
        return f"{dataset_label(dataset)}: the paper's claims"
    return f"{dataset_label(dataset)}: {DIRECTIONS_HEADING}"
