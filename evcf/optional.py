"""A stand-in for numpy, scipy or pandas where they are not installed.

evcf depends on them (pyproject.toml), but ``scripts/gpu_check.sh`` runs on a GPU machine that has
Python and a CUDA torch only, from a copy of the working tree.  The modules on the path of ``evcf
bench``'s VAE step (:mod:`evcf.batches`, :mod:`evcf.models`, :mod:`evcf.training`,
:mod:`evcf.evaluate`, :mod:`evcf.metrics`, :mod:`evcf.data.shapes`) therefore import them so::

    try:
        import numpy as np
    except ImportError as exc:  # torch only (evcf/optional.py)
        np = Missing("numpy", exc)

Installed, nothing changes (and the import statement stays where :mod:`evcf.identity`'s import
analysis finds it).  Absent, the importing module loads, and the first use of the package
(``np.zeros``) raises ``ModuleNotFoundError`` naming it, as the import would have;
``bool(stand_in)`` is False, so that a torch-only path can test ``if sp and sp.issparse(x)``.
Type annotations never reach it (every module here has ``from __future__ import annotations``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

__all__ = ["Missing", "installed"]


class Missing:
    """Stands in for a package that is not installed; any attribute raises ``ModuleNotFoundError``."""

    def __init__(self, name: str, error: ImportError | str):
        self._name = name
        self._reason = str(error)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<{self._name}: not installed>"

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):  # copy, pickle and hasattr probes: not found
            raise AttributeError(attr)
        raise ModuleNotFoundError(
            f"{self._name} is not installed ({self._reason}); this part of evcf needs it "
            f"(only `evcf bench` of the VAE models runs with torch alone)", name=self._name.split(".")[0])


def installed(module: ModuleType | Missing) -> bool:
    """Whether ``module`` is the real package, not a :class:`Missing` stand-in."""
    return not isinstance(module, Missing)
