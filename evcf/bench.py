"""``evcf bench``: a timer around evcf's training steps and fits, at the shape of a paper's dataset.

What it times is what ``evcf train`` runs: :func:`evcf.training.train_step` on the batches of
:class:`evcf.data.batches.Batches`, with the batch size, optimizer, learning rate, precision and
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
  steps of an epoch, divided by this machine's measured GEMM rate (:func:`gemm_rate`), so that
  "× floor" means the same on any machine;
* the time to evaluate ``--eval-users`` held-out users, and the peak resident memory of each phase.

The models that fit themselves are timed by their own training code, at the first point of their
grid, on the same matrix (:mod:`evcf.bench_baselines`, where the formulas are):

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
a seeded ML-20M-format ``ratings.csv``.  Speed is measured here, never asserted in tests.  This
module is imported by the CLI's parser, so its top level imports the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import EvcfError

__all__ = ["run_bench", "format_table", "add_parser", "gemm_rate", "step_flops", "bench_preprocess"]

log = logging.getLogger(__name__)


# ==================================================================================================
# Recipes, FLOPs and the machine


def recipe(name: str, params: dict | None, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model hyperparameters, training settings) of ``name`` on ``dataset``: params.yaml's, as a
    pipeline run resolves them, or ({}, {}) (the code's defaults) without params."""
    from .config import run_settings

    if params is None:
        return {}, {}
    if dataset not in params.get("data", {}):
        raise EvcfError(f"--dataset {dataset!r} is not in the params file",
                        fix=f"use one of {', '.join(params.get('data', {}))}")
    return run_settings(params, dataset, name)


def load_params(path: Path) -> dict:
    """params.yaml, checked as the pipeline checks it."""
    import yaml

    from .config import check_plain_yaml, validate

    check_plain_yaml(path)
    config = yaml.safe_load(path.read_text())
    validate(config, source=str(path))
    return config


def step_flops(model: Any, optimizer: Any, x: Any, beta: float, autocast: bool) -> int:
    """FLOPs of the matrix products of one :func:`~evcf.training.train_step`, counted as it runs.

    ``torch.utils.flop_counter`` counts 2·m·k·n per (m×k)·(k×n) product, forward and backward.  A
    linear layer d_in → d_out over n rows thus costs 2·n·d_in·d_out forward and 4·n·d_in·d_out
    backward (the weight's gradient and the input's).  With batch B, I items, H hidden, Z latent:

    * Mult-VAE (I → H → 2Z, Z → H → I): 6·B·(H·2Z + Z·H + H·I); its first layer reads only the
      clicks (an ``embedding_bag``, about 4·clicks·H, not counted);
    * Vamp adds its K pseudo-inputs through the dense encoder, 6·K·(I·H + H·2Z) (P is a parameter,
      so its gradient is computed too), and its mixture density's two (B × Z)·(Z × K) products,
      12·B·Z·K.  At ML-20M's shape (I = 20,108, H = 600, Z = 200, K = 1,000, B = 200) the
      pseudo-inputs are 74 GFLOP of a step's 89.

    An epoch's floor is this × ⌈users / B⌉ steps ÷ :func:`gemm_rate`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .training import train_step

    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, x, beta, autocast=autocast)
    return int(counter.get_total_flops())


def gemm_rate(device: Any, dtype: Any, size: int, repeats: int = 5) -> dict[str, Any]:
    """This machine's matrix-product rate: ``repeats`` timed (size×size)·(size×size) products after
    two untimed ones; FLOP/s = 2·size³ ÷ the median time."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    rates = [2.0 * size**3 / t for t in times]
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "gflops": statistics.median(rates) / 1e9,
            "gflops_min": min(rates) / 1e9, "gflops_max": max(rates) / 1e9}


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _spread(times: list[float]) -> dict[str, float]:
    """Median, quartiles (``statistics.quantiles``, exclusive method), min and max."""
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median": statistics.median(times), "q1": q1, "q3": q3, "min": min(times), "max": max(times)}


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def _machine(device: Any) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "gpu": gpu,
            "summary": f"{cpu}, {usable} cores" + (f", {gpu}" if gpu else "")}


