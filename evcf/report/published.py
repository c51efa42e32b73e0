"""Published numbers that the report compares against, transcribed from ``shared/reference/TABLE1.md``.

Only the values that file holds in text form are here: Mult-DAE and Mult-VAE from Liang et al. (2018),
Table 2, and H+Vamp (Gated) from Kim & Suh (2019), Table 1, each on ML-20M and Netflix test users.
Every other (dataset, model, metric) has no published value here and the report shows "n/a" for it —
never a number from memory.  (TABLE1.md also quotes EASE/RecVAE/RaCT NDCG@100 "for context" and the
reference notebook's own printed run; those are not Table 1 values and are deliberately left out.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PublishedValue", "PUBLISHED", "LIANG_2018", "EVCF_2019", "published_value"]

LIANG_2018 = "Liang et al. 2018, Table 2"
EVCF_2019 = "EVCF (Kim & Suh 2019), Table 1"


@dataclass(frozen=True)
class PublishedValue:
    """One published number and where it was printed."""

    value: float
    source: str


def _row(source: str, r20: float, r50: float, n100: float) -> dict[str, PublishedValue]:
    return {
        "recall@20": PublishedValue(r20, source),
        "recall@50": PublishedValue(r50, source),
        "ndcg@100": PublishedValue(n100, source),
    }


# PUBLISHED[dataset][model][metric]; dataset and model keys are the pipeline's registry names.
PUBLISHED: dict[str, dict[str, dict[str, PublishedValue]]] = {
    "ml-20m": {
        "mult-dae": _row(LIANG_2018, 0.387, 0.524, 0.419),
        "mult-vae": _row(LIANG_2018, 0.395, 0.537, 0.426),
        "hvamp-gated": _row(EVCF_2019, 0.41308, 0.55109, 0.44522),
    },
    "netflix": {
        "mult-dae": _row(LIANG_2018, 0.344, 0.438, 0.380),
        "mult-vae": _row(LIANG_2018, 0.351, 0.444, 0.386),
        "hvamp-gated": _row(EVCF_2019, 0.37678, 0.46252, 0.40861),
    },
}


def published_value(dataset: str, model: str, metric: str) -> PublishedValue | None:
    """The published value for ``(dataset, model, metric)``, or None where TABLE1.md has none."""
    return PUBLISHED.get(dataset, {}).get(model, {}).get(metric)
