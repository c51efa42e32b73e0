"""Table 1 as LaTeX (``table1.tex``): booktabs ``tabular``s with a column group per dataset, as the paper
has them, then one comparison table per dataset with published values, and the notes."""

from __future__ import annotations

import pandas as pd

from evcf.report.rows import (MARK, METRIC_LABELS, SEPARATOR_TEXT, comparison_datasets, comparison_rows, dataset_label,
                              fmt_diff, fmt_published, needs_separator, ours_parts, table_datasets, table_notes,
                              table_rows, title)
from evcf.report.stats import METRICS

__all__ = ["render_latex"]


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
    mean, spread, n = ours_parts(rec)
    if rec.best:
        mean = rf"\textbf{{{mean}}}"
    text = rf"{mean} $\pm$ {spread} {n}" if spread else f"{mean} {n}"
    return text + (r"$^{\dagger}$" if rec.significant else "")


def _latex_diff(value: float) -> str:
    text = fmt_diff(value)
    return "$-$" + text[1:] if text.startswith("-") else text


def render_latex(table: pd.DataFrame, reference: str = "mult-vae") -> str:
    """Table 1 as booktabs ``tabular``s (needs ``\\usepackage{booktabs}``) with notes below.

    One table with a column group per dataset, then one comparison table per dataset that has
    published values.
    """
    datasets = table_datasets(table)
    rows = table_rows(table)
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
        if needs_separator(rows, i):
            lines += [r"\midrule",
                      rf"\multicolumn{{{n_cols}}}{{l}}{{\emph{{{_latex_escape(SEPARATOR_TEXT)}}}}} \\"]
        cells = [_latex_cell(row.cells.get((d, m))) for d in datasets for m in METRICS]
        lines.append(" & ".join([_latex_escape(row.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]

    for dataset in comparison_datasets(table):
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
        for row in comparison_rows(table, dataset):
            cells = []
            for metric in METRICS:
                rec = row.cells[(dataset, metric)]
                cells += [f"{rec.mean:.4f}", fmt_published(rec.published), _latex_diff(rec.diff)]
            source = _latex_escape(row.cells[(dataset, METRICS[0])].published_source)
            lines.append(" & ".join([_latex_escape(row.label), *cells, source]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", ""]

    lines += [r"\smallskip", r"{\footnotesize"]
    lines += [_latex_escape(note) + r"\\" for note in table_notes(table, reference, grouped=True)]
    lines += ["}", ""]
    return "\n".join(lines)
