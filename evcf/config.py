"""Validate params.yaml and resolve what each pipeline step receives.

``params.yaml`` is the project's one configuration file: Snakemake loads it as its configfile
(``--config`` overrides apply on top), DVC reads it as its params file.  The Snakefile calls
:func:`validate` once, then the rules call the ``resolve_*`` helpers to turn it into the explicit
command-line arguments of ``evcf`` subcommands.  The ``evcf`` CLI itself never reads params.yaml.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

import jsonschema

from .errors import EvcfError

__all__ = ["SCHEMA", "validate", "raw_path", "run_settings", "synthetic_spec", "tune_points"]

_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"}
_SECTION = {"type": "object"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["datasets", "models", "seeds", "data", "train", "model_params"],
    "additionalProperties": False,
    "properties": {
        "datasets": {"type": "array", "items": _NAME, "minItems": 1, "uniqueItems": True},
        "models": {"type": "array", "items": _NAME, "minItems": 1, "uniqueItems": True},
        "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True},
        "device": {"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$"},
        "threads": {"type": "integer", "minimum": 1},
        "data": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["format", "threshold", "min_items", "heldout_users"],
                "additionalProperties": False,
                "properties": {
                    "url": {"type": "string", "pattern": "^(https?|file)://"},
                    "md5": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    "md5_url": {"type": "string", "pattern": "^(https?|file)://"},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "local": {"type": "boolean"},
                    "synthetic": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "n_users": {"type": "integer", "minimum": 1},
                            "n_items": {"type": "integer", "minimum": 2},
                            "mean_items": {"type": "number", "exclusiveMinimum": 0},
                            "n_topics": {"type": "integer", "minimum": 1},
                            "zipf": {"type": "number", "minimum": 0},
                            "noise": {"type": "number", "minimum": 0, "maximum": 1},
                            "seed": {"type": "integer", "minimum": 0},
                        },
                    },
                    "format": {"enum": ["movielens-20m", "movielens-1m", "movielens-100k", "netflix", "csv"]},
                    "threshold": {"type": "number"},
                    "min_items": {"type": "integer", "minimum": 1},
                    "heldout_users": {"type": "integer", "minimum": 1},
                    "fingerprint": {"type": "object"},
                    "train": _SECTION,
                    "model_params": {"type": "object", "additionalProperties": _SECTION},
                },
            },
        },
        "train": _SECTION,
        "model_params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"model": _SECTION, "train": _SECTION},
            },
        },
        "tune": {
            "type": "object",
            "additionalProperties": {  # dataset
                "type": "object",
                "additionalProperties": {  # model
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": "^(model|train)\\.[a-z_]+$"},
                    "additionalProperties": {"type": "array", "minItems": 1},
                },
            },
        },
    },
}


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _coerce_cli_ints(config: dict[str, Any]) -> None:
    """Snakemake's ``--config 'seeds=[1,2]'`` delivers list items as strings: turn digits into ints."""
    seeds = config.get("seeds")
    if isinstance(seeds, list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in seeds]


