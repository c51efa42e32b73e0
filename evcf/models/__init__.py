"""The model registry: names as they appear in params.yaml and result paths, mapped to classes.

``build_model(name, n_items, **hparams)`` checks the names and types of the hyperparameters against
the model's frozen ``Config`` dataclass, then builds ``Model(n_items, Config(**hparams))``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from typing import Any

from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel, LossParts, VAEModel

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "model_class",
    "model_config_fields",
    "VAEModel",
    "SelfFittingModel",
    "LossParts",
    "MultDAE",
    "MultVAE",
    "GatedMultVAE",
    "EvcfMultVAE",
    "Vamp",
    "HVamp",
    "GatedHVamp",
    "Popularity",
    "EASE",
    "WMF",
    "SLIM",
    "CDAE",
    "RecVAE",
]

# name -> (module, class).  A model's module is imported when the model is first asked for
# (model_class, build_model, or ``from evcf.models import MultVAE``), so that a run executes its own
# model's file and not the others': the files its identity's code hash covers (evcf/identity.py).
_REGISTRY: dict[str, tuple[str, str]] = {
    "mult-dae": ("multvae", "MultDAE"),
    "mult-vae": ("multvae", "MultVAE"),
    "mult-vae-gated": ("multvae", "GatedMultVAE"),
    "mult-vae-evcf": ("multvae", "EvcfMultVAE"),
    "vamp": ("vamp", "Vamp"),
    "hvamp": ("vamp", "HVamp"),
    "hvamp-gated": ("vamp", "GatedHVamp"),
    "popularity": ("baselines", "Popularity"),
    "ease": ("baselines", "EASE"),
    "wmf": ("wmf", "WMF"),
    "slim": ("slim", "SLIM"),
    "cdae": ("cdae", "CDAE"),
    "recvae": ("recvae", "RecVAE"),
}
_CLASS_MODULES = {cls: module for module, cls in _REGISTRY.values()}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def model_class(name: str) -> type:
    """The class registered under ``name``; :class:`EvcfError` listing the valid names otherwise."""
    try:
        module, cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise EvcfError(f"unknown model {name!r}",
                        fix=f"use one of {', '.join(MODEL_NAMES)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def __getattr__(attr: str) -> type:
    """``evcf.models.MultVAE`` and the other model classes, their module imported on first use."""
    if attr in _CLASS_MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASS_MODULES[attr]}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def model_config_fields(name: str) -> set[str]:
    """The hyperparameter names that model ``name`` accepts (the fields of its ``Config``)."""
    return {f.name for f in dataclasses.fields(model_class(name).Config)}


def _coerce(value: Any, hint: Any, key: str, name: str) -> Any:
    """Check ``value`` against a Config field's type and return it in that type."""

    def wrong(expected: str, fix: str | None = None) -> EvcfError:
        return EvcfError(f"model {name!r}: hyperparameter {key} must be {expected}, "
                         f"got {value!r} ({type(value).__name__})",
                         fix=fix or f"write {key} as {expected}")

    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool):
            raise wrong("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise wrong("an integer")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number", fix=f"write {key} as a number; note that YAML reads 2e-5 as a "
                                        f"string, write 2.0e-5")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if typing.get_origin(hint) is tuple:  # tuple[float, ...] or tuple[int, ...]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise wrong("a list of numbers")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(v, item_hint, key, name) for v in value)
    raise TypeError(f"unsupported config field type {hint!r} for {key}")  # a bug in a Config


def build_model(name: str, n_items: int, **hparams: Any) -> VAEModel | SelfFittingModel:
    """Build model ``name`` for ``n_items`` items with hyperparameters ``hparams``.

    Unknown names, unknown hyperparameters, wrongly typed values and invalid values raise
    :class:`EvcfError`; omitted hyperparameters take the ``Config`` defaults.
    """
    cls = model_class(name)
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise EvcfError(f"model {name!r}: n_items must be a positive integer, got {n_items!r}")
    config_cls = cls.Config
    hints = typing.get_type_hints(config_cls)
    accepted = sorted(hints)
    values = {}
    for key, value in hparams.items():
        if key not in hints:
            raise EvcfError(
                f"model {name!r} has no hyperparameter {key!r}",
                fix=f"use only {', '.join(accepted)}" if accepted else "give it no hyperparameters")
        values[key] = _coerce(value, hints[key], key, name)
    return cls(n_items, config_cls(**values))
