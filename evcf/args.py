"""Command-line argument types shared by ``evcf`` (evcf/cli.py) and ``evcf bench`` (evcf/bench/).

Standard library only.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["json_object"]


def json_object(text: str) -> dict:
    """An argparse ``type``: a JSON object (``{"lr": 0.01}``), or argparse's usage error naming what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
