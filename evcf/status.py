"""``evcf status``: what the results tree holds, run by run: done, running (epoch, ETA), failed, stale.

A run folder is ``results/<dataset>/<model>/seed-<n>`` or a grid point ``results/tune/<dataset>/<model>/point-<n>``.
Its state comes from its files: ``metrics.json`` means done; otherwise ``progress.json``, which the
training loop rewrites after every epoch (``dataset``, ``model``, ``seed``, ``epoch`` finished,
``epochs`` planned, ``epoch_seconds`` (mean of the last few), ``updated`` (unix time), ``state``:
running | done | failed | interrupted, ``message``).  A run that says "running" but has not written
for ``stale_after`` seconds (at least three of its epochs) is listed as stale: its process is gone
(killed, preempted) and a rerun resumes from its checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunStatus", "scan", "render", "interrupted_since"]

PROGRESS = "progress.json"
STATES = ("running", "stale", "interrupted", "failed", "done")


@dataclass(frozen=True)
class RunStatus:
    path: str
    state: str  # one of STATES
    epoch: int | None = None
    epochs: int | None = None
    eta_seconds: float | None = None
    message: str = ""


def _run_folders(results: Path) -> list[Path]:
    found = set(results.glob("*/*/seed-*")) | set(results.glob("tune/*/*/point-*"))
    return sorted(p for p in found if p.is_dir() and not (p.parts[-4:-3] == ("tune",) and p.name.startswith("seed-")))


def _status(folder: Path, now: float, stale_after: float) -> RunStatus | None:
    path = str(folder)
    if (folder / "metrics.json").is_file():
        return RunStatus(path, "done")
    try:
        progress = json.loads((folder / PROGRESS).read_text())
    except FileNotFoundError:
        return None  # nothing started here (an empty folder)
    except (OSError, json.JSONDecodeError) as exc:
        return RunStatus(path, "failed", message=f"unreadable {PROGRESS} ({exc})")
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    state, message = progress.get("state", "running"), progress.get("message", "")
    per_epoch = progress.get("epoch_seconds") or 0.0
    eta = None
    if state == "running":
        idle = now - float(progress.get("updated", now))
        if idle > max(stale_after, 3 * per_epoch):
            return RunStatus(path, "stale", epoch, epochs,
                             message=f"no progress for {idle / 60:.0f} min: the process is gone; rerun to resume")
        if isinstance(epoch, int) and isinstance(epochs, int) and per_epoch:
            eta = max(0.0, (epochs - epoch) * per_epoch - idle)
    elif state == "done":  # progress says done, but metrics.json is not there (yet)
        state = "running"
    return RunStatus(path, state if state in STATES else "failed", epoch, epochs, eta, message)


def scan(results: Path | str = "results", *, now: float | None = None, stale_after: float = 1800.0) -> list[RunStatus]:
    """The status of every run folder under ``results`` that has started."""
    now = time.time() if now is None else now
    statuses = (_status(folder, now, stale_after) for folder in _run_folders(Path(results)))
    return [s for s in statuses if s is not None]


def interrupted_since(results: Path | str, since: float) -> list[str]:
    """The run folders under ``results`` stopped by a signal (checkpointed) at or after ``since``
    (unix time): what a stopped ``snakemake`` lists before it exits (workflow/rules/common.smk)."""
    stopped = []
    for folder in _run_folders(Path(results)):
        try:
            progress = json.loads((folder / PROGRESS).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if progress.get("state") == "interrupted" and float(progress.get("updated", 0)) >= since:
            stopped.append(str(folder))
    return stopped


def _duration(seconds: float) -> str:
    if seconds < 90:  # the quick start's runs take seconds per epoch: "0 min" would say nothing
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def render(statuses: list[RunStatus]) -> str:
    """One line per run that is not done, then one line of counts."""
    lines = []
    for s in statuses:
        if s.state == "done":
            continue
        where = f"epoch {s.epoch}/{s.epochs}" if s.epoch is not None else ""
        eta = f", ETA {_duration(s.eta_seconds)}" if s.eta_seconds is not None else ""
        lines.append(f"{s.state:<11} {s.path}  {where}{eta}{'  ' + s.message if s.message else ''}".rstrip())
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no runs under the results folder")
    return "\n".join(lines)


def cmd_status(args) -> None:  # the `evcf status` subcommand (evcf/cli.py)
    print(render(scan(Path(args.results), stale_after=args.stale_minutes * 60)))


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="done / running (epoch, ETA) / failed / stale runs under results/")
    p.add_argument("--results", default="results", help="the results folder (default: results)")
    p.add_argument("--stale-minutes", type=float, default=30.0,
                   help="a running run silent this long (and for 3 epochs) is stale (default 30)")
    p.set_defaults(func=cmd_status)
