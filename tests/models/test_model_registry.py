"""The registry: names, configs, and errors for people."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import subprocess
import sys

import pytest
from torch import nn

from evcf.errors import EvcfError
from evcf.models import (
    MODEL_NAMES,
    SECTIONS,
    ModelEntry,
    SelfFittingModel,
    VAEModel,
    build_model,
    find_models,
    model_class,
    model_config_fields,
    model_entry,
)
from evcf.models.layers import Dropout


def test_model_names_are_unique_lowercase_dash_and_match_their_classes():
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES) > 0
    for name in MODEL_NAMES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
        assert model_class(name).name == name
    assert {"mult-dae", "mult-vae", "popularity", "ease", "wmf", "slim", "cdae"} <= set(MODEL_NAMES)



def test_every_model_says_how_its_row_is_shown_in_its_own_class_body():
    """label, section, colour and row are literals of the class body: what the registry reads without
    importing the module is what the class holds, and MODEL_NAMES is in the table's order."""
    for name in MODEL_NAMES:
        entry, cls = model_entry(name), model_class(name)
        for attribute in ("label", "section", "colour", "row"):
            assert attribute in vars(cls), f"{cls.__name__} gives no {attribute} of its own"
        assert (entry.label, entry.section, entry.colour, entry.row) == (cls.label, cls.section, cls.colour, cls.row)
        assert entry.section in SECTIONS and re.fullmatch(r"#[0-9a-f]{6}", entry.colour), name
    for attribute in ("label", "colour"):
        values = [getattr(model_entry(name), attribute) for name in MODEL_NAMES]
        assert len(set(values)) == len(values), f"two models share a {attribute}"
    places = [(SECTIONS.index(model_entry(n).section), model_entry(n).row) for n in MODEL_NAMES]
    assert places == sorted(set(places))  # one place per row, in order
    assert MODEL_NAMES[0] == "wmf" and model_entry("hvamp-gated").label == "H+Vamp (Gated)"
    assert model_entry("no-such-model") is None


def test_the_registry_finds_the_models_by_reading_their_files(tmp_path):
    (tmp_path / "__init__.py").write_text('class Ignored(VAEModel):\n    name = "ignored"\n')
    (tmp_path / "base.py").write_text("class VAEModel:\n    pass\n\n\nclass SelfFittingModel:\n    pass\n\n\n"
                                      "@dataclass\nclass Phase:\n    name: str = 'all'\n")
    (tmp_path / "toy.py").write_text(
        "from . import base\n\n\n"
        'class Toy(base.SelfFittingModel):\n    name = "toy"\n    label = "Toy"\n    section = "extra"\n'
        '    colour = "#010203"\n    row = 2\n\n\n'
        'class Toyer(Toy):  # a model through its parent\n    name: ClassVar[str] = "toyer"\n\n\n'
        'class Helper:  # a name, but no model\n    name = "helper"\n\n\n'
        'class First(VAEModel):\n    name = "first"\n    section = "paper"\n    row = 9\n    label = LABELS[0]\n')
    found = find_models(tmp_path)
    assert list(found) == ["first", "toy", "toyer"]  # paper, extra, other
    assert found["toy"] == ModelEntry("toy", "toy", "Toy", "Toy", "extra", "#010203", 2)
    # a class that declares nothing is shown by its name; a value that is not a literal is not read
    assert found["toyer"] == ModelEntry("toyer", "toy", "Toyer", "toyer", "other", None, math.inf)
    assert found["first"].label == "first"
    (tmp_path / "again.py").write_text('from .toy import Toy\n\n\nclass Again(Toy):\n    name = "toy"\n')
    with pytest.raises(EvcfError, match="two model classes are named 'toy'"):
        find_models(tmp_path)


