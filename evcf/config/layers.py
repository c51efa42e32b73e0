"""What each run and grid point receives: params.yaml's layers, then the values typed on the command
line, then a grid point's setting; and where a dataset's raw data lives.

A run's settings come from layers, lowest precedence first: ``train`` → ``model_params.<model>.train``
→ ``data.<dataset>.train`` → ``data.<dataset>.model_params.<model>.train`` (model hyperparameters
from ``model_params.<model>.model`` and ``data.<dataset>.model_params.<model>.model``), then the same
layers of the ``--config`` values that :func:`evcf.config.validate` keeps in ``config[COMMAND_LINE]``
(:func:`run_settings`).  A grid (``tune``) turns them into one run per combination of its values
(:func:`tune_points`).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ..identity import SELF_FITTING_TRAIN

__all__ = ["COMMAND_LINE", "COMMAND_LINE_LABEL", "DEFAULT_GRID", "SELF_FITTING_TRAIN", "apply_setting",
           "grid_source", "raw_path", "run_settings", "settings_sources", "synthetic_spec", "tune_grid",
           "tune_points"]

# where validate() keeps the values typed on the command line (typed), so that every resolution of a
# run's settings (Table 1 runs and grid points alike) applies them after every file layer
COMMAND_LINE = "_command_line"
# how a layer of those values is named (``command line: model_params.vamp.train``)
COMMAND_LINE_LABEL = "command line: "
_MISSING = object()  # a key no layer sets


def _self_fitting(model: str) -> bool:
    from ..models import SelfFittingModel, MODEL_NAMES, model_class

    return model in MODEL_NAMES and issubclass(model_class(model), SelfFittingModel)


def _layers(config: dict[str, Any], dataset: str, model: str) -> list[tuple[str, str, dict]]:
    """(layer name, "model" | "train", its values) for one run, lowest precedence first.

    The file's layers, then the same layers of the values typed on the command line.
    """
    out = []
    for tree, prefix in ((config, ""), (config.get(COMMAND_LINE) or {}, COMMAND_LINE_LABEL)):
        entry = (tree.get("data") or {}).get(dataset) or {}
        per_model = (tree.get("model_params") or {}).get(model) or {}
        per_both = (entry.get("model_params") or {}).get(model) or {}
        out += [(f"{prefix}train", "train", tree.get("train")),
                (f"{prefix}model_params.{model}.train", "train", per_model.get("train")),
                (f"{prefix}data.{dataset}.train", "train", entry.get("train")),
                (f"{prefix}data.{dataset}.model_params.{model}.train", "train", per_both.get("train")),
                (f"{prefix}model_params.{model}.model", "model", per_model.get("model")),
                (f"{prefix}data.{dataset}.model_params.{model}.model", "model", per_both.get("model"))]
    return [(name, section, values) for name, section, values in out if isinstance(values, dict) and values]


def _resolve(config: dict[str, Any], dataset: str, model: str) -> tuple[dict, dict, dict[str, str]]:
    """(hparams, train, {"model.x" | "train.y": the layer that set it})."""
    hparams: dict[str, Any] = {}
    train: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, section, values in _layers(config, dataset, model):
        for key, value in values.items():
            (hparams if section == "model" else train)[key] = copy.deepcopy(value)
            source[f"{section}.{key}"] = name
    if _self_fitting(model):
        train = {k: v for k, v in train.items() if k in SELF_FITTING_TRAIN}
        source = {k: v for k, v in source.items() if not k.startswith("train.") or k[6:] in SELF_FITTING_TRAIN}
    return hparams, train, source


def run_settings(config: dict[str, Any], dataset: str, model: str) -> tuple[dict, dict]:
    """(model hyperparameters, training settings) for one run.

    Later layers win: ``train`` → ``model_params.<model>.train`` → ``data.<dataset>.train`` →
    ``data.<dataset>.model_params.<model>.train``; model hyperparameters likewise from
    ``model_params.<model>.model`` and ``data.<dataset>.model_params.<model>.model``.  Values typed
    on the command line (``config[COMMAND_LINE]``, see :func:`validate`) come after every file
    layer, in the same order among themselves.  A self-fitting model gets only the training
    settings it reads (:data:`SELF_FITTING_TRAIN`).
    """
    hparams, train, _ = _resolve(config, dataset, model)
    return hparams, train


def settings_sources(config: dict[str, Any], dataset: str, model: str,
                     file_config: dict[str, Any] | None) -> dict[str, dict]:
    """The settings of one run that the command line changed: ``{"train.lr": {"from", "value"}}``.

    ``file_config`` is the config file(s) as read, before ``--config``: a typed value equal to what
    the file gives is credited to the file (and changes nothing, not even the rule's params).
    """
    hparams, train, source = _resolve(config, dataset, model)
    try:
        file_h, file_t, _ = _resolve({k: v for k, v in (file_config or {}).items() if k != COMMAND_LINE},
                                     dataset, model)
    except (KeyError, TypeError, AttributeError):
        file_h, file_t = {}, {}
    out = {}
    for name, layer in sorted(source.items()):
        section, key = name.split(".", 1)
        value, before = (hparams, file_h) if section == "model" else (train, file_t)
        if layer.startswith(COMMAND_LINE_LABEL) and before.get(key, _MISSING) != value[key]:
            out[name] = {"from": layer, "value": value[key]}
    return out


DEFAULT_GRID = "default"  # tune.default.<model>: the grid of every dataset without its own


def grid_source(config: dict[str, Any], dataset: str, model: str) -> str | None:
    """Which block holds the grid of (dataset, model): the dataset's own, ``default``, or None.

    ``tune.<dataset>.<model>`` replaces ``tune.default.<model>`` as a whole (an empty mapping there
    means: no search for that model on that dataset).  With ``tuning: false`` no model has a grid.
    """
    if not config.get("tuning", True):
        return None
    tune = config.get("tune", {})
    for block in (dataset, DEFAULT_GRID):
        if model in tune.get(block, {}):
            return block if tune[block][model] else None
    return None


def tune_grid(config: dict[str, Any], dataset: str, model: str) -> dict[str, list]:
    source = grid_source(config, dataset, model)
    return dict(config["tune"][source][model]) if source else {}


def tune_points(config: dict[str, Any], dataset: str, model: str) -> list[dict]:
    """The grid of (dataset, model) (see :func:`grid_source`) as a list of runs.

    Each is ``{"setting", "hparams", "train"}``.  A grid maps ``model.<name>`` / ``train.<name>`` to
    lists of values; every combination (in the order written) becomes one run on top of
    :func:`run_settings`.  No grid: an empty list, and the Table 1 runs use params.yaml as it is.
    """
    grid = tune_grid(config, dataset, model)
    keys = list(grid)
    if not keys:
        return []
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        hparams, train = apply_setting(*run_settings(config, dataset, model), setting)
        points.append({"setting": setting, "hparams": hparams, "train": train})
    return points


def apply_setting(hparams: dict, train: dict, setting: dict[str, Any]) -> tuple[dict, dict]:
    """``hparams`` and ``train`` with a grid setting (``{"model.x": v, "train.y": w}``) applied."""
    hparams, train = copy.deepcopy(hparams), copy.deepcopy(train)
    for key, value in setting.items():
        section, name = key.split(".", 1)
        (hparams if section == "model" else train)[name] = value
    return hparams, train


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