def _read_hwm_kib() -> int | None:
    with contextlib.suppress(OSError):
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        return int(found.group(1)) if found else None
    return None


def _maxrss_mib() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class _PeakMemory:
    """Peak RSS per phase: VmHWM reset through ``/proc/self/clear_refs`` where the kernel allows;
    otherwise ``getrusage``'s peak so far (an upper bound on the phase's peak)."""

    def __init__(self, device: Any):
        self.device = device
        self.overall_mib = _maxrss_mib()
        self.can_reset = self._reset()

    @staticmethod
    def _reset() -> bool:
        if _read_hwm_kib() is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return True

    def _peak_mib(self) -> float:
        hwm = _read_hwm_kib()
        return hwm / 1024.0 if hwm is not None and self.can_reset else _maxrss_mib()

    @contextlib.contextmanager
    def phase(self, into: dict[str, Any], key: str) -> Iterator[None]:
        import torch

        self.overall_mib = max(self.overall_mib, self._peak_mib())
        if self.can_reset:
            self._reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            into[key] = self._peak_mib()
            self.overall_mib = max(self.overall_mib, into[key])
            if self.device.type == "cuda":
                into[key.replace("rss", "cuda")] = torch.cuda.max_memory_allocated(self.device) / 2**20

    def peak_mib(self) -> float:
        return max(self.overall_mib, self._peak_mib())


# ==================================================================================================
# Preprocessing (in fresh processes, so that its memory is its own)


def _write_ratings_job(path: str, rows: int, seed: int) -> dict[str, Any]:
    from .data.shapes import write_ml20m_ratings

    started = time.perf_counter()
    return {**write_ml20m_ratings(Path(path), rows, seed), "write_s": time.perf_counter() - started}


