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
from .args import json_object
from .errors import EvcfError

log = logging.getLogger("evcf")


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


def _say(line: str) -> None:
    """A line for the terminal (stdout: Snakemake shows it; the rule's log gets stderr)."""
    print(line, flush=True)


def _load(path: str):
    from .data.sparse import load_split

    return load_split(Path(path))


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .io import write_json
    from .training import run
    from .tuning import winner_for_run

    if args.threads:
        torch.set_num_threads(args.threads)
    hparams, train, tuning, same_as = args.hparams, args.train, None, None
    if args.tuned:
        hparams, train, tuning, same_as = winner_for_run(Path(args.tuned), hparams, train, dataset=args.dataset,
                                                         seed=args.seed)
    metrics = run(_load(args.data), dataset=args.dataset, model_name=args.model, hparams=hparams, train=train,
                  seed=args.seed, out_dir=Path(args.out), device=args.device, reuse_from=same_as, say=_say)
    if args.settings_source:  # the values the command line changed (workflow/rules/common.smk)
        metrics["settings_source"] = args.settings_source
    if tuning is not None:  # say in the run's own record where its setting came from
        metrics["tuning"] = tuning
    if tuning is not None or args.settings_source:
        write_json(Path(args.out) / "metrics.json", metrics)
    _say(f"ok: {args.out}: test Recall@20 {metrics['recall@20']:.4f} Recall@50 {metrics['recall@50']:.4f} "
         f"NDCG@100 {metrics['ndcg@100']:.4f} (best epoch {metrics['best_epoch']}, {metrics['wall_seconds']:.1f} s of training and test, "
         f"without start-up or data loading"
         + (", reused" if metrics.get("reused_from") else "") + ")")


def cmd_tune_rung(args: argparse.Namespace) -> None:
    """One point of one rung of the halving search: train it to the rung's budget, write its standing."""
    import torch

    from .io import write_json
    from .training import run, train_config
    from .tuning import Halving, rung_budgets, rung_result

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rung == 0:
        if args.hparams is None or args.train is None or args.point is None:
            raise EvcfError("rung 0 needs --point, --hparams and --train", fix="pass the grid point's settings")
        point = {"point": args.point, "setting": args.setting, "hparams": args.hparams, "train": args.train}
    else:
        try:
            promoted = json.loads(Path(args.promoted).read_text())["promoted"]
            point = promoted[args.slot]
        except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EvcfError(f"cannot read slot {args.slot} of the previous rung's decision ({exc!r})",
                            path=args.promoted, fix="re-run the previous rung (snakemake tune)") from None
    halving = Halving(eta=args.eta, rungs=args.rungs)
    budget = rung_budgets(train_config(point["train"]).epochs, halving)[args.rung]
    folder = Path(args.points_dir) / f"point-{point['point']}"
    outcome = run(_load(args.data), dataset=args.dataset, model_name=args.model, hparams=point["hparams"],
                  train=point["train"], seed=args.seed, out_dir=folder, device=args.device, stop_at=budget,
                  say=_say)
    import pandas as pd

    history = pd.read_csv(folder / "history.csv").to_dict("records")  # a stopped run's and a finished run's
    before = outcome.get("resumed_from_epoch", 0)
    result = {"point": point["point"], "folder": str(folder), "rung": args.rung, "budget": budget,
              "setting": point["setting"], "hparams": point["hparams"], "train": point["train"],
              **rung_result(history, budget, finished=outcome.get("finished", True)),
              # the epochs this job trained (none when an earlier record of the same run reached the budget)
              "trained_epochs": [] if outcome.get("reused") else
              [h["epoch"] for h in history if before < h["epoch"] <= budget]}
    write_json(Path(args.result), result)
    _say(f"ok: {args.result}: point {point['point']} at {budget} epochs: validation NDCG@100 "
         f"{result['validation_ndcg@100']:.4f}")


def cmd_tune_decide(args: argparse.Namespace) -> None:
    """Rank one rung's points; promote the best ``--keep``; free the eliminated points' checkpoints."""
    from .io import write_json
    from .training import CHECKPOINT
    from .tuning import decide_rung

    results = []
    for path in args.results:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvcfError(f"cannot read the rung result ({exc})", path=path, fix="re-run that point's rung") from None
    decision = decide_rung(results, args.keep)
    promoted = set(decision["promoted"])
    decision["promoted"] = [next(r for r in results if r["point"] == p) for p in decision["promoted"]]
    if not args.last:  # an eliminated point never trains again: its resumable state goes
        for result in results:
            if result["point"] not in promoted:
                (Path(result["folder"]) / CHECKPOINT).unlink(missing_ok=True)
    write_json(Path(args.out), decision)
    _say(f"ok: {args.out}: promoted points {sorted(promoted)} of {len(results)}")


def cmd_tune_summary(args: argparse.Namespace) -> None:
    """The search of one (dataset, model): every point's validation NDCG@100, and the winner.

    Writes ``summary.csv`` and ``winner.json`` (evcf/tuning.py), which the Table 1 runs read.  With
    no points (no grid, or tuning off) the winner is params.yaml's setting, unchanged.
    """
    from .tuning import borrow_winner, summarize_full, summarize_halving

    out = Path(args.out_dir)
    if args.borrow:
        winner = borrow_winner(Path(args.borrow), out, dataset=args.dataset)
    elif args.decisions:
        winner = summarize_halving([Path(p) for p in args.decisions], out, dataset=args.dataset, seed=args.seed)
    else:
        if not isinstance(args.settings, list):
            raise EvcfError("--settings must be a JSON list", fix="pass one setting per point, in the order of --points")
        winner = summarize_full([Path(p) for p in args.points or []], args.settings, out, dataset=args.dataset,
                                seed=args.seed)
    if winner["source"] == "params.yaml":
        _say(f"ok: {out}: no grid; the runs use params.yaml" + (f" (as on {winner['dataset']})" if args.borrow else ""))
    else:
        _say(f"ok: {out}: best {json.dumps(winner['setting'])} (validation NDCG@100 "
             f"{winner['validation_ndcg@100']:.4f} of {winner['points']} points, {winner['search']} search"
             + (f" on {winner['dataset']}" if args.borrow else "") + ")")


