"""Stopping the pipeline is not crashing: a signal to Snakemake (Ctrl-C to the terminal's process
group, or SIGINT/SIGTERM to Snakemake alone) stops its training jobs at the end of their epoch with
a checkpoint, leaves no job training on, and the last line on the terminal is evcf's, saying what
was stopped and how to resume (workflow/rules/common.smk, evcf/training.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from conftest import BIN, REPO, TINY_DATA, make_workflow_copy, run, tool

pytestmark = pytest.mark.slow

RUN = "results/synthetic-tiny/mult-vae/seed-1"


@pytest.mark.parametrize("target,signum", [("group", signal.SIGINT), ("snakemake", signal.SIGTERM)])
def test_a_stopped_pipeline_checkpoints_its_jobs_and_says_how_to_resume(tmp_path, target, signum):
    data = {**TINY_DATA, "train": {**TINY_DATA["train"], "epochs": 5000, "batch_size": 20}}
    root = make_workflow_copy(tmp_path / "wf", models=["mult-vae"], tune={})
    params = (root / "params.yaml")
    import yaml

    config = yaml.safe_load(params.read_text())
    config["data"]["synthetic-tiny"] = data
    params.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(root), "LC_ALL": "C.UTF-8", "PYTHONPATH": str(REPO),
           **{var: os.environ[var] for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    proc = subprocess.Popen([tool("snakemake"), "--cores", "1", "all"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    progress = root / RUN / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.1)
    jobs = psutil.Process(proc.pid).children(recursive=True)
    assert any("train" in " ".join(p.cmdline()) for p in jobs), "no training job was running"
    if target == "group":
        os.killpg(proc.pid, signum)  # what Ctrl-C in the terminal does
    else:
        proc.send_signal(signum)  # Snakemake alone: a scheduler, a `kill`
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not [p for p in jobs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "a job trains on"
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1] == (f"evcf: stopped by {signal.Signals(signum).name}: 1 run(s) checkpointed ({RUN}); "
                         "run the same command again to resume"), out[-3000:]
    assert "Traceback" not in out
    stopped_at = json.loads(progress.read_text())
    assert stopped_at["state"] == "interrupted" and (root / RUN / "checkpoint.pt").exists()
    again = run([tool("snakemake"), "--cores", "1", "-n", "all"], cwd=root)  # the rerun would resume it
    assert f"{RUN}/metrics.json" in again.stdout + again.stderr
