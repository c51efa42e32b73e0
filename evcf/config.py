"""Validate params.yaml and resolve what each pipeline step receives.

``params.yaml`` is the project's one configuration file: Snakemake loads it as its configfile
(``--config`` overrides apply on top), DVC reads it as its params file.  The Snakefile calls
:func:`validate` once, then the rules call the ``resolve_*`` helpers to turn it into the explicit
command-line arguments of ``evcf`` subcommands.  The ``evcf`` CLI itself never reads params.yaml.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import typing
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import urlparse

from .errors import EvcfError
from .identity import SELF_FITTING_TRAIN

if typing.TYPE_CHECKING:  # imported where used: the bench's recipes load without it
    import jsonschema

__all__ = ["build_schema", "check_plain_yaml", "apply_cli_types", "validate", "grid_source", "tune_grid",
           "apply_setting", "raw_path", "run_settings", "settings_sources", "synthetic_spec", "tune_points",
           "COMMAND_LINE", "SELF_FITTING_TRAIN"]

# where validate() keeps the values typed on the command line (typed), so that every resolution of a
# run's settings (Table 1 runs and grid points alike) applies them after every file layer
COMMAND_LINE = "_command_line"


_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"}
SYNTHETIC_KEYS = {"n_users": "integer", "n_items": "integer", "mean_items": "number", "n_topics": "integer",
                  "zipf": "number", "noise": "number", "seed": "integer"}


def _closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema that accepts only the keys in ``properties``."""
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


def _type_schema(hint: Any) -> dict[str, Any]:
    """The JSON-schema type of a config dataclass field (bool, int, float, str, tuple[X, ...])."""
    if typing.get_origin(hint) is tuple:
        return {"type": "array", "items": _type_schema(typing.get_args(hint)[0])}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[hint]}


def _fields_schema(config_cls: type) -> dict[str, Any]:
    return _closed({name: _type_schema(hint) for name, hint in typing.get_type_hints(config_cls).items()})


def build_schema() -> dict[str, Any]:
    """The schema of params.yaml, with every key named: an unknown key anywhere is an error.

    Training and model sections take their keys and types from ``TrainConfig`` and each model's
    ``Config`` dataclass, so the schema cannot drift from the code.
    """
    from .data.readers import RAW_FORMATS  # here, not at the top: they import pandas, which the bench's
    from .data.split import FINGERPRINT_KEYS  # recipes (run_settings) do not need
    from .models import MODEL_NAMES, model_class
    from .training import TrainConfig

    train = _fields_schema(TrainConfig)

    def train_of(name: str) -> dict[str, Any]:
        """The training settings a model reads (a self-fitting model: only SELF_FITTING_TRAIN)."""
        if not _self_fitting(name):
            return train
        return _closed({k: v for k, v in train["properties"].items() if k in SELF_FITTING_TRAIN})

    per_model = _closed({name: _closed({"model": _fields_schema(model_class(name).Config), "train": train_of(name)})
                         for name in MODEL_NAMES})
    grid = {}
    for name in MODEL_NAMES:
        keys = {f"model.{k}": v for k, v in _fields_schema(model_class(name).Config)["properties"].items()}
        keys.update({f"train.{k}": v for k, v in train_of(name)["properties"].items()})
        grid[name] = _closed({k: {"type": "array", "minItems": 1, "items": v} for k, v in keys.items()})
    dataset = _closed(
        {
            "url": {"type": "string", "pattern": "^(https?|file)://"},
            "md5": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "local": {"type": "boolean"},
            # true: accept the archive at `url` without a pinned checksum (docs/pipeline.md, Integrity); never the default
            "unverified": {"type": "boolean"},
            "synthetic": _closed({k: {"type": t} for k, t in SYNTHETIC_KEYS.items()}),
            "format": {"enum": list(RAW_FORMATS)},
            "threshold": {"type": "number"},
            "min_items": {"type": "integer", "minimum": 1},
            "heldout_users": {"type": "integer", "minimum": 1},
            "fingerprint": _closed({k: {"type": "string" if k.endswith("sha256") else "integer"}
                                    for k in FINGERPRINT_KEYS}),
            "train": train,
            "model_params": per_model,
        },
        required=["format", "threshold", "min_items", "heldout_users"],
    )
    return _closed(
        {
            "datasets": {"type": "array", "items": _NAME, "minItems": 1, "uniqueItems": True},
            "models": {"type": "array", "items": _NAME, "minItems": 1, "uniqueItems": True},
            "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                      "uniqueItems": True},
            "device": {"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$"},
            "threads": {"type": "integer", "minimum": 1},
            "tuning": {"enum": ["full", "halving", False]},
            "halving": _closed({"eta": {"type": "integer", "minimum": 2}, "rungs": {"type": "integer", "minimum": 1}}),
            "tune_from": {"type": "object", "additionalProperties": _NAME},
            "data": {"type": "object", "additionalProperties": dataset},
            "train": train,
            "model_params": per_model,
            "tune": {"type": "object", "additionalProperties": _closed(grid)},
            # the reproduction verdicts' δ per dataset: a number, or one per metric (evcf report --tolerance)
            "report": _closed({"tolerance": {"type": "object", "additionalProperties": {"oneOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
            ]}}}),
        },
        required=["datasets", "models", "seeds", "data", "train", "model_params"],
    )


