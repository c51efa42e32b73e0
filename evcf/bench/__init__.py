"""``evcf bench``: a timer around evcf's training steps and fits, at the shape of a paper's dataset.

What it times is what ``evcf train`` runs: :func:`evcf.training.train_step` on the batches of
:class:`evcf.batches.Batches`, with the batch size, optimizer, learning rate, precision and
model hyperparameters that params.yaml gives the dataset (``--params``, resolved by
:func:`evcf.config.run_settings` as for a pipeline run; without it, the code's defaults).  On one
seeded synthetic training matrix of the dataset's shape (:mod:`evcf.data.shapes`), per model:

* ``--warmup`` untimed steps, then ``--steps`` timed steps of each of two paths, interleaved in one
  process (which of the two goes first alternates), so that load from other processes falls on
  both alike.  **Ours** builds each batch on the device from the sparse matrix; **the reference
  style** slices the scipy matrix and densifies the batch on the host (``dense_on_host``), as
  Liang's ``vae_cf``, RecVAE and EVCF do, and steps its optimizer parameter by parameter (never
  ``fused_optimizer``).  Both take the same step, in the same precision; the reference model can
  be given model options of its own (``--reference-hparams``).
* the median step time and its spread (quartiles, min, max), times the steps of an epoch;
* the epoch's FLOP floor: the matrix-product FLOPs of one step (:func:`step_flops`) times the
  steps of an epoch, divided by this machine's GEMM rate (:func:`gemm_rate`) measured just before
  and just after the model's bench (the mean of the two; both kept as ``gemm_window``), so that
  "× floor" means the same on any machine, and on a machine whose speed drifts during the bench
  each model is divided by the rate of its own window;
* the time to evaluate ``--eval-users`` held-out users, and the peak resident memory of each phase.

The models that fit themselves are timed by their own training code, at the first point of their
grid, on the same matrix (:mod:`evcf.bench.baselines`, where the formulas are):

* **WMF**: ``WMF.fit`` with ``--wmf-sweeps`` ALS sweeps, each timed by ``implicit`` (median and
  spread: "s / epoch" is one sweep); the fit at the recipe's iteration count (15) is extrapolated
  from the measured fit's setup plus that many median sweeps; then the fold-in of the held-out users.
* **SLIM**: the real per-item elastic net (``slim_weights``) on a seeded sample of ``--slim-items``
  items, single-threaded, in a few chunks (the spread of s / item); the full fit is extrapolated
  as the CSC conversion + the mean s / item × items / threads, W's memory as the mean non-zeros
  per column × items × (8 + 4) bytes.  Evaluation is not timed (it needs all of W).
* **CDAE**: the step that ``CDAE.fit`` takes (:class:`evcf.models.cdae.CDAETrainer`), warm-up then
  ``--steps`` timed steps; median × the steps of an epoch, × the config's epochs for the fit; then
  the evaluation of the held-out users.
* **popularity, EASE**: one whole fit and the evaluation.

For WMF, SLIM and CDAE the cost of the model's whole search (its ``candidates()``, a fit and an
evaluation per point) is extrapolated too.  Every extrapolated value has a key ending in
``_extrapolated``, its formula beside it, and a "~" in the printed table; each model's peak RSS is
that of its timed part.

It records the load average and the thread counts, and separately times ``evcf split``'s steps on
a seeded ML-20M-format ``ratings.csv``.  Speed is measured here, never asserted in tests.

``--pipelined-steps N`` also times N more steps of each VAE model queued back to back, one
synchronisation per round (the throughput that training gets on a GPU, where a synchronised step
also pays the host's time); ``--precision fp32|tf32|bf16`` picks the precision (default: the
recipe's).  ``scripts/gpu_check.sh`` runs the bench this way on CUDA.

The package, one job per file, each importing the standard library only at its top (this package
is imported by the CLI's parser, and by ``scripts/gpu_check.sh`` on a machine with little more than
torch); no file imports another's private names:

* :mod:`~evcf.bench.timer`: the GEMM rate, the spread of timed steps, peak memory, the machine;
* :mod:`~evcf.bench.vae`: the VAE models' step (:func:`~evcf.bench.vae.step_flops`,
  :func:`~evcf.bench.vae.bench_vae`);
* :mod:`~evcf.bench.baselines`: WMF, SLIM, CDAE, popularity and EASE;
* :mod:`~evcf.bench.preprocess`: ``evcf split``'s steps;
* :mod:`~evcf.bench.run`: :func:`~evcf.bench.run.run_bench` and the recipes;
* :mod:`~evcf.bench.table`: the printed table;
* here: the ``evcf bench`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import EvcfError
from .preprocess import bench_preprocess
from .run import load_params, load_params_checked, recipe, run_bench
from .table import format_table
from .timer import gemm_rate
from .vae import step_flops

__all__ = ["run_bench", "format_table", "add_parser", "gemm_rate", "step_flops", "bench_preprocess", "load_params",
           "load_params_checked", "recipe"]


def _json_object(text: str) -> dict:
    from ..args import json_object

    value = json_object(text)
    if not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(f'expected {{"model": {{...}}, ...}}, got {text!r}')
    return value


def _cmd_bench(args: argparse.Namespace) -> None:
    params, params_check = load_params_checked(Path(args.params)) if args.params else (None, None)
    command = " ".join(["evcf", *map(shlex.quote, sys.argv[1:])])  # what wrote this file

    def write(result: dict[str, Any]) -> Path:
        """The JSON, whole or not at all; after each model (``complete`` false) and at the end."""
        out = Path(args.out) if args.out else Path("results") / "bench" / f"{result['device']}.json"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps({**result, "command": command}, indent=2) + "\n")
            os.replace(tmp, out)
        except OSError as exc:
            raise EvcfError(f"cannot write the results ({exc.strerror or exc})", path=out,
                            fix="choose a writable --out path") from None
        return out

    result = run_bench(
        shape=args.shape, users=args.users, items=args.items, nnz=args.nnz, models=args.models, params=params,
        params_source=args.params, dataset=args.dataset, steps=args.steps, warmup=args.warmup,
        reference_steps=args.reference_steps, batch_size=args.batch_size, train=args.train, hparams=args.hparams,
        reference_hparams=args.reference_hparams, device=args.device, precision=args.precision,
        threads=args.threads, eval_users=args.eval_users, gemm_size=args.gemm_size,
        preprocess_rows=args.preprocess_rows, skip_preprocess=args.skip_preprocess, wmf_sweeps=args.wmf_sweeps,
        slim_items=args.slim_items, seed=args.seed, pipelined_steps=args.pipelined_steps, params_check=params_check,
        reference_train=args.reference_train, reference_batches=args.reference_batches, on_model=write,
    )
    result["command"] = command
    out = write(result)
    print(format_table(result))
    print(f"ok: {out}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf bench`` on the CLI's subparsers."""
    from ..args import json_object

    p = subparsers.add_parser(
        "bench", help="time evcf's training step, evaluation and preprocessing against the reference style",
        description="Time evcf's training step (as `evcf train` takes it), evaluation and preprocessing "
                    "at a dataset's shape, against the reference style; WMF, SLIM and CDAE by their own "
                    "training code (see evcf/bench/).")
    p.add_argument("--shape", default="ml-20m", help="named shape: ml-20m, netflix (default ml-20m)")
    p.add_argument("--users", type=int, help="explicit training users (with --items and --nnz)")
    p.add_argument("--items", type=int)
    p.add_argument("--nnz", type=int, help="explicit training clicks")
    p.add_argument("--models", nargs="+", default=None, help="registry names (default: every VAE model)")
    p.add_argument("--params", default=None,
                   help="params.yaml: each model's recipe (batch size, optimizer, lr, hyperparameters) as "
                        "a pipeline run on --dataset gets it (default: the code's defaults)")
    p.add_argument("--dataset", default=None, help="whose recipes to use (default: the shape's name, else ml-20m)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model and path (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="timed reference-style steps (default: --steps; 0 skips the reference)")
    p.add_argument("--batch-size", type=int, default=None, help="one batch size for every model (default: the recipe's)")
    p.add_argument("--train", type=json_object, default=None,
                   help='JSON training settings on top of the recipe, e.g. \'{"fused_optimizer": true}\'')
    p.add_argument("--hparams", type=_json_object, default=None,
                   help='JSON per model, on top of the recipe, e.g. \'{"vamp": {"n_pseudo": 500}}\'')
    p.add_argument("--reference-hparams", type=_json_object, default=None,
                   help="JSON per model: model options of the reference-style model only")
    p.add_argument("--reference-train", type=json_object, default=None,
                   help='JSON training settings of the reference path only, on top of ours with the optimizer '
                        'unfused, e.g. \'{"fused_optimizer": true}\' (not batch_size, tf32, deterministic)')
    p.add_argument("--reference-batches", choices=["host", "device"], default="host",
                   help="the reference path's batches: densified on the host (the reference codes' way, default) "
                        "or built on the device as ours (today's evcf step against a change)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", default=None, choices=["fp32", "tf32", "bf16"],
                   help="fp32 (TF32 off), tf32 (float32, TF32 matrix products on CUDA) or bf16 (autocast); "
                        "default: the recipe's")
    p.add_argument("--pipelined-steps", type=int, default=0,
                   help="also time this many steps of each VAE model queued back to back, one synchronisation "
                        "per round (GPU throughput); default 0: skip")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--eval-users", type=int, default=10_000, help="held-out users to evaluate (default 10000)")
    p.add_argument("--gemm-size", type=int, default=None, help="side of the GEMM-rate products (default 2048, CUDA 8192)")
    p.add_argument("--preprocess-rows", type=int, default=None,
                   help="rows of the timed ratings.csv (default 20,000,263 for ml-20m)")
    p.add_argument("--skip-preprocess", action="store_true")
    p.add_argument("--wmf-sweeps", type=int, default=5,
                   help="WMF: ALS sweeps of the timed fit; the recipe's count is extrapolated (default 5)")
    p.add_argument("--slim-items", type=int, default=64,
                   help="SLIM: items of the seeded sample that the real solver fits; the full fit is "
                        "extrapolated (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<device>.json)")
    p.set_defaults(func=_cmd_bench)
    return p
