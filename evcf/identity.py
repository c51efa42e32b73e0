"""What defines a run: its settings, the split it trains on, the code that trains it, the environment.

A run folder (``results/<dataset>/<model>/seed-<seed>/``) may hold a checkpoint from an earlier
execution.  It is reused (resumed, or re-scored when training had finished) only when the identity
stored in it equals the identity of the run about to start; any difference (a setting, one byte of
the processed split, one byte of the package's source, the torch version, the device type) means the
run trains from scratch.  :func:`run_identity` builds that identity, :func:`identity_diff` names what
changed so that the log can say why a checkpoint was set aside.
"""

from __future__ import annotations

import hashlib
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["SPLIT_FILES", "code_hash", "split_fingerprint", "matrices_fingerprint", "environment", "run_identity", "identity_diff"]

# the processed files a run reads (stats.json holds the sizes the loader uses)
SPLIT_FILES = ("train.csv", "validation_tr.csv", "validation_te.csv", "test_tr.csv", "test_te.csv",
               "unique_sid.txt", "stats.json")
_PACKAGE = Path(__file__).resolve().parent
_CODE_SUFFIXES = (".py", ".yaml", ".json")


@lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over the package's source files (relative path and bytes, in sorted path order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.suffix in _CODE_SUFFIXES and p.is_file()
                       and "__pycache__" not in p.parts):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def split_fingerprint(processed: Path | str) -> str:
    """sha256 over the files of a processed split (name and bytes of each of :data:`SPLIT_FILES`)."""
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
    (``cpu`` or ``cuda``), so that a run started on a GPU never silently finishes on a CPU.
    """
    import torch

    return {"model": model, "hparams": hparams, "train": train, "seed": seed, "data": data,
            "code": code_hash(), "torch": torch.__version__, "device": device}


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
