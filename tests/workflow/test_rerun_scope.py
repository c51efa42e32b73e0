"""Reruns scoped to what changed, and DVC experiments that compare (issue 19), run for real on the tiny
synthetic configuration in a temporary copy that holds its own copy of the package (edited here).

`snakemake -n all` after a finished run: an edit of the report reruns no training or grid point, an
edit of one model's file reruns only that model's jobs, a docstring edit or a no-op override reruns
nothing; `dvc exp show` and `dvc metrics diff` show the numbers of two experiments."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, REPO, copy_run, make_workflow_copy

pytestmark = pytest.mark.slow



def run(cmd, cwd, check=True):
    """As conftest.run, with the copy's own package first on the import path (rules and `evcf` alike)."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "LC_ALL": "C.UTF-8", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def own_package(root):
    (root / "evcf").unlink()
    shutil.copytree(REPO / "evcf", root / "evcf", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def jobs(root, *config) -> dict[str, int]:
    """Job counts of `snakemake -n all` (empty: nothing to be done)."""
    cmd = [str(BIN / "snakemake"), "-n", "all"] + (["--config", *config] if config else [])
    out = run(cmd, root).stdout
    if "Job stats:" not in out:
        assert "Nothing to be done" in out, out[-2000:]
        return {}
    stats = out.split("Job stats:")[1].split("\n\n")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if rule != "total"}


def trained_models(root, *config) -> set[str]:
    cmd = [str(BIN / "snakemake"), "-n", "all"] + (["--config", *config] if config else [])
    out = run(cmd, root).stdout
    return set(re.findall(r"results/synthetic-tiny/([a-z0-9-]+)/(?:seed|point)-\d+/metrics\.json", out))


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def finished(tiny_run, tmp_path_factory):
    """The session's finished tiny run (conftest.tiny_run: Mult-VAE's two-point grid, popularity),
    copied with a package of its own: with the same code, nothing is to be done."""
    root = own_package(copy_run(tiny_run, tmp_path_factory.mktemp("scope") / "wf"))
    assert jobs(root) == {}
    return root


def test_a_report_edit_reruns_no_training(finished):
    root = finished
    table = root / "evcf/report/table.py"
    saved = table.read_text()
    try:
        table.write_text(saved + "\n# a comment\nEDITED = 1\n")
        counts = jobs(root)
        assert "train_model" not in counts and "tune_point" not in counts, counts
    finally:
        table.write_text(saved)


def test_a_model_file_edit_reruns_only_that_models_jobs(finished):
    root = finished
    multvae = root / "evcf/models/multvae.py"
    saved = multvae.read_text()
    try:
        edit(multvae, "\n\nclass ", '\n\n"""A string statement moved nothing: but it is code."""\n_EDITED = 1\n\n\nclass ')
        assert trained_models(root) == {"mult-vae"}
        counts = jobs(root)
        assert counts["train_model"] == 1 and counts["tune_point"] == 2, counts
        multvae.write_text(saved)
        # a row without a grid (nothing upstream reruns): the rule's own code param alone reruns it
        baselines = root / "evcf/models/baselines.py"
        kept = baselines.read_text()
        try:
            edit(baselines, "\n\nclass ", "\n\n_EDITED = 1\n\n\nclass ")
            assert trained_models(root) == {"popularity"}
            assert jobs(root).get("train_model") == 1
        finally:
            baselines.write_text(kept)
        # a docstring- or comment-only edit: nothing
        edit(multvae, '"""', '"""(edited docstring) ')
        edit(multvae, "\n\nclass ", "\n\n# an added comment\n\n\nclass ")
        assert jobs(root) == {}
    finally:
        multvae.write_text(saved)


def test_a_no_op_override_reschedules_nothing_and_the_vae_block_spares_self_fitting_rows(finished):
    root = finished
    # the value params.yaml already gives (data.synthetic-tiny.train.epochs: 3), typed on the command line
    assert jobs(root, "model_params={mult-vae: {train: {epochs: 3}}}") == {}
    # a VAE training setting: mult-vae reruns (its grid points too), popularity does not read it
    assert trained_models(root, "train={epochs: 2}") == {"mult-vae"}


def test_reordering_params_yaml_reruns_nothing(finished):
    """The settings reach the rules as JSON with sorted keys: the same values written in another
    order in params.yaml give the same commands, so nothing is scheduled again."""
    root = finished
    params = root / "params.yaml"
    before = params.read_text()
    config = yaml.safe_load(before)
    config["train"] = dict(reversed(list(config["train"].items())))
    for row in config["model_params"].values():
        for section in ("model", "train"):
            if isinstance(row.get(section), dict):
                row[section] = dict(reversed(list(row[section].items())))
    try:
        params.write_text(yaml.safe_dump(config, sort_keys=False))
        assert params.read_text() != before
        assert jobs(root) == {}
    finally:
        params.write_text(before)


def test_dvc_exp_show_and_metrics_diff_show_two_experiments(tmp_path):
    root = make_workflow_copy(tmp_path / "dvc", models=["popularity"])
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, root)
    for name, heldout in (("fewer", 30), ("more", 50)):
        run([str(BIN / "dvc"), "exp", "run", "-n", name, "-S", f"data.synthetic-tiny.heldout_users={heldout}"], root)
        run(["git", "checkout", "-q", "params.yaml"], root)  # the README's restore step
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], root).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp["revs"]:
                data = revision["data"]
                metrics = data["metrics"]["reports/synthetic-tiny/summary.json"]["data"]
                found[revision["name"]] = metrics["synthetic-tiny"]["popularity"]["ndcg@100"]
    assert set(found) == {"fewer", "more"} and all(0 < v < 1 for v in found.values()), found
    assert found["fewer"] != found["more"]
    # DVC matches --drop from the start of the column name (synthetic-tiny.popularity.recall@20)
    table = run([str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv", "--drop", ".*recall"], root).stdout
    header = table.splitlines()[0]
    assert "ndcg@100" in header and "recall" not in header, header
    diff = json.loads(run([str(BIN / "dvc"), "metrics", "diff", "fewer", "more", "--json"], root).stdout)
    changed = diff["reports/synthetic-tiny/summary.json"]["synthetic-tiny.popularity.ndcg@100"]
    assert changed["old"] == pytest.approx(found["fewer"]) and changed["new"] == pytest.approx(found["more"])
