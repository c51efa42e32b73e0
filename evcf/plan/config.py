"""params.yaml as ``evcf plan`` reads it: ``--config`` overrides applied as Snakemake applies them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..config import check_plain_yaml, validate
from ..errors import EvcfError

__all__ = ["load_config"]


def load_config(params: Path, overrides: list[str]) -> dict[str, Any]:
    """params.yaml with ``KEY=VALUE`` overrides applied as Snakemake's ``--config`` applies them
    (values read as YAML, nested mappings merged), then validated like the Snakefile does."""
    from snakemake.utils import update_config

    params = Path(params)
    if not params.exists():
        raise EvcfError("no such file", path=params, fix="run evcf plan in the repository root, or pass --params FILE")
    check_plain_yaml(params)
    config = yaml.safe_load(params.read_text())
    given: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvcfError(f"--config {item!r} is not KEY=VALUE", fix="write e.g. --config tuning=halving")
        try:
            given[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise EvcfError(f"--config {item!r}: not valid YAML ({exc})", fix="quote the value as YAML") from None
    update_config(config, copy.deepcopy(given))
    validate(config, source=str(params), overrides=given)
    return config
