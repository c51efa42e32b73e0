"""A raw file in place is checked against its pinned checksum before anything reads it (issue 19).

The archive a user puts in data/raw/ by hand (or one left from another version) goes through the
split step, which runs before any training: a wrong MD5 stops it with the file, both checksums and
the fix, and writes nothing.  An archive without a pinned checksum is used only when params.yaml says
`unverified: true`."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml
from grouplens_fixtures import make_ml100k_zip, random_ratings, serve_directory

from conftest import REPO
from evcf.cli import main
from evcf.config import validate
from evcf.data.download import fetch_archive
from evcf.errors import EvcfError


@pytest.fixture
def archive(tmp_path):
    path = make_ml100k_zip(tmp_path / "raw" / "ml-100k" / "ml-100k.zip",
                           random_ratings(1, n_users=300, n_items=80, n_rows=6000, half_stars=False))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def split(raw, out, *extra):
    return main(["split", "--raw", str(raw), "--format", "movielens-100k", "--threshold", "3.5",
                 "--min-items", "5", "--heldout", "20", "--out", str(out), *extra])


def test_a_placed_archive_with_another_md5_is_refused_before_it_is_read(archive, tmp_path, capsys, monkeypatch):
    raw, actual = archive
    pinned = "0e33842e24a9c977be4e0107933c0723"  # params.yaml's ml-100k md5
    import evcf.data.readers as readers

    def never(*args, **kwargs):
        raise AssertionError("the raw file was read before its checksum was checked")

    monkeypatch.setattr(readers, "read_ratings", never)
    assert split(raw, tmp_path / "out", "--md5", pinned) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert str(raw) in err[0] and pinned in err[0] and actual in err[0] and "fix:" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_right_md5_splits(archive, tmp_path, capsys):
    raw, actual = archive
    assert split(raw, tmp_path / "out", "--md5", actual) == 0
    assert (tmp_path / "out" / "train.csv").exists()


@pytest.mark.slow  # snakemake -n
def test_the_split_rule_passes_the_pinned_checksum(tmp_path):
    """The Snakemake rule gives `evcf split` params.yaml's md5 (the wiring of the check above)."""
    from conftest import make_workflow_copy, run, tool

    root = make_workflow_copy(tmp_path / "wf")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["datasets"] = ["ml-100k"]
    params["models"] = ["popularity"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([tool("snakemake"), "-n", "-p", "all_splits"], cwd=root).stdout
    line = next(l for l in out.splitlines() if "evcf split" in l)
    assert f"--md5 {params['data']['ml-100k']['md5']}" in line


def test_an_archive_without_a_checksum_needs_unverified_true(tmp_path, archive):
    config = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    del config["data"]["ml-100k"]["md5"]
    with pytest.raises(EvcfError, match="needs a pinned checksum.*unverified: true"):
        validate(copy.deepcopy(config))
    config["data"]["ml-100k"]["unverified"] = True
    validate(config)
    raw, _ = archive
    with serve_directory(raw.parent) as url:
        with pytest.raises(EvcfError, match="no checksum given"):
            fetch_archive(f"{url}/ml-100k.zip", tmp_path / "dl" / "a.zip")
        assert fetch_archive(f"{url}/ml-100k.zip", tmp_path / "dl" / "a.zip", unverified=True).exists()


def test_the_download_failure_message_says_a_placed_file_is_checked(tmp_path):
    with serve_directory(tmp_path) as url, pytest.raises(EvcfError) as err:
        fetch_archive(f"{url}/missing.zip", tmp_path / "raw" / "m.zip", md5="0" * 32)
    assert "place it at" in str(err.value) and "checked against the pinned checksum" in str(err.value)
