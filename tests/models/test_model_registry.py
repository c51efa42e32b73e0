"""The registry: names, configs, and errors for people."""

from __future__ import annotations

import dataclasses

import pytest

from evcf.errors import EvcfError
from evcf.models import (
    MODEL_NAMES,
    ClosedFormModel,
    VAEModel,
    build_model,
    model_class,
    model_config_fields,
)


def test_model_names():
    assert MODEL_NAMES == ("mult-dae", "mult-vae", "mult-vae-gated", "vamp", "hvamp", "hvamp-gated",
                           "popularity", "ease")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_defaults_and_exposes_its_config(name):
    model = build_model(name, 11, **({"n_pseudo": 3} if "vamp" in name else {}))
    assert model.name == name
    assert isinstance(model, ClosedFormModel if name in ("popularity", "ease") else VAEModel)
    assert isinstance(model.config, model_class(name).Config)
    assert {f.name for f in dataclasses.fields(model.config)} == model_config_fields(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.__setattr__("dropout", 0.1)


def test_config_fields():
    assert model_config_fields("mult-dae") == {"hidden_size", "dropout", "weight_decay",
                                               "likelihood", "init"}
    assert model_config_fields("popularity") == set()
    assert model_config_fields("ease") == {"lambdas"}
    assert {"n_pseudo", "pseudo_init", "z1_size", "z2_size", "num_layers"} <= model_config_fields(
        "hvamp-gated")


def test_hyperparameters_reach_the_config():
    model = build_model("hvamp-gated", 9, hidden_size=8, z1_size=4, z2_size=3, n_pseudo=5.0,
                        pseudo_mean=0, likelihood="multinomial")
    assert model.config.n_pseudo == 5 and isinstance(model.config.n_pseudo, int)
    assert model.config.pseudo_mean == 0.0 and isinstance(model.config.pseudo_mean, float)
    assert model.prior.pseudo.shape == (5, 9)
    assert build_model("ease", 3, lambdas=[1, 2.5]).config.lambdas == (1.0, 2.5)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(EvcfError, match="unknown model 'vae'") as err:
        build_model("vae", 10)
    for name in MODEL_NAMES:
        assert name in str(err.value)
    with pytest.raises(EvcfError):
        model_config_fields("nope")


def test_unknown_hyperparameter_names_key_model_and_accepted_keys():
    with pytest.raises(EvcfError) as err:
        build_model("mult-vae", 10, hidden=600)
    msg = str(err.value)
    assert "'hidden'" in msg and "'mult-vae'" in msg
    assert "hidden_size" in msg and "latent_size" in msg
    with pytest.raises(EvcfError, match="no hyperparameter 'lam'"):
        build_model("popularity", 10, lam=1.0)


@pytest.mark.parametrize("name, hparams", [
    ("mult-vae", {"hidden_size": "600"}),  # a string for an int
    ("mult-vae", {"hidden_size": True}),  # a bool is not an int
    ("mult-vae", {"hidden_size": 600.5}),
    ("mult-dae", {"weight_decay": "2e-5"}),  # YAML reads 2e-5 as a string
    ("mult-vae-gated", {"logvar_clamp": 1}),
    ("vamp", {"likelihood": 3}),
    ("ease", {"lambdas": 500}),
    ("ease", {"lambdas": [100, "x"]}),
])
def test_wrong_types_are_errors(name, hparams):
    with pytest.raises(EvcfError, match="must be"):
        build_model(name, 10, **hparams)


@pytest.mark.parametrize("name, hparams, word", [
    ("mult-vae", {"likelihood": "poisson"}, "multinomial, bernoulli"),
    ("vamp", {"init": "glorot"}, "xavier, he"),
    ("hvamp", {"pseudo_init": "users"}, "random-users"),
    ("mult-vae", {"kl_estimator": "exact"}, "analytic"),
    ("mult-dae", {"dropout": 1.0}, "dropout"),
    ("hvamp", {"num_layers": 0}, "num_layers"),
    ("ease", {"lambdas": [0.0]}, "lambdas"),
    ("mult-dae", {"weight_decay": -1.0}, "weight_decay"),
])
def test_invalid_values_are_errors(name, hparams, word):
    with pytest.raises(EvcfError, match=word):
        build_model(name, 10, **hparams)


def test_bad_item_count():
    with pytest.raises(EvcfError, match="n_items"):
        build_model("mult-vae", 0)
