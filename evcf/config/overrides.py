"""The values typed on the command line, and the one rule for them and for edits of params.yaml:
nothing typed is dropped.

Snakemake hands ``--config`` values over as strings; :func:`apply_cli_types` reads them again as
YAML.  :func:`check_applied` refuses a value typed on the command line, or a setting changed in
params.yaml since the last commit (by hand, or by ``dvc exp run -S``, which writes the file), that a
more specific layer or a grid overrides, naming what overrides it.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

from ..errors import EvcfError
from .layers import COMMAND_LINE, COMMAND_LINE_LABEL, _MISSING, _resolve, _self_fitting, grid_source, tune_grid

__all__ = ["apply_cli_types", "check_applied", "command_line_tree"]


def _leaves(tree: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix, tree


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _typed(value: Any) -> Any:
    """A command-line string read as YAML (``'0.002'`` → 0.002, ``'[1, 2]'`` → [1, 2]); lists item by item."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, str):
        import yaml

        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def apply_cli_types(config: dict[str, Any], overrides: dict[str, Any] | None) -> set[tuple]:
    """Give values typed on the command line their YAML types, in place; return their key paths.

    Snakemake parses nested ``--config`` values with YAML's base loader, which keeps every scalar a
    string.  The values are read again as YAML, so ``lr: 0.002`` arrives as a number.
    """
    paths = set()
    for path, value in _leaves(overrides or {}):
        paths.add(path)
        try:
            current = _get(config, path)
        except (KeyError, TypeError):
            continue
        if current == value:
            _set(config, path, _typed(value))
    return paths


def _where(path: tuple | list) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _origin(path: tuple, cli_paths: set[tuple], source: str) -> str:
    """'--config' when ``path`` was set on the command line, else the config file."""
    for cli in cli_paths:
        n = min(len(cli), len(path))
        if tuple(cli[:n]) == tuple(path[:n]):
            return "--config (command line)"
    return source


def _setting_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that hold settings (``train``, ``model_params``, ``data``)."""
    return {k: copy.deepcopy(v) for k, v in tree.items() if k in ("train", "model_params", "data")}


def command_line_tree(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The settings among the ``--config`` values, typed: what :func:`evcf.config.validate` keeps in
    ``config[COMMAND_LINE]`` for :func:`evcf.config.run_settings` to apply after every file layer."""
    return _typed(_setting_tree(overrides or {}))


def _setting_paths(tree: dict[str, Any]) -> Iterator[tuple]:
    """The key paths of the training settings and model hyperparameters in ``tree``."""
    for path, _ in _leaves(_setting_tree(tree)):
        if (path[0] == "train" and len(path) == 2
                or path[0] == "model_params" and len(path) == 4 and path[2] in ("model", "train")
                or path[0] == "data" and len(path) == 4 and path[2] == "train"
                or path[0] == "data" and len(path) == 6 and path[2] == "model_params"
                and path[4] in ("model", "train")):
            yield path


def _changed_paths(config: dict[str, Any], committed: dict[str, Any]) -> list[tuple]:
    changed = []
    for path in _setting_paths(config):
        try:
            before = _get(committed, path)
        except (KeyError, TypeError):
            before = _MISSING
        if before != _get(config, path):
            changed.append(path)
    return changed


def _check_applied(config: dict[str, Any], path: tuple, prefix: str, origin: str) -> None:
    """Raise if the setting at ``path`` (a layer of ``prefix``) is overridden where it should apply.

    A key of one model's row (``model_params.<m>``, ``data.<d>.model_params.<m>``) must reach every
    run of that model in the selection; a shared key (``train``, ``data.<d>.train``) is a default
    by design, and is refused only when no run of the selection gets it.
    """
    layer, key = ".".join(path[:-1]), path[-1]
    if path[0] == "train":
        datasets, models, section, specific = config["datasets"], config["models"], "train", False
    elif path[0] == "model_params":
        datasets, models, section, specific = config["datasets"], [path[1]], path[2], True
    elif len(path) == 4:
        datasets, models, section, specific = [path[1]], config["models"], "train", False
    else:
        datasets, models, section, specific = [path[1]], [path[3]], path[4], True
    datasets = [d for d in datasets if d in config["datasets"]]
    models = [m for m in models if m in config["models"]]
    lost = []
    for dataset in datasets:
        for model in models:
            name = f"{section}.{key}"
            if section == "train" and _self_fitting(model):
                continue  # a self-fitting model does not read the VAE loop's settings
            grid = tune_grid(config, dataset, model)
            if name in grid:
                lost.append((dataset, model, f"tune.{grid_source(config, dataset, model)}.{model}.{name} (the grid's "
                             "winner replaces it)",
                             f"give that grid the one value ({name}: [{_get(config[COMMAND_LINE] if prefix else config, path)}])"
                             " or switch tuning off (tuning: false)"))
                continue
            winner = _resolve(config, dataset, model)[2].get(name)
            if winner is not None and winner != prefix + layer:
                shadow = winner[len(COMMAND_LINE_LABEL):] if winner.startswith(COMMAND_LINE_LABEL) else winner
                lost.append((dataset, model, f"{winner} (more specific)",
                             f"set {shadow}.{key} instead, or remove it there"))
    runs = [(d, m) for d in datasets for m in models if not (section == "train" and _self_fitting(m))]
    if lost and (specific or len(lost) == len(runs)):
        dataset, model, by, fix = lost[0]
        raise EvcfError(f"{_where(path)}: overridden by {by} for {model} on {dataset}, so it would not be applied",
                        path=origin, fix=fix)


def check_applied(config: dict[str, Any], *, committed: dict[str, Any] | None, written: dict[str, Any] | None,
                  source: str) -> None:
    """Raise for the first command-line value in ``config[COMMAND_LINE]``, then the first setting of
    ``written`` (else ``config``) changed since ``committed``, that would not be applied."""
    for path in sorted(_setting_paths(config[COMMAND_LINE]), key=str):
        _check_applied(config, path, COMMAND_LINE_LABEL, "--config (command line)")
    if committed is not None:
        for path in sorted(_changed_paths(config if written is None else written, committed), key=str):
            _check_applied(config, path, "", f"{source} (changed since the last commit, e.g. by `dvc exp run -S`)")
