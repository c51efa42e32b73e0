"""Asking for the SLURM test (EVCF_TEST_SLURM=1) and not getting a cluster is a failure, never a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pytest and Snakemake as subprocesses

TESTS = Path(__file__).resolve().parent

PLUGIN = '''
import slurm_cluster

def pytest_configure(config):
    def unavailable():
        raise slurm_cluster.ClusterUnavailable("simulated: no slurmctld on this machine")
    slurm_cluster.install = unavailable
'''


def run_slurm_tests(tmp_path: Path, opt_in: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "no_cluster_plugin.py").write_text(PLUGIN)
    env = {k: v for k, v in os.environ.items() if k != "EVCF_TEST_SLURM"}
    if opt_in is not None:
        env["EVCF_TEST_SLURM"] = opt_in
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(TESTS)])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no_cluster_plugin", "-p", "no:cacheprovider",
                           "-m", "slurm",  # the slow tier's marker: the fast tier's default deselects it
                           str(TESTS / "test_slurm.py"), "-k", "failed_job_names"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_opted_in_without_a_cluster_fails(tmp_path):
    proc = run_slurm_tests(tmp_path, "1")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "no SLURM test cluster could be started" in proc.stdout and "simulated" in proc.stdout
    assert " skipped" not in proc.stdout.splitlines()[-1]


def test_not_opted_in_skips(tmp_path):
    proc = run_slurm_tests(tmp_path, None)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 skipped" in proc.stdout.splitlines()[-1]
