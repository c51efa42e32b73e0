"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the new one, never half.

Every file evcf writes goes through :func:`write_atomic` (bytes or text), :func:`write_json` or
:func:`write_csv`: the content goes to a temporary name in the same folder, then one ``os.replace``
puts it in place; a failure removes the temporary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["write_atomic", "write_json", "write_csv", "write_with"]


def write_with(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # one writer per file: a fixed name, left nowhere on failure
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return write_with(path, lambda tmp: tmp.write_bytes(raw))


def write_json(path: Path | str, value: Any) -> Path:
    """``value`` as indented JSON with a final newline, atomically."""
    return write_atomic(path, json.dumps(value, indent=2) + "\n")


def write_csv(path: Path | str, frame: Any) -> Path:
    """A pandas DataFrame as CSV (no index, six decimals), atomically."""
    return write_with(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6f"))