def validate(config: dict[str, Any], *, source: str = "params.yaml") -> None:
    """Raise one EvcfError for the first problem in ``config`` (schema, then cross-references).

    Seeds given as digit strings on the command line are converted to ints in place first.
    """
    _coerce_cli_ints(config)
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise EvcfError(
            f"{_where(err)}: {err.message}",
            path=source,
            fix="correct that key in params.yaml or in the --config / -S override",
        )
    from .models import MODEL_NAMES, model_config_fields  # late: torch import only when validating models

    known_data = sorted(config["data"])
    for name in config["datasets"]:
        if name not in config["data"]:
            raise EvcfError(f"unknown dataset {name!r} in `datasets`", path=source,
                            fix=f"use one of {known_data}, or add an entry for it under `data`")
    for name, entry in config["data"].items():
        sources = [k for k in ("url", "local", "synthetic") if entry.get(k)]
        if len(sources) != 1:
            raise EvcfError(f"data.{name} must have exactly one of url, local: true, synthetic",
                            path=source, fix=f"give data.{name} one source")
        if entry.get("synthetic") is not None and entry["format"] != "csv":
            raise EvcfError(f"data.{name}: synthetic data is written as format csv", path=source,
                            fix=f"set data.{name}.format: csv")
        for model in entry.get("model_params", {}):
            if model not in MODEL_NAMES:
                raise EvcfError(f"data.{name}.model_params: unknown model {model!r}", path=source,
                                fix=f"use one of {list(MODEL_NAMES)}")
    for name in config["models"]:
        if name not in MODEL_NAMES:
            raise EvcfError(f"unknown model {name!r} in `models`", path=source, fix=f"use one of {list(MODEL_NAMES)}")
    for name, section in config["model_params"].items():
        if name not in MODEL_NAMES:
            raise EvcfError(f"model_params: unknown model {name!r}", path=source, fix=f"use one of {list(MODEL_NAMES)}")
        unknown = set(section.get("model", {})) - model_config_fields(name)
        if unknown:
            raise EvcfError(f"model_params.{name}.model: unknown setting(s) {sorted(unknown)}", path=source,
                            fix=f"use only {sorted(model_config_fields(name))}")
    for dataset, grids in config.get("tune", {}).items():
        if dataset not in config["data"]:
            raise EvcfError(f"tune: unknown dataset {dataset!r}", path=source, fix=f"use one of {known_data}")
        for model in grids:
            if model not in MODEL_NAMES:
                raise EvcfError(f"tune.{dataset}: unknown model {model!r}", path=source,
                                fix=f"use one of {list(MODEL_NAMES)}")
    # every run must resolve to valid settings (types are checked by the config dataclasses)
    from .training import train_config

    for dataset in config["datasets"]:
        for model in config["models"]:
            hparams, train = run_settings(config, dataset, model)
            train_config(train)
        for model in config.get("tune", {}).get(dataset, {}):
            for point in tune_points(config, dataset, model):
                train_config(point["train"])


def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = value
    return out


def run_settings(config: dict[str, Any], dataset: str, model: str) -> tuple[dict, dict]:
    """(model hyperparameters, training settings) for one run.

    Later layers win: ``train`` → ``model_params.<model>.train`` → ``data.<dataset>.train`` →
    ``data.<dataset>.model_params.<model>.train``; model hyperparameters likewise from
    ``model_params.<model>.model`` and ``data.<dataset>.model_params.<model>.model``.
    """
    entry = config["data"][dataset]
    per_model = config["model_params"].get(model, {})
    per_both = entry.get("model_params", {}).get(model, {})
    train = _merge(_merge(_merge(config["train"], per_model.get("train")), entry.get("train")), per_both.get("train"))
    hparams = _merge(per_model.get("model", {}), per_both.get("model"))
    return hparams, train


def tune_points(config: dict[str, Any], dataset: str, model: str) -> list[dict]:
    """The grid ``tune.<dataset>.<model>`` as a list of runs, each ``{"setting", "hparams", "train"}``.

    A grid maps ``model.<name>`` / ``train.<name>`` to lists of values; every combination (in the
    order written) becomes one run on top of :func:`run_settings`.
    """
    grid = config.get("tune", {}).get(dataset, {}).get(model, {})
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        hparams, train = run_settings(config, dataset, model)
        setting = dict(zip(keys, values))
        for key, value in setting.items():
            section, name = key.split(".", 1)
            (hparams if section == "model" else train)[name] = value
        points.append({"setting": setting, "hparams": hparams, "train": train})
    return points


def raw_path(config: dict[str, Any], dataset: str) -> str:
    """Where the raw data of ``dataset`` lives (a file, or Netflix's directory)."""
    entry = config["data"][dataset]
    if entry.get("url"):
        return f"data/raw/{dataset}/{PurePosixPath(urlparse(entry['url']).path).name}"
    if entry.get("synthetic") is not None:
        return f"data/raw/{dataset}/ratings.csv"
    return f"data/raw/{dataset}"


def synthetic_spec(config: dict[str, Any], dataset: str) -> dict:
    return dict(config["data"][dataset]["synthetic"])
