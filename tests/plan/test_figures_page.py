"""docs/figures.md is generated: `evcf docs --write` renders it from results/bench/*.json and
params.yaml, and the committed page is exactly what renders now."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from evcf.docs import PAGE, render

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_figures_page_is_what_the_committed_figures_render():
    """A bench JSON, a run record, params.yaml or a printout changed without `evcf docs --write`
    shows here: the page is compared byte for byte."""
    assert render(REPO) == (REPO / PAGE).read_text(), "run `evcf docs --write` and commit docs/figures.md"


def test_a_changed_figure_changes_the_page(tmp_path):
    """The page is rendered from the JSONs, not kept: one epoch figure changed is a different page."""
    for name in ("params.yaml", "results"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    bench = tmp_path / "results/bench/cpu-synthetic.json"
    data = json.loads(bench.read_text())
    data["models"]["vamp"]["epoch_s"] *= 2
    bench.write_text(json.dumps(data))
    assert render(tmp_path) != (REPO / PAGE).read_text()
