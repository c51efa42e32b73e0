"""The schema of params.yaml: every key named, every type given, and the wording of a violation.

Training and model sections take their keys and types from ``TrainConfig`` and each model's
``Config`` dataclass (:func:`build_schema`), so the schema cannot drift from the code.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from ..identity import SELF_FITTING_TRAIN
from .layers import _self_fitting

if typing.TYPE_CHECKING:  # imported where used: the bench's recipes load without it
    import jsonschema

__all__ = ["build_schema", "SYNTHETIC_KEYS"]

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
    from ..data.readers import RAW_FORMATS  # here, not at the top: they import pandas, which the bench's
    from ..data.split import FINGERPRINT_KEYS  # recipes (run_settings) do not need
    from ..models import MODEL_NAMES, model_class
    from ..training import TrainConfig

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

