"""Several training jobs on one GPU (issue 29): the `gpu_slots` resource of the training rules.

A dry run cannot show it (Snakemake skips its resource scheduling under ``-n``), so the grid's
``tune_point`` jobs really run here, with ``device: cuda`` in the config, a stand-in ``evcf`` on PATH
that records when each job starts and ends (a second of "training", its outputs written), and the
data split in place: Snakemake's own scheduler decides how many run at once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, TINY_DATA, make_workflow_copy, tool
from evcf.data.split import SPLIT_OUTPUTS

pytestmark = pytest.mark.slow

STUB = """#!/bin/sh
# a stand-in for `evcf train`: note the start, "train" for a second, write the run's outputs, note the end
out=""
while [ $# -gt 0 ]; do
    [ "$1" = --out ] && out=$2
    shift
done
echo "start $(date +%s.%N) $out" >> "$SLOT_LOG"
sleep 1.5
mkdir -p "$out"
echo '{}' > "$out/metrics.json"; echo 'epoch' > "$out/history.csv"; echo 'user' > "$out/per_user.csv"
echo "end $(date +%s.%N) $out" >> "$SLOT_LOG"
"""
GRID = {"train.max_beta": [0.1, 0.2, 0.3, 0.4]}  # 4 points a row, 8 jobs


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = make_workflow_copy(tmp_path_factory.mktemp("slots") / "wf", models=["vamp", "mult-vae-gated"],
                              device="cuda", threads=1,
                              tune={"default": {}, "synthetic-tiny": {"vamp": GRID, "mult-vae-gated": GRID}})
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["data"]["synthetic-tiny"] == TINY_DATA
    # the split in place (its contents are never read: the stand-in trains nothing)
    split = root / "data" / "processed" / "synthetic-tiny"
    split.mkdir(parents=True)
    for name in SPLIT_OUTPUTS:
        (split / name).write_text("\n")
    stub = root / "stub-bin"
    stub.mkdir()
    (stub / "evcf").write_text(STUB)
    (stub / "evcf").chmod(0o755)
    return root


def most_at_once(root: Path, *args: str) -> tuple[int, int]:
    """(the most stand-in jobs running at the same time, the jobs run) of one Snakemake run of the grid."""
    log = root / f"slots-{len(list(root.glob('slots-*.log')))}.log"
    targets = [f"results/tune/synthetic-tiny/{model}/point-{p}/metrics.json"
               for model in ("vamp", "mult-vae-gated") for p in range(4)]
    env = {"PATH": f"{root / 'stub-bin'}:{BIN}:/usr/bin:/bin", "HOME": str(root), "LC_ALL": "C.UTF-8",
           "PYTHONPATH": str(REPO), "SLOT_LOG": str(log)}
    proc = subprocess.run([tool("snakemake"), *targets, "--cores", "16", "--forcerun", "tune_point",
                           "--allowed-rules", "tune_point", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = sorted((float(t), kind) for kind, t, _ in (line.split() for line in log.read_text().splitlines()))
    running = most = 0
    for _, kind in events:  # at equal times an end sorts before a start
        running += 1 if kind == "start" else -1
        most = max(most, running)
    return most, len(events) // 2


def test_four_gpu_slots_run_four_training_jobs_at_once_on_one_gpu(grid):
    assert most_at_once(grid, "--resources", "gpu_slots=4") == (4, 8)


def test_the_default_profile_runs_one_gpu_job_at_a_time(grid):
    """profiles/default sets gpu_slots=1: on one GPU, jobs never share it unless asked to."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"] == ["gpu_slots=1"]
    assert most_at_once(grid) == (1, 8)


def test_cpu_jobs_take_no_gpu_slot(grid):
    """device: cpu: the same jobs hold no slot, so gpu_slots=1 does not serialise them (the cores do)."""
    assert most_at_once(grid, "--resources", "gpu_slots=1", "--config", "device=cpu")[0] >= 4
