"""Table 1 as GitHub-flavoured Markdown (``table1.md``), and what each row ran with.

Markdown has no column groups, so :func:`render_markdown` writes one table per dataset (each a few
columns wide), then per dataset the comparison with the published values, the reproduction verdicts
and the paper's claims (:mod:`evcf.report.verdicts`); :func:`render_settings_markdown` lists the
source of each row's setting.
"""

from __future__ import annotations

import json

import pandas as pd
from tabulate import tabulate

from evcf.report.rows import (MARK, METRIC_LABELS, SEPARATOR_TEXT, comparison_datasets, comparison_rows,
                              dataset_label, fmt_diff, fmt_published, model_label, needs_separator, order_datasets,
                              order_models, ours_parts, published_sources, seeds_lines, table_datasets, table_notes,
                              table_rows, title, without_published)
from evcf.report.stats import METRICS
from evcf.report.verdicts import (CLAIMS_NOTE, NO_PUBLISHED, UNCHECKED, VERDICT_HEADERS, VERDICT_NOTE, claim_parts,
                                  claims_heading, no_verdicts_line, tolerance_note, verdict_rows)

__all__ = ["render_markdown", "render_settings_markdown", "settings_rows", "SEARCH_LABELS"]


def render_markdown(table: pd.DataFrame, reference: str = "mult-vae", claims: pd.DataFrame | None = None,
                    runs: pd.DataFrame | None = None) -> str:
    """Table 1 as GitHub-flavoured Markdown: per dataset our table, the published comparison, the
    reproduction verdicts and the paper's claims (``claims``: :func:`evcf.report.stats.claims_table`);
    ``runs`` (one row per run, with ``seed``) lists each row's seeds."""
    lines = [f"# {title(table)}", ""]
    for dataset in table_datasets(table):
        rows = table_rows(table, [dataset])
        headers = ["Model", *(METRIC_LABELS[m] for m in METRICS)]
        body = []
        for i, row in enumerate(rows):
            if needs_separator(rows, i):
                body.append([f"*{SEPARATOR_TEXT}:*", "", "", ""])
            body.append([row.label, *(_md_cell(row.cells.get((dataset, m))) for m in METRICS)])
        lines += [f"## {dataset_label(dataset)}", "",
                  tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]
        if dataset in comparison_datasets(table):
            lines += [f"### {dataset_label(dataset)}: ours and published", "",
                      _md_comparison(table, dataset), ""]
            missing = without_published(table, dataset)
            if missing:
                lines += [f"No published value for {', '.join(missing)} on {dataset_label(dataset)}.",
                          ""]
        lines += _md_verdicts(table, dataset) + _md_claims(claims, dataset)
    notes = table_notes(table, reference) + [line for d in table_datasets(table) for line in seeds_lines(table, d, runs)]
    lines += ["**Notes**", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _md_cell(rec) -> str:
    if rec is None:
        return "—"
    mean, spread, n = ours_parts(rec)
    if rec.best:
        mean = f"**{mean}**"
    text = f"{mean} ± {spread} {n}" if spread else f"{mean} {n}"
    return text + (MARK if rec.significant else "")


def _md_comparison(table: pd.DataFrame, dataset: str) -> str:
    """Ours (mean), published and Δ per metric; the source as a number listed under the table."""
    sources = published_sources(table, [dataset])
    headers = ["Model"]
    for metric in METRICS:
        headers += [METRIC_LABELS[metric], "publ.", "Δ"]
    headers.append("Source")
    body = []
    for row in comparison_rows(table, dataset):
        line = [row.label]
        for metric in METRICS:
            rec = row.cells[(dataset, metric)]
            line += [f"{rec.mean:.4f}", fmt_published(rec.published), fmt_diff(rec.diff)]
        line.append(f"[{sources.index(row.cells[(dataset, METRICS[0])].published_source) + 1}]")
        body.append(line)
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    refs = ["Per metric: our mean, the published value (publ.), Δ = ours − published. Sources:",
            *(f"[{i}] {source}" for i, source in enumerate(sources, start=1))]
    return text + "\n\n" + "  \n".join(refs)


def _md_verdicts(table: pd.DataFrame, dataset: str) -> list[str]:
    name = dataset_label(dataset)
    lines = [f"### {name}: did the published results reproduce?", ""]
    body = verdict_rows(table, dataset)
    if body:
        lines += [tabulate(body, headers=VERDICT_HEADERS, tablefmt="github", disable_numparse=True), "",
                  VERDICT_NOTE + " " + tolerance_note(table, dataset), ""]
    else:
        lines += [no_verdicts_line(table, dataset), ""]
    missing = without_published(table, dataset)
    if missing and body:
        lines += [f"Verdict for {', '.join(missing)} on {name}: {NO_PUBLISHED}.", ""]
    return lines


def _md_claims(claims: pd.DataFrame | None, dataset: str) -> list[str]:
    body, unchecked = claim_parts(claims, dataset)
    lines = [f"### {claims_heading(dataset)}", ""]
    if body:
        lines += [tabulate(body, headers=["Claim", "Compared as", *(METRIC_LABELS[m] for m in METRICS), "Verdict"],
                           tablefmt="github", disable_numparse=True), "", CLAIMS_NOTE, ""]
    if unchecked:
        lines += [UNCHECKED + "; ".join(unchecked) + ".", ""]
    return lines


# --- what each row ran with ---------------------------------------------------------------------

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
