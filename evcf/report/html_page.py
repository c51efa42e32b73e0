"""Table 1 as a standalone HTML page (``table1.html``, what Snakemake's report shows): the content of the
Markdown, with the columns grouped per dataset as in the paper."""

from __future__ import annotations

import html

import pandas as pd

from evcf.report.rows import (MARK, METRIC_LABELS, SEPARATOR_TEXT, comparison_datasets, comparison_rows,
                              dataset_label, fmt_diff, fmt_published, needs_separator, ours_parts, seeds_lines,
                              table_datasets, table_notes, table_rows, title, without_published)
from evcf.report.stats import METRICS
from evcf.report.verdicts import (CLAIMS_NOTE, NO_PUBLISHED, UNCHECKED, VERDICT_HEADERS, VERDICT_NOTE, claim_parts,
                                  claims_heading, no_verdicts_line, tolerance_note, verdict_rows)

__all__ = ["render_html"]


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
    mean, spread, n = ours_parts(rec)
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
    datasets = table_datasets(table)
    rows = table_rows(table)
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
        if needs_separator(rows, i):
            out.append(f'<tr class="separator"><td colspan="{n_cols}">{esc(SEPARATOR_TEXT)}</td></tr>')
        cells = "".join(_html_cell(row.cells.get((d, m))) for d in datasets for m in METRICS)
        out.append(f'<tr><td class="label">{esc(row.label)}</td>{cells}</tr>')
    out += ["</tbody>", "</table>"]

    for dataset in comparison_datasets(table):
        out += [f"<h2>{esc(dataset_label(dataset))}: ours and published</h2>", "<table>", "<thead>",
                '<tr><th rowspan="2">Model</th>'
                + "".join(f'<th class="group" colspan="3">{METRIC_LABELS[m]}</th>' for m in METRICS)
                + '<th rowspan="2">Source</th></tr>',
                "<tr>" + "<th>ours</th><th>published</th><th>Δ</th>" * len(METRICS) + "</tr>",
                "</thead>", "<tbody>"]
        for row in comparison_rows(table, dataset):
            cells = ""
            for metric in METRICS:
                rec = row.cells[(dataset, metric)]
                cells += (f'<td class="num">{rec.mean:.4f}</td>'
                          f'<td class="num">{fmt_published(rec.published)}</td>'
                          f'<td class="num">{fmt_diff(rec.diff)}</td>')
            source = esc(row.cells[(dataset, METRICS[0])].published_source)
            out.append(f'<tr><td class="label">{esc(row.label)}</td>{cells}<td>{source}</td></tr>')
        out += ["</tbody>", "</table>"]
        missing = without_published(table, dataset)
        if missing:
            out.append(f'<p class="note">No published value for {esc(", ".join(missing))} on '
                       f"{esc(dataset_label(dataset))}.</p>")
    for dataset in datasets:
        out += _html_verdicts_and_claims(table, claims, dataset)
    notes = table_notes(table, reference, grouped=True) + [line for d in datasets for line in seeds_lines(table, d, runs)]
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
    body = verdict_rows(table, dataset)
    if body:
        out += _html_table(VERDICT_HEADERS, body)
        out.append(f'<p class="note">{esc(VERDICT_NOTE + " " + tolerance_note(table, dataset))}</p>')
    else:
        out.append(f'<p class="note">{esc(no_verdicts_line(table, dataset))}</p>')
    missing = without_published(table, dataset)
    if missing and body:
        out.append(f'<p class="note">Verdict for {esc(", ".join(missing))} on {esc(name)}: {NO_PUBLISHED}.</p>')
    body, unchecked = claim_parts(claims, dataset)
    out.append(f"<h2>{esc(claims_heading(dataset))}</h2>")
    if body:
        out += _html_table(["Claim", "Compared as", *(METRIC_LABELS[m] for m in METRICS), "Verdict"], body)
        out.append(f'<p class="note">{esc(CLAIMS_NOTE)}</p>')
    if unchecked:
        out.append(f'<p class="note">{esc(UNCHECKED + "; ".join(unchecked))}.</p>')
    return out
