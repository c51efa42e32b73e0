"""The README's times are measured, recorded and rendered (evcf/timings.py, evcf docs): ``evcf timed``
records a command's wall-clock seconds, only when it succeeds, and ``evcf docs --write`` fills the
README's ``<!-- timing:NAME -->`` spans from the records."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from evcf.cli import main
from evcf.docs import SPAN, render_readme
from evcf.errors import EvcfError
from evcf.timings import write_record

REPO = Path(__file__).resolve().parents[1]


def test_timed_records_the_commands_seconds_and_where_it_ran(tmp_path, capsys):
    code = main(["timed", "--folder", str(tmp_path), "nap", "--",
                 sys.executable, "-c", "import time; time.sleep(0.4)"])
    assert code == 0
    record = json.loads((tmp_path / "nap.json").read_text())
    assert record["command"].endswith("-c 'import time; time.sleep(0.4)'")
    [run] = record["runs"]
    assert 0.4 <= run["seconds"] < 5 and run["phases"] == {"run": run["seconds"]}
    assert run["machine"]["usable_cores"] >= 1 and run["date"].count("-") == 2
    assert "recorded in" in capsys.readouterr().out


def test_runs_of_one_command_add_up_and_another_command_starts_again(tmp_path):
    path = tmp_path / "results/timings/nap.json"
    for seconds in (300.0, 100.0, 110.0):
        write_record(path, "sleep", {"run": seconds}, None)
    (tmp_path / "README.md").write_text("<!-- timing:nap --><!-- /timing -->\n")
    assert "110 s (median of 3 runs, 1.8 min; 100–300 s) on " in render_readme(tmp_path)
    write_record(path, "sleep 2", {"run": 50.0}, None)
    assert [r["seconds"] for r in json.loads(path.read_text())["runs"]] == [50.0]


def test_a_failed_command_passes_its_status_on_and_adds_no_run(tmp_path, capsys):
    write_record(tmp_path / "nap.json", shlex.join([sys.executable, "-c", "raise SystemExit(3)"]), {"run": 1.0}, None)
    before = (tmp_path / "nap.json").read_text()
    code = main(["timed", "--folder", str(tmp_path), "nap", "--", sys.executable, "-c", "raise SystemExit(3)"])
    assert code == 3
    assert (tmp_path / "nap.json").read_text() == before
    assert "exited 3; no record written" in capsys.readouterr().err


def test_the_committed_readme_quotes_the_committed_records():
    """Every timing span of the README is filled from its record (and there is one for the quick start,
    the fast tier and .ci/run)."""
    text = (REPO / "README.md").read_text()
    assert {m["name"] for m in SPAN.finditer(text)} >= {"quickstart", "fast-tier", "ci"}
    assert render_readme(REPO) == text, "run `evcf docs --write` and commit README.md"


def test_a_span_is_filled_from_its_record_and_needs_one(tmp_path):
    (tmp_path / "README.md").write_text("CI took <!-- timing:ci -->typed by hand<!-- /timing -->.\n")
    record = tmp_path / "results/timings/ci.json"
    write_record(record, "bash .ci/run", {"install": 100.0, "fast tier": 200.0}, [0.5, 0.4, 0.3])
    first = render_readme(tmp_path)
    assert first.startswith("CI took <!-- timing:ci -->300 s (5.0 min, install 100 s, fast tier 200 s) on ")
    assert "typed by hand" not in first
    write_record(record, "bash .ci/run", {"install": 100.0, "fast tier": 260.0}, None)
    assert "330 s (median of 2 runs, 5.5 min; 300–360 s, install 100 s, fast tier 230 s)" in render_readme(tmp_path)
    record.unlink()
    with pytest.raises(EvcfError, match="timing:ci has no record"):
        render_readme(tmp_path)


def test_a_changed_tree_is_flagged_but_not_for_the_records_themselves(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "code.py").write_text("x = 1\n")
    write_record(tmp_path / "results/timings/a.json", "true", {"run": 1.0}, None)
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], check=True)
    write_record(tmp_path / "results/timings/a.json", "true", {"run": 2.0}, None)  # at the commit
    write_record(tmp_path / "results/timings/a.json", "true", {"run": 3.0}, None)  # only the record changed
    (tmp_path / "code.py").write_text("x = 2\n")
    write_record(tmp_path / "results/timings/a.json", "true", {"run": 4.0}, None)  # the code changed
    runs = json.loads((tmp_path / "results/timings/a.json").read_text())["runs"]
    assert [r["work_tree_changed"] for r in runs[1:]] == [False, False, True]
