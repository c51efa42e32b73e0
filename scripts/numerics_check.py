"""What TF32 and bf16 do to the table's numbers: the same runs trained in each precision, side by side.

For each model and seed, this trains the pipeline's run (``evcf.training.run``, params.yaml's recipe
for the dataset) once per setting:

* ``fp32``: the reference, float32 everywhere (TF32 off);
* ``tf32``: TF32 matrix products (``train.tf32: true``), CUDA only: skipped on other devices;
* ``bf16``: bf16 autocast of the training forward pass (``train.precision: bf16``).

and reports, per model and setting, the mean test NDCG@100 and Recall@20 over the seeds, the mean
paired difference from fp32 (same model, same seed) with its range, and the training time.  Two
settings of one seed differ in their rounding only, but rounding changes the path of training, so a
difference is one draw of "the same training, rounded differently": compare it with the
seed-to-seed spread printed beside it.

The data is the seeded synthetic dataset of params.yaml (generated and split here, in a temporary
folder), so the check runs anywhere; ``scripts/gpu_check.sh`` runs it on CUDA.  It runs from
a copy of the repository without an install (it puts the repository's root on ``sys.path`` when
``evcf`` is not importable), and reads params.yaml without jsonschema where that is absent (the
JSON's ``params_check`` says so).  Usage::

    python3 scripts/numerics_check.py --device cuda --out results/bench/numerics-cuda.json
    python3 scripts/numerics_check.py --device cpu --settings fp32 bf16 --seeds 1 2 3

Writes the table and a JSON of every run's metrics (``--out``); the JSON is rewritten after each
run (``"complete": false`` until the last), so a check cut short keeps the runs it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from typing import Callable

try:
    import evcf  # noqa: F401  (installed, or the repository's root on PYTHONPATH)
except ImportError:  # a copy of the repository without an install: its root, beside scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from evcf.bench import load_params_checked
from evcf.config import run_settings
from evcf.data.sparse import load_split
from evcf.data.split import binarize_filter, split_users, write_split
from evcf.data.synthetic import SyntheticSpec, generate_ratings
from evcf.errors import EvcfError
from evcf.training import resolve_device, run

SETTINGS = {  # name -> training settings on top of the recipe
    "fp32": {"precision": "fp32", "tf32": False},
    "tf32": {"precision": "fp32", "tf32": True},
    "bf16": {"precision": "bf16", "tf32": False},
}
METRICS = ("ndcg@100", "recall@20")


def make_split(params: dict, dataset: str, folder: Path) -> Path:
    """The dataset's synthetic split, generated and split as the pipeline does it, in ``folder``."""
    spec = params["data"][dataset].get("synthetic")
    if spec is None:
        raise EvcfError(f"--dataset {dataset!r} is not a synthetic dataset of the params file",
                        fix="use a dataset with a `synthetic:` block, e.g. --dataset synthetic")
    d = params["data"][dataset]
    filtered = binarize_filter(generate_ratings(SyntheticSpec(**spec)), d["threshold"], d["min_items"])
    out = folder / "split"
    write_split(split_users(filtered, d["heldout_users"], source=f"synthetic {spec}"), out)
    return out