def cmd_collect(args: argparse.Namespace) -> None:
    """One file per (dataset, model): its runs' metrics and identities, and their mean."""
    from .evaluate import METRICS
    from .io import write_json

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
    write_json(out, row)
    print(f"ok: {out}: {model} on {dataset}, n = {len(runs)}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import make_report

    written = make_report([Path(r) for r in args.runs], Path(args.out),
                          benchmarks_dir=Path(args.benchmarks) if args.benchmarks else None,
                          tolerance=args.tolerance)
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
    p.add_argument("--spec", type=json_object, default={}, help='JSON, e.g. {"n_users": 3000, "seed": 0}')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("split", help="binarise, filter and split users as in docs/protocol.md")
    p.add_argument("--raw", required=True, help="raw archive or file (a directory for netflix)")
    p.add_argument("--format", required=True)
    p.add_argument("--threshold", type=float, required=True, help="keep ratings strictly above this")
    p.add_argument("--min-items", type=int, required=True)
    p.add_argument("--heldout", type=int, required=True, help="validation users = test users = this many")
    p.add_argument("--fingerprint", type=json_object, default=None, help="JSON of the known split fingerprint")
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
    p.add_argument("--hparams", type=json_object, default={}, help="JSON model hyperparameters")
    p.add_argument("--train", type=json_object, default={}, help="JSON training settings")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tuned", default=None,
                   help="winner.json of the (dataset, model) grid: its setting is applied on top")
    p.add_argument("--settings-source", type=json_object, default={},
                   help="JSON: the settings the command line changed, credited in metrics.json")
    p.add_argument("--out", required=True, help="results/<dataset>/<model>/seed-<seed>")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-rung", help="one point of one rung of the halving search (tuning: halving)")
    p.add_argument("--data", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--rung", type=int, required=True)
    p.add_argument("--eta", type=int, required=True)
    p.add_argument("--rungs", type=int, required=True)
    p.add_argument("--point", type=int, default=None, help="rung 0: the grid point's index")
    p.add_argument("--setting", type=json_object, default={}, help="rung 0: the point's grid setting")
    p.add_argument("--hparams", type=json_object, default=None, help="rung 0: the point's model settings")
    p.add_argument("--train", type=json_object, default=None, help="rung 0: the point's training settings")
    p.add_argument("--promoted", default=None, help="rung > 0: the previous rung's decision.json")
    p.add_argument("--slot", type=int, default=0, help="rung > 0: which promoted point (0 = the best)")
    p.add_argument("--points-dir", required=True, help="results/tune/<dataset>/<model>: the point folders")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--result", required=True, help="this slot's result (JSON)")
    p.set_defaults(func=cmd_tune_rung)

    p = sub.add_parser("tune-decide", help="rank one rung of the halving search and promote the best")
    p.add_argument("--results", nargs="+", required=True, help="the rung's slot results")
    p.add_argument("--keep", type=int, required=True, help="how many points the next rung trains")
    p.add_argument("--last", action="store_true", help="the last rung (nothing to free)")
    p.add_argument("--out", required=True, help="the rung's decision.json")
    p.set_defaults(func=cmd_tune_decide)

    p = sub.add_parser("tune-summary", help="one table of a search, the winner marked")
    p.add_argument("--points", nargs="*", default=[], help="full grid: the points' run folders (none: no grid)")
    p.add_argument("--settings", type=json.loads, default=[], help="full grid: JSON list, each point's setting")
    p.add_argument("--decisions", nargs="*", default=[], help="halving: every rung's decision.json, in order")
    p.add_argument("--borrow", default=None, help="tune_from: another dataset's winner.json, taken as it is")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, required=True, help="the seed the search trained with")
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
    p.add_argument("--tolerance", type=json_object, default=None,
                   help='the reproduction verdicts\' tolerance δ per dataset (params.yaml report.tolerance), '
                        'e.g. \'{"ml-20m": 0.002}\' or \'{"ml-20m": {"ndcg@100": 0.002}}\'; without it no cell is settled')
    p.set_defaults(func=cmd_report)

    from .bench import add_parser as add_bench_parser
    from .plan.cli import add_parser as add_plan_parser  # evcf plan (evcf/plan/)
    from .replay import add_parser as add_replay_parser  # evcf tune-replay (evcf/replay.py)
    from .docs import add_parser as add_docs_parser  # evcf docs (evcf/docs.py)
    from .timings import add_parser as add_timed_parser  # evcf timed (evcf/timings.py)

    add_plan_parser(sub)
    add_replay_parser(sub)
    add_docs_parser(sub)
    add_timed_parser(sub)

    add_bench_parser(sub)
    from .status import add_parser as add_status_parser  # evcf status (evcf/status.py)

    add_status_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        code = args.func(args)  # None, or the exit status of a command that passes one on (evcf timed)
    except EvcfError as exc:
        signum = getattr(exc, "signum", None)  # evcf.training.Interrupted: checkpointed, resumable
        print(f"error: {exc}", file=sys.stderr)
        if signum is not None:
            print(f"interrupted: {exc.problem}; run the same command again to resume", flush=True)
            return 128 + signum
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
