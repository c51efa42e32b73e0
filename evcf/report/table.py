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
* the reproduction verdict (:func:`reproduction`): ``se`` and ``se_source`` (``seeds``: sd / √n over
  n ≥ 2 seeds; ``test users``: the run's standard error over its test users, for a single run),
  ``ci_low``, ``ci_high`` (our 95% interval), ``z`` = (ours − published) / se, and ``verdict``:
  ``reproduced`` (the published value inside our 95% interval), ``above`` / ``below`` (ours above or
  below it), or ``no published value``.

**Verdicts and claims.**  :func:`render_markdown` and :func:`render_html` add per dataset the
verdict of every cell with a published value, and the paper's claims checked by paired tests
(:func:`evcf.report.stats.claims_table`), each with a one-line verdict (:func:`claim_verdict`).

Markdown has no column groups, so :func:`render_markdown` writes one table per dataset (each a few
columns wide); :func:`render_latex` and :func:`render_html` group the columns per dataset as the
paper does.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from scipy import stats as scipy_stats

from evcf.report.published import Published, load_published
from evcf.report.stats import CLAIMS, METRICS

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
    "claim_verdict",
    "NO_PUBLISHED",
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
    "se",
    "se_source",
    "ci_low",
    "ci_high",
    "z",
    "verdict",
]

NO_PUBLISHED = "no published value"
CONFIDENCE = 0.95  # the interval of the reproduction verdict


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


def reproduction(mean: float, std: float, n: int, user_se: float, published: float) -> dict:
    """The reproduction verdict of one cell: our 95% interval and where the published value lies.

    With n ≥ 2 seeds (and a spread) the standard error is sd / √n and the interval
    mean ± t_{0.975, n−1} · se; a single run uses its standard error over the test users and
    mean ± z_{0.975} · se.  ``reproduced`` when the published value lies inside the interval, else
    ``above`` (ours higher) or ``below``; ``z`` = (ours − published) / se in standard errors.
    Without a published value: ``no published value`` and nothing else.
    """
    out = {"se": np.nan, "se_source": "", "ci_low": np.nan, "ci_high": np.nan, "z": np.nan,
           "verdict": NO_PUBLISHED}
    if published is None or math.isnan(published):
        return out
    if n >= 2 and not math.isnan(std) and std > 0:
        se, source = std / math.sqrt(n), "seeds"
        half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    elif user_se is not None and not math.isnan(user_se) and user_se > 0:
        se, source = float(user_se), "test users"
        half = float(scipy_stats.norm.ppf(0.5 + CONFIDENCE / 2)) * se
    else:
        out.update(verdict="no spread to judge by")
        return out
    diff = mean - published
    verdict = "reproduced" if abs(diff) <= half else "above" if diff > 0 else "below"
    out.update(se=se, se_source=source, ci_low=mean - half, ci_high=mean + half, z=diff / se, verdict=verdict)
    return out


def claim_verdict(rows: pd.DataFrame) -> str:
    """One line for a claim on one dataset from its :func:`~evcf.report.stats.claims_table` rows."""
    by = {o: [METRIC_LABELS[m] for m in rows.loc[rows["outcome"] == o, "metric"]]
          for o in ("holds", "reversed", "no difference")}
    n = len(rows)
    if len(by["holds"]) == n:
        return f"holds on all {n} metrics"
    if len(by["reversed"]) == n:
        return f"reversed on all {n} metrics (the model is worse)"
    if len(by["no difference"]) == n:
        return "not shown: no significant difference on any metric"
    parts = [f"holds on {', '.join(by['holds'])}" if by["holds"] else "",
             f"reversed on {', '.join(by['reversed'])}" if by["reversed"] else "",
             f"no significant difference on {', '.join(by['no difference'])}" if by["no difference"] else ""]
    return "partly: " + "; ".join(p for p in parts if p)


