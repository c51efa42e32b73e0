"""evcf.yamlsubset (params.yaml read without PyYAML, for scripts/gpu_check.sh) against PyYAML itself."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from evcf.errors import EvcfError
from evcf.yamlsubset import load, load_file

ROOT = Path(__file__).resolve().parents[1]


def same(a, b) -> bool:
    """Equal and of the same types all the way down (1 != 1.0 != True here), in the same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_params_yaml_reads_as_pyyaml_reads_it():
    text = (ROOT / "params.yaml").read_text()
    ours = load_file(ROOT / "params.yaml")
    assert same(ours, yaml.safe_load(text))
    assert ours["model_params"]["vamp"]["model"]["bernoulli_clamp"] == 1.0e-5  # a float with an exponent
    assert ours["tune_from"] == {} and ours["model_params"]["popularity"] == {}


@pytest.mark.parametrize("text", [
    "a: 1\nb: [1, 2.0, x, 'y z', \"q\\\"\"]\nc: {d: {e: [1, {f: g}]}, h: }\n",
    "k:\n- 1\n- two\n-\n  x: 1\nl:\n  - [a, b]\n  - {}\n  - []\n",
    "a: 2e-5\nb: 2.0e-5\nc: .5\nd: -.inf\ne: yes\nf: ~\ng: 0e123abc\nh: 1.\ni: '#not' # c\nj: a#b\nk: Off\n",
    "x: -1\ny: +3\nz: 0\nmd5: cd245b17a1ae2cc31bb14903e1204af3\nurl: https://a.b/c.zip\n",
    "a:\n  b:\n    c: 1\n  d: 'it''s'\ne: null\n",
])
def test_the_subset_reads_as_pyyaml_reads_it(text):
    assert same(load(text), yaml.safe_load(text))


@pytest.mark.parametrize("text", [
    "a: &x 1\n", "a: *x\n", "a: !!str 1\n", "<<: {a: 1}\n", "a: |\n  x\n", "a: >\n  x\n", "a: 0x10\n", "a: 010\n",
    "a: 1_000\n", "a: 1:30\n", "a: 2001-01-01\n", "a: 1\na: 2\n", "a: [1,\n  2]\n", "a: 'x\n", "- a: 1\n",
    "a: b\n  c\n", "\ta: 1\n", "---\na: 1\n", "a: [1, , 2]\n", "a:\n    b: 1\n  c: 2\n",
])
def test_what_the_subset_does_not_read_is_refused_with_its_line(text):
    with pytest.raises(EvcfError, match=r"line \d+: "):
        load(text)