def _preprocess_job(csv_path: str, out_dir: str) -> dict[str, Any]:
    """``evcf split``'s steps on an ML-20M-format ratings.csv (threshold 3.5, ≥ 5 items, as ML-20M)."""
    from .data.readers import read_ratings
    from .data.split import binarize_filter, split_users, write_split

    times, started = {}, time.perf_counter()
    ratings = read_ratings(Path(csv_path), "movielens-20m")
    times["read_s"], mark = time.perf_counter() - started, time.perf_counter()
    filtered = binarize_filter(ratings, 3.5, 5)
    del ratings
    times["filter_s"], mark = time.perf_counter() - mark, time.perf_counter()
    heldout = max(1, min(10_000, int(filtered["user"].nunique()) // 10))  # ML-20M: 10,000 (Liang)
    split = split_users(filtered, heldout, source=csv_path)
    del filtered
    times["split_s"], mark = time.perf_counter() - mark, time.perf_counter()
    summary = write_split(split, Path(out_dir))
    times["write_split_s"] = time.perf_counter() - mark
    times["preprocess_s"] = time.perf_counter() - started
    return {**times, "heldout_users": heldout, "train_clicks": summary["train"]["interactions"],
            "users": summary["filtered"]["users"], "items": summary["n_items"], "peak_rss_mib": _maxrss_mib()}


def _in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_preprocess(rows: int, seed: int) -> dict[str, Any]:
    """Write a seeded ML-20M-like ratings.csv, then time ``evcf split``'s steps on it."""
    with tempfile.TemporaryDirectory(prefix="evcf-bench-") as tmp:
        csv_path = Path(tmp) / "ratings.csv"
        written = _in_fresh_process(_write_ratings_job, str(csv_path), rows, seed)
        log.info("bench: wrote %s rows of ratings.csv in %.1f s; timing the split", f"{rows:,}", written["write_s"])
        timed = _in_fresh_process(_preprocess_job, str(csv_path), str(Path(tmp) / "processed"))
    return {"rows": rows, "csv_mib": written["bytes"] / 2**20, **timed}


# ==================================================================================================
# One model


def _batch_stream(train: Any, batch_size: int, seed: int, dense_on_host: bool) -> Iterator[Any]:
    """Batches as training takes them, epoch after epoch (a fresh seeded order each epoch)."""
    import torch

    from .data.batches import Batches

    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from Batches(train, torch.randperm(train.n_rows, generator=gen), batch_size,
                           dense_on_host=dense_on_host)


def _bench_vae(name: str, hparams: dict, reference_hparams: dict, cfg: Any, data: dict[str, Any], *,
               steps: int, warmup: int, reference_steps: int, seed: int, device: Any, memory: _PeakMemory,
               gemm: dict[str, Any]) -> dict[str, Any]:
    """Memory phases first (each path alone), then the timed steps of both paths interleaved.

    1. the reference style alone: one step of a fresh model (its peak memory);
    2. ours alone: a fresh model, its first step counted by :func:`step_flops`, then the rest of
       the warm-up (peak memory), kept for timing;
    3. evaluation of the held-out users with that model (time, peak memory);
    4. a fresh reference-style model and its warm-up, then the timed steps of both, alternating.
    A timed step is building the batch plus :func:`~evcf.training.train_step`.
    """
    import torch

    from .data.batches import RowBatch
    from .evaluate import evaluate
    from .models import build_model
    from .optim import make_optimizer
    from .training import _beta, train_step

    train = data["train"]
    batch = min(cfg.batch_size, train.n_rows)
    autocast = cfg.precision == "bf16"
    # β where its annealing ends (the cost of a step does not depend on it)
    beta = _beta(cfg, max(1, cfg.warmup_epochs), cfg.total_anneal_steps)
    steps_per_epoch = math.ceil(train.n_rows / batch)
    out: dict[str, Any] = {"batch_size": batch, "optimizer": cfg.optimizer, "fused_optimizer": cfg.fused_optimizer,
                           "lr": cfg.lr, "beta": beta,
                           "precision": cfg.precision, "hparams": hparams,
                           "reference_hparams": reference_hparams, "steps_per_epoch": steps_per_epoch,
                           "load_average_start": _load_average()}

    def fresh(reference: bool) -> tuple[Any, Any, Iterator[Any]]:
        torch.manual_seed(seed)
        model = build_model(name, train.shape[1], **{**hparams, **(reference_hparams if reference else {})})
        model.to(device).train()
        # the reference codes step their optimizers parameter by parameter, never fused
        fused = cfg.fused_optimizer and not reference
        return model, make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, fused=fused), \
            _batch_stream(train, batch, seed, dense_on_host=reference)

    def step(model: Any, optimizer: Any, batches: Iterator[Any]) -> None:
        train_step(model, optimizer, next(batches), beta, autocast=autocast)

    if reference_steps:
        with memory.phase(out, "reference_peak_rss_mib"):
            step(*fresh(reference=True))
    with memory.phase(out, "peak_rss_mib"):
        model, optimizer, batches = fresh(reference=False)
        out["step_flops"] = step_flops(model, optimizer, next(batches), beta, autocast)
        for _ in range(warmup - 1):
            step(model, optimizer, batches)
    with memory.phase(out, "eval_peak_rss_mib"):
        model.eval()
        _sync(device)
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=cfg.eval_batch_size, device=device,
                 with_clicks=True)
        _sync(device)
        out.update(eval_s=time.perf_counter() - started, eval_batch_size=cfg.eval_batch_size)
        model.train()

    paths = {"ours": (model, optimizer, batches)}
    if reference_steps:
        paths["reference"] = fresh(reference=True)
        for _ in range(warmup):
            step(*paths["reference"])
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for i in range(max(steps, reference_steps)):
        for kind in (("ours", "reference") if i % 2 == 0 else ("reference", "ours")):
            if i < (steps if kind == "ours" else reference_steps):
                _sync(device)
                started = time.perf_counter()
                step(*paths[kind])
                _sync(device)
                times[kind].append(time.perf_counter() - started)

    del paths, model, optimizer, batches
    ours = _spread(times["ours"])
    floor = out["step_flops"] * steps_per_epoch / (gemm["gflops"] * 1e9)
    out.update(step_s=ours["median"], step_spread_s=ours, step_times_s=times["ours"],
               epoch_s=ours["median"] * steps_per_epoch, users_per_s=batch / ours["median"],
               floor_epoch_s=floor, x_floor=ours["median"] * steps_per_epoch / floor,
               reference_epoch_s=None, speedup=None)
    if reference_steps:
        ref = _spread(times["reference"])
        pairs = [r / o for r, o in zip(times["reference"], times["ours"])]  # neighbours in time
        # eval-mode losses of the two fresh models on one batch built both ways: no dropout, no
        # sampling, so equal up to rounding unless the reference's model options change the model
        losses = []
        for reference in (False, True):
            model, _, batches = fresh(reference)
            with torch.no_grad():
                rows = next(batches)  # a RowBatch (ours) or the dense rows (the reference style)
                x, clicks = rows if isinstance(rows, RowBatch) else (rows, None)
                losses.append(float(model.eval().loss(x, beta, clicks).loss))
            del model, batches
        out.update(reference_step_s=ref["median"], reference_step_spread_s=ref,
                   reference_step_times_s=times["reference"], reference_epoch_s=ref["median"] * steps_per_epoch,
                   speedup=ref["median"] / ours["median"], speedup_paired=_spread(pairs),
                   check_loss=losses[0], reference_check_loss=losses[1],
                   check_loss_rel_diff=abs(losses[0] - losses[1]) / max(abs(losses[1]), 1e-12))
    out["load_average_end"] = _load_average()
    return out


