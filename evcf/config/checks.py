"""The checks of params.yaml before any job starts: the file's syntax, the schema, the cross-references,
every run and grid point built, and nothing typed dropped.

:func:`validate` is called once by the Snakefile (workflow/rules/common.smk) and by ``evcf bench``.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from ..errors import EvcfError
from .layers import COMMAND_LINE, DEFAULT_GRID, grid_source, run_settings, tune_points
from .overrides import _origin, _where, apply_cli_types, check_applied, command_line_tree
from .schema import _schema_error, build_schema

__all__ = ["check_plain_yaml", "validate"]


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

    from ..models import MODEL_NAMES, build_model
    from ..training import train_config

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
        from ..models import model_class
        from ..models.base import VAEModel

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
    config[COMMAND_LINE] = command_line_tree(overrides)
    for dataset in config["datasets"]:
        for model in config["models"]:
            hparams, train = run_settings(config, dataset, model)
            check(("data", dataset, "model_params", model), model, hparams, train)
            for point in tune_points(config, dataset, model):
                where = ("tune", grid_source(config, dataset, model) or DEFAULT_GRID, model)
                check(where, model, point["hparams"], point["train"])
    # nothing typed is dropped: a command-line value lost to a grid, a changed file value lost to a
    # more specific layer or a grid, is an error naming what overrides it
    check_applied(config, committed=committed, written=written, source=source)


def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = value
    return out
