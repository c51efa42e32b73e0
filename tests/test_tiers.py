"""The test tiers as .ci/run runs them: the slow tier's files in the order its two workers take them
(tests/conftest.py ``pytest_collection_modifyitems``): the SLURM test first, then the workflow files,
then the rest, each file's tests together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def collected(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line]


def test_the_slow_tier_starts_with_slurm_then_the_workflow_files():
    files = collected("-m", "slow or slurm")
    order = list(dict.fromkeys(files))  # each file once, in the order of its first test
    assert order[0] == "tests/workflow/test_slurm.py", order
    groups = [0 if f == "tests/workflow/test_slurm.py" else 1 if f.startswith("tests/workflow/") else 2 for f in order]
    assert groups == sorted(groups) and 2 in groups, order
    # each file's tests stay together, so a worker that takes a file takes all of it
    assert len(order) == len([f for i, f in enumerate(files) if i == 0 or files[i - 1] != f])
