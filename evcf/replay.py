"""``evcf tune-replay``: what ``tuning: halving`` would have picked from finished full searches,
without training (:func:`evcf.tuning.replay_search`), as a table; registered on the ``evcf``
parser by :func:`add_parser`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import EvcfError

__all__ = ["add_parser", "cmd_tune_replay", "format_replay"]


def cmd_tune_replay(args: argparse.Namespace) -> None:
    """What ``tuning: halving`` would have picked from finished full searches, without training."""
    from .io import write_json
    from .tuning import Halving, replay_search

    halvings = []
    for text in args.halving:
        eta, _, rungs = text.partition(":")
        if not (eta.isdigit() and rungs.isdigit() and int(eta) >= 2 and int(rungs) >= 1):
            raise EvcfError(f"--halving {text!r} is not ETA:RUNGS with ETA >= 2 and RUNGS >= 1",
                            fix="e.g. --halving 3:3 6:2")
        halvings.append(Halving(eta=int(eta), rungs=int(rungs)))
    reports = []
    for folder in args.tune_dirs:
        folder = Path(folder)
        runs = Path(args.runs) if args.runs else None
        if runs is None and folder.parent.parent.name == "tune":  # results/tune/<d>/<m> -> results/<d>/<m>
            runs = folder.parent.parent.parent / folder.parent.name / folder.name
        reports.append(replay_search(folder, halvings, runs))
    print(format_replay(reports))
    if args.out:
        write_json(Path(args.out), {"command": " ".join(["evcf", *sys.argv[1:]]), "searches": reports})
        print(f"ok: {args.out}")


def format_replay(reports: list[dict]) -> str:
    """One line per (search, halving setting), as a GitHub table (evcf plan's format)."""
    from tabulate import tabulate

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    headers = ["search", "points", "full: winner", "val NDCG@100", "seeds: sd (range), n", "halving", "winner",
               "val NDCG@100", "difference", "epochs (of the full grid's)"]
    table = []
    for r in reports:
        for h in r["replays"]:
            verdict = {None: "no seeds", True: "within the seeds' range",
                       False: "outside the seeds' range"}[h["within_seed_spread"]]
            table.append([r["folder"], r["points"], f"point {r['full_winner']}", num(r["validation_ndcg@100"]),
                          f"{num(r['seeds_sd'])} ({num(r['seeds_range'])}), {len(r['seeds'])}",
                          f"{h['eta']}:{h['rungs']}", f"point {h['winner']}", num(h["validation_ndcg@100"]),
                          f"{h['difference']:+.4f}: {verdict}",
                          f"{h['epochs']} of {r['full_epochs']} ({h['epochs'] / r['full_epochs']:.0%})"])
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf tune-replay`` on the CLI's subparsers."""
    p = subparsers.add_parser("tune-replay", help="what tuning: halving would pick from finished full searches (no training)")
    p.add_argument("tune_dirs", nargs="+", metavar="TUNE_DIR",
                   help="a full search's folder, results/tune/<dataset>/<model> (its point-<i>/ and winner.json)")
    p.add_argument("--halving", nargs="+", default=["3:3"], metavar="ETA:RUNGS",
                   help="the halving settings to replay (default 3:3, params.yaml's halving default)")
    p.add_argument("--runs", default=None, help="the Table 1 runs of the full winner (seed-*/metrics.json) for the "
                   "seed spread (default: results/<dataset>/<model> beside results/tune)")
    p.add_argument("--out", default=None, help="also write the replays as JSON")
    p.set_defaults(func=cmd_tune_replay)
    return p
