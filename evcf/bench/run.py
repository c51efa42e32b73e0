"""``run_bench``: one bench run, from its arguments to the JSON that ``evcf bench`` writes.

The recipes come from params.yaml as a pipeline run resolves them (:func:`recipe`,
:func:`evcf.config.run_settings`); :func:`load_params` reads and checks the file as the pipeline
does, and says so where jsonschema is not installed (the schema check is then skipped).  Imports the
standard library only at the top (the CLI's parser imports this package).
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import EvcfError
from .baselines import bench_baseline
from .preprocess import bench_preprocess
from .table import fmt
from .timer import PeakMemory, copy_rate, gemm_rate, job_startup, load_average, machine, precision_settings, rounded
from .vae import bench_phases, bench_vae, gemm_window, set_floor

__all__ = ["run_bench", "recipe", "load_params", "load_params_checked"]

log = logging.getLogger(__name__)


def recipe(name: str, params: dict | None, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model hyperparameters, training settings) of ``name`` on ``dataset``: params.yaml's, as a
    pipeline run resolves them, or ({}, {}) (the code's defaults) without params."""
    from ..config import run_settings

    if params is None:
        return {}, {}
    if dataset not in params.get("data", {}):
        raise EvcfError(f"--dataset {dataset!r} is not in the params file",
                        fix=f"use one of {', '.join(params.get('data', {}))}")
    return run_settings(params, dataset, name)


def load_params_checked(path: Path) -> tuple[dict, str]:
    """params.yaml and how it was checked.

    With jsonschema (the pipeline's environment): read by PyYAML and validated as the pipeline
    does (``"schema"``).  Without it: read by PyYAML with anchors refused, not validated against
    the schema (``"yaml only: ..."``); each setting the bench uses still goes through the model's
    and training's config dataclasses, which refuse unknown keys.
    """
    import yaml

    from ..config import check_plain_yaml, validate

    path = Path(path)
    if not path.is_file():
        raise EvcfError("no such params file", path=path, fix="give the path of params.yaml")
    check_plain_yaml(path)
    config = yaml.safe_load(path.read_text())
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        log.warning("bench: jsonschema is not installed: %s is read but not validated against the schema", path)
        return config, "yaml only: jsonschema absent, not validated against the schema"
    validate(config, source=str(path))
    return config, "schema"


def load_params(path: Path) -> dict:
    """params.yaml, checked as far as the installed packages allow (:func:`load_params_checked`)."""
    return load_params_checked(path)[0]