def build_table(runs: pd.DataFrame, significance: pd.DataFrame | None = None,
                published: Published | None = None) -> pd.DataFrame:
    """The tidy Table 1: one row per (dataset, model, metric) that ran, columns TABLE_COLUMNS.

    ``significance`` is :func:`evcf.report.stats.significance_table`'s output (may be None/empty);
    ``published`` is :func:`evcf.report.published.load_published`'s (None: the package's file).
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

    # a single run's standard error over its test users (metrics.json's <metric>_se), per cell
    user_se: dict[tuple[str, str, str], float] = {}
    for metric in METRICS:
        if f"{metric}_se" in runs:
            for (d, m), v in runs.groupby(["dataset", "model"])[f"{metric}_se"].mean().items():
                user_se[(d, m, metric)] = float(v)

    records = []
    for s in stats.itertuples(index=False):
        pub = published.get((s.dataset, s.model, s.metric))
        p_w, p_t = sig.get((s.dataset, s.model, s.metric), (np.nan, np.nan))
        verdict = reproduction(float(s.mean), float(s.std), int(s.n), user_se.get((s.dataset, s.model, s.metric),
                                                                                      np.nan),
                               pub.value if pub else np.nan)
        records.append({
            "row_order": models.index(s.model), "section": model_section(s.model),
            "model": s.model, "label": model_label(s.model), "dataset": s.dataset,
            "metric": s.metric, "mean": float(s.mean), "std": float(s.std), "n": int(s.n),
            "published": pub.value if pub else np.nan,
            "published_source": pub.source if pub else "",
            "diff": float(s.mean) - pub.value if pub else np.nan,
            "best": False, "wilcoxon_p_holm": p_w, "ttest_p_holm": p_t,
            "significant": bool(p_w < SIGNIFICANCE_LEVEL),
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
    if rec.verdict in ("reproduced", "above", "below"):
        return f"{rec.verdict} ({round(rec.z, 1) + 0.0:+.1f} SE)"  # + 0.0: no "-0.0"
    return rec.verdict


def _verdict_rows(table: pd.DataFrame, dataset: str) -> list[list[str]]:
    """Model, metric, ours, our 95% interval, published, verdict: every cell with a published value."""
    body = []
    for row in _comparison_rows(table, dataset):
        for metric in METRICS:
            rec = row.cells.get((dataset, metric))
            if rec is None or math.isnan(rec.published):
                continue
            interval = (f"[{rec.ci_low:.4f}, {rec.ci_high:.4f}] ({rec.se_source}, n={rec.n})"
                        if rec.se_source else f"none (n={rec.n})")
            body.append([row.label, METRIC_LABELS[metric], f"{rec.mean:.4f}", interval,
                         _fmt_published(rec.published), _fmt_verdict(rec)])
    return body


VERDICT_NOTE = ("Verdict: reproduced when the published value lies inside our 95% interval (over seeds: "
                "mean ± t(0.975, n−1) · sd/√n; for a single run: mean ± 1.96 · its standard error over the "
                "test users), else above or below it; (±x SE): ours − published in our standard errors.")

CLAIMS_NOTE = ("Each claim: the model against the row it extends, per test user (values averaged over "
               "seeds), two-sided Wilcoxon signed-rank test, Holm-corrected over every claim and metric of "
               "the dataset; a cell gives mean difference (model − row it extends) and the corrected p. "
               "Holds: better with p < 0.05; reversed: worse with p < 0.05.")


def _claim_parts(claims: pd.DataFrame | None, dataset: str) -> tuple[list[list[str]], list[str]]:
    """(rows of the claims table: claim, one cell per metric, verdict; claims not checked, as text)."""
    here = pd.DataFrame() if claims is None or claims.empty else claims[claims["dataset"] == dataset]
    body, unchecked = [], []
    for claim, text, model, baseline in CLAIMS:
        rows = here[here["claim"] == claim] if len(here) else here
        if not len(rows):
            unchecked.append(f"{text} ({model_label(model)} and {model_label(baseline)} did not both run)")
            continue
        cells = {r.metric: f"{r.mean_diff:+.4f} (p={r.wilcoxon_p_holm:.2g})" for r in rows.itertuples()}
        body.append([text[0].upper() + text[1:], *(cells.get(m, "not tested") for m in METRICS),
                     claim_verdict(rows)])
    return body, unchecked


def render_markdown(table: pd.DataFrame, reference: str = "mult-vae", claims: pd.DataFrame | None = None) -> str:
    """Table 1 as GitHub-flavoured Markdown: per dataset our table, the published comparison, the
    reproduction verdicts and the paper's claims (``claims``: :func:`evcf.report.stats.claims_table`)."""
    lines = ["# Table 1 (regenerated)", ""]
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
    lines += ["**Notes**", "", *(f"- {note}" for note in _notes(table, reference))]
    return "\n".join(lines) + "\n"


def _md_verdicts(table: pd.DataFrame, dataset: str) -> list[str]:
    name = dataset_label(dataset)
    lines = [f"### {name}: did the published results reproduce?", ""]
    body = _verdict_rows(table, dataset)
    if body:
        lines += [tabulate(body, headers=["Model", "Metric", "Ours", "Our 95% interval", "Published", "Verdict"],
                           tablefmt="github", disable_numparse=True), "", VERDICT_NOTE, ""]
    missing = _without_published(table, dataset)
    if missing:
        lines += [f"Verdict for {', '.join(missing)} on {name}: {NO_PUBLISHED}.", ""]
    return lines


def _md_claims(claims: pd.DataFrame | None, dataset: str) -> list[str]:
    body, unchecked = _claim_parts(claims, dataset)
    lines = [f"### {dataset_label(dataset)}: the paper's claims", ""]
    if body:
        lines += [tabulate(body, headers=["Claim", *(METRIC_LABELS[m] for m in METRICS), "Verdict"],
                           tablefmt="github", disable_numparse=True), "", CLAIMS_NOTE, ""]
    if unchecked:
        lines += ["Not checked here: " + "; ".join(unchecked) + ".", ""]
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
        "% Table 1 (regenerated) -- written by evcf.report; needs \\usepackage{booktabs}",
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


def render_html(table: pd.DataFrame, reference: str = "mult-vae", claims: pd.DataFrame | None = None) -> str:
    """Table 1 as a standalone HTML page (for Snakemake's report): the same content as the Markdown,
    with the columns grouped per dataset as in the paper."""
    esc = html.escape
    datasets = _datasets(table)
    rows = _rows(table)
    n_cols = 1 + 3 * len(datasets)
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>Table 1 (regenerated)</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
        "<h1>Table 1 (regenerated)</h1>",
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
    out += [f'<p class="note">{esc(note)}</p>' for note in _notes(table, reference, grouped=True)]
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
        out += _html_table(["Model", "Metric", "Ours", "Our 95% interval", "Published", "Verdict"], body)
        out.append(f'<p class="note">{esc(VERDICT_NOTE)}</p>')
    missing = _without_published(table, dataset)
    if missing:
        out.append(f'<p class="note">Verdict for {esc(", ".join(missing))} on {esc(name)}: {NO_PUBLISHED}.</p>')
    body, unchecked = _claim_parts(claims, dataset)
    out.append(f"<h2>{esc(name)}: the paper's claims</h2>")
    if body:
        out += _html_table(["Claim", *(METRIC_LABELS[m] for m in METRICS), "Verdict"], body)
        out.append(f'<p class="note">{esc(CLAIMS_NOTE)}</p>')
    if unchecked:
        out.append(f'<p class="note">Not checked here: {esc("; ".join(unchecked))}.</p>')
    return out
