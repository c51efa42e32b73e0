"""The model registry: names as they appear in params.yaml and result paths, mapped to classes.

A model is a class in one of this package's files that derives from :class:`VAEModel` or
:class:`SelfFittingModel` and sets ``name``.  The registry finds the models by reading the files'
syntax (:func:`find_models`), without importing them: adding a model is adding its file
(docs/extending.md).  From the same class body it reads how the model's row is shown (the
presentation attributes of :data:`evcf.identity.PRESENTATION`): ``label``, ``section``, ``colour``
and ``row`` (:class:`ModelEntry`), which the report uses.

``build_model(name, n_items, **hparams)`` checks the names and types of the hyperparameters against
the model's frozen ``Config`` dataclass, then builds ``Model(n_items, Config(**hparams))``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import typing
from pathlib import Path
from typing import Any, NamedTuple

from evcf.errors import EvcfError
from evcf.models.base import SelfFittingModel, LossParts, VAEModel

__all__ = [
    "MODEL_NAMES",
    "SECTIONS",
    "ModelEntry",
    "find_models",
    "model_entry",
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

SECTIONS = ("paper", "extra")  # a row of Kim & Suh's Table 1; a row of ours beyond it
_KINDS = {"VAEModel", "SelfFittingModel"}  # a model class derives from one of these
_READ = ("name", "label", "section", "colour", "row")  # the class attributes the registry reads


class ModelEntry(NamedTuple):
    """A model as its class body declares it, read without importing its module."""

    name: str  # params.yaml's name, and the result folders'
    module: str  # its file: evcf/models/<module>.py
    cls: str  # its class
    label: str  # its row label; the name when the class gives none
    section: str  # one of SECTIONS; "other" when the class gives none
    colour: str | None  # its colour in the plots; None: the report picks one
    row: float  # its place within its section; inf when the class gives none


def _literals(node: ast.ClassDef) -> dict[str, Any]:
    """The :data:`_READ` attributes that ``node``'s body sets to a literal (``name = "x"`` or
    ``name: ClassVar[str] = "x"``); an attribute set to anything else is left out."""
    found = {}
    for statement in node.body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets = [statement.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in _READ:
                try:
                    found[target.id] = ast.literal_eval(statement.value)
                except ValueError:
                    found.pop(target.id, None)
    return found


def _base_name(node: ast.expr) -> str:
    """``VAEModel`` of ``class X(VAEModel)`` or ``class X(base.VAEModel)``; '' for anything else."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def find_models(package: Path) -> dict[str, ModelEntry]:
    """The models declared in ``package``'s files (not ``__init__.py``), by name, in table order:
    the sections in the order of :data:`SECTIONS` ("other" last), by ``row`` within a section, then
    by name.  Two classes with one name are an error."""
    classes = []  # (module, class, its bases' names, its literals)
    for path in sorted(package.glob("*.py")):
        if path.name != "__init__.py":
            for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
                if isinstance(node, ast.ClassDef):
                    classes.append((path.stem, node.name, [_base_name(b) for b in node.bases], _literals(node)))
    bases = {}
    for _, cls, names, _ in classes:
        bases.setdefault(cls, set()).update(names)

    def is_model(cls: str, seen: frozenset = frozenset()) -> bool:
        return any(b in _KINDS or (b in bases and b not in seen and is_model(b, seen | {cls}))
                   for b in bases.get(cls, ()))

    entries: dict[str, ModelEntry] = {}
    for module, cls, _, values in classes:
        name = values.get("name")
        if not isinstance(name, str) or not is_model(cls):
            continue
        if name in entries:
            raise EvcfError(f"two model classes are named {name!r}: {entries[name].module}.{entries[name].cls} "
                            f"and {module}.{cls}", path=package / f"{module}.py", fix="give each model its own name")
        label, section, colour, row = (values.get(k) for k in ("label", "section", "colour", "row"))
        entries[name] = ModelEntry(
            name, module, cls, label if isinstance(label, str) else name,
            section if section in SECTIONS else "other", colour if isinstance(colour, str) else None,
            row if isinstance(row, (int, float)) and not isinstance(row, bool) else math.inf)

    def place(entry: ModelEntry) -> tuple:
        return (SECTIONS.index(entry.section) if entry.section in SECTIONS else len(SECTIONS), entry.row, entry.name)

    return {entry.name: entry for entry in sorted(entries.values(), key=place)}


# A model's module is imported when the model is first asked for (model_class, build_model, or
# ``from evcf.models import MultVAE``), so that a run executes its own model's file and not the
# others': the files its identity's code hash covers (evcf/identity.py).
_MODELS = find_models(Path(__file__).resolve().parent)
_CLASS_MODULES = {entry.cls: entry.module for entry in _MODELS.values()}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def model_entry(name: str) -> ModelEntry | None:
    """What the class registered under ``name`` declares (:class:`ModelEntry`); None if none is."""
    return _MODELS.get(name) if isinstance(name, str) else None


def model_class(name: str) -> type:
    """The class registered under ``name``; :class:`EvcfError` listing the valid names otherwise."""
    entry = model_entry(name)
    if entry is None:
        raise EvcfError(f"unknown model {name!r}",
                        fix=f"use one of {', '.join(MODEL_NAMES)}")
    return getattr(importlib.import_module(f"{__name__}.{entry.module}"), entry.cls)


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
