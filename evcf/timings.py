"""How long the everyday path takes, measured and recorded: ``evcf timed``.

The README says next to each of its commands how long it takes: the quick start's pipeline
(command 1), the fast tier of the tests (command 2) and ``bash .ci/run``.  Those figures are not
typed in.  They are measured by running the command under

    evcf timed NAME -- COMMAND [ARGS...]

which runs COMMAND as it is (its output on the terminal), and when it succeeds writes
``results/timings/NAME.json``: the command, its wall-clock seconds, the commit it ran at (and
whether the work tree had changes), the machine and its load average just before the start.
``.ci/run`` times its own phases (install, fast tier, slow tier) and writes the same kind of record
with :func:`write_record`.  ``evcf docs --write`` renders the records into docs/figures.md and into
the README's marked spans (:func:`readme_figures`); tests/plan/test_figures_page.py checks both.
A command that fails, or is stopped, leaves no record, and an existing record is only replaced
by a complete new one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
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
    """Write one timing record (atomically) to ``path``: ``phases`` are the measured seconds of each
    part of ``command`` in the order they ran; the total is their sum."""
    from .bench.timer import machine
    from .io import write_json

    if not phases or any(not isinstance(s, (int, float)) or s < 0 for s in phases.values()):
        raise EvcfError(f"a timing record needs each phase's seconds (>= 0), got {phases}", path=path,
                        fix="pass the measured seconds of each phase")
    status = _git("status", "--porcelain", "--untracked-files=no")
    record = {
        "kind": KIND,
        "command": command,
        "seconds": round(sum(phases.values()), 1),
        "phases": {name: round(float(s), 1) for name, s in phases.items()},
        "commit": _git("rev-parse", "HEAD"),
        "work_tree_changed": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average_before": load_before,
    }
    write_json(path, record)
    return record


def load_records(folder: Path = FOLDER) -> dict[str, dict]:
    """The timing records of ``folder`` by name (the file's stem)."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("kind") != KIND:
            raise EvcfError("not a timing record (no \"kind\": \"timing\")", path=path,
                            fix="write it with evcf timed, or move it out of " + str(folder))
        records[path.stem] = data
    return records


def _where(record: dict) -> str:
    machine = record["machine"]
    commit = (record.get("commit") or "unknown")[:7] + ("+changes" if record.get("work_tree_changed") else "")
    return f"{machine['cpu']}, {machine['usable_cores']} cores; {record['date']}, commit {commit}"


def readme_figures(records: dict[str, dict]) -> dict[str, str]:
    """The text of each README span ``<!-- timing:NAME -->…<!-- /timing -->``, by NAME."""
    figures = {}
    for name, record in records.items():
        seconds = record["seconds"]
        parts = [f"{seconds / 60:.1f} min"]
        if len(record["phases"]) > 1:
            parts += [f"{phase} {s:,.0f} s" for phase, s in record["phases"].items()]
        figures[name] = f"{seconds:,.0f} s ({', '.join(parts)}) on {_where(record)}"
    return figures


def records_text(records: dict[str, dict]) -> list[str]:
    """docs/figures.md's section: one line per record, with the command that was timed."""
    lines = []
    for name, record in records.items():
        load = record.get("load_average_before")
        lines.append(f"- **{name}**: `{record['command']}`: {readme_figures({name: record})[name]}"
                     + (f"; load average before the start {load[0]:.2f}" if load else "") + ".")
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
    print(f"evcf timed: {record['seconds']:,.1f} s, recorded in {path}")
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
