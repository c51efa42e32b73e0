"""What defines a run: its settings, the split it trains on, the code that trains it, the environment.

A run folder (``results/<dataset>/<model>/seed-<seed>/``) may hold a checkpoint from an earlier
execution.  It is reused (resumed, or re-scored when training had finished) only when the identity
stored in it equals the identity of the run about to start; any difference (a setting, one byte of
the processed split, a statement of the code that runs for that model, a version of a numeric library
it uses, the device type) means the run trains from scratch.  :func:`run_identity` builds that identity, :func:`identity_diff` names what
changed so that the log can say why a checkpoint was set aside.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

__all__ = ["SELF_FITTING_TRAIN", "code_hash", "content_hash", "code_modules", "libraries", "split_fingerprint", "matrices_fingerprint",
           "environment", "run_identity", "identity_diff"]

# the training settings a self-fitting model (WMF, SLIM, CDAE, EASE, popularity) reads: its fit has its
# own settings under `model`; the VAE loop's (epochs, lr, β...) never reach it (evcf/training/:
# self_fitting.py, device.py's numerics), so they are neither in its identity nor in its rule's params
SELF_FITTING_TRAIN = ("eval_batch_size", "checkpoint_minutes", "tf32", "deterministic", "weights")
_PACKAGE = Path(__file__).resolve().parent
# what `evcf train` runs for every model: the loop and, through its imports, data loading, batching,
# evaluation, metrics, the optimizers, the β schedules and the model registry
_RUN_ROOTS = ("evcf.training", "evcf.data.sparse")
# the registry (which imports a model's file when that model is asked for); a run depends only on its
# own model's file (and its imports), never on the other model files the registry names
_REGISTRY = "evcf.models"
# the libraries that compute a run's numbers (import name -> distribution name), when its modules import them
_NUMERIC = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "implicit": "implicit",
            "sklearn": "scikit-learn"}


def _module_path(name: str) -> Path | None:
    """The source file of an evcf module name (``evcf.data.split``), or None."""
    parts = name.split(".")[1:]
    base = _PACKAGE.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(evcf modules, top-level third-party packages) that module ``name`` imports, anywhere in it."""
    path = _module_path(name)
    package = name if path is not None and path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, theirs = set(), set()
    for node in ast.walk(_parsed(path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import x` may import a module x or a name x of the package
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == "evcf" or target.startswith("evcf."):
                while target and _module_path(target) is None:
                    target = target.rpartition(".")[0]
                if target:
                    ours.add(target)
            elif target:
                theirs.add(target.split(".")[0])
    return ours, theirs


@lru_cache(maxsize=None)
def code_modules(model: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the evcf modules a run of ``model`` executes, the third-party packages they import).

    Found by import analysis from the training loop (:data:`_RUN_ROOTS`) and the model's own
    module; the registry's imports of the other model files are not followed, nor this module:
    it computes no number, and a change to what it covers shows in the identities it makes.
    ``model`` None: the shared modules only.
    """
    roots = list(_RUN_ROOTS)
    if model is not None:
        from .models import model_class

        roots.append(model_class(model).__module__)
    seen: set[str] = set()
    packages: set[str] = set()
    todo = ["evcf", *roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        ours, theirs = _imports(name)
        packages |= theirs
        if name == _REGISTRY:
            ours = {m for m in ours if m == "evcf.models.base" or not m.startswith(_REGISTRY + ".")}
        # a module's parent packages run first (their __init__)
        for m in list(ours):
            parts = m.split(".")
            ours |= {".".join(parts[:i]) for i in range(1, len(parts))}
        todo.extend(sorted(ours - seen - {__name__}))
    return tuple(sorted(seen)), tuple(sorted(packages))


# class attributes that say how a model's row is shown (evcf/report), not what it computes: its label,
# its section of the table, its colour in the plots and its place (row) within the section
PRESENTATION = ("label", "section", "colour", "row")


class _WithoutOwnImports(ast.NodeTransformer):
    """Drops docstrings, ``__all__``, the imports of evcf's own modules (where a definition lives is
    not what it computes) and the :data:`PRESENTATION` attributes of classes."""

    def _strip_docstring(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = _strip_docstring

    def visit_ClassDef(self, node):
        node.body = [s for s in node.body if not _assigns_presentation(s)] or [ast.Pass()]
        return self._strip_docstring(node)

    def visit_Import(self, node):
        node.names = [alias for alias in node.names if alias.name.split(".")[0] != "evcf"]
        return node if node.names else None

    def visit_ImportFrom(self, node):
        return None if node.level or (node.module or "").split(".")[0] == "evcf" else node

    def visit_Assign(self, node):
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        return None if names == ["__all__"] else node


def _assigns_presentation(statement: ast.stmt) -> bool:
    targets = statement.targets if isinstance(statement, ast.Assign) else \
        [statement.target] if isinstance(statement, ast.AnnAssign) else []
    return bool(targets) and all(isinstance(t, ast.Name) and t.id in PRESENTATION for t in targets)


def _statements(source: str) -> set[str]:
    """The top-level statements of a module's source, each as its syntax tree (no layout, comments,
    docstrings, ``__all__`` or imports of evcf's own modules)."""
    tree = _WithoutOwnImports().visit(ast.parse(source))
    return {ast.dump(statement, include_attributes=False) for statement in tree.body}


def content_hash(sources: Iterable[str]) -> str:
    """sha256 over the distinct top-level statements of ``sources``, in sorted order.

    Moving a function or class from one module to another (and its importers' ``from ... import``
    lines with it) leaves the hash unchanged; editing any statement changes it.
    """
    statements: set[str] = set()
    for source in sources:
        statements |= _statements(source)
    digest = hashlib.sha256()
    for statement in sorted(statements):
        digest.update(statement.encode() + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=None)
def code_hash(model: str | None = None) -> str:
    """:func:`content_hash` over the modules of :func:`code_modules`: the code that computes a run of
    ``model``, by content and not by file name.

    Editing the report, the bench, the CLI's printing, another model's file, a comment or a
    docstring leaves it unchanged, and so does moving code between the run's modules; editing a
    statement of a module the run executes changes it.
    """
    return content_hash(_module_path(name).read_text() for name in code_modules(model)[0])


def libraries(model: str | None = None) -> dict[str, str]:
    """Versions of the numeric libraries the run's modules import (torch, numpy, scipy, and pandas,
    implicit or scikit-learn where used)."""
    found = {}
    for package in code_modules(model)[1]:
        if package in _NUMERIC:
            try:
                found[_NUMERIC[package]] = metadata.version(_NUMERIC[package])
            except metadata.PackageNotFoundError:
                found[_NUMERIC[package]] = "not installed"
    return dict(sorted(found.items()))


def split_fingerprint(processed: Path | str) -> str:
    """sha256 over the files of a processed split (name and bytes of each of :data:`evcf.data.split.SPLIT_FILES`)."""
    from .data.split import SPLIT_FILES  # here, not at the top: it imports pandas, which evcf.config does not need

    processed = Path(processed)
    digest = hashlib.sha256()
    for name in SPLIT_FILES:
        digest.update(name.encode() + b"\0")
        with open(processed / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def matrices_fingerprint(data: Any) -> str:
    """sha256 over the CSR arrays of an in-memory split (for a SplitData not loaded from files)."""
    import numpy as np

    digest = hashlib.sha256()
    for name in ("train", "validation_tr", "validation_te", "test_tr", "test_te"):
        matrix = getattr(data, name)
        digest.update(f"{name}{matrix.shape}".encode())
        for array in (matrix.indptr, matrix.indices, matrix.data):
            digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(np.ascontiguousarray(data.test_uids).tobytes())
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """Versions of the libraries a number depends on (recorded in metrics.json)."""
    import numpy
    import pandas
    import scipy
    import torch

    from . import __version__

    versions = {"evcf": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "scipy": scipy.__version__, "pandas": pandas.__version__}
    # the solvers of WMF (implicit's ALS) and SLIM (scikit-learn's coordinate descent)
    for package in ("implicit", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_identity(*, model: str, hparams: dict[str, Any], train: dict[str, Any], seed: int | None,
                 data: str, device: str) -> dict[str, Any]:
    """The identity of one run; two runs with equal identities must give the same numbers.

    ``seed`` is None for a model whose result does not depend on it; ``device`` is the device type
    (``cpu`` or ``cuda``), so that a run started on a GPU never silently finishes on a CPU.  ``code``
    covers only the modules that run for ``model`` (:func:`code_hash`); ``libraries`` the versions of
    the numeric libraries they import.  A self-fitting model's identity holds only the training
    settings it reads (:data:`SELF_FITTING_TRAIN`; ``checkpoint_minutes`` never is: the caller leaves it out).
    """
    from .models import SelfFittingModel, model_class

    if issubclass(model_class(model), SelfFittingModel):
        train = {k: v for k, v in train.items() if k in SELF_FITTING_TRAIN}
    return {"model": model, "hparams": hparams, "train": train, "seed": seed, "data": data,
            "code": code_hash(model), "libraries": libraries(model), "device": device}


def identity_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The top-level keys (with one level of detail for settings) whose values differ."""
    if not isinstance(old, dict):
        return ["(no identity recorded)"]
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            changed.append(f"{key}: {', '.join(inner)}")
        else:
            changed.append(key)
    return changed