def check(params: dict, *, dataset: str, models: list[str], seeds: list[int], settings: list[str],
          device: str, epochs: int | None, folder: Path,
          on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train every (model, setting, seed); return the runs and the per-(model, setting) summary.
    ``on_run`` is called with the result so far (``complete`` false) after each run."""
    dev = resolve_device(device)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or "fp32" not in settings:
        raise EvcfError(f"--settings {settings} must include fp32 and name only {', '.join(SETTINGS)}",
                        fix="e.g. --settings fp32 tf32 bf16")
    skipped = []
    if dev.type != "cuda" and "tf32" in settings:
        settings = [s for s in settings if s != "tf32"]
        skipped.append("tf32 (CUDA only)")
    recipes = {m: run_settings(params, dataset, m) for m in models}  # EvcfError for an unknown model
    data = load_split(make_split(params, dataset, folder))
    runs: list[dict[str, Any]] = []
    result = {"dataset": dataset,
              "device": dev.type if dev.type == "cpu" else torch.cuda.get_device_name(dev),
              "torch_version": torch.__version__, "seeds": seeds, "epochs": epochs, "skipped": skipped,
              "complete": False, "runs": runs, "summary": []}
    for model in models:
        hparams, train = recipes[model]
        for seed in seeds:
            for setting in settings:
                overrides = {**SETTINGS[setting], **({"epochs": epochs} if epochs else {})}
                started = time.perf_counter()
                metrics = run(data, dataset=dataset, model_name=model, hparams=hparams,
                              train={**train, **overrides}, seed=seed,
                              out_dir=folder / "runs" / model / setting / f"seed-{seed}", device=str(dev))
                runs.append({"model": model, "setting": setting, "seed": seed,
                             **{m: metrics[m] for m in METRICS}, "best_epoch": metrics["best_epoch"],
                             "precision": metrics["precision"], "tf32": metrics["tf32"],
                             "train_s": time.perf_counter() - started})
                result["summary"] = summarize(runs)
                if on_run is not None:
                    on_run(result)
    result["complete"] = True
    return result


def summarize(runs: list[dict]) -> list[dict]:
    """Per (model, setting): mean and sd over seeds, and the paired differences from fp32."""
    out = []
    for model in dict.fromkeys(r["model"] for r in runs):
        fp32 = {r["seed"]: r for r in runs if r["model"] == model and r["setting"] == "fp32"}
        for setting in dict.fromkeys(r["setting"] for r in runs if r["model"] == model):
            rows = [r for r in runs if r["model"] == model and r["setting"] == setting]
            row: dict[str, Any] = {"model": model, "setting": setting, "n": len(rows),
                                   "train_s": statistics.mean(r["train_s"] for r in rows)}
            for m in METRICS:
                values = [r[m] for r in rows]
                diffs = [r[m] - fp32[r["seed"]][m] for r in rows]
                row[m] = statistics.mean(values)
                row[f"{m}_sd"] = statistics.stdev(values) if len(values) > 1 else None
                row[f"{m}_diff"] = statistics.mean(diffs)
                row[f"{m}_diff_min"], row[f"{m}_diff_max"] = min(diffs), max(diffs)
            out.append(row)
    return out


def format_table(result: dict) -> str:
    def num(v: float | None, signed: bool = False) -> str:
        return "-" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")

    lines = [f"{result['dataset']} on {result['device']}, torch {result['torch_version']}, seeds "
             f"{result['seeds']}; difference = setting - fp32, same seed (mean [min, max])"
             + (f"; skipped: {', '.join(result['skipped'])}" if result["skipped"] else ""),
             f"{'model':<16}{'setting':<9}{'n':>3}  {'NDCG@100 (sd)':<18}{'diff':<30}"
             f"{'Recall@20 (sd)':<18}{'diff':<30}{'train s':>8}"]
    for r in result["summary"]:
        cells = []
        for m in METRICS:
            cells.append(f"{num(r[m])} ({num(r[f'{m}_sd'])})".ljust(18))
            cells.append(f"{num(r[f'{m}_diff'], True)} [{num(r[f'{m}_diff_min'], True)}, "
                         f"{num(r[f'{m}_diff_max'], True)}]".ljust(30))
        lines.append(f"{r['model']:<16}{r['setting']:<9}{r['n']:>3}  {''.join(cells)}{r['train_s']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--models", nargs="+", default=["mult-vae", "vamp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (default: the recipe's)")
    p.add_argument("--out", default=None, help="JSON path (default: none)")
    args = p.parse_args(argv)
    command = " ".join(["python3", "scripts/numerics_check.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out) if args.out else None

    def write(result: dict[str, Any]) -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps({**result, "command": command, "params_check": params_check}, indent=2) + "\n")
            tmp.replace(out)

    try:
        params, params_check = load_params_checked(Path(args.params))
        with tempfile.TemporaryDirectory(prefix="evcf-numerics-") as tmp:
            result = check(params, dataset=args.dataset, models=args.models, seeds=args.seeds,
                           settings=args.settings, device=args.device, epochs=args.epochs, folder=Path(tmp),
                           on_run=write)
    except EvcfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result["command"] = command
    print(format_table(result))
    if out is not None:
        write(result)
        print(f"ok: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
