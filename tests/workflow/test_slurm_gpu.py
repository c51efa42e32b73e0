"""GPU jobs on SLURM and locally: which jobs ask for a GPU, and the sbatch arguments that gives.

No cluster needed: the resources come from Snakemake's own dry run of the workflow, and the sbatch
arguments from the SLURM executor plugin's own functions (the code that builds the real `sbatch`).
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest

from conftest import make_workflow_copy, run, tool

# the plugin is an optional extra for users (pip install -e '.[slurm]'), but the test environment
# (requirements.lock, what CI installs) has it: there, and wherever SLURM tests are asked for, a
# missing or broken plugin fails; on a plain `pip install -e .` these tests are skipped, saying why
try:
    import snakemake_executor_plugin_slurm  # noqa: F401
except ImportError:
    if os.environ.get("CI") == "true" or os.environ.get("EVCF_TEST_SLURM") == "1":
        raise
    pytest.skip("the SLURM executor plugin is missing: pip install -e '.[slurm]' (or requirements.lock)",
                allow_module_level=True)

from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402

pytestmark = pytest.mark.slow  # Snakemake dry runs

MODELS = ["mult-vae", "vamp", "cdae", "ease", "popularity", "slim", "wmf"]
# the models whose fit gains from a GPU (their class says so: `uses_gpu`)
ON_GPU = {"mult-vae", "vamp", "cdae", "ease"}


def job_resources(root, device: str) -> dict[tuple[str, str], dict]:
    """(rule, model) -> resources of each training and tune job in `snakemake -n --forceall all`."""
    out = run([tool("snakemake"), "-n", "--forceall", "all", "--config", f"device={device}",
               f"models=[{','.join(MODELS)}]", "tuning=false"], cwd=root).stdout
    found = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", out):
        rule = re.search(r"^rule (\w+):", block, re.M)
        if not rule or rule.group(1) not in ("train_model", "tune_point"):
            continue
        model = re.search(r"model=([\w-]+)", block).group(1)
        resources = re.search(r"^    resources: (.*)$", block, re.M).group(1)
        found[rule.group(1), model] = dict(kv.split("=", 1) for kv in resources.split(", "))
    return found


class FakeResources(dict):
    """What the plugin reads: ``job.resources.get(...)`` and attribute access."""

    def __getattr__(self, name):
        return self[name]


def sbatch_for(resources: dict) -> str:
    typed = FakeResources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=typed, threads=2, is_group=lambda: False, name="train_model",
                          wildcards={}, rule=SimpleNamespace(name="train_model"))
    params = {"run_uuid": "x", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "-p gpu",
              "workdir": "."}
    # as the plugin's executor composes it: the submit command, then the GPU / GRES arguments
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return make_workflow_copy(tmp_path_factory.mktemp("gpu") / "wf")


def test_with_device_cuda_only_the_gpu_models_jobs_ask_for_a_gpu(workflow):
    found = job_resources(workflow, "cuda")
    assert {m for (_, m) in found} == set(MODELS)
    for (rule, model), resources in found.items():
        want = "1" if model in ON_GPU else "0"
        assert resources["gpu"] == want, (rule, model, resources)
        command = sbatch_for(resources)
        if want == "1":
            assert "--gpus=1" in command, command
        else:
            assert "--gpus" not in command and "--gres" not in command, command


def test_on_cpu_no_job_asks_for_a_gpu(workflow):
    for key, resources in job_resources(workflow, "auto").items():
        assert resources["gpu"] == "0", key
        assert "--gpus" not in sbatch_for(resources)


def test_cpu_models_run_on_the_cpu_when_the_others_use_cuda(workflow):
    out = run([tool("snakemake"), "-n", "-p", "--forceall", "all_runs", "--config", "device=cuda",
               f"models=[{','.join(MODELS)}]", "tuning=false"], cwd=workflow).stdout
    commands = [line for line in out.splitlines() if line.startswith("Shell command: evcf train")]
    assert commands
    for line in commands:
        model = re.search(r"--model (\S+)", line).group(1)
        device = re.search(r"--device (\S+)", line).group(1)
        assert device == ("cuda" if model in ON_GPU else "cpu"), line
