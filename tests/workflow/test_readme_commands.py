"""The README's commands, run as a user runs them (the pipeline's in a committed clone with a clean
work tree), and a check that every shell command in README.md is one that this suite runs.

README_COMMANDS lists each command README.md shows (its ```bash blocks, and the inline commands of
its text) with how the suite runs it.  A command added to the README without an entry here fails
test_every_readme_command_is_covered.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess

import pandas as pd
import pytest

from conftest import BIN, REPO, committed_clone, readme_block, run

SETTING = "'datasets=[synthetic]' 'models=[mult-vae]' 'seeds=[1]' 'model_params={mult-vae: {train: {lr: 0.002}}}'"
QUICK_START_INSTALL = ("python3.11 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -r "
                       "requirements.lock && .venv/bin/pip install --no-deps -e . && ")
QUICK_START = QUICK_START_INSTALL + "PATH=\"$PWD/.venv/bin:$PATH\" snakemake --cores 2 all --config 'datasets=[synthetic]' threads=1"

# command -> (how, where): "here" runs in test_the_readme_evcf_commands_run; "snakemake clone" and
# "dvc clone" in the committed-clone tests below ("dry": run with -n / --dry, the reason given);
# "elsewhere": the test that runs it; "name": a name in a sentence, not a command to type.
README_COMMANDS = {
    QUICK_START: ("snakemake clone", "its snakemake invocation with -n (the full run takes ~9 min on 2 cores, more "
                  "than the slow tier's budget); its install steps are .ci/run's (test_the_quick_start_installs_as_ci_does)"),
    ". .venv/bin/activate && python -m pytest -q": ("elsewhere", ".ci/run runs `python -m pytest -q` in its own venv"),
    "python -m pytest -q": ("elsewhere", ".ci/run: the fast tier"),
    "python -m pytest": ("elsewhere", ".ci/run: the fast tier (-q aside)"),
    'python -m pytest -q -m "slow or slurm"': ("elsewhere", ".ci/run: the slow tier"),
    'python -m pytest -q -m "slow or slurm" -n 2': ("elsewhere", ".ci/run: the slow tier, as CI runs it"),
    "evcf timed": ("name", "the command's name; tests/test_timings.py runs `evcf timed NAME -- COMMAND`"),
    "bash .ci/run": ("elsewhere", "CI runs it (a test cannot run the suite it is part of)"),
    "pip install -e .": ("elsewhere", ".ci/run installs the package (--no-deps -e ., after the lock)"),
    "pip install --no-deps -e .": ("elsewhere", ".ci/run"),
    "pip install torch==2.13.0": ("elsewhere", ".ci/run (CI's machine has the wheel; no network in tests)"),
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": (
        "elsewhere", "not run: a download from PyTorch's index; .ci/run installs the same version"),
    "evcf plan": ("here", ""),
    "evcf plan --device cpu": ("here", ""),
    "evcf plan --help": ("here", ""),
    "evcf plan --device cuda": ("here", "refused without CUDA figures, as the README says"),
    "evcf plan --config tuning=halving 'datasets=[ml-20m]'": ("here", ""),
    "evcf plan --config 'datasets=[synthetic]'": ("here", ""),
    "evcf bench --show results/bench/cpu*.json": ("here", ""),
    "evcf status": ("snakemake clone", "after the run of \"Changing one setting\""),
    "evcf tune-replay": ("elsewhere", "tests/workflow/test_halving_workflow.py::test_a_replay_of_the_full_grid_picks_what_the_halving_search_picked"),
    "evcf bench": ("name", "the command's name (tests/bench/test_bench.py runs it)"),
    "evcf bench --params": ("name", "an option named in a sentence"),
    "snakemake -n all --config 'datasets=[synthetic]'": ("snakemake clone", ""),
    "snakemake --cores 8 all": ("snakemake clone", "dry: the paper's run downloads ML-20M and trains for days"),
    "snakemake --cores 2 all --config 'datasets=[ml-100k]' 'models=[mult-vae]' 'seeds=[1]'": (
        "snakemake clone", "dry: it downloads ML-100K from GroupLens"),
    f"snakemake --cores 2 all --config {SETTING}": ("snakemake clone", ""),
    "snakemake --report reports/report.html all": ("snakemake clone", "with the run's --config, as the README says"),
    "dvc exp run -S 'datasets=[synthetic]' -S 'models=[mult-vae]' -S 'seeds=[1]' -S "
    "'++model_params.mult-vae.train.lr=0.002'": ("dvc clone", ""),
    "dvc exp run -S 'datasets=[synthetic]'": ("dvc clone", "narrowed: the \"Changing one setting\" command is this one "
                                              "with -S 'models=[mult-vae]' -S 'seeds=[1]' and the lr (whole, it is the "
                                              "quick start through DVC, ~9 min; `dvc exp run --dry` stops at the first "
                                              "stage whose split is not there yet)"),
    "dvc exp run -S": ("name", "an option named in a sentence"),
    "dvc exp show": ("dvc clone", ""),
    "dvc repro": ("dvc clone", "its graph: `dvc dag` (the paper's run downloads ML-20M and trains for days, and "
                  "`dvc repro --dry` stops at the first stage whose split is not there yet); "
                  "tests/workflow/test_workflow.py runs `dvc repro` on the tiny configuration"),
    "git checkout params.yaml": ("dvc clone", "after dvc exp run rewrote params.yaml"),
    "evcf docs --write": ("elsewhere", "tests/plan/test_figures_page.py::test_the_committed_figures_page_is_what_the_"
                          "committed_figures_render renders the page it writes (writing it in a test would change the "
                          "checkout)"),
    "evcf plan --measured": ("name", "an option named in a sentence; tests/plan/test_measured.py::test_a_finished_run_"
                             "is_recorded_row_by_row runs `evcf plan --measured ROOT --write JSON`"),
    "bash scripts/gpu_check.sh OUT": ("elsewhere", "tests/bench/test_gpu_check.py runs it whole with --device cpu"),
}
WORDS = {"evcf", "snakemake", "dvc", "python", "python3.11", "bash", "pip", "git", "."}


def readme_commands() -> set[str]:
    """Every shell command in README.md: the lines of its ```bash blocks (a trailing comment cut),
    and each inline code span of its text that starts with a command and has more than one word."""
    text = (REPO / "README.md").read_text()
    found = set()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.split(r"\s+# ", line.strip())[0].strip()
            if line and not line.startswith("#"):
                found.add(line)
    for comment in re.findall(r"```bash\n.*?```", text, re.S):  # "# or: dvc repro"
        found.update(m.strip() for m in re.findall(r"# or: ([^\n]+)", comment))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.split()[0] in WORDS and len(span.split()) > 1:
            found.add(span)
    return found


def test_every_readme_command_is_covered():
    """A command in README.md without an entry in README_COMMANDS (or an entry whose command the
    README no longer shows) fails here; an "elsewhere" entry names a test that exists."""
    found = readme_commands()
    assert sorted(found - set(README_COMMANDS)) == [], "README commands that no test runs: add them to README_COMMANDS"
    assert sorted(set(README_COMMANDS) - found) == [], "README_COMMANDS lists commands the README no longer shows"
    for how, where in README_COMMANDS.values():
        for path, name in re.findall(r"(tests/\S+\.py)::(\w+)", where):
            assert f"def {name}(" in (REPO / path).read_text(), where


def test_the_quick_start_installs_as_ci_does():
    """README command 1's install steps are the ones .ci/run takes (which CI runs from a clean
    clone): the same pip installs, in the same order (.ci/run adds --quiet, an upgrade of pip and
    --require-hashes, which pip applies anyway to a lock with hashes)."""
    readme = [c.split("pip install", 1)[1].split() for c in QUICK_START_INSTALL.split(" && ") if "pip install" in c]
    ci = [line.split("pip\" install", 1)[1].split() for line in (REPO / ".ci/run").read_text().splitlines()
          if "/bin/pip\" install" in line and "--upgrade pip" not in line]
    assert [[w for w in c if w not in ("--quiet", "--require-hashes")] for c in ci] == readme


def test_the_readme_evcf_commands_run(monkeypatch, capsys):
    """The README's `evcf plan` and `evcf bench --show` commands, run in the repository root with
    the arguments the shell would pass (the glob expanded); `--device cuda` is refused, as the
    README says, until CUDA figures exist."""
    from evcf.cli import main

    monkeypatch.chdir(REPO)
    commands = [c for c, (how, _) in README_COMMANDS.items() if how == "here"]
    assert commands
    for command in commands:
        args = [a for word in shlex.split(command)[1:] for a in (sorted(glob.glob(word)) if "*" in word else [word])]
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's --help
            code = exc.code
        out, err = capsys.readouterr()
        if command == "evcf plan --device cuda":
            assert code == 2 and "no evcf bench figures for device 'cuda'" in err, err
        elif "--help" in args:
            assert code == 0 and "--measured" in out, out  # the README points there for its options
        else:
            assert code == 0, (command, err)
            assert ("hours on cpu" in out) if args[0] == "plan" else "cpu-synthetic.json" in out, command


def _shell(command: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
    """``command`` through bash, with the environment's snakemake, dvc and evcf first on PATH."""
    return run(["bash", "-c", f'PATH="{BIN}:$PATH"; {command}'], cwd, check=check)


def _covered(front_end: str) -> list[str]:
    return [c for c, (how, _) in README_COMMANDS.items() if how == f"{front_end} clone"]


@pytest.mark.slow
def test_the_readme_snakemake_commands_in_a_committed_clone(tmp_path):
    """README "Changing one setting" with Snakemake: the typed value reaches the run (its identity
    in metrics.json, and the record of where it came from) in a clone whose params.yaml is committed
    and unchanged; then the HTML report and `evcf status` of that run.  The long runs (the quick
    start, the paper's run, ML-100K, which downloads) are checked as dry runs: Snakemake plans
    every job of the command as typed (the quick start's after its install steps)."""
    root = committed_clone(tmp_path / "clone")
    commands = _covered("snakemake")
    setting = next(c for c in commands if "lr: 0.002" in c)
    assert setting in readme_block("### Changing one setting")
    _shell(setting, root)
    metrics = json.loads((root / "results/synthetic/mult-vae/seed-1/metrics.json").read_text())
    assert metrics["identity"]["train"]["lr"] == 0.002
    history = pd.read_csv(root / "results/synthetic/mult-vae/seed-1/history.csv")
    assert len(history) == metrics["identity"]["train"]["epochs"]
    assert metrics["settings_source"]["train.lr"] == {"from": "command line: model_params.mult-vae.train",
                                                       "value": 0.002}
    assert (root / "reports/synthetic/table1.md").exists()
    _shell(f"snakemake --report reports/report.html all --config {SETTING}", root)
    assert (root / "reports/report.html").stat().st_size > 0
    status = _shell("evcf status", root).stdout
    assert status.strip().splitlines()[-1] == "1 done", status  # the run of "Changing one setting"
    for command in commands:
        if command in (setting, "evcf status", "snakemake --report reports/report.html all"):
            continue
        dry = command.replace(QUICK_START_INSTALL, "")
        dry = dry if " -n " in dry else dry.replace("snakemake ", "snakemake -n ", 1)
        out = _shell(dry, root).stdout
        assert re.search(r"^total\s+\d+", out, re.M), (dry, out[-2000:])  # Snakemake's job table


@pytest.mark.slow
def test_the_readme_dvc_commands_in_a_committed_clone(tmp_path):
    """README "Changing one setting" with DVC: `dvc exp run -S` applies the value (in a clone whose
    params.yaml is committed), `dvc exp show` lists the experiment, `git checkout params.yaml`
    restores the file; and the stages that `dvc repro` would run for the paper (`dvc dag`: DVC reads
    every stage of dvc.yaml for params.yaml's datasets and models).  The offline quick start through
    DVC, `dvc exp run -S 'datasets=[synthetic]'`, is the setting's command without its narrowing."""
    root = committed_clone(tmp_path / "clone")
    commands = _covered("dvc")
    setting = next(c for c in commands if "lr=0.002" in c)
    assert setting in readme_block("### Changing one setting")
    assert setting.startswith("dvc exp run -S 'datasets=[synthetic]' ")  # the offline run, narrowed
    _shell(setting, root)
    metrics = json.loads((root / "results/synthetic/mult-vae/seed-1/metrics.json").read_text())
    assert metrics["identity"]["train"]["lr"] == 0.002
    assert (root / "reports/synthetic/table1.md").exists()
    assert "0.002" in _shell("dvc exp show", root).stdout
    assert _shell("git status --porcelain params.yaml", root).stdout.strip()  # rewritten by -S
    _shell("git checkout params.yaml", root)
    assert _shell("git status --porcelain params.yaml", root).stdout.strip() == ""
    assert {"dvc repro", "dvc exp run -S 'datasets=[synthetic]'"} <= set(commands)
    dag = _shell("dvc dag --md", root).stdout
    assert "train_model@ml-20m-vamp" in dag and "train_model@netflix-hvamp-gated" in dag, dag[:2000]