def check_plain_yaml(path: str | Path) -> None:
    """Refuse YAML anchors, aliases and merge keys in ``path``.

    DVC writes ``-S`` overrides back into params.yaml through its YAML round-trip, which follows
    aliases: an override of one aliased key would silently change (or fail to change) every key
    that shares it.  So params.yaml spells every value out.
    """
    import yaml  # here, not at the top: the bench's recipes (run_settings) load without it

    path = Path(path)
    try:
        events = list(yaml.parse(path.read_text()))
    except yaml.YAMLError as exc:
        raise EvcfError(f"not valid YAML ({exc})", path=path, fix="correct the YAML syntax") from None
    for event in events:
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise EvcfError(f"line {line}: YAML alias *{event.anchor} is not allowed", path=path,
                            fix="write the values out in full (DVC's -S overrides do not follow aliases)")
        if getattr(event, "anchor", None):
            raise EvcfError(f"line {line}: YAML anchor &{event.anchor} is not allowed", path=path,
                            fix="write the values out in full (DVC's -S overrides do not follow aliases)")
        if isinstance(event, yaml.ScalarEvent) and event.value == "<<" and event.plain:
            raise EvcfError(f"line {line}: YAML merge key '<<' is not allowed", path=path,
                            fix="write the merged keys out in full")


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


def _schema_error(err: jsonschema.ValidationError) -> tuple[tuple, str, str]:
    """(where, problem, fix) for one schema violation, naming the nearest valid key for a typo."""
    where = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed]
        if unknown:
            key = unknown[0]
            near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            return (*where, key), f"unknown key {key!r}", f"{hint}valid keys here: {', '.join(allowed)}"
    if err.validator == "type":
        wanted = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
                  "array": "a list", "object": "a mapping"}.get(str(err.validator_value), str(err.validator_value))
        return where, err.message, f"write {wanted} (YAML reads 2e-5 as a string: write 2.0e-5)" \
            if wanted == "a number" else f"write {wanted}"
    if err.validator == "enum":
        return where, f"{err.instance!r} is not allowed", \
            "write one of: " + ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in err.validator_value)
    return where, err.message, "correct that value"


