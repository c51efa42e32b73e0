"""Paired significance tests of each model against a reference model, over test users.

Protocol (one comparison = one dataset × metric × model ≠ reference):

1. Per-user metric values are averaged over the seeds of a model first (:func:`average_over_seeds`),
   so every user contributes one number per model.
2. The two models' users are joined on ``uid`` and the differences ``d = model − reference`` tested
   with the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, default zero handling:
   zero differences are dropped) and the paired t-test (``scipy.stats.ttest_rel``).  When every
   difference is zero both p-values are 1 (no evidence of a difference; scipy raises or returns NaN).
3. Within each dataset × metric the p-values of the comparisons are Holm-corrected (:func:`holm`),
   separately for the Wilcoxon and the t-test family.

Effect sizes: the mean difference, Cohen's d_z = mean(d) / sd(d) (sd with ddof=1), and the matched-
pairs rank-biserial correlation r = (R⁺ − R⁻) / (R⁺ + R⁻) over the non-zero differences, where
R⁺/R⁻ are the sums of the ranks of |d| of the positive/negative differences (Kerby 2014) — positive
when the model beats the reference.

**The paper's claims** (:func:`claims_table`): the same paired tests, each row against the row it
extends (:data:`CLAIMS`), Holm-corrected within each dataset over every claim and metric tested
there; a claim holds on a metric when its model is better and the corrected Wilcoxon p is below
:data:`CLAIM_LEVEL`.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "METRICS",
    "SIGNIFICANCE_COLUMNS",
    "holm",
    "paired_tests",
    "average_over_seeds",
    "significance_table",
    "CLAIMS",
    "CLAIM_COLUMNS",
    "CLAIM_LEVEL",
    "claims_table",
    "claim_outcome",
]

log = logging.getLogger(__name__)

METRICS = ("recall@20", "recall@50", "ndcg@100")

SIGNIFICANCE_COLUMNS = [
    "dataset",
    "metric",
    "model",
    "reference",
    "n_users",
    "n_seeds_model",
    "n_seeds_reference",
    "mean_model",
    "mean_reference",
    "mean_diff",
    "sd_diff",
    "cohens_dz",
    "wilcoxon_stat",
    "wilcoxon_p",
    "wilcoxon_p_holm",
    "rank_biserial",
    "ttest_stat",
    "ttest_p",
    "ttest_p_holm",
]


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of the i-th is
    ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))`` — monotone in the sorted order and capped at 1.
    NaN p-values (comparisons that could not be made) stay NaN and do not count towards m.

    >>> holm([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for j, idx in enumerate(order):  # j = 0 .. m-1, multiplier m - j
        running = max(running, min(1.0, (m - j) * p[idx]))
        adjusted[idx] = running
    return adjusted


def paired_tests(model_values, reference_values) -> dict[str, float]:
    """Wilcoxon signed-rank and paired t-test of ``model − reference`` with effect sizes.

    Both arrays are aligned per user.  Returns the SIGNIFICANCE_COLUMNS statistics (unadjusted).
    """
    x = np.asarray(model_values, dtype=float)
    y = np.asarray(reference_values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired arrays must be 1-D and of equal length, got {x.shape} and {y.shape}")
    n = x.size
    d = x - y
    out: dict[str, float] = {
        "n_users": n,
        "mean_model": float(x.mean()) if n else np.nan,
        "mean_reference": float(y.mean()) if n else np.nan,
        "mean_diff": float(d.mean()) if n else np.nan,
        "sd_diff": float(d.std(ddof=1)) if n > 1 else np.nan,
        "cohens_dz": np.nan,
        "wilcoxon_stat": np.nan,
        "wilcoxon_p": np.nan,
        "rank_biserial": np.nan,
        "ttest_stat": np.nan,
        "ttest_p": np.nan,
    }
    if n == 0:
        return out
    if not np.any(d):  # every difference is zero: identical per-user values
        out.update(cohens_dz=0.0, wilcoxon_stat=0.0, wilcoxon_p=1.0, rank_biserial=0.0,
                   ttest_stat=0.0, ttest_p=1.0, sd_diff=0.0 if n > 1 else np.nan)
        return out

    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    r_plus, r_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    out["rank_biserial"] = float((r_plus - r_minus) / (r_plus + r_minus))
    if n > 1 and out["sd_diff"] > 0:
        out["cohens_dz"] = out["mean_diff"] / out["sd_diff"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            w = stats.wilcoxon(x, y, alternative="two-sided")
            out["wilcoxon_stat"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
        except ValueError as exc:  # e.g. too few non-zero differences for this scipy version
            log.warning("Wilcoxon test not computed (n=%d): %s", n, exc)
        if n > 1:
            t = stats.ttest_rel(x, y)
            out["ttest_stat"], out["ttest_p"] = float(t.statistic), float(t.pvalue)
    return out


def average_over_seeds(per_user: pd.DataFrame) -> pd.DataFrame:
    """Average per-user metrics over seeds: one row per (dataset, model, uid).

    ``per_user`` is long: columns dataset, model, seed, uid and the metrics.  A uid is kept only when
    every seed of that model has it (the contract says they all do; a warning is logged otherwise).
    The result also has ``n_seeds``.
    """
    columns = ["dataset", "model", "uid", "n_seeds", *METRICS]
    if per_user.empty:
        return pd.DataFrame(columns=columns)
    grouped = per_user.groupby(["dataset", "model", "uid"], sort=True)
    averaged = grouped[list(METRICS)].mean()
    averaged["n_seeds"] = grouped["seed"].nunique()
    seeds_per_model = per_user.groupby(["dataset", "model"])["seed"].nunique().rename("expected")
    averaged = averaged.reset_index().merge(seeds_per_model.reset_index(), on=["dataset", "model"])
    incomplete = averaged["n_seeds"] != averaged["expected"]
    if incomplete.any():
        for (dataset, model), n in averaged[incomplete].groupby(["dataset", "model"]).size().items():
            log.warning("%s/%s: %d users are missing from some seeds' per_user.csv; "
                        "they are left out of the per-user statistics", dataset, model, n)
    return averaged.loc[~incomplete, columns].reset_index(drop=True)


def significance_table(averaged: pd.DataFrame, reference: str = "mult-vae") -> pd.DataFrame:
    """All comparisons of each model against ``reference``, one row per dataset × metric × model.

    ``averaged`` is the output of :func:`average_over_seeds`.  Datasets without the reference model
    contribute no rows (logged); the result then may have the columns only.
    """
    rows: list[dict] = []
    for dataset, ds in averaged.groupby("dataset", sort=True):
        models = sorted(ds["model"].unique())
        if reference not in models:
            log.warning("%s: reference model %r has no runs; no significance tests for this dataset",
                        dataset, reference)
            continue
        ref = ds[ds["model"] == reference].set_index("uid")
        for model in models:
            if model == reference:
                continue
            other = ds[ds["model"] == model].set_index("uid")
            joined = other.merge(ref, how="inner", left_index=True, right_index=True,
                                 suffixes=("_model", "_reference"))
            dropped = max(len(other), len(ref)) - len(joined)
            if dropped:
                log.warning("%s: %s and %s share %d users (%d not in both); testing on the shared ones",
                            dataset, model, reference, len(joined), dropped)
            for metric in METRICS:
                result = paired_tests(joined[f"{metric}_model"].to_numpy(),
                                      joined[f"{metric}_reference"].to_numpy())
                rows.append({
                    "dataset": dataset,
                    "metric": metric,
                    "model": model,
                    "reference": reference,
                    "n_seeds_model": int(other["n_seeds"].max()) if len(other) else 0,
                    "n_seeds_reference": int(ref["n_seeds"].max()) if len(ref) else 0,
                    **result,
                })
    table = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)
    if table.empty:
        return table
    for column in ("wilcoxon_p", "ttest_p"):
        table[f"{column}_holm"] = np.nan
        for _, idx in table.groupby(["dataset", "metric"]).groups.items():
            table.loc[idx, f"{column}_holm"] = holm(table.loc[idx, column].to_numpy())
    table["n_users"] = table["n_users"].astype(int)
    return table[SIGNIFICANCE_COLUMNS]


# --- the paper's claims ---------------------------------------------------------------------------

CLAIM_LEVEL = 0.05  # Holm-corrected Wilcoxon p below this: a difference

# (id, what the paper claims, the model, the row it extends).  Kim & Suh 2019 claim their full
# model beats Mult-VAE and that each ingredient helps.  Each ingredient is judged against the row
# that differs from it by that ingredient alone, as the code defines the rows: Vamp is the EVCF
# recipe's tanh network (mult-vae-evcf) with a VampPrior; H+Vamp adds the hierarchy to Vamp; the
# gated rows add gates to H+Vamp and to the EVCF-recipe Mult-VAE.
CLAIMS = (
    ("full-model", "H+Vamp (Gated) beats Mult-VAE", "hvamp-gated", "mult-vae"),
    ("flexible-prior", "the flexible prior helps: Vamp beats Mult-VAE (EVCF recipe)", "vamp", "mult-vae-evcf"),
    ("hierarchy", "the hierarchy helps: H+Vamp beats Vamp", "hvamp", "vamp"),
    ("gating-hvamp", "gating helps: H+Vamp (Gated) beats H+Vamp", "hvamp-gated", "hvamp"),
    ("gating-multvae", "gating helps: Mult-VAE (Gated) beats Mult-VAE (EVCF recipe)", "mult-vae-gated",
     "mult-vae-evcf"),
)

CLAIM_COLUMNS = ["dataset", "claim", "text", "metric", "model", "baseline", "n_users", "mean_model",
                 "mean_baseline", "mean_diff", "wilcoxon_p", "wilcoxon_p_holm", "ttest_p", "ttest_p_holm",
                 "outcome"]


def claim_outcome(mean_diff: float, p_holm: float, level: float = CLAIM_LEVEL) -> str:
    """``holds`` (better, significant), ``reversed`` (worse, significant) or ``no difference``."""
    if not np.isnan(p_holm) and p_holm < level:
        return "holds" if mean_diff > 0 else "reversed"
    return "no difference"


def claims_table(averaged: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """Every claim of ``claims`` tested on every dataset where both of its rows ran.

    ``averaged`` is :func:`average_over_seeds`'s output.  One row per dataset × claim × metric,
    columns :data:`CLAIM_COLUMNS`; a claim whose rows did not both run on a dataset has no rows there.
    """
    rows: list[dict] = []
    for dataset, ds in averaged.groupby("dataset", sort=True):
        ran = set(ds["model"])
        for claim, text, model, baseline in claims:
            if model not in ran or baseline not in ran:
                continue
            joined = ds[ds["model"] == model].set_index("uid").merge(
                ds[ds["model"] == baseline].set_index("uid"), left_index=True, right_index=True,
                suffixes=("_model", "_baseline"))
            for metric in METRICS:
                result = paired_tests(joined[f"{metric}_model"].to_numpy(), joined[f"{metric}_baseline"].to_numpy())
                rows.append({"dataset": dataset, "claim": claim, "text": text, "metric": metric, "model": model,
                             "baseline": baseline, "n_users": result["n_users"], "mean_model": result["mean_model"],
                             "mean_baseline": result["mean_reference"], "mean_diff": result["mean_diff"],
                             "wilcoxon_p": result["wilcoxon_p"], "ttest_p": result["ttest_p"]})
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    if table.empty:
        return table
    for column in ("wilcoxon_p", "ttest_p"):
        for _, idx in table.groupby("dataset").groups.items():
            table.loc[idx, f"{column}_holm"] = holm(table.loc[idx, column].to_numpy())
    table["outcome"] = [claim_outcome(d, p) for d, p in zip(table["mean_diff"], table["wilcoxon_p_holm"])]
    table["n_users"] = table["n_users"].astype(int)
    return table[CLAIM_COLUMNS]
