"""A run's identity covers exactly what decides its numbers (issue 19): the code of the modules that
run for that model (found by import analysis), without docstrings and comments; the versions of the
libraries they import; the device; for self-fitting models only the training settings they read."""

from __future__ import annotations

import shutil

import pytest

import evcf.identity as identity
from conftest import REPO

MODELS = ("mult-vae", "vamp", "wmf", "slim", "ease", "popularity", "cdae")


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package that code_hash reads; edits to it never touch the repository."""
    copy = tmp_path / "evcf"
    shutil.copytree(REPO / "evcf", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "_PACKAGE", copy)

    def hashes():
        for cached in (identity._parsed, identity.code_modules, identity.code_hash):
            cached.cache_clear()
        return {m: identity.code_hash(m) for m in MODELS}

    yield copy, hashes
    for cached in (identity._parsed, identity.code_modules, identity.code_hash):
        cached.cache_clear()


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_report_bench_cli_comments_and_docstrings_change_no_code_hash(package):
    root, hashes = package
    before = hashes()
    (root / "report/table.py").write_text((root / "report/table.py").read_text() + "\nX = 1  # a change\n")
    (root / "bench" / "run.py").write_text((root / "bench" / "run.py").read_text() + "\nY = 2\n")
    (root / "cli.py").write_text((root / "cli.py").read_text() + "\nZ = 3\n")
    edit(root / "metrics.py", '"""', '"""(docstring edited) ')
    edit(root / "metrics.py", "\n", "\n# a comment added\n\n")
    assert hashes() == before


def test_moving_code_between_the_runs_modules_changes_no_code_hash(package):
    """A run is defined by what its code computes, not by which file holds it: moving
    ``ndcg_from_hits`` from metrics.py into a new module, imported back, keeps every hash."""
    root, hashes = package
    before = hashes()
    text = (root / "metrics.py").read_text()
    start = text.index("def ndcg_from_hits(")
    end = text.index("\ndef ", start + 1)
    moved = text[start:end]
    (root / "ndcg.py").write_text("import torch\n\n\n" + moved)
    (root / "metrics.py").write_text(text[:start] + "from .ndcg import ndcg_from_hits  # noqa: E402\n\n\n"
                                     + text[end:])
    assert hashes() == before
    edit(root / "ndcg.py", "def ndcg_from_hits(", "_EDITED = 1\n\n\ndef ndcg_from_hits(")
    assert all(hashes()[m] != before[m] for m in MODELS)


def test_how_a_row_is_shown_is_not_what_it_computes():
    model = ('class M:\n    """doc"""\n    label = "M"\n    colour = "#123456"\n    row: int = 3\n\n'
             '    def f(self):\n        return 1\n')
    assert identity.content_hash([model]) == identity.content_hash([model.replace("#123456", "#654321")])
    assert identity.content_hash([model]) == identity.content_hash([model.replace("row: int = 3", "row: int = 4")])
    assert identity.content_hash([model]) != identity.content_hash([model.replace("return 1", "return 2")])
    assert identity.content_hash([model]) != identity.content_hash([model.replace("label", "scale")])


def test_content_hash_counts_statements_not_files():
    a = "from .b import g\n\n\ndef f(x):\n    return g(x) + 1\n"
    b = "import math\n\n\ndef g(x):\n    return math.sqrt(x)\n"
    together = "import math\n\n\ndef g(x):\n    return math.sqrt(x)\n\n\ndef f(x):\n    return g(x) + 1\n"
    assert identity.content_hash([a, b]) == identity.content_hash([together])
    assert identity.content_hash([a, b]) != identity.content_hash([a.replace("+ 1", "+ 2"), b])
    assert identity.content_hash([a, b]) != identity.content_hash([a, b.replace("import math", "import cmath")])


def test_the_identitys_own_code_is_not_in_the_hash(package):
    """identity.py computes no number: editing it (say, the list of presentation attributes) reruns
    nothing; what it covers shows in the identities themselves."""
    root, hashes = package
    before = hashes()
    edit(root / "identity.py", "\n\ndef ", "\n\n_EDITED = 1\n\n\ndef ")
    assert hashes() == before


def test_a_statement_of_the_shared_loop_changes_every_models_hash(package):
    root, hashes = package
    before = hashes()
    edit(root / "metrics.py", "\n\ndef ", "\n\n_EDITED = 1\n\n\ndef ")
    after = hashes()
    assert all(after[m] != before[m] for m in MODELS)


def test_one_models_file_changes_only_the_models_that_run_it(package):
    root, hashes = package
    before = hashes()
    edit(root / "models/multvae.py", "\n\nclass ", "\n\n_EDITED = 1\n\n\nclass ")
    after = hashes()
    # vamp subclasses Mult-VAE's file (it imports it); the self-fitting models do not run it
    assert {m for m in MODELS if after[m] != before[m]} == {"mult-vae", "vamp"}
    before = after
    edit(root / "models/wmf.py", "\n\nclass ", "\n\n_EDITED = 1\n\n\nclass ")
    after = hashes()
    assert {m for m in MODELS if after[m] != before[m]} == {"wmf"}


def test_libraries_follow_the_models_imports():
    assert {"torch", "numpy", "scipy"} <= set(identity.libraries("mult-vae"))
    assert "implicit" in identity.libraries("wmf") and "implicit" not in identity.libraries("mult-vae")
    assert "scikit-learn" in identity.libraries("slim") and "scikit-learn" not in identity.libraries("ease")


def test_the_identity_holds_device_libraries_and_only_what_a_self_fitting_model_reads():
    train = {"epochs": 5, "lr": 0.002, "eval_batch_size": 100, "tf32": False, "deterministic": False}
    vae = identity.run_identity(model="mult-vae", hparams={}, train=train, seed=1, data="d", device="cpu")
    ease = identity.run_identity(model="ease", hparams={}, train=train, seed=None, data="d", device="cpu")
    assert vae["train"] == train
    assert ease["train"] == {"eval_batch_size": 100, "tf32": False, "deterministic": False}
    assert vae["libraries"] == identity.libraries("mult-vae") and vae["code"] == identity.code_hash("mult-vae")
    on_gpu = identity.run_identity(model="mult-vae", hparams={}, train=train, seed=1, data="d", device="cuda")
    assert on_gpu != vae and identity.identity_diff(vae, on_gpu) == ["device"]
