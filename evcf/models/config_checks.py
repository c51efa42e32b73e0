"""The values of a VAE model's config, checked when the model is built (types are checked by
``evcf.models.build_model``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from evcf.errors import EvcfError
from evcf.models.densities import LIKELIHOODS

__all__ = ["INITS", "validate_config"]

INITS = ("xavier", "he")
_CHOICES: dict[str, tuple[str, ...]] = {
    "likelihood": LIKELIHOODS,
    "init": INITS,
    "kl_estimator": ("analytic", "sample"),
    "pseudo_init": ("normal", "random-users"),
}
_POSITIVE_INTS = ("hidden_size", "latent_size", "z1_size", "z2_size", "num_layers", "n_pseudo")
_NON_NEGATIVE = ("weight_decay", "pseudo_std")


def validate_config(config: Any, model_name: str) -> None:
    """Raise :class:`EvcfError` when a config field has a value the model cannot use."""
    values = dataclasses.asdict(config)

    def bad(key: str, problem: str, fix: str) -> EvcfError:
        return EvcfError(f"model {model_name!r}: {key} = {values[key]!r} {problem}", fix=fix)

    for key, choices in _CHOICES.items():
        if key in values and values[key] not in choices:
            raise bad(key, "is not a valid choice", f"use one of {', '.join(choices)}")
    for key in _POSITIVE_INTS:
        if key in values and values[key] < 1:
            raise bad(key, "must be at least 1", f"set {key} to a positive integer")
    for key in _NON_NEGATIVE:
        if key in values and values[key] < 0:
            raise bad(key, "must not be negative", f"set {key} to 0 or more")
    if "bernoulli_clamp" in values and not 0.0 <= values["bernoulli_clamp"] < 0.5:
        raise bad("bernoulli_clamp", "must be in [0, 0.5)",
                  "use 0 for the exact Bernoulli likelihood or EVCF's 1e-5 (written 1.0e-5)")
    if "dropout" in values and not 0.0 <= values["dropout"] < 1.0:
        raise bad("dropout", "must be in [0, 1)", "use a drop probability such as 0.5")
    if "lambdas" in values:
        if len(values["lambdas"]) == 0 or any(lam <= 0 for lam in values["lambdas"]):
            raise bad("lambdas", "must be a non-empty list of positive numbers",
                      "e.g. lambdas: [100.0, 500.0, 1000.0]")
