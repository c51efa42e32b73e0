"""How long the everyday path takes, measured and recorded: ``evcf timed``.

The README says next to each of its commands how long it takes: the quick start's pipeline
(command 1), the fast tier of the tests (command 2) and ``bash .ci/run``.  Those figures are not
typed in.  They are measured by running the command under

    evcf timed NAME -- COMMAND [ARGS...]

which runs COMMAND as it is (its output on the terminal), and when it succeeds adds a run to
``results/timings/NAME.json``: its wall-clock seconds, the commit it ran at (and whether the work
tree had changes), the machine and its load average just before the start.  A record keeps every
run of one command on one machine; a run of another command, or on another machine, starts the
record again.  ``.ci/run`` times its own phases (install, fast tier, slow tier) and adds them to
``results/timings/ci.json`` with :func:`write_record`.  ``evcf docs --write`` renders the records
(one run's seconds, or the median and range of several) into docs/figures.md and into the README's
marked spans (:func:`readme_figures`); tests/test_timings.py and tests/plan/test_figures_page.py
check both.  A command that fails, or is stopped, adds no run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import EvcfError

__all__ = ["FOLDER", "write_record", "load_records", "readme_figures", "records_text", "add_parser"]

FOLDER = Path("results/timings")
KIND = "timing"


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def write_record(path: Path, command: str, phases: dict[str, float], load_before: list[float] | None) -> dict:
    """Add one run to the timing record at ``path`` (atomically): ``phases`` are the measured seconds
    of each part of ``command`` in the order they ran; the run's total is their sum.  A record keeps
    every run of its command on one machine, so that the README can give their spread; a record of
    another command or machine is started again."""
    from .bench.timer import machine
    from .io import write_json

    if not phases or any(not isinstance(s, (int, float)) or s < 0 for s in phases.values()):
        raise EvcfError(f"a timing record needs each phase's seconds (>= 0), got {phases}", path=path,
                        fix="pass the measured seconds of each phase")
    # the records themselves are not what was measured: a run added before this one is no change
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){FOLDER.as_posix()}")
    run = {
        "seconds": round(sum(phases.values()), 1),
        "phases": {name: round(float(s), 1) for name, s in phases.items()},
        "commit": _git("rev-parse", "HEAD"),
        "work_tree_changed": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average_before": load_before,
    }
    record = {"kind": KIND, "command": command, "runs": []}
    if path.exists():
        old = _read(path)
        if old["command"] == command and _machine(old["runs"][-1]) == _machine(run):
            record = old
        else:
            print(f"evcf timed: {path} held runs of {old['command']} on {_machine(old['runs'][-1])}; "
                  "started again", file=sys.stderr)
    record["runs"].append(run)
    write_json(path, record)
    return record


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EvcfError(f"unreadable timing record ({exc})", path=path, fix="restore it from git") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not data.get("runs"):
        raise EvcfError("not a timing record (\"kind\": \"timing\" with \"runs\")", path=path,
                        fix=f"write it with evcf timed, or move it out of {path.parent}")
    return data


def load_records(folder: Path = FOLDER) -> dict[str, dict]:
    """The timing records of ``folder`` by name (the file's stem)."""
    return {path.stem: _read(path) for path in sorted(folder.glob("*.json"))}


def _machine(run: dict) -> str:
    return run["machine"]["summary"]  # evcf.bench.timer.machine's: the CPU, its usable cores, the GPU


def _where(runs: list[dict]) -> str:
    machines = sorted({_machine(r) for r in runs})
    dates = sorted({r["date"] for r in runs})
    commits = sorted({(r.get("commit") or "unknown")[:7] + ("+changes" if r.get("work_tree_changed") else "")
                      for r in runs})
    return (f"{'; '.join(machines)}; {dates[0] if len(dates) == 1 else dates[0] + ' to ' + dates[-1]}, "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}")


def readme_figures(records: dict[str, dict]) -> dict[str, str]:
    """The text of each README span ``<!-- timing:NAME -->…<!-- /timing -->``, by NAME: one run's
    seconds, or the median of several with their range."""
    figures = {}
    for name, record in records.items():
        runs = record["runs"]
        totals = [r["seconds"] for r in runs]
        median = statistics.median(totals)
        parts = [f"{median / 60:.1f} min"]
        if len(runs) > 1:
            parts[0] = f"median of {len(runs)} runs, {median / 60:.1f} min; {min(totals):,.0f}–{max(totals):,.0f} s"
        phases = {phase: statistics.median(r["phases"][phase] for r in runs) for phase in runs[-1]["phases"]}
        if len(phases) > 1:
            parts += [f"{phase} {s:,.0f} s" for phase, s in phases.items()]
        figures[name] = f"{median:,.0f} s ({', '.join(parts)}) on {_where(runs)}"
    return figures


def records_text(records: dict[str, dict]) -> list[str]:
    """docs/figures.md's section: one line per record, with the command that was timed and each run's
    load average before its start."""
    lines = []
    for name, record in records.items():
        loads = [f"{r['load_average_before'][0]:.2f}" if r.get("load_average_before") else "?" for r in record["runs"]]
        lines.append(f"- **{name}**: `{record['command']}`: {readme_figures({name: record})[name]}; "
                     f"load average before the start {', '.join(loads)}.")
    return lines


def _cmd_timed(args: argparse.Namespace) -> int:
    from .bench.timer import load_average

    command = args.command[1:] if args.command[:1] == ["--"] else list(args.command)
    if not command or command[0].startswith("-"):
        raise EvcfError(f"no command to time after NAME (got {shlex.join(args.command) or 'nothing'}); "
                        "evcf timed's own options go before NAME", path="evcf timed",
                        fix="evcf timed [--folder DIR] NAME -- COMMAND [ARGS...]")
    if not args.name.replace("-", "").isalnum():
        raise EvcfError(f"record name {args.name!r}: letters, digits and '-' only", path="evcf timed NAME",
                        fix="for example: evcf timed quickstart -- snakemake ...")
    load = load_average()
    start = time.perf_counter()
    try:
        code = subprocess.call(command)
    except OSError as exc:
        raise EvcfError(f"cannot run {command[0]!r}: {exc.strerror}", path="evcf timed",
                        fix="give a command on PATH") from None
    seconds = time.perf_counter() - start
    if code != 0:
        print(f"evcf timed: {' '.join(command)} exited {code}; no record written", file=sys.stderr)
        return code
    path = Path(args.folder) / f"{args.name}.json"
    record = write_record(path, shlex.join(command), {"run": seconds}, load)
    print(f"evcf timed: {seconds:,.1f} s, recorded in {path} (run {len(record['runs'])} of that command)")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf timed`` on the CLI's subparsers."""
    p = subparsers.add_parser("timed", help="run a command and record its wall-clock time in "
                              f"{FOLDER}/NAME.json (the README's times)")
    p.add_argument("name", help="the record's name: quickstart, fast-tier, ...")
    p.add_argument("--folder", default=str(FOLDER), help=f"where the record goes (default {FOLDER})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(func=_cmd_timed)
    return p