# ==================================================================================================
# The whole run


def run_bench(*, shape: str | None = "ml-20m", users: int | None = None, items: int | None = None,
              nnz: int | None = None, models: list[str] | None = None, params: dict | None = None,
              params_source: str | None = None, dataset: str | None = None, steps: int = 20, warmup: int = 3,
              reference_steps: int | None = None, batch_size: int | None = None, train: dict | None = None,
              hparams: dict[str, dict[str, Any]] | None = None,
              reference_hparams: dict[str, dict[str, Any]] | None = None, device: str = "auto",
              precision: str | None = None, threads: int | None = None, eval_users: int = 10_000,
              gemm_size: int | None = None, preprocess_rows: int | None = None, skip_preprocess: bool = False,
              wmf_sweeps: int = 5, slim_items: int = 64, seed: int = 0) -> dict[str, Any]:
    """Run the benchmark and return its results (the JSON that ``evcf bench`` writes).

    ``users``/``items``/``nnz`` (all three) replace the named ``shape``.  ``params`` is a loaded
    params.yaml (:func:`load_params`); the recipes are those of ``dataset`` (default: the shape's
    name for a named shape, else ml-20m).  ``train`` (training settings), ``batch_size``, ``precision``
    and ``hparams`` override the recipe (``batch_size`` also CDAE's).  ``reference_steps`` defaults to ``steps`` (0
    skips the reference style).  ``wmf_sweeps`` (ALS sweeps timed) and ``slim_items`` (items fitted) size the WMF
    and SLIM measurements (:mod:`evcf.bench_baselines`).
    """
    import numpy as np
    import torch

    from . import __version__
    from .bench_baselines import bench_baseline
    from .data.batches import DeviceCSR
    from .data.shapes import SHAPES, Shape, check_sizes, heldout_split, synthetic_matrix
    from .models import MODEL_NAMES, VAEModel, build_model, model_class
    from .training import numerics, resolve_device, train_config

    # --- arguments ----------------------------------------------------------------------------
    explicit = [v is not None for v in (users, items, nnz)]
    if any(explicit) and not all(explicit):
        raise EvcfError("--users, --items and --nnz go together", fix="give all three, or none and a --shape")
    if all(explicit):
        the_shape = Shape("custom", int(users), int(items), int(nnz), None)
    elif shape in SHAPES:
        the_shape = SHAPES[shape]
    else:
        raise EvcfError(f"unknown shape {shape!r}", fix=f"use one of {', '.join(SHAPES)} or --users/--items/--nnz")
    check_sizes(the_shape.users, the_shape.items, the_shape.nnz)
    models = list(models) if models else [n for n in MODEL_NAMES if issubclass(model_class(n), VAEModel)]
    for name in models:
        model_class(name)  # EvcfError naming the valid models
    if len(set(models)) != len(models):
        raise EvcfError(f"--models lists a model twice: {models}", fix="name each model once")
    hparams, reference_hparams = dict(hparams or {}), dict(reference_hparams or {})
    for flag, given in (("--hparams", hparams), ("--reference-hparams", reference_hparams)):
        for name in given:
            if name not in models:
                raise EvcfError(f"{flag} names {name!r}, which is not benchmarked",
                                fix=f"use model names from --models ({', '.join(models)})")
    for name in reference_hparams:
        if not issubclass(model_class(name), VAEModel):
            raise EvcfError(f"--reference-hparams names {name!r}, which has no reference style",
                            fix="give reference model options to the VAE models only")
    if steps < 1 or warmup < 1:
        raise EvcfError("--steps and --warmup must be at least 1", fix="e.g. --steps 20 --warmup 3")
    for flag, value, example in (("--wmf-sweeps", wmf_sweeps, 5), ("--slim-items", slim_items, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvcfError(f"{flag} must be a whole number of at least 1, got {value!r}", fix=f"e.g. {flag} {example}")
    reference_steps = steps if reference_steps is None else reference_steps
    if reference_steps < 0:
        raise EvcfError("--reference-steps must not be negative", fix="use 0 to skip the reference style")
    if batch_size is not None and batch_size < 1:
        raise EvcfError("--batch-size must be at least 1", fix="e.g. --batch-size 500")
    if precision not in (None, "fp32", "bf16"):
        raise EvcfError(f"--precision {precision!r} is not fp32 or bf16", fix="use fp32 or bf16")
    if threads is not None and threads < 1:
        raise EvcfError("--threads must be at least 1", fix="e.g. --threads 2")
    if eval_users < 1:
        raise EvcfError("--eval-users must be at least 1", fix="e.g. --eval-users 10000")
    dataset = dataset or (the_shape.name if the_shape.name in SHAPES else "ml-20m")
    recipes = {}
    for name in models:  # every setting checked before the long parts (on a 2-item model)
        if issubclass(model_class(name), VAEModel):
            model_hparams, settings = recipe(name, params, dataset)
            overrides = {k: v for k, v in (("batch_size", batch_size), ("precision", precision)) if v is not None}
            cfg = train_config({**settings, **(train or {}), **overrides})
            model_hparams = {**model_hparams, **hparams.get(name, {})}
            build_model(name, 2, **{**model_hparams, **reference_hparams.get(name, {})})
            recipes[name] = (model_hparams, cfg)
        else:  # the models that fit themselves: their hyperparameters, and the recipe's eval batch size
            model_hparams, settings = recipe(name, params, dataset)
            cfg = train_config({**settings, **(train or {})})
            model_hparams = {**model_hparams, **hparams.get(name, {})}
            if name == "cdae" and batch_size is not None:
                model_hparams["batch_size"] = batch_size
            build_model(name, 2, **model_hparams)
            recipes[name] = (model_hparams, cfg)
    if skip_preprocess:
        preprocess_rows = None
    elif preprocess_rows is None:
        preprocess_rows = the_shape.preprocess_rows
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    vaes = [name for name in recipes if issubclass(model_class(name), VAEModel)]
    run_precision = precision or next((recipes[name][1].precision for name in vaes), "fp32")

    result: dict[str, Any] = {
        "shape": {"name": the_shape.name, "users": the_shape.users, "items": the_shape.items,
                  "nnz": the_shape.nnz},
        "command": None,  # the CLI fills it in
        "recipes": f"{params_source or 'params'}, data.{dataset}" if params is not None else "code defaults",
        "models": {},
        "machine": _machine(dev),
        "device": dev.type,
        "steps": steps,
        "warmup_steps": warmup,
        "reference_steps": reference_steps,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "evcf_version": __version__,
        "python": platform.python_version(),
        "load_average_start": _load_average(),
        "reference_style": "scipy row slice + toarray() per batch on the host, then to the device",
    }
    started = time.perf_counter()

    # --- preprocessing first, in fresh processes ------------------------------------------------
    result["preprocess"] = None
    if preprocess_rows:
        log.info("bench: preprocessing %s ratings rows", f"{preprocess_rows:,}")
        result["preprocess"] = bench_preprocess(int(preprocess_rows), seed)
    else:
        result["preprocess_note"] = "skipped" if skip_preprocess else "no default row count for this shape"

    # --- the machine's GEMM rate, the data -------------------------------------------------------
    gemm_dtype = torch.bfloat16 if run_precision == "bf16" else torch.float32
    result["gemm"] = gemm_rate(dev, gemm_dtype, gemm_size or (8192 if dev.type == "cuda" else 2048))
    memory = _PeakMemory(dev)
    result["peak_rss_method"] = ("VmHWM per phase (reset via /proc/self/clear_refs)" if memory.can_reset
                                 else "getrusage ru_maxrss (peak so far)")
    mark = time.perf_counter()
    train_csr = synthetic_matrix(the_shape.users, the_shape.items, the_shape.nnz, seed)
    n_eval = min(eval_users, the_shape.users)
    eval_nnz = max(n_eval, round(n_eval * the_shape.nnz / the_shape.users))  # the same clicks per user
    eval_in, eval_out = heldout_split(synthetic_matrix(n_eval, the_shape.items, eval_nnz, seed + 1), seed + 2)
    data = {"train": DeviceCSR(train_csr, dev), "eval_in": DeviceCSR(eval_in, dev), "eval_out": eval_out}
    result["synthetic_s"] = time.perf_counter() - mark
    result["eval_users"] = int((np.diff(eval_out.indptr) > 0).sum())
    log.info("bench: %s matrix %s x %s, %s clicks (%.1f s); GEMM %.0f GFLOP/s", the_shape.name,
             f"{the_shape.users:,}", f"{the_shape.items:,}", f"{the_shape.nnz:,}", result["synthetic_s"],
             result["gemm"]["gflops"])

    # --- models ---------------------------------------------------------------------------------
    for name in models:
        model_hparams, cfg = recipes[name]
        if name in vaes:
            log.info("bench: %s, batch %d, %d warm-up + %d steps (reference %d)", name,
                     min(cfg.batch_size, the_shape.users), warmup,
                     steps, reference_steps)
            with numerics(cfg, dev):  # the recipe's TF32 and deterministic settings, as in training
                entry = _bench_vae(name, model_hparams, reference_hparams.get(name, {}), cfg, data, steps=steps,
                                   warmup=warmup, reference_steps=reference_steps, seed=seed, device=dev,
                                   memory=memory, gemm=result["gemm"])
        else:
            log.info("bench: %s (its own fit)", name)
            with numerics(cfg, dev):
                entry = bench_baseline(name, model_hparams, cfg, data, steps=steps, warmup=warmup, seed=seed,
                                       device=dev, memory=memory, wmf_sweeps=wmf_sweeps, slim_items=slim_items)
        result["models"][name] = _rounded(entry)
        log.info("bench: %s: %s s per epoch, reference %s s, fit %s s%s", name, _fmt(entry.get("epoch_s")),
                 _fmt(entry.get("reference_epoch_s")), _fmt(entry.get("fit_s_extrapolated", entry.get("fit_s"))),
                 " (extrapolated)" if "fit_s_extrapolated" in entry else "")
    trained = [m["peak_rss_mib"] for m in result["models"].values()
               if m.get("epoch_s") is not None or m.get("fit_s_extrapolated") is not None]
    result["train_peak_rss_mib"] = max(trained) if trained else None
    result["peak_rss_mib"] = memory.peak_mib()
    result["load_average_end"] = _load_average()
    result["wall_s"] = time.perf_counter() - started
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ==================================================================================================
# Table and CLI


def _fmt(value: float | None, unit: str = "") -> str:
    """3 significant digits, no exponent for the magnitudes a bench sees."""
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per model, then the run's conditions, preprocessing and memory."""
    from tabulate import tabulate

    rows = []
    for name, m in result["models"].items():
        per_epoch = m.get("steps_per_epoch") or 0
        spread = m.get("step_spread_s")
        iqr = (spread["q1"] * per_epoch, spread["q3"] * per_epoch) if spread else None
        if m.get("sweep_spread_s"):  # WMF: an epoch is one ALS sweep
            iqr = (m["sweep_spread_s"]["q1"], m["sweep_spread_s"]["q3"])
        note = m.get("note", "")
        if m.get("grid_s_extrapolated") is not None:
            note += f"; ~grid of {m['grid_points']} points {_fmt(m['grid_s_extrapolated'])} s"
        rows.append([
            name, m.get("batch_size", "-"), _fmt(m.get("epoch_s")), f"{_fmt(iqr[0])}-{_fmt(iqr[1])}" if iqr else "-",
            f"~{_fmt(m['fit_s_extrapolated'])}" if m.get("fit_s_extrapolated") is not None else _fmt(m.get("fit_s")),
            _fmt(m.get("users_per_s")), _fmt(m.get("reference_epoch_s")), _fmt(m.get("speedup"), "x"),
            _fmt(m["step_flops"] / 1e9) if m.get("step_flops") else "-", _fmt(m.get("floor_epoch_s")),
            _fmt(m.get("x_floor"), "x"), _fmt(m.get("eval_s")), _fmt(m.get("peak_rss_mib")), note,
        ])
    headers = ["model", "batch", "s / epoch", "IQR", "fit (s)", "users / s", "reference s / epoch", "speed-up",
               "GFLOP / step", "floor s / epoch", "x floor", f"eval {result.get('eval_users') or 0:,} users (s)",
               "peak RSS (MiB)", "note"]
    shape, gemm = result["shape"], result["gemm"]
    precisions = sorted({m["precision"] for m in result["models"].values() if m.get("precision")}) or ["-"]
    lines = [
        f"shape {shape['name']}: {shape['users']:,} users x {shape['items']:,} items, {shape['nnz']:,} clicks; "
        f"device {result['device']} ({result['machine']['summary']}), {'/'.join(precisions)}, "
        f"{result['threads']} threads; recipes: {result['recipes']}",
        f"median of {result['steps']} steps ({result['reference_steps']} reference) after {result['warmup_steps']} "
        f"warm-up, the two paths interleaved, times an epoch's steps; IQR: the quartiles of the steps, in s / epoch; "
        f"GEMM {_fmt(gemm['gflops'])} GFLOP/s ({gemm['dtype']}, {gemm['size']}^2; floor = FLOPs / GEMM rate)",
    ]
    if any(m.get("fit_s_extrapolated") is not None for m in result["models"].values()):
        lines.append("~: extrapolated from what was timed (formulas in the JSON; CDAE's steps as above, without a "
                     "reference); ~grid: the model's own search, a fit and an evaluation per point "
                     "(evcf/bench_baselines.py)")
    # only the columns that some model fills (the VAE-only ones are empty for the other models)
    keep = [i for i in range(len(headers)) if i in (0, len(headers) - 1) or any(row[i] != "-" for row in rows)]
    lines.append(tabulate([[row[i] for i in keep] for row in rows], headers=[headers[i] for i in keep],
                          disable_numparse=True, colalign=["left"] + ["right"] * (len(keep) - 2) + ["left"]))
    pre = result.get("preprocess")
    if pre:
        lines.append(f"preprocessing {pre['rows']:,} ratings rows ({_fmt(pre['csv_mib'])} MiB csv) to the split: "
                     f"{_fmt(pre['preprocess_s'])} s (read {_fmt(pre['read_s'])}, binarize+filter "
                     f"{_fmt(pre['filter_s'])}, split {_fmt(pre['split_s'])}, write {_fmt(pre['write_split_s'])}), "
                     f"peak RSS {_fmt(pre['peak_rss_mib'])} MiB")
    else:
        lines.append(f"preprocessing: {result.get('preprocess_note', 'skipped')}")
    lines.append(f"peak RSS: training {_fmt(result['train_peak_rss_mib'])} MiB (worst model, ours alone), "
                 f"whole bench {_fmt(result['peak_rss_mib'])} MiB; load average "
                 f"{result['load_average_start']} -> {result['load_average_end']}")
    return "\n".join(lines)


def _json_settings(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    value = _json_settings(text)
    if not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError(f'expected {{"model": {{...}}, ...}}, got {text!r}')
    return value


def _cmd_bench(args: argparse.Namespace) -> None:
    params = load_params(Path(args.params)) if args.params else None
    result = run_bench(
        shape=args.shape, users=args.users, items=args.items, nnz=args.nnz, models=args.models, params=params,
        params_source=args.params, dataset=args.dataset, steps=args.steps, warmup=args.warmup,
        reference_steps=args.reference_steps, batch_size=args.batch_size, train=args.train, hparams=args.hparams,
        reference_hparams=args.reference_hparams, device=args.device, precision=args.precision,
        threads=args.threads, eval_users=args.eval_users, gemm_size=args.gemm_size,
        preprocess_rows=args.preprocess_rows, skip_preprocess=args.skip_preprocess, wmf_sweeps=args.wmf_sweeps,
        slim_items=args.slim_items, seed=args.seed,
    )
    result["command"] = " ".join(["evcf", *map(shlex.quote, sys.argv[1:])])  # what wrote this file
    out = Path(args.out) if args.out else Path("results") / "bench" / f"{result['device']}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        raise EvcfError(f"cannot write the results ({exc.strerror or exc})", path=out,
                        fix="choose a writable --out path") from None
    print(format_table(result))
    print(f"ok: {out}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evcf bench`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="time evcf's training step, evaluation and preprocessing against the reference style",
        description="Time evcf's training step (as `evcf train` takes it), evaluation and preprocessing "
                    "at a dataset's shape, against the reference style; WMF, SLIM and CDAE by their own "
                    "training code (see evcf/bench.py and evcf/bench_baselines.py).")
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
    p.add_argument("--train", type=_json_settings, default=None,
                   help='JSON training settings on top of the recipe, e.g. \'{"fused_optimizer": true}\'')
    p.add_argument("--hparams", type=_json_object, default=None,
                   help='JSON per model, on top of the recipe, e.g. \'{"vamp": {"n_pseudo": 500}}\'')
    p.add_argument("--reference-hparams", type=_json_object, default=None,
                   help="JSON per model: model options of the reference-style model only")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: the recipe's")
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
