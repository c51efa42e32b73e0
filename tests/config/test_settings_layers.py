"""Every setting typed is applied or refused (issue 19): command-line values win over every file
layer, values that a grid or a more specific layer would drop are refused with the layer named, and
each run records which values the command line changed."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from evcf.config import run_settings, settings_sources, validate
from evcf.errors import EvcfError

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def snakemake_config(overrides: dict) -> dict:
    """params.yaml with ``overrides`` merged in as Snakemake merges --config (strings, nested)."""
    config = copy.deepcopy(PARAMS)
    config["datasets"] = ["synthetic"]

    def merge(into, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(config, overrides)
    return config


def resolved(overrides: dict, dataset="synthetic", model="mult-vae"):
    config = snakemake_config(overrides)
    validate(config, overrides=overrides)
    return config, run_settings(config, dataset, model)


@pytest.mark.parametrize("overrides,model,section,key,value", [
    # keys that more than one file layer sets: data.synthetic.train sets epochs over train's
    ({"model_params": {"mult-vae": {"train": {"epochs": "5"}}}}, "mult-vae", 1, "epochs", 5),
    # data.synthetic.model_params.cdae.model.batch_size (100) over model_params.cdae.model (500)
    ({"model_params": {"cdae": {"model": {"batch_size": "50"}}}}, "cdae", 0, "batch_size", 50),
    # the shared block typed on the command line: over the row's own train block and the dataset's
    ({"train": {"epochs": "7"}}, "mult-vae-gated", 1, "epochs", 7),
    ({"train": {"lr": "0.002"}}, "mult-vae-gated", 1, "lr", 0.002),
])
def test_a_command_line_value_wins_over_every_file_layer(overrides, model, section, key, value):
    before = run_settings(resolved({})[0], "synthetic", model)
    config, after = resolved(overrides, model=model)
    assert before[section][key] != value
    assert after[section][key] == value
    # nothing else changed
    assert {**after[section], key: before[section][key]} == before[section]
    assert after[1 - section] == before[1 - section]
    # and the run records where the value came from
    typed = settings_sources(config, "synthetic", model, PARAMS)
    assert list(typed) == [f"{'train' if section else 'model'}.{key}"]
    assert typed[f"{'train' if section else 'model'}.{key}"]["value"] == value
    assert typed[f"{'train' if section else 'model'}.{key}"]["from"].startswith("command line: ")


def test_a_no_op_override_changes_nothing_and_credits_the_file():
    config, after = resolved({"model_params": {"mult-vae": {"train": {"epochs": "30"}}}})
    assert after == run_settings(resolved({})[0], "synthetic", "mult-vae")
    assert settings_sources(config, "synthetic", "mult-vae", PARAMS) == {}


def test_grid_points_get_the_command_line_value_too():
    from evcf.config import tune_points

    config, _ = resolved({"model_params": {"vamp": {"train": {"lr": "0.003"}}}}, model="vamp")
    points = tune_points(config, "synthetic", "vamp")
    assert points and all(p["train"]["lr"] == 0.003 for p in points)


def test_a_command_line_value_a_grid_would_replace_is_refused():
    with pytest.raises(EvcfError) as err:
        resolved({"model_params": {"vamp": {"train": {"max_beta": "0.7"}}}}, model="vamp")
    text = str(err.value)
    assert text.startswith("--config (command line): model_params.vamp.train.max_beta")
    assert "tune.synthetic.vamp.train.max_beta" in text and "tuning: false" in text


def test_train_epochs_0_is_blamed_on_the_command_lines_train():
    with pytest.raises(EvcfError) as err:
        resolved({"train": {"epochs": "0"}})
    assert str(err.value).startswith("--config (command line): train: train.epochs must be >= 1"), str(err.value)


def test_self_fitting_rows_neither_read_nor_accept_the_vae_loop_settings():
    _, (hparams, train) = resolved({"train": {"lr": "0.002", "epochs": "3"}}, model="ease")
    assert set(train) == {"eval_batch_size", "checkpoint_minutes", "tf32", "deterministic"}
    config = snakemake_config({"model_params": {"wmf": {"train": {"epochs": 3}}}})
    with pytest.raises(EvcfError, match="model_params.wmf.train.epochs: unknown key 'epochs'"):
        validate(config)


# -- params.yaml changed since the last commit (dvc exp run -S writes there) --------------------------


def changed(path: str, value):
    config = copy.deepcopy(PARAMS)
    config["datasets"] = ["synthetic"]
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize("path,value,shadow", [
    ("model_params.cdae.model.batch_size", 50, "data.synthetic.model_params.cdae.model"),
    ("model_params.mult-vae.train.epochs", 5, "data.synthetic.train"),
    ("train.epochs", 5, "data.synthetic.train"),  # shadowed for every run: no effect at all
    ("model_params.vamp.train.max_beta", 0.7, "tune.synthetic.vamp.train.max_beta"),
    ("model_params.vamp.train.batch_size", 100, "data.synthetic.model_params.vamp.train"),
])
def test_a_changed_file_value_that_would_be_dropped_is_refused_naming_the_layer(path, value, shadow):
    with pytest.raises(EvcfError) as err:
        validate(changed(path, value), committed=PARAMS)
    text = str(err.value)
    assert f"{path}: overridden by {shadow}" in text and "changed since the last commit" in text, text
    validate(changed(path, value))  # without the committed file to compare with: the documented layering


def test_a_row_setting_shadowed_on_one_of_two_datasets_is_refused():
    """The paper's default selects two datasets: a row's value changed in params.yaml that one
    dataset's layer overrides is refused even though it reaches the other dataset's runs; a shared
    default (``train``) shadowed on one dataset only is accepted, by design."""
    config = changed("model_params.cdae.model.batch_size", 50)
    config["datasets"] = ["ml-100k", "synthetic"]
    with pytest.raises(EvcfError) as err:
        validate(config, committed=PARAMS)
    assert "overridden by data.synthetic.model_params.cdae.model (more specific) for cdae on synthetic" in str(err.value)
    assert run_settings(config, "ml-100k", "cdae")[0]["batch_size"] == 50  # where it does apply
    shared = changed("train.epochs", 5)
    shared["datasets"] = ["ml-100k", "synthetic"]
    validate(shared, committed=PARAMS)  # data.synthetic.train sets its own epochs; ml-100k gets 5
    assert run_settings(shared, "ml-100k", "mult-vae")[1]["epochs"] == 5


def test_values_typed_on_the_command_line_are_not_taken_for_file_edits():
    """Snakemake merges --config into the config before the committed-file check sees it: the check
    compares the file as written (``written``) with the commit, so a typed value is applied, not
    refused as an edit that the command line overrides."""
    typed = {"model_params": {"mult-vae": {"train": {"lr": 0.002}}}}
    config = snakemake_config(typed)
    validate(config, overrides=typed, committed=PARAMS, written=copy.deepcopy(PARAMS))
    assert run_settings(config, "synthetic", "mult-vae")[1]["lr"] == 0.002


def test_a_changed_file_value_that_applies_is_accepted():
    config = changed("model_params.mult-vae.train.lr", 0.002)
    validate(config, committed=PARAMS)
    assert run_settings(config, "synthetic", "mult-vae")[1]["lr"] == 0.002
    validate(changed("train.lr", 0.002), committed=PARAMS)  # a shared default: applies where not overridden


def test_dvc_set_param_reaches_a_row_without_a_train_block(tmp_path):
    """The README's `dvc exp run -S '++model_params.mult-vae.train.lr=0.002'`, through DVC's own code."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(Exception, match="set-param"):  # DVC refuses a key params.yaml does not spell out...
        apply_overrides(str(params), ["model_params.mult-vae.train.lr=0.002"])
    apply_overrides(str(params), ["++model_params.mult-vae.train.lr=0.002"])  # ...unless told to add it
    config = yaml.safe_load(params.read_text())
    config["datasets"] = ["synthetic"]
    validate(config, committed=PARAMS)
    assert run_settings(config, "synthetic", "mult-vae")[1]["lr"] == 0.002


