"""Shared fixtures: a temporary copy of the workflow with a tiny synthetic configuration."""

from __future__ import annotations

import os

# One torch and BLAS thread per test process by default (EVCF_TEST_THREADS=2 runs the suite at two):
# the tests' tensors are small, and on a 2-core machine torch's default of one thread per core only
# makes the processes that Snakemake and DVC start compete with the test itself.  Set before torch,
# numpy or scipy load their thread pools; the processes the tests start inherit the environment.
TEST_THREADS = os.environ.get("EVCF_TEST_THREADS", "1")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ[_var] = TEST_THREADS

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests holds evcf, snakemake and dvc

# A few seconds per run: 400 generated users, 3 epochs.
TINY = {
    "datasets": ["synthetic-tiny"],
    "models": ["mult-vae", "popularity"],
    "seeds": [1],
    "device": "cpu",
    "threads": 1,
}
TINY_DATA = {
    "synthetic": {"n_users": 400, "n_items": 120, "mean_items": 25, "n_topics": 6, "zipf": 1.1,
                  "noise": 0.15, "seed": 3},
    "format": "csv",
    "threshold": 3.5,
    "min_items": 5,
    "heldout_users": 40,
    "train": {"epochs": 3, "batch_size": 100, "total_anneal_steps": 6},
}


class _PlainDumper(yaml.SafeDumper):
    """Writes shared objects out in full: params.yaml may hold no anchors or aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_params(path: Path, params: dict) -> None:
    path.write_text(yaml.dump(params, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True))


def tool(name: str) -> str:
    return str(BIN / name)


def make_workflow_copy(dest: Path, **overrides) -> Path:
    """Copy the pipeline definition (not results or data) into ``dest`` with the tiny config."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "profiles", dest / "profiles")  # the default profile Snakemake loads itself
    # DVC stages list package folders as deps; link the package so those paths exist
    (dest / "evcf").symlink_to(REPO / "evcf")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(TINY)
    params["data"]["synthetic-tiny"] = TINY_DATA
    params.update(overrides)
    dump_params(dest / "params.yaml", params)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env_path = f"{BIN}:{Path('/usr/bin')}:{Path('/bin')}"
    # this checkout's package first, also in the `evcf` commands that Snakemake and DVC start: the
    # tests check the code beside them, whichever checkout the environment's editable install points to
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": env_path, "HOME": str(cwd), "LC_ALL": "C.UTF-8", "PYTHONPATH": str(REPO),
                               **{var: os.environ[var] for var in THREAD_VARS}})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    return make_workflow_copy(tmp_path / "wf")


# the grid of the shared finished run: two points of Mult-VAE at hidden size 32 (a search, its winner's
# Table 1 run), and popularity without a grid
TINY_GRID = {"synthetic-tiny": {"mult-vae": {"train.lr": [0.001, 0.01], "model.hidden_size": [32]}}}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny workflow (:func:`make_workflow_copy` with :data:`TINY_GRID`) run once to the end by
    ``snakemake --cores 2 all``, for the whole session.  Tests never touch it: they take a copy
    (:func:`copy_run`), each its own."""
    root = make_workflow_copy(tmp_path_factory.mktemp("tiny-run") / "wf", tune=TINY_GRID)
    run([tool("snakemake"), "--cores", "2", "all"], cwd=root)
    return root


def copy_run(finished: Path, dest: Path) -> Path:
    """A copy of a finished workflow folder in ``dest``: its files with their times (Snakemake
    compares them), Snakemake's records, and the package link as it is."""
    shutil.copytree(finished, dest, symlinks=True)
    return dest


def write_synthetic_split(out: Path, heldout: int, **spec) -> Path:
    """A seeded synthetic dataset (``SyntheticSpec(**spec)``), binarized (ratings > 3.5, users with
    >= 5) and split as the pipeline does, with ``heldout`` validation and test users, in ``out``."""
    from evcf.data.split import binarize_filter, split_users, write_split
    from evcf.data.synthetic import SyntheticSpec, generate_ratings

    raw = generate_ratings(SyntheticSpec(**spec))
    write_split(split_users(binarize_filter(raw, 3.5, 5), heldout), out)
    return out


def committed_clone(dest: Path) -> Path:
    """What a user has after ``git clone``: the pipeline's files (this checkout's, as they are now,
    with the real params.yaml) committed in a fresh git repository with a clean work tree, DVC set
    up as the repository sets it up.  The package is linked in (DVC lists it as a dependency)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, dest / name)
    for name in ("workflow", "profiles", ".dvc"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("tmp", "cache"))
    (dest / "evcf").symlink_to(REPO / "evcf")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        run(cmd, dest)
    assert run(["git", "status", "--porcelain"], dest).stdout == ""
    return dest


def readme_block(heading: str) -> list[str]:
    """The shell commands of the first ```bash block under ``heading`` in README.md (comments and
    blank lines left out): the tests run what the README tells users to type."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def pytest_collection_modifyitems(config, items) -> None:
    """The longest-waiting files first, for ``.ci/run``'s two workers (``-n 2``; pyproject's addopts
    add ``--dist loadfile --no-loadscope-reorder``: each file goes whole to the next free worker, in
    this order): the SLURM
    test, which spends minutes waiting on the cluster's queue while the other worker runs the rest,
    then the workflow files, which run whole pipelines; then everything else, as collected.  Run on
    one worker, only the order changes: no test depends on another file's tests."""
    def weight(item) -> int:
        return 0 if item.get_closest_marker("slurm") else 1 if "workflow" in item.path.parts else 2

    items.sort(key=weight)  # stable: the collected order within each group