def test_the_registry_imports_no_model_file():
    """A run executes its own model's file only: the registry reads the others without importing them."""
    code = ("import sys; from evcf.models import MODEL_NAMES, model_class; model_class('ease'); "
            "print(sorted(m for m in sys.modules if m.startswith('evcf.models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out))
    model_files = {f"evcf.models.{model_entry(name).module}" for name in MODEL_NAMES}
    assert loaded & model_files == {"evcf.models.baselines"}, loaded

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_class_honours_its_contract(name):
    cls = model_class(name)
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    assert isinstance(cls.seeded, bool) and isinstance(cls.uses_gpu, bool)
    assert issubclass(cls, SelfFittingModel) != issubclass(cls, VAEModel)  # exactly one kind
    if issubclass(cls, SelfFittingModel):
        for method in ("fit", "score", "state", "load_state"):
            assert getattr(cls, method) is not getattr(SelfFittingModel, method), f"{name}.{method}"
        assert callable(cls.candidates)
    else:
        for method in ("loss", "score"):
            assert getattr(cls, method) is not getattr(VAEModel, method), f"{name}.{method}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_defaults_and_exposes_its_config(name):
    model = build_model(name, 11, **({"n_pseudo": 3} if "vamp" in name else {}))
    assert model.name == name
    assert isinstance(model, model_class(name))
    assert isinstance(model.config, model_class(name).Config)
    assert {f.name for f in dataclasses.fields(model.config)} == model_config_fields(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.__setattr__("dropout", 0.1)
    if isinstance(model, SelfFittingModel):
        settings = list(model.candidates())
        assert settings and all(isinstance(s, dict) for s in settings)


def test_config_fields():
    assert model_config_fields("mult-dae") == {"hidden_size", "dropout", "weight_decay",
                                               "likelihood", "init", "bernoulli_clamp"}
    assert model_config_fields("popularity") == set()
    assert model_config_fields("ease") == {"lambdas"}
    assert {"factors", "regularizations", "alphas"} <= model_config_fields("wmf")
    assert {"l1_penalties", "l2_penalties"} <= model_config_fields("slim")
    assert {"hidden_size", "corruption", "weight_decays", "user_vector"} <= model_config_fields("cdae")
    assert {"n_pseudo", "pseudo_init", "z1_size", "z2_size", "num_layers"} <= model_config_fields(
        "hvamp-gated")


def test_hyperparameters_reach_the_config():
    model = build_model("hvamp-gated", 9, hidden_size=8, z1_size=4, z2_size=3, n_pseudo=5.0,
                        pseudo_mean=0, likelihood="multinomial")
    assert model.config.n_pseudo == 5 and isinstance(model.config.n_pseudo, int)
    assert model.config.pseudo_mean == 0.0 and isinstance(model.config.pseudo_mean, float)
    assert model.prior.pseudo.shape == (5, 9)
    assert build_model("ease", 3, lambdas=[1, 2.5]).config.lambdas == (1.0, 2.5)
    factors = build_model("wmf", 3, factors=[10, 20.0]).config.factors  # tuple[int, ...]
    assert factors == (10, 20) and all(isinstance(f, int) for f in factors)


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
    ("wmf", {"factors": [10.5]}),
    ("slim", {"l1_penalties": "1"}),
    ("cdae", {"user_vector": 0}),
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
    ("wmf", {"regularizations": [0.0]}, "regularization"),
    ("slim", {"l2_penalties": [-1.0]}, "l2_penalties"),
    ("cdae", {"user_vector": "mean"}, "zero, fit"),
])
def test_invalid_values_are_errors(name, hparams, word):
    with pytest.raises(EvcfError, match=word):
        build_model(name, 10, **hparams)


def test_bad_item_count():
    with pytest.raises(EvcfError, match="n_items"):
        build_model("mult-vae", 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_dropout_of_a_model_draws_its_mask_with_evcf_dropout(name):
    """The models' dropouts are evcf.models.layers.Dropout (the same law as nn.Dropout, a faster mask
    on the CPU: tests/models/test_layers.py); a plain nn.Dropout left in a model is slower there."""
    model = build_model(name, 11, **({"n_pseudo": 3} if "vamp" in name else {}))
    if isinstance(model, VAEModel):  # every VAE row drops its input out (CDAE draws its own mask)
        assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {Dropout}, name