def test_the_table_credits_command_line_values_to_the_command_line():
    """'What each row ran with' says which values the command line changed (metrics.json's settings_source)."""
    import pandas as pd

    from evcf.report import _command_line
    from evcf.report.markdown import settings_rows

    typed = {"settings_source": {"train.lr": {"from": "command line: model_params.mult-vae.train", "value": 0.002}}}
    assert _command_line(typed) == "train.lr = 0.002" and _command_line({}) == ""
    runs = pd.DataFrame([
        {"dataset": "synthetic", "model": "mult-vae", "seed": s, "setting_source": "params.yaml", "setting": "{}",
         "in_run_selected": "null", "in_run_tried": None, "command_line": _command_line(typed)} for s in (1, 2)
    ] + [{"dataset": "synthetic", "model": "popularity", "seed": 1, "setting_source": "params.yaml",
          "setting": "{}", "in_run_selected": "null", "in_run_tried": None, "command_line": ""}])
    rows = {model: source for _, model, source, _ in settings_rows(runs)}
    assert rows["Mult-VAE"] == "params.yaml (no grid); command line: train.lr = 0.002"
    assert rows["Popularity"] == "params.yaml (no grid)"


def test_evcf_train_records_the_settings_source(tmp_path):
    import json

    from conftest import write_synthetic_split
    from evcf.cli import main

    data = write_synthetic_split(tmp_path / "data", 20, n_users=200, n_items=60, mean_items=20, n_topics=4, seed=1)
    typed = {"train.eval_batch_size": {"from": "command line: train", "value": 50}}
    assert main(["train", "--data", str(data), "--dataset", "toy", "--model", "popularity", "--seed", "1",
                 "--train", json.dumps({"eval_batch_size": 50}), "--settings-source", json.dumps(typed),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings_source"] == typed


def test_validating_the_papers_defaults_builds_each_distinct_model_once(monkeypatch, capsys):
    """Every start (snakemake, dvc, evcf plan) validates the selection; grid points share their
    architecture, so each distinct (model, hyperparameters) is built once, not once per point.
    The time is printed (pytest -s shows it), not asserted."""
    import json
    import time

    import evcf.models

    config = copy.deepcopy(PARAMS)  # the paper's selection: ml-20m and netflix, every model and grid
    built = []
    real = evcf.models.build_model
    monkeypatch.setattr(evcf.models, "build_model",
                        lambda name, n, **hp: (built.append(json.dumps([name, hp], sort_keys=True)), real(name, n, **hp))[1])
    started = time.perf_counter()
    validate(config)
    seconds = time.perf_counter() - started
    assert built and len(built) == len(set(built)), "a (model, hyperparameters) pair was built twice"
    assert {json.loads(b)[0] for b in built} == set(config["models"])
    with capsys.disabled():
        print(f"\nvalidate(paper's defaults): {len(built)} models built in {seconds:.2f} s")
