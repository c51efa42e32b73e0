"""The README's commands, run as a user runs them: in a committed clone with a clean work tree."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from conftest import BIN, committed_clone, readme_block, run

pytestmark = pytest.mark.slow


def _shell(command: str, cwd) -> subprocess.CompletedProcess:
    """``command`` through bash, with the environment's snakemake, dvc and evcf first on PATH."""
    return run(["bash", "-c", f'PATH="{BIN}:$PATH"; {command}'], cwd)


@pytest.mark.parametrize("front_end", ["snakemake", "dvc"])
def test_changing_one_setting_applies_the_value_in_a_committed_clone(tmp_path, front_end):
    """README "Changing one setting": the typed value reaches the run (its identity in metrics.json,
    and for --config the record of where it came from) in a clone whose params.yaml is committed
    and unchanged; before the committed-file check compared the file, the --config line was
    refused here as an edit of params.yaml."""
    commands = [c for c in readme_block("### Changing one setting") if c.split()[0] == front_end]
    assert len(commands) == 1, commands
    root = committed_clone(tmp_path / "clone")
    _shell(commands[0], root)
    metrics = json.loads((root / "results/synthetic/mult-vae/seed-1/metrics.json").read_text())
    assert metrics["identity"]["train"]["lr"] == 0.002
    history = pd.read_csv(root / "results/synthetic/mult-vae/seed-1/history.csv")
    assert len(history) == metrics["identity"]["train"]["epochs"]
    if front_end == "snakemake":
        assert metrics["settings_source"]["train.lr"] == {"from": "command line: model_params.mult-vae.train",
                                                           "value": 0.002}
    assert (root / "reports/synthetic/table1.md").exists()
