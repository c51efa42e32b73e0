"""The SLURM profile, run for real against a one-node cluster that the test starts (opt-in).

``EVCF_TEST_SLURM=1 pytest -m slurm`` installs Debian's slurmctld, slurmd and munge when they are
missing (apt-get, as root), starts them on this machine (tests/slurm_cluster.py), and runs the tiny
synthetic configuration through ``snakemake --executor slurm --workflow-profile workflow/profiles/slurm``
the way a grid goes on a cluster: one training fails, the run stops with the job's SLURM log named,
the cause is fixed, and the rerun submits only what is missing.  The final results must equal a
local ``snakemake --cores 2 all``.  Skipped unless ``EVCF_TEST_SLURM=1`` (``.ci/run`` sets it when
``CI=true``); once asked for, a cluster that cannot be installed or started is a failure, not a skip.  The cluster has no accounting storage, so the executor
polls ``squeue``, and the evidence comes from ``scontrol`` (finished jobs stay for MinJobAge).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, TINY, make_workflow_copy, run, tool
from slurm_cluster import Cluster, ClusterUnavailable, install, start

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("EVCF_TEST_SLURM") != "1",
                       reason="opt-in: set EVCF_TEST_SLURM=1 (installs and starts slurmctld/slurmd/munge as root)"),
]

RUN = "results/synthetic-tiny/{model}/seed-1"
MODELS = ("mult-vae", "popularity")
TIMING_KEYS = {"wall_seconds"}
PROFILE = "workflow/profiles/slurm"
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")  # the plugin, per sbatch


@dataclass(frozen=True)
class Job:
    rule: str
    jobid: str
    log: Path  # the SLURM log: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log


@dataclass(frozen=True)
class Grid:
    root: Path
    failed_output: str  # the first run's stdout + stderr
    failed_jobs: list[Job]
    train_log: str  # the failed training's own log (logs/train_model/...), before the rerun replaced it
    finished: dict[Path, int]  # what the first run finished: path -> mtime (ns)
    output: str  # the rerun's stdout + stderr
    jobs: list[Job]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request) -> Cluster:
    # EVCF_TEST_SLURM=1 asked for this test: anything that prevents it is a failure, never a skip
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("EVCF_TEST_SLURM=1 but the SLURM executor plugin is missing: pip install -e '.[slurm]'")
    try:
        install()
        started = start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        pytest.fail(f"EVCF_TEST_SLURM=1 but no SLURM test cluster could be started: {exc}")
    request.addfinalizer(started.stop)
    return started


def fit_profile_to_node(root: Path, cluster: Cluster) -> None:
    """Keep the copied profile as a real cluster would get it, minus what the one test node lacks.

    No memory request above the node's (one single-CPU job per CPU fits side by side), no GPU, and
    training with the local run's torch threads, so that both runs compute the same floats.
    """
    path = root / PROFILE / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    per_job_mb = cluster.mem_mb // cluster.cpus
    for resources in profile["set-resources"].values():
        resources["mem_mb"] = min(int(resources["mem_mb"]), per_job_mb)
        for key in ("gpu", "gpu_model", "gres"):
            resources.pop(key, None)
    profile["set-threads"] = {"train_model": TINY["threads"]}
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def snakemake_slurm(root: Path, cluster: Cluster, *, fails: bool = False) -> str:
    """``snakemake --executor slurm all`` with the workflow profile; its stdout and stderr together."""
    cmd = [
        tool("snakemake"), "--executor", "slurm", "--workflow-profile", PROFILE,
        # the test partition is not the cluster's default: the run must name it, as on a real cluster
        "--default-resources", f"slurm_partition={cluster.partition}",
        "--slurm-status-command", "squeue",  # no accounting storage here, so no sacct
        "--slurm-init-seconds-before-status-checks", "5",  # the jobs take seconds, not the default 40
        "--slurm-keep-successful-logs",  # evidence that every job ran under SLURM
        "all",
    ]
    # sbatch --export=ALL hands PATH (and SLURM_CONF) to the jobs, which run `python -m snakemake`
    # and `evcf` from the venv; cluster.bin holds the test cluster's srun shim
    env = {"PATH": f"{cluster.bin}:{BIN}:/usr/bin:/bin", "HOME": str(root), "LC_ALL": "C.UTF-8", **cluster.env}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if (proc.returncode != 0) != fails:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}, expected "
                             f"{'a failure' if fails else 'success'}:\n{output[-6000:]}")
    return output


def submitted(root: Path, output: str) -> list[Job]:
    """Every job the run submitted, from the plugin's messages."""
    logdir = root.resolve() / ".snakemake/slurm_logs"
    jobs = []
    for jobid, log in SUBMITTED.findall(output):
        log = Path(log)
        jobs.append(Job(log.relative_to(logdir).parts[0].removeprefix("rule_"), jobid, log))
    return jobs


