"""The ``evcf`` command line: one subcommand per pipeline step.

Snakemake rules and DVC stages run these subcommands; every value arrives as an argument (the CLI
never reads params.yaml).  A user-fixable problem prints ``error: <one line>`` and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .errors import EvcfError

log = logging.getLogger("evcf")


def _write_json(path: Path, value: dict) -> None:
    """Write ``value`` as indented JSON, atomically (a temporary name, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def cmd_download(args: argparse.Namespace) -> None:
    from .data.download import fetch_archive

    path = fetch_archive(args.url, Path(args.dest), md5=args.md5, sha256=args.sha256, unverified=args.unverified)
    print(f"ok: {path}")


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthetic import SyntheticSpec, generate_ratings, write_ratings

    spec = SyntheticSpec(**args.spec)
    frame = generate_ratings(spec)
    write_ratings(frame, Path(args.out))
    print(f"ok: {args.out}: {len(frame):,} ratings, {frame['user'].nunique():,} users, {frame['item'].nunique():,} items")


def cmd_split(args: argparse.Namespace) -> None:
    from .data.download import verify_file
    from .data.readers import read_ratings
    from .data.split import binarize_filter, check_fingerprint, split_users, write_split

    started = time.perf_counter()
    verify_file(Path(args.raw), md5=args.md5, sha256=args.sha256)  # a file placed by hand is checked too
    ratings = read_ratings(Path(args.raw), args.format)
    read_s = time.perf_counter() - started
    filtered = binarize_filter(ratings, args.threshold, args.min_items)
    del ratings
    split = split_users(filtered, args.heldout, source=args.raw)
    if args.fingerprint:
        check_fingerprint(split, args.fingerprint, source=args.raw)
    summary = write_split(split, Path(args.out))
    print(
        f"ok: {args.out}: {summary['filtered']['users']:,} users, {summary['n_items']:,} items, "
        f"{summary['train']['interactions']:,} training clicks (read {read_s:.1f} s, total "
        f"{time.perf_counter() - started:.1f} s)"
    )


def _apply_winner(path: Path, hparams: dict, train: dict) -> tuple[dict, dict, dict]:
    """Apply a grid's winning setting (``winner.json`` of ``evcf tune-summary``) to the settings."""
    from .config import apply_setting

    try:
        winner = json.loads(path.read_text())
        setting, source = winner["setting"], winner["source"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EvcfError(f"cannot read the tuning result ({exc})", path=path,
                        fix="re-run the grid (snakemake tune), or delete the file to run it again") from None
    hparams, train = apply_setting(hparams, train, setting)
    return hparams, train, {"source": source, "setting": setting, "summary": str(path)}


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .data.sparse import load_split
    from .training import run

    if args.threads:
        torch.set_num_threads(args.threads)
    hparams, train, tuning = args.hparams, args.train, None
    if args.tuned:
        hparams, train, tuning = _apply_winner(Path(args.tuned), hparams, train)
    metrics = run(
        load_split(Path(args.data)),
        dataset=args.dataset,
        model_name=args.model,
        hparams=hparams,
        train=train,
        seed=args.seed,
        out_dir=Path(args.out),
        device=args.device,
    )
    if args.settings_source:  # the values the command line changed (workflow/rules/common.smk)
        metrics["settings_source"] = args.settings_source
    if tuning is not None or args.settings_source:  # say in the run's own record where its setting came from
        if tuning is not None:
            metrics["tuning"] = tuning
        _write_json(Path(args.out) / "metrics.json", metrics)
    print(
        f"ok: {args.out}: test Recall@20 {metrics['recall@20']:.4f} Recall@50 {metrics['recall@50']:.4f} "
        f"NDCG@100 {metrics['ndcg@100']:.4f} (best epoch {metrics['best_epoch']}, {metrics['wall_seconds']:.1f} s)"
    )


def cmd_tune_summary(args: argparse.Namespace) -> None:
    """The grid of one (dataset, model): every point's validation NDCG@100, and the winner.

    Writes ``summary.csv`` (one row a point, ``selected`` marks the winner) and ``winner.json``
    (``{"source": "search" | "params.yaml", "setting": {...}}``), which the Table 1 runs read.  With
    no points (no grid, or tuning off) the winner is params.yaml's setting, unchanged.
    """
    import pandas as pd

    points = args.points or []
    if not isinstance(args.settings, list) or len(args.settings) != len(points):
        raise EvcfError(f"--settings must be a JSON list with one setting per point ({len(points)})",
                        fix="pass the grid points in the order of --points")
    rows = []
    for point, setting in zip(points, args.settings):
        path = Path(point) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EvcfError(f"cannot read the tuning run ({exc})", path=path,
                            fix="re-run that grid point (snakemake tune)") from None
        rows.append({"point": Path(point).name, **setting,
                     "validation_ndcg@100": metrics["validation_ndcg@100"], "best_epoch": metrics["best_epoch"]})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        table = pd.DataFrame(rows)
        # selection uses validation users only; test metrics stay in the point folders, unread here
        best = int(table["validation_ndcg@100"].idxmax())
        table["selected"] = table.index == best
        winner = {"source": "search", "setting": args.settings[best],
                  "validation_ndcg@100": float(table.loc[best, "validation_ndcg@100"]), "points": len(rows)}
    else:
        table = pd.DataFrame([{"point": "params.yaml", "selected": True}])
        winner = {"source": "params.yaml", "setting": {}, "points": 0}
    table.to_csv(out / "summary.csv.tmp", index=False, float_format="%.6f")
    (out / "summary.csv.tmp").replace(out / "summary.csv")
    _write_json(out / "winner.json", winner)  # last: the Table 1 runs depend on it
    if rows:
        print(f"ok: {out}: best {json.dumps(winner['setting'])} (validation NDCG@100 "
              f"{winner['validation_ndcg@100']:.4f} of {len(rows)} points)")
    else:
        print(f"ok: {out}: no grid; the runs use params.yaml")


def cmd_collect(args: argparse.Namespace) -> None:
    """One file per (dataset, model): its runs' metrics and identities, and their mean."""
    from .evaluate import METRICS

    runs = []
    for folder in args.runs:
        path = Path(folder) / "metrics.json"
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvcfError(f"cannot read the run ({exc})", path=path, fix="re-run that training run") from None
    keys = {(r["dataset"], r["model"]) for r in runs}
    if len(keys) != 1:
        raise EvcfError(f"--runs mixes rows {sorted(keys)}", fix="pass the runs of one dataset and model")
    (dataset, model), = keys
    row = {"dataset": dataset, "model": model, "n": len(runs), "seeds": [r["seed"] for r in runs],
           "mean": {m: sum(r[m] for r in runs) / len(runs) for m in METRICS},
           "runs": {f"seed-{r['seed']}": {m: r[m] for m in (*METRICS, "validation_ndcg@100", "best_epoch")}
                    for r in runs}}
    out = Path(args.out)
    _write_json(out, row)
    print(f"ok: {out}: {model} on {dataset}, n = {len(runs)}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import make_report

    written = make_report([Path(r) for r in args.runs], Path(args.out),
                          benchmarks_dir=Path(args.benchmarks) if args.benchmarks else None)
    print(f"ok: wrote {len(written)} files under {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evcf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"evcf {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="download a raw archive and verify its checksum (md5 or sha256 required)")
    p.add_argument("--url", required=True)
    p.add_argument("--dest", required=True, help="e.g. data/raw/ml-20m/ml-20m.zip")
    p.add_argument("--md5")
    p.add_argument("--sha256")
    p.add_argument("--unverified", action="store_true", help="no checksum (params.yaml: unverified: true)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("synth", help="generate the seeded synthetic rating data")
    p.add_argument("--spec", type=_json_arg, default={}, help='JSON, e.g. {"n_users": 3000, "seed": 0}')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("split", help="binarise, filter and split users as in docs/protocol.md")
    p.add_argument("--raw", required=True, help="raw archive or file (a directory for netflix)")
    p.add_argument("--format", required=True)
    p.add_argument("--threshold", type=float, required=True, help="keep ratings strictly above this")
    p.add_argument("--min-items", type=int, required=True)
    p.add_argument("--heldout", type=int, required=True, help="validation users = test users = this many")
    p.add_argument("--fingerprint", type=_json_arg, default=None, help="JSON of the known split fingerprint")
    p.add_argument("--md5", help="the raw archive's pinned md5: checked before it is read")
    p.add_argument("--sha256", help="the raw archive's pinned sha256: checked before it is read")
    p.add_argument("--unverified", action="store_true", help="no pinned checksum (params.yaml: unverified: true)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train one model with one seed, select on validation, test")
    p.add_argument("--data", required=True, help="data/processed/<dataset>")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--hparams", type=_json_arg, default={}, help="JSON model hyperparameters")
    p.add_argument("--train", type=_json_arg, default={}, help="JSON training settings")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tuned", default=None,
                   help="winner.json of the (dataset, model) grid: its setting is applied on top")
    p.add_argument("--settings-source", type=_json_arg, default={},
                   help="JSON: the settings the command line changed, credited in metrics.json")
    p.add_argument("--out", required=True, help="results/<dataset>/<model>/seed-<seed>")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-summary", help="one table of a hyperparameter grid, the winner marked")
    p.add_argument("--points", nargs="*", default=[], help="run folders of the grid points (none: no grid)")
    p.add_argument("--settings", type=json.loads, default=[], help="JSON list: each point's setting")
    p.add_argument("--out-dir", required=True, help="results/tune/<dataset>/<model>: summary.csv, winner.json")
    p.set_defaults(func=cmd_tune_summary)

    p = sub.add_parser("collect", help="gather the runs of one (dataset, model) into one row file")
    p.add_argument("--runs", nargs="+", required=True, help="run folders of that row (one per seed)")
    p.add_argument("--out", required=True, help="results/<dataset>/<model>.json")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("report", help="tables, significance tests and plots from finished runs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--benchmarks", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    from .status import add_parser as add_status_parser  # evcf status (evcf/status.py)

    add_status_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        args.func(args)
    except EvcfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
