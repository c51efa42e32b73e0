"""Published numbers that the report compares against, read from ``published.yaml`` next to this file.

The data file is the only place a published number lives (see its header for what it holds and
where each value comes from).  Each of its ``values`` lines is one (model, dataset) with Recall@20,
Recall@50 and NDCG@100 and the id of its source; ``sources`` maps each id to the citation the report
prints ("Liang et al. 2018, Table 2").  A (dataset, model, metric) that the file lacks has no
published value, and the report says so rather than guessing one.

The file ships as package data: pyproject.toml needs
``[tool.setuptools.package-data] evcf = ["report/*.yaml"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from evcf.errors import EvcfError
from evcf.report.stats import METRICS

__all__ = ["PUBLISHED_FILE", "PublishedValue", "Published", "load_published", "published_value"]

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")

_ENTRY_KEYS = {"model", "dataset", "source", *METRICS}


@dataclass(frozen=True)
class PublishedValue:
    """One published number and where it was printed."""

    value: float
    source: str  # the citation, e.g. "Liang et al. 2018, Table 2"


# (dataset, model, metric) -> value; dataset and model are the pipeline's registry names
Published = dict[tuple[str, str, str], PublishedValue]


def _error(path: Path, problem: str) -> EvcfError:
    return EvcfError(problem, path=path,
                     fix="correct that entry (see the comments at the top of the file for its format)")


def load_published(path: str | Path | None = None) -> Published:
    """Read and check the published values; ``path`` defaults to :data:`PUBLISHED_FILE`.

    Raises :class:`~evcf.errors.EvcfError` naming the file and the entry when the file is not valid
    YAML, an entry lacks a key or has an unknown one, cites an unknown source, repeats a
    (model, dataset), or holds a value that is not a number in [0, 1].
    """
    path = Path(PUBLISHED_FILE if path is None else path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvcfError("file of published values is missing", path=path,
                        fix="reinstall evcf (the file is package data) or restore it from git") from None
    except yaml.YAMLError as exc:
        raise _error(path, f"not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict) \
            or not isinstance(data.get("values"), list):
        raise _error(path, "expected a mapping with 'sources' (id: citation) and 'values' (a list)")
    sources = {str(k): str(v) for k, v in data["sources"].items()}

    published: Published = {}
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(data["values"], start=1):
        where = f"values entry {i}"
        if not isinstance(entry, dict):
            raise _error(path, f"{where}: expected a mapping, got {entry!r}")
        missing = sorted(_ENTRY_KEYS - set(entry))
        unknown = sorted(set(map(str, entry)) - _ENTRY_KEYS)
        if missing or unknown:
            problem = "; ".join(p for p in (missing and f"missing {', '.join(missing)}",
                                            unknown and f"unknown key(s) {', '.join(unknown)}") if p)
            raise _error(path, f"{where}: {problem} (keys are {', '.join(sorted(_ENTRY_KEYS))})")
        model, dataset, source = str(entry["model"]), str(entry["dataset"]), str(entry["source"])
        where = f"{where} ({model} on {dataset})"
        if source not in sources:
            raise _error(path, f"{where}: source {source!r} is not listed under 'sources'")
        if (model, dataset) in seen:
            raise _error(path, f"{where}: this model and dataset already have an entry")
        seen.add((model, dataset))
        for metric in METRICS:
            value = entry[metric]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise _error(path, f"{where}: {metric} must be a number in [0, 1], got {value!r}")
            published[(dataset, model, metric)] = PublishedValue(float(value), sources[source])
    return published


def published_value(dataset: str, model: str, metric: str,
                    published: Published | None = None) -> PublishedValue | None:
    """The published value of ``(dataset, model, metric)``, or None where the file has none.

    ``published`` is a :func:`load_published` result; when None the default file is read.
    """
    if published is None:
        published = load_published()
    return published.get((dataset, model, metric))
