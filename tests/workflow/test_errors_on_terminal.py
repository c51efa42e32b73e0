"""A failed step's one-line evcf error reaches the terminal under both front-ends, not only a log file."""

from __future__ import annotations

import pytest

from conftest import make_workflow_copy, run, tool

pytestmark = pytest.mark.slow

# Netflix cannot be downloaded: with no data in data/raw/netflix the split fails with evcf's message
SELECTION = {"datasets": ["netflix"], "models": ["popularity"], "seeds": [1]}


def error_lines(proc) -> list[str]:
    return [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line]


def test_snakemake_prints_the_failed_jobs_error_line(tmp_path):
    root = make_workflow_copy(tmp_path / "wf", **SELECTION)
    proc = run([tool("snakemake"), "--cores", "1", "all"], cwd=root, check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert any("no Netflix Prize ratings found" in line and "kaggle" in line.lower() for line in lines), \
        (proc.stdout + proc.stderr)[-4000:]


def test_dvc_repro_prints_the_failed_jobs_error_line(tmp_path):
    root = make_workflow_copy(tmp_path / "dvc", **SELECTION)
    run(["git", "init", "-q"], cwd=root)
    run([tool("dvc"), "init", "-q"], cwd=root)
    proc = run([tool("dvc"), "repro"], cwd=root, check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert any("no Netflix Prize ratings found" in line for line in lines), (proc.stdout + proc.stderr)[-4000:]