def run_bench(*, shape: str | None = "ml-20m", users: int | None = None, items: int | None = None,
              nnz: int | None = None, models: list[str] | None = None, params: dict | None = None,
              params_source: str | None = None, dataset: str | None = None, steps: int = 20, warmup: int = 3,
              reference_steps: int | None = None, batch_size: int | None = None, train: dict | None = None,
              hparams: dict[str, dict[str, Any]] | None = None,
              reference_hparams: dict[str, dict[str, Any]] | None = None, device: str = "auto",
              precision: str | None = None, threads: int | None = None, eval_users: int = 10_000,
              gemm_size: int | None = None, preprocess_rows: int | None = None, skip_preprocess: bool = False,
              wmf_sweeps: int = 5, slim_items: int = 64, seed: int = 0, pipelined_steps: int = 0,
              params_check: str | None = None, reference_train: dict[str, Any] | None = None,
              reference_batches: str = "host", on_model: Callable[[dict[str, Any]], Any] | None = None
              ) -> dict[str, Any]:
    """Run the benchmark and return its results (the JSON that ``evcf bench`` writes).

    ``users``/``items``/``nnz`` (all three) replace the named ``shape``.  ``params`` is a loaded
    params.yaml (:func:`load_params`); the recipes are those of ``dataset`` (default: the shape's
    name for a named shape, else ml-20m).  ``train`` (training settings), ``batch_size``, ``precision``
    and ``hparams`` override the recipe (``batch_size`` also CDAE's).  ``reference_steps`` defaults to ``steps`` (0
    skips the reference style).  ``wmf_sweeps`` (ALS sweeps timed) and ``slim_items`` (items fitted) size the WMF
    and SLIM measurements (:mod:`evcf.bench.baselines`).  ``precision`` is one of
    :data:`~evcf.bench.timer.PRECISIONS` (fp32: TF32 off; tf32: float32 with TF32 matrix products;
    bf16: bf16 autocast); without it, the recipe's.  ``pipelined_steps`` > 0 also times that many
    steps of each VAE model queued back to back (:func:`~evcf.bench.vae.bench_vae`).
    ``params_check`` says how ``params`` was checked (:func:`load_params_checked`), for the JSON.
    ``reference_train`` (training settings on top of ours, with the optimizer unfused unless it says
    otherwise) and ``reference_batches`` (``host``: densified on the host; ``device``: built as ours)
    make the reference path today's evcf step, to time a change against it.  ``on_model`` is
    called with the results so far (``"complete": false``) after each model, so that a run cut
    short keeps the models it measured.
    """
    import numpy as np
    import torch

    from .. import __version__
    from ..batches import DeviceCSR
    from ..data.shapes import SHAPES, Shape, check_sizes, heldout_split, synthetic_matrix
    from ..models import MODEL_NAMES, VAEModel, build_model
    from ..models import model_class as registered

    def model_class(name: str) -> type:
        """The registry's class; a model whose module needs a package that is not installed, said so."""
        try:
            return registered(name)
        except ModuleNotFoundError as exc:
            raise EvcfError(f"model {name!r} needs {exc.name}, which is not installed",
                            fix=f"install {exc.name}, or bench the VAE models only (--models mult-vae vamp ...)"
                            ) from None
    from ..training import numerics, resolve_device, train_config

    # --- arguments ----------------------------------------------------------------------------
    explicit = [v is not None for v in (users, items, nnz)]
    if any(explicit) and not all(explicit):
        raise EvcfError("--users, --items and --nnz go together", fix="give all three, or none and a --shape")
    generated = None  # a generated dataset of params.yaml, benched on its own split
    if all(explicit):
        the_shape = Shape("custom", int(users), int(items), int(nnz), None)
    elif shape in SHAPES:
        the_shape = SHAPES[shape]
    elif params is not None and "synthetic" in (params.get("data", {}).get(shape) or {}):
        generated = generated_split(params, shape)
        the_shape = Shape(shape, int(generated.train.shape[0]), int(generated.train.shape[1]),
                          int(generated.train.nnz), None)
    else:
        raise EvcfError(f"unknown shape {shape!r}",
                        fix=f"use one of {', '.join(SHAPES)}, a generated dataset of --params (e.g. --shape "
                            "synthetic), or --users/--items/--nnz")
    check_sizes(the_shape.users, the_shape.items, the_shape.nnz)
    if not models:  # every VAE model
        models = [n for n in MODEL_NAMES if issubclass(model_class(n), VAEModel)]
    models = list(models)
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
    if precision is not None:
        precision_settings(precision)  # EvcfError naming the valid ones
    reference_train = dict(reference_train or {})
    shared = sorted(set(reference_train) & {"batch_size", "tf32", "deterministic"})
    if shared:
        raise EvcfError(f"--reference-train sets {', '.join(shared)}, which both paths share",
                        fix="set it for both with --train (or --batch-size, --precision)")
    if reference_batches not in ("host", "device"):
        raise EvcfError(f"--reference-batches {reference_batches!r} is not host or device", fix="use host or device")
    if pipelined_steps < 0:
        raise EvcfError("--pipelined-steps must not be negative", fix="e.g. --pipelined-steps 100, or 0 to skip")
    if threads is not None and threads < 1:
        raise EvcfError("--threads must be at least 1", fix="e.g. --threads 2")
    if eval_users < 1:
        raise EvcfError("--eval-users must be at least 1", fix="e.g. --eval-users 10000")
    dataset = dataset or (the_shape.name if the_shape.name in SHAPES or generated is not None else "ml-20m")
    recipes, reference_cfgs = {}, {}
    for name in models:  # every setting checked before the long parts (on a 2-item model)
        if issubclass(model_class(name), VAEModel):
            model_hparams, settings = recipe(name, params, dataset)
            overrides = {**({"batch_size": batch_size} if batch_size is not None else {}),
                         **(precision_settings(precision) if precision is not None else {})}
            cfg = train_config({**settings, **(train or {}), **overrides})
            reference_cfg = train_config({**settings, **(train or {}), **overrides, "fused_optimizer": False,
                                          **reference_train})
            model_hparams = {**model_hparams, **hparams.get(name, {})}
            build_model(name, 2, **{**model_hparams, **reference_hparams.get(name, {})})
            recipes[name] = (model_hparams, cfg)
            reference_cfgs[name] = reference_cfg
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
    run_precision = precision or next((_precision_name(recipes[name][1]) for name in vaes), "fp32")

    result: dict[str, Any] = {
        "shape": {"name": the_shape.name, "users": the_shape.users, "items": the_shape.items,
                  "nnz": the_shape.nnz},
        "command": None,  # the CLI fills it in
        "recipes": f"{params_source or 'params'}, data.{dataset}" if params is not None else "code defaults",
        "models": {},
        "machine": machine(dev),
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
        "load_average_start": load_average(),
        "reference_style": ("scipy row slice + toarray() per batch on the host, then to the device"
                            if reference_batches == "host" else "batches built on the device, as ours"),
        "reference_train": reference_train,
        "precision": run_precision,
        "pipelined_steps": pipelined_steps,
        "params_check": params_check if params is not None else None,
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

    def measure_gemm() -> dict[str, Any]:
        return gemm_rate(dev, gemm_dtype, gemm_size or (8192 if dev.type == "cuda" else 2048),
                         tf32=run_precision == "tf32")

    result["gemm"] = measure_gemm()  # the run's first; each VAE row's floor uses its own window's
    # the memory-traffic floor's divisor: one copy rate for the run (1 GiB on CUDA, 64 MiB here)
    result["bandwidth"] = copy_rate(dev, 1024 if dev.type == "cuda" else 64)
    memory = PeakMemory(dev)
    result["peak_rss_method"] = ("VmHWM per phase (reset via /proc/self/clear_refs)" if memory.can_reset
                                 else "getrusage ru_maxrss (peak so far)")
    mark = time.perf_counter()
    n_eval = min(eval_users, the_shape.users)
    eval_nnz = max(n_eval, round(n_eval * the_shape.nnz / the_shape.users))  # the same clicks per user
    if generated is not None:  # the dataset itself: its training users, its validation users evaluated
        train_csr, eval_in, eval_out = generated.train, generated.validation_tr, generated.validation_te
        result["eval_users"] = int((np.diff(eval_out.indptr) > 0).sum())
        result["synthetic_data"] = (f"the dataset itself: params data.{the_shape.name}, generated and split as the "
                                    "pipeline does; its validation users evaluated")
    else:
        train_csr = synthetic_matrix(the_shape.users, the_shape.items, the_shape.nnz, seed)
        eval_in, eval_out = heldout_split(synthetic_matrix(n_eval, the_shape.items, eval_nnz, seed + 1), seed + 2)
        result["eval_users"] = int((np.diff(eval_out.indptr) > 0).sum())
        result["synthetic_data"] = "numpy"
    data = {"train": DeviceCSR(train_csr, dev), "eval_in": DeviceCSR(eval_in, dev), "eval_out": eval_out}
    result["synthetic_s"] = time.perf_counter() - mark
    # what each pipeline job pays before training, which evcf plan counts per job: measured for a
    # generated dataset, whose short runs are where it matters (seconds against a paper shape's hours)
    result["job_startup"] = job_startup() if generated is not None else None
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
            multi_pass = model_class(name).epoch_phases is not VAEModel.epoch_phases
            before = measure_gemm()
            with numerics(cfg, dev):  # the recipe's TF32 and deterministic settings, as in training
                if multi_pass:  # an epoch of several passes (RecVAE): each pass timed as the loop trains it
                    entry = bench_phases(name, model_hparams, cfg, data, steps=steps, warmup=warmup, seed=seed,
                                         device=dev, memory=memory)
                else:
                    entry = bench_vae(name, model_hparams, reference_hparams.get(name, {}), cfg, data, steps=steps,
                                      warmup=warmup, reference_steps=reference_steps, seed=seed, device=dev,
                                      memory=memory, pipelined_steps=pipelined_steps,
                                      reference_cfg=reference_cfgs[name], reference_batches=reference_batches)
            set_floor(entry, gemm_window(before, measure_gemm()), result["bandwidth"])
        else:
            log.info("bench: %s (its own fit)", name)
            with numerics(cfg, dev):
                entry = bench_baseline(name, model_hparams, cfg, data, steps=steps, warmup=warmup, seed=seed,
                                       device=dev, memory=memory, wmf_sweeps=wmf_sweeps, slim_items=slim_items)
        result["models"][name] = rounded(entry)
        if on_model is not None:
            on_model(rounded({**result, "complete": False}))
        log.info("bench: %s: %s s per epoch, reference %s s, fit %s s%s", name, fmt(entry.get("epoch_s")),
                 fmt(entry.get("reference_epoch_s")), fmt(entry.get("fit_s_extrapolated", entry.get("fit_s"))),
                 " (extrapolated)" if "fit_s_extrapolated" in entry else "")
    trained = [m["peak_rss_mib"] for m in result["models"].values()
               if m.get("epoch_s") is not None or m.get("fit_s_extrapolated") is not None]
    result["train_peak_rss_mib"] = max(trained) if trained else None
    result["peak_rss_mib"] = memory.peak_mib()
    result["load_average_end"] = load_average()
    result["wall_s"] = time.perf_counter() - started
    result["complete"] = True
    return rounded(result)


def generated_split(params: dict, name: str) -> Any:
    """The split (:class:`~evcf.data.sparse.SplitData`) of params.yaml's generated dataset ``name``:
    generated, binarised, filtered and split as ``evcf generate`` and ``evcf split`` make it (in a
    temporary folder), so a bench at its shape times the quick start's own data."""
    import tempfile

    from ..data.sparse import load_split
    from ..data.split import binarize_filter, split_users, write_split
    from ..data.synthetic import SyntheticSpec, generate_ratings

    entry = params["data"][name]
    raw = generate_ratings(SyntheticSpec(**entry["synthetic"]))
    with tempfile.TemporaryDirectory() as tmp:
        write_split(split_users(binarize_filter(raw, entry["threshold"], entry["min_items"]), entry["heldout_users"]),
                    Path(tmp))
        return load_split(Path(tmp))


def _precision_name(cfg: Any) -> str:
    """The bench's name (:data:`~evcf.bench.timer.PRECISIONS`) of a training config's precision."""
    return "bf16" if cfg.precision == "bf16" else ("tf32" if cfg.tf32 else "fp32")