def validate(config: dict[str, Any], *, source: str = "params.yaml",
             overrides: dict[str, Any] | None = None, committed: dict[str, Any] | None = None,
             written: dict[str, Any] | None = None) -> None:
    """Raise one EvcfError for the first problem in ``config``; otherwise every run is buildable.

    ``overrides`` are the values given on the command line (Snakemake's ``--config``): they are
    typed in place first (see :func:`apply_cli_types`), errors in them say so, and they are kept in
    ``config[COMMAND_LINE]`` so that :func:`run_settings` applies them after every file layer (a
    value typed on the command line wins).  ``committed`` is the config file as last committed
    (``git show HEAD:params.yaml``), when known, and ``written`` the file as it is on disk (before
    ``--config``; ``config`` itself when not given): a setting changed in the file since the commit
    (by hand, or by ``dvc exp run -S``, which writes params.yaml) that a more specific layer or a
    grid overrides is refused, naming that layer.  Values typed with ``--config`` are never taken
    for edits of the file.  Then: the schema (every key known, every type right), the
    cross-references, and every run and grid point of the selection is resolved and built (model
    and training configs), so a bad value fails here, before any job starts.
    """
    config.pop(COMMAND_LINE, None)
    import jsonschema  # here, not at the top: the bench's recipes (run_settings) load without it

    cli_paths = apply_cli_types(config, overrides)
    errors = sorted(jsonschema.Draft202012Validator(build_schema()).iter_errors(config),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        where, problem, fix = _schema_error(errors[0])
        raise EvcfError(f"{_where(where)}: {problem}", path=_origin(where, cli_paths, source), fix=fix)

    def fail(where: tuple, problem: str, fix: str) -> EvcfError:
        return EvcfError(f"{_where(where)}: {problem}", path=_origin(where, cli_paths, source), fix=fix)

    from .models import MODEL_NAMES, build_model
    from .training import train_config

    known_data = sorted(config["data"])
    for i, name in enumerate(config["datasets"]):
        if name not in config["data"]:
            raise fail(("datasets", i), f"unknown dataset {name!r}",
                       f"use one of {known_data}, or add an entry for it under `data`")
    for i, name in enumerate(config["models"]):
        if name not in MODEL_NAMES:
            near = difflib.get_close_matches(name, MODEL_NAMES, n=1, cutoff=0.5)
            raise fail(("models", i), f"unknown model {name!r}",
                       (f"did you mean {near[0]!r}? " if near else "") + f"use one of {list(MODEL_NAMES)}")
    for name, entry in config["data"].items():
        sources = [k for k in ("url", "local", "synthetic") if entry.get(k)]
        if len(sources) != 1:
            raise fail(("data", name), "must have exactly one of url, local: true, synthetic",
                       f"give data.{name} one source")
        if entry.get("url") and not (entry.get("md5") or entry.get("sha256")) and not entry.get("unverified"):
            raise fail(("data", name), "a downloaded dataset needs a pinned checksum (md5 or sha256)",
                       f"add data.{name}.md5 (the value its publisher gives) so the download is verified "
                       f"(or, knowingly, data.{name}.unverified: true)")
        if entry.get("url") and entry["format"] == "csv":
            raise fail(("data", name, "format"), "a csv dataset cannot be downloaded (the download step "
                       "fetches archives: .zip, .tar, .tar.gz, .gz)",
                       f"put the file at data/raw/{name}/ratings.csv and use `local: true` instead of url")
        if entry.get("synthetic") is not None and entry["format"] != "csv":
            raise fail(("data", name, "format"), "synthetic data is written as format csv",
                       f"set data.{name}.format: csv")
    for dataset, grids in config.get("tune", {}).items():
        if dataset != DEFAULT_GRID and dataset not in config["data"]:
            raise fail(("tune", dataset), f"unknown dataset {dataset!r}",
                       f"use `{DEFAULT_GRID}` (every dataset) or one of {known_data}")

    for dataset, source in config.get("tune_from", {}).items():
        for where, name in ((("tune_from", dataset), dataset), (("tune_from", dataset), source)):
            if name not in config["data"]:
                raise fail(where, f"unknown dataset {name!r}", f"use one of {known_data}")
        if source == dataset or source in config["tune_from"]:
            raise fail(("tune_from", dataset), f"{dataset} would take its winners from {source}, which "
                       "takes them from elsewhere itself", f"name a dataset that runs its own search")
    if config.get("tuning", "full") == "halving":
        from .models import model_class
        from .models.base import VAEModel

        for dataset in config["datasets"]:
            for model in config["models"]:
                if tune_points(config, dataset, model) and not issubclass(model_class(model), VAEModel):
                    raise fail(("tune", grid_source(config, dataset, model), model),
                               f"tuning: halving cuts a search by epochs, and {model} has none (it fits "
                               "its settings in one run)", f"remove its grid, list its settings in "
                               f"model_params.{model}.model (its in-run search), or use tuning: full")

    built: set[str] = set()  # the (model, hyperparameters) already built: grid points share most

    def check(where: tuple, model: str | None, hparams: dict, train: dict) -> None:
        try:
            train_config(train)
            key = json.dumps([model, hparams], sort_keys=True, default=str)
            if model is not None and key not in built:
                build_model(model, 2, **hparams)  # validates names, types and values of the Config
                built.add(key)
        except EvcfError as exc:
            raise fail(where, exc.problem, exc.fix or "correct that value") from None

    # each layer alone first, so that the error names the layer that holds the bad value
    check(("train",), None, {}, config["train"])
    for dataset, entry in config["data"].items():
        if entry.get("train"):
            check(("data", dataset, "train"), None, {}, _merge(config["train"], entry["train"]))
    for name, section in config["model_params"].items():
        check(("model_params", name), name, section.get("model", {}),
              _merge(config["train"], section.get("train")))
    config[COMMAND_LINE] = _typed(_setting_tree(overrides or {}))
    for dataset in config["datasets"]:
        for model in config["models"]:
            hparams, train = run_settings(config, dataset, model)
            check(("data", dataset, "model_params", model), model, hparams, train)
            for point in tune_points(config, dataset, model):
                where = ("tune", grid_source(config, dataset, model) or DEFAULT_GRID, model)
                check(where, model, point["hparams"], point["train"])
    # nothing typed is dropped: a command-line value lost to a grid, a changed file value lost to a
    # more specific layer or a grid, is an error naming what overrides it
    for path in sorted(_setting_paths(config[COMMAND_LINE]), key=str):
        _check_applied(config, path, COMMAND_LINE_LABEL, "--config (command line)")
    if committed is not None:
        for path in sorted(_changed_paths(config if written is None else written, committed), key=str):
            _check_applied(config, path, "", f"{source} (changed since the last commit, e.g. by `dvc exp run -S`)")


COMMAND_LINE_LABEL = "command line: "


def _setting_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that hold settings (``train``, ``model_params``, ``data``)."""
    return {k: copy.deepcopy(v) for k, v in tree.items() if k in ("train", "model_params", "data")}


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


_MISSING = object()


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


def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = value
    return out


def _self_fitting(model: str) -> bool:
    from .models import SelfFittingModel, MODEL_NAMES, model_class

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
