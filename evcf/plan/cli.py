"""``evcf plan``: the command (registered on the ``evcf`` parser by :func:`add_parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_plan", "plan_text"]


def plan_text(params: str, overrides: list[str], *, device: str | None = None, bench: str = "results/bench",
              measured: str | None = None, write: str | None = None) -> str:
    """What ``evcf plan`` prints for these arguments; with ``measured`` (a finished run's folder),
    that run recorded (and written to ``write``) and printed beside the plan."""
    import shlex
    import sys

    from ..tuning import tuning_mode
    from . import bench_figures, format_plan, load_config, make_plan
    from .measured import compare, cpu_share, load_records, record_run

    config = load_config(Path(params), overrides)
    records = load_records(Path(bench))
    if measured:
        command = " ".join(["evcf", *map(shlex.quote, sys.argv[1:])])
        record = record_run(Path(measured), config, command=command)
        records.update({key: (row, Path(write or measured).name) for key, row in record["rows"].items()})
        if write:
            from ..io import write_json

            write_json(Path(write), record)
    device = device or config.get("device", "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = device.split(":")[0]
    rows = make_plan(config, device=device, figures=bench_figures(Path(bench)), records=records)
    measured = compare(rows, records, tuning_mode(config))
    cpu = cpu_share([records[key][0] for key, *_ in measured])
    return format_plan(config, rows, device=device, params=params, figures_dir=bench, measured=measured,
                       measured_cpu=cpu)


def cmd_plan(args: argparse.Namespace) -> None:
    """Jobs, epochs, hours and disk of the selection, before anything runs."""
    print(plan_text(args.params, args.config, device=args.device, bench=args.bench, measured=args.measured,
                    write=args.write), flush=True)
    if args.measured and args.write:
        print(f"ok: {args.write}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf plan`` on the CLI's subparsers."""
    p = subparsers.add_parser("plan", help="jobs, epochs, hours and disk of the selection in params.yaml, "
                              "before running it")
    p.add_argument("--params", default="params.yaml", help="the configuration file (default: params.yaml here)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides as Snakemake's --config takes them, e.g. tuning=halving 'datasets=[ml-20m]'")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="the device to cost (default: params.yaml's device; auto = CUDA when present)")
    p.add_argument("--bench", default="results/bench", help="the folder of evcf bench JSON figures")
    p.add_argument("--measured", default=None, metavar="ROOT",
                   help="record a finished run of the selection (the folder Snakemake ran in: its results/ and "
                        "benchmarks/) and print it beside the plan (evcf/plan/measured.py)")
    p.add_argument("--write", default=None, metavar="JSON",
                   help="with --measured: write the record, e.g. results/bench/quickstart-synthetic.json")
    p.set_defaults(func=cmd_plan)
    return p
