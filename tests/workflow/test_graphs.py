"""One DAG, two front-ends: Snakemake's jobs and DVC's stages are the same runs with the same inputs.

Also: every override changes exactly the setting it names, and a bad setting stops `snakemake -n`
before any job starts.  Everything here is a dry run or a graph build: seconds, no training.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_DATA, make_workflow_copy, run, tool
from evcf.config import run_settings, validate
from evcf.models import MODEL_NAMES, model_class

pytestmark = pytest.mark.slow  # Snakemake dry runs and DVC's stage graph

SELECTION = {"datasets": ["synthetic-tiny", "synthetic-tiny2"], "models": ["mult-vae", "vamp", "popularity"],
             "seeds": [1, 2]}
EVCF_ROWS = ["mult-vae-gated", "vamp", "hvamp", "hvamp-gated"]


def snakemake_jobs(root: Path, *config: str, target: str = "all") -> list[dict]:
    """The jobs of `snakemake -n -p --forceall <target>`: rule, wildcards, input, output, shell command."""
    cmd = [tool("snakemake"), "-n", "-p", "--forceall", target]
    if config:
        cmd += ["--config", *config]
    text = run(cmd, cwd=root).stdout
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule )", text):
        head = re.search(r"^rule (\w+):", block, re.M)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "input": [], "output": [], "shell": ""}
        for key in ("input", "output"):
            found = re.search(rf"^    {key}: (.*)$", block, re.M)
            if found:
                job[key] = found.group(1).split(", ")
        found = re.search(r"^    wildcards: (.*)$", block, re.M)
        if found:
            job["wildcards"] = dict(kv.split("=", 1) for kv in found.group(1).split(", "))
        found = re.search(r"^Shell command: (.*)$", block, re.M)
        if found:
            job["shell"] = found.group(1)
        jobs.append(job)
    return jobs


def dvc_stages(root: Path) -> dict[str, dict]:
    """Every stage DVC resolves from dvc.yaml and params.yaml: cmd, deps, params, outs."""
    from dvc.repo import Repo

    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            params = [p for d in stage.deps if hasattr(d, "params") for p in d.params]
            deps = [d.def_path for d in stage.deps if not hasattr(d, "params")]
            stages[stage.name] = {"cmd": stage.cmd, "deps": deps, "params": params,
                                  "outs": [o.def_path for o in stage.outs]}
    return stages


def train_settings(job: dict) -> tuple[dict, dict]:
    words = shlex.split(job["shell"])
    return json.loads(words[words.index("--hparams") + 1]), json.loads(words[words.index("--train") + 1])


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    data = {**params["data"], "synthetic-tiny": TINY_DATA,
            "synthetic-tiny2": {**TINY_DATA, "synthetic": {**TINY_DATA["synthetic"], "seed": 4}}}
    root = make_workflow_copy(tmp_path_factory.mktemp("graphs") / "wf", data=data, **SELECTION)
    run(["git", "init", "-q"], cwd=root)
    run([tool("dvc"), "init", "-q"], cwd=root)
    return root


def test_dvc_stages_and_snakemake_jobs_are_the_same_runs(workflow):
    jobs = snakemake_jobs(workflow)
    stages = dvc_stages(workflow)
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)

    # one DVC training stage per (dataset, model) row; its target is Snakemake's row file
    rows = {(j["wildcards"]["dataset"], j["wildcards"]["model"]): j for j in by_rule["collect_runs"]}
    train_stages = {k: v for k, v in stages.items() if k.startswith("train_model@")}
    assert len(train_stages) == len(rows) == len(SELECTION["datasets"]) * len(SELECTION["models"])
    for (dataset, model), job in rows.items():
        stage = train_stages[f"train_model@{dataset}-{model}"]
        assert stage["cmd"].split()[-1] == job["output"][0] == f"results/{dataset}/{model}.json"
        assert f"results/{dataset}/{model}" in stage["outs"]
        # the runs inside it: every seed, or the first only for a seedless model
        seeds = SELECTION["seeds"] if model_class(model).seeded else SELECTION["seeds"][:1]
        runs = [j for j in by_rule["train_model"]
                if (j["wildcards"]["dataset"], j["wildcards"]["model"]) == (dataset, model)]
        assert sorted(int(j["wildcards"]["seed"]) for j in runs) == seeds
        assert all(o.startswith(f"results/{dataset}/{model}/seed-") for j in runs for o in j["output"])
        # same inputs: the dataset's split and the row's tuning result (and the package, whose hash
        # Snakemake holds as a param)
        winner = f"results/tune/{dataset}/{model}/winner.json"
        assert {str(Path(i).parent) for j in runs for i in j["input"] if i != winner} == {f"data/processed/{dataset}"}
        assert all(winner in j["input"] for j in runs)
        assert {f"data/processed/{dataset}", f"results/tune/{dataset}/{model}", "evcf"} <= set(stage["deps"])
        # the row's search: a DVC stage whose target is Snakemake's tuning result
        tune_stage = stages[f"tune_model@{dataset}-{model}"]
        assert tune_stage["cmd"].split()[-1] == winner
        assert tune_stage["outs"] == [f"results/tune/{dataset}/{model}"]
        assert {"tune", "tuning", f"model_params.{model}", f"data.{dataset}"} <= set(tune_stage["params"])
        points = [j for j in by_rule.get("tune_point", [])
                  if (j["wildcards"]["dataset"], j["wildcards"]["model"]) == (dataset, model)]
        assert all(o.startswith(f"results/tune/{dataset}/{model}/point-") for j in points for o in j["output"])
        # only its own parameters
        assert set(stage["params"]) == {"train", f"model_params.{model}", f"data.{dataset}", "seeds",
                                        "device", "threads"}

    splits = {j["wildcards"]["dataset"] for j in by_rule["split_dataset"]}
    assert splits == {k.split("@")[1] for k in stages if k.startswith("split_dataset@")}
    # one report per dataset, in its own folder, with the same files in both front-ends
    for job in by_rule["make_report"]:
        dataset = job["wildcards"]["dataset"]
        stage = stages[f"make_report@{dataset}"]
        assert all(o.startswith(f"reports/{dataset}/") for o in job["output"])
        declared = set(stage["outs"])
        for out in job["output"]:
            assert out in declared or str(Path(out).parent) in declared, out
        assert stage["deps"][0] == f"results/{dataset}"
    assert {j["wildcards"]["dataset"] for j in by_rule["make_report"]} == set(SELECTION["datasets"])


def test_a_row_change_reaches_only_that_rows_commands(workflow):
    base = {(j["wildcards"]["dataset"], j["wildcards"]["model"], j["wildcards"]["seed"]): train_settings(j)
            for j in snakemake_jobs(workflow, target="all_runs") if j["rule"] == "train_model"}
    changed = {(j["wildcards"]["dataset"], j["wildcards"]["model"], j["wildcards"]["seed"]): train_settings(j)
               for j in snakemake_jobs(workflow, "model_params={vamp: {train: {lr: 0.002}}}", target="all_runs")
               if j["rule"] == "train_model"}
    assert base.keys() == changed.keys()
    for key, (hparams, train) in changed.items():
        if key[1] == "vamp":
            assert train["lr"] == 0.002 and isinstance(train["lr"], float)  # typed, not the string '0.002'
            assert {**train, "lr": base[key][1]["lr"]} == base[key][1] and hparams == base[key][0]
        else:
            assert (hparams, train) == base[key], key


def resolved(params: dict) -> dict:
    params = copy.deepcopy(params)
    params["datasets"] = ["synthetic"]
    validate(params)
    return {(d, m): run_settings(params, d, m) for d in params["data"] for m in MODEL_NAMES}


@pytest.mark.parametrize("override,model", [
    ("model_params.mult-vae-gated.train.lr=0.01", "mult-vae-gated"),
    ("model_params.hvamp.train.lr=0.01", "hvamp"),
    ("model_params.hvamp-gated.train.max_beta=0.5", "hvamp-gated"),
])
def test_dvc_set_param_changes_exactly_the_named_setting(tmp_path, override, model):
    """`dvc exp run -S` writes params.yaml with DVC's own code; every other model's settings stay."""
    from dvc.utils.hydra import apply_overrides

    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    before = resolved(yaml.safe_load(params_file.read_text()))
    apply_overrides(str(params_file), [override])
    after = resolved(yaml.safe_load(params_file.read_text()))
    key, value = override.split("=")
    name = key.split(".")[-1]
    for (dataset, m), (hparams, train) in after.items():
        if m == model:
            assert train[name] == float(value), (dataset, m)
            assert {**train, name: before[dataset, m][1][name]} == before[dataset, m][1]
        else:
            assert (hparams, train) == before[dataset, m], (dataset, m)


def test_snakemake_config_override_changes_exactly_the_named_setting(workflow):
    rows = ",".join(EVCF_ROWS)
    base = {j["wildcards"]["model"]: train_settings(j)
            for j in snakemake_jobs(workflow, f"models=[{rows}]", "seeds=[1]", target="all_runs")
            if j["rule"] == "train_model" and j["wildcards"]["dataset"] == "synthetic-tiny"}
    changed = {j["wildcards"]["model"]: train_settings(j)
               for j in snakemake_jobs(workflow, f"models=[{rows}]", "seeds=[1]",
                                       "model_params={mult-vae-gated: {train: {lr: 0.01}}}", target="all_runs")
               if j["rule"] == "train_model" and j["wildcards"]["dataset"] == "synthetic-tiny"}
    assert set(base) == set(EVCF_ROWS)
    assert changed["mult-vae-gated"][1]["lr"] == 0.01
    for model in EVCF_ROWS:
        if model != "mult-vae-gated":
            assert changed[model] == base[model], model


def errors_of(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("edit,needles", [
    (lambda p: p["data"]["synthetic-tiny"].setdefault("model_params", {}).update({"vamp": {"modle": {}}}),
     ["data.synthetic-tiny.model_params.vamp.modle: unknown key 'modle'", "did you mean 'model'"]),
    (lambda p: p["model_params"]["mult-vae"]["model"].update({"dropout": 1.5}),
     ["model_params.mult-vae", "dropout = 1.5 must be in [0, 1)"]),
    (lambda p: p["train"].update({"epoch": 3}), ["train.epoch: unknown key 'epoch'", "did you mean 'epochs'"]),
    (lambda p: p["model_params"]["vamp"]["train"].update({"lr": -1.0}), ["model_params.vamp", "lr must be > 0"]),
])
def test_snakemake_dry_run_rejects_typos_and_bad_values_before_any_job(tmp_path, edit, needles):
    root = make_workflow_copy(tmp_path / "wf")
    params = yaml.safe_load((root / "params.yaml").read_text())
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run([tool("snakemake"), "-n", "all"], cwd=root, check=False)
    assert proc.returncode != 0
    errors = errors_of(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: params.yaml: ")
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert not (root / "results").exists() and not (root / "data").exists()


def test_a_bad_command_line_value_is_blamed_on_the_command_line(workflow):
    proc = run([tool("snakemake"), "-n", "all", "--config", "model_params={mult-vae: {train: {lr: fast}}}"],
               cwd=workflow, check=False)
    errors = errors_of(proc)
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: --config (command line): model_params.mult-vae.train.lr")


def test_yaml_anchors_are_refused(tmp_path):
    root = make_workflow_copy(tmp_path / "wf")
    text = (root / "params.yaml").read_text()
    text = text.replace("train:\n  epochs:", "train: &shared\n  epochs:", 1) + "\nextra: *shared\n"
    (root / "params.yaml").write_text(text)
    proc = run([tool("snakemake"), "-n", "all"], cwd=root, check=False)
    errors = errors_of(proc)
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "YAML anchor &shared is not allowed" in errors[0] and "params.yaml: line" in errors[0]


def test_the_shipped_params_yaml_has_no_anchors_and_validates():
    from evcf.config import check_plain_yaml

    check_plain_yaml(REPO / "params.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    validate(params)  # the paper's selection, every run and grid point built


def test_a_csv_dataset_is_local_or_synthetic_never_downloaded():
    from evcf.data.readers import RAW_FORMATS
    from evcf.errors import EvcfError

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["mine"] = {"url": "https://example.org/mine.csv", "md5": "0" * 32, "format": "csv",
                              "threshold": 3.5, "min_items": 5, "heldout_users": 10}
    with pytest.raises(EvcfError, match=r"data\.mine\.format: a csv dataset cannot be downloaded") as err:
        validate(params)
    assert "data/raw/mine/ratings.csv" in err.value.fix and "local: true" in err.value.fix
    params["data"]["mine"] = {"local": True, "format": "csv", "threshold": 3.5, "min_items": 5, "heldout_users": 10}
    validate(params)
    # the schema knows every format a reader exists for, and no other
    for fmt in (*RAW_FORMATS, "parquet"):
        params["data"]["mine"]["format"] = fmt
        if fmt in RAW_FORMATS:
            validate(params)
        else:
            with pytest.raises(EvcfError, match="format"):
                validate(params)