def minutes(limit: str) -> int:
    """SLURM's ``[D-]HH:MM:SS`` time limit in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, secs = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins + secs // 60


def metrics(root: Path, model: str) -> dict:
    data = json.loads((root / RUN.format(model=model) / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def grid(cluster, tmp_path_factory) -> Grid:
    """The tiny grid on SLURM: mult-vae's training broken, then fixed and resumed."""
    root = make_workflow_copy(tmp_path_factory.mktemp("slurm-run") / "wf")
    fit_profile_to_node(root, cluster)
    # a fault the config cannot see: the run cannot write its metrics (a directory in the way)
    blocker = root / RUN.format(model="mult-vae") / "metrics.json.tmp"
    blocker.mkdir(parents=True)

    failed_output = snakemake_slurm(root, cluster, fails=True)
    assert "Error in rule train_model:" in failed_output, failed_output[-6000:]  # failed for the planted reason
    train_log = (root / "logs/train_model/synthetic-tiny/mult-vae/seed-1.log").read_text()
    finished = {p: p.stat().st_mtime_ns
                for d in ("data", RUN.format(model="popularity")) for p in (root / d).rglob("*") if p.is_file()}

    blocker.rmdir()
    output = snakemake_slurm(root, cluster)
    return Grid(root, failed_output, submitted(root, failed_output), train_log, finished, output,
                submitted(root, output))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    root = make_workflow_copy(tmp_path_factory.mktemp("local") / "wf")
    run([tool("snakemake"), "--cores", "2", "all"], cwd=root)
    return root


def test_a_failed_job_names_its_slurm_log(grid, cluster):
    failed = [j for j in grid.failed_jobs if j.rule == "train_model" and "_mult-vae_" in str(j.log)]
    assert len(failed) == 2, grid.failed_output[-3000:]  # the first attempt and the profile's one retry
    for job in failed:
        assert cluster.job(job.jobid)["JobState"] == "FAILED"
        # Snakemake's error report lists the job's SLURM log beside the rule's own log
        assert re.search(rf"log: logs/train_model/\S+, {re.escape(str(job.log))} ", grid.failed_output), \
            grid.failed_output[-3000:]
        assert "Error in rule train_model" in job.log.read_text()
    assert "metrics.json.tmp" in grid.train_log
    # keep-going: everything that did not depend on the failed run finished
    assert Counter(j.rule for j in grid.failed_jobs) == Counter(
        {"generate_dataset": 1, "split_dataset": 1, "train_model": 3})
    assert any(p.name == "stats.json" for p in grid.finished) and any(p.name == "per_user.csv" for p in grid.finished)


def test_the_rerun_submits_only_what_is_missing(grid):
    assert sorted(j.rule for j in grid.jobs) == ["make_report", "train_model"], grid.output[-3000:]
    assert all("_mult-vae_" in str(j.log) for j in grid.jobs if j.rule == "train_model")
    assert {p: p.stat().st_mtime_ns for p in grid.finished} == grid.finished
    assert (grid.root / "reports/synthetic-tiny/table1.md").exists()


def test_every_job_went_through_slurm(grid, cluster):
    profile = yaml.safe_load((grid.root / PROFILE / "config.yaml").read_text())
    ran = [j for j in grid.failed_jobs + grid.jobs if cluster.job(j.jobid)["JobState"] != "FAILED"]
    assert Counter(j.rule for j in ran) == Counter(
        {"generate_dataset": 1, "split_dataset": 1, "train_model": 2, "make_report": 1})
    for job in ran:
        info = cluster.job(job.jobid)  # scontrol keeps finished jobs for MinJobAge: no sacct needed
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
        assert info["Partition"] == cluster.partition
        assert Path(info["WorkDir"]).resolve() == grid.root.resolve()
        assert info["MinMemoryNode"] == f"{profile['set-resources'][job.rule]['mem_mb']}M", info
        assert minutes(info["TimeLimit"]) == profile["set-resources"][job.rule]["runtime"], info
        assert job.log.name == f"{job.jobid}.log" and f"rule {job.rule}:" in job.log.read_text()


def test_slurm_results_equal_the_local_run(grid, local_run):
    for model in MODELS:
        ours, theirs = metrics(grid.root, model), metrics(local_run, model)
        if model == "mult-vae":
            # the failed job had trained every epoch and kept its checkpoint: the rerun resumed
            # from it (work done once) and says so; the local run trained from scratch
            assert ours.pop("resumed_from_epoch") == ours["epochs_run"] > 0
            assert theirs.pop("resumed_from_epoch") == 0
        assert ours == theirs, model
        ours = (grid.root / RUN.format(model=model) / "per_user.csv").read_bytes()
        assert ours == (local_run / RUN.format(model=model) / "per_user.csv").read_bytes(), model
