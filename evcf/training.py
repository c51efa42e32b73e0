"""The training loop: mini-batch steps, per-epoch validation, best-epoch selection, resumable.

``run(...)`` is what ``evcf train`` calls: it fits a model on the training users, picks the epoch
(or, for self-fitting models, the setting) with the best validation NDCG@100, scores the test users
with it and writes ``metrics.json``, ``history.csv`` and ``per_user.csv``.

Every gradient step is :func:`train_step`, the one step of evcf: this loop and ``evcf bench``
both call it.  A step never reads a value back from the device (no ``.item()``, no branch on a
tensor), so on a GPU the host queues steps ahead of the device; the loss is summed on the device
and checked once per epoch (:class:`TrainingDiverged`).

An atomic checkpoint (``checkpoint.pt``) is written after an epoch when ``checkpoint_minutes``
have passed since the last one (0: after every epoch) and after the last epoch.  It describes
itself: the run's identity, model and training config, epoch, β-schedule position, every
optimizer's state, every random generator's state, the best state so far, the history and the package version.
A run started again with the same arguments resumes from it and, on CPU, ends with the same metrics
as an uninterrupted run (wall-clock fields excepted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import weakref
from dataclasses import asdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from . import __version__
from .batches import Batches, DeviceCSR, RowBatch
from .data.sparse import SplitData
from .errors import EvcfError
from .evaluate import evaluate, summarize
from .io import write_atomic, write_csv, write_json
from .identity import environment, identity_diff, matrices_fingerprint, run_identity
from .models import build_model
from .models.base import SelfFittingModel, Phase, VAEModel
from .optim import make_optimizer
from .schedules import beta_evcf, beta_liang

__all__ = ["TrainConfig", "TrainingDiverged", "Interrupted", "run", "beta_at", "resolve_device", "train_config",
           "train_step", "train_pass", "make_optimizers", "epoch_passes", "train_epoch", "numerics"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"  # resumable training state; deleted when the run finishes
PARTIAL = "partial.json"  # a run stopped at a halving budget: its identity and epoch (with history.csv)
PROGRESS = "progress.json"  # epoch, ETA and state, rewritten every epoch (evcf status reads it)
WEIGHTS_FILE = "model.pt"  # a finished run's best weights (train.weights)
_clock = time.monotonic  # minutes between checkpoints are counted on it (tests replace it)
SELECT_BY = "ndcg@100"


WEIGHTS = ("fp16", "fp32", "none")  # train.weights: what a finished run keeps (model.pt)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200  # Liang et al. 2018 (EVCF code: up to 400)
    batch_size: int = 500  # Liang et al. 2018 (EVCF code: 200)
    lr: float = 1e-3  # Liang et al. 2018 (EVCF code: 5e-4)
    optimizer: str = "adam"  # "adam" (Liang) or "adam-normgrad" (EVCF's AdamNormGrad)
    beta_schedule: str = "liang"  # "liang" (per step), "evcf" (per epoch) or "none" (β = 0, a DAE)
    total_anneal_steps: int = 200_000  # Liang: β reaches anneal_cap after this many updates
    anneal_cap: float = 0.2  # Liang
    warmup_epochs: int = 100  # EVCF code default
    max_beta: float = 1.0  # EVCF code default (its README's Netflix H+Vamp (Gated) example: 0.3)
    patience: int = 0  # stop after more than this many epochs without improvement after warm-up (EVCF); 0 = never
    eval_batch_size: int = 2000  # Liang's evaluation batch
    precision: str = "fp32"  # "fp32" or "bf16" (autocast of the training forward pass)
    # ours (issue 14): a checkpoint is 0.4-1.3 GB at ML-20M's shape and a GPU epoch takes seconds, so
    # write one when this many minutes have passed since the last (and after the last epoch); 0 =
    # after every epoch.  Not part of the run's identity: it does not change the numbers.
    checkpoint_minutes: float = 10.0
    # ours: the optimizer step as torch's fused Adam kernel (for Adam and AdamNormGrad): one pass over
    # each parameter instead of a chain of elementwise operations, the same update up to float
    # rounding (tests/test_optim.py); off = the elementwise form of the reference codes
    fused_optimizer: bool = True
    # ours: torch.compile of the model's loss (forward and backward; one graph, static shapes thanks
    # to the padded click lists).  Off by default; recorded in metrics.json
    compile: bool = False
    tf32: bool = False  # ours: CUDA float32 matmuls in TF32 (faster, ~1e-3 relative error); no effect on CPU
    # ours: torch.use_deterministic_algorithms(True), and CUBLAS_WORKSPACE_CONFIG=:4096:8 on CUDA
    # (when not set already): a CUDA run repeats bit for bit, somewhat slower; off = torch's defaults
    deterministic: bool = False
    # ours (issue 18): what a finished run keeps besides its results: the best epoch's weights as
    # model.pt in half precision ("fp16", for a reader), in full precision ("fp32"), or nothing
    # ("none").  The resumable checkpoint is deleted when the run ends either way.  Not part of the
    # run's identity: it does not change the numbers.
    weights: str = "fp16"

    def __post_init__(self) -> None:
        choices = {
            "optimizer": ("adam", "adam-normgrad"),
            "beta_schedule": ("liang", "evcf", "none"),
            "precision": ("fp32", "bf16"),
            "weights": WEIGHTS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise EvcfError(f"train.{key} = {getattr(self, key)!r} is not one of {list(allowed)}",
                                path="params.yaml", fix=f"set train.{key} to one of {list(allowed)}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise EvcfError(f"train.{key} must be >= 1", path="params.yaml", fix=f"set a positive train.{key}")
        if not self.lr > 0:
            raise EvcfError(f"train.lr must be > 0, got {self.lr}", path="params.yaml", fix="set a positive train.lr")
        for key in ("total_anneal_steps", "anneal_cap", "warmup_epochs", "max_beta", "patience",
                    "checkpoint_minutes"):
            if getattr(self, key) < 0:
                raise EvcfError(f"train.{key} must be >= 0, got {getattr(self, key)}", path="params.yaml",
                                fix=f"set train.{key} to 0 or more")


def train_config(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a dict, with one clear error per unknown key or wrong type."""
    known = {f.name: f for f in fields(TrainConfig)}
    for key, value in values.items():
        if key not in known:
            raise EvcfError(f"unknown training setting {key!r}", path="params.yaml",
                            fix=f"use one of {sorted(known)}")
        default = getattr(TrainConfig, key)
        ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            kind = "true or false" if isinstance(default, bool) else f"a {type(default).__name__}"
            raise EvcfError(f"training setting {key!r} must be {type(default).__name__}, got {value!r}",
                            path="params.yaml", fix=f"write {key} as {kind}")
    return TrainConfig(**{k: (float(v) if isinstance(getattr(TrainConfig, k), float) else v) for k, v in values.items()})


# settings that change how a run is carried out, not its numbers: left out of the run's identity
NOT_IN_IDENTITY = ("checkpoint_minutes", "weights")


class TrainingDiverged(EvcfError):
    """The loss became NaN or infinite."""


def _gpus_given() -> str | None:
    """The environment variable that says this process was given GPUs, as ``NAME=value``; or None.

    ``CUDA_VISIBLE_DEVICES`` with a value other than empty, ``-1`` or SLURM's ``NoDevFiles``;
    SLURM's ``SLURM_JOB_GPUS`` or ``SLURM_STEP_GPUS`` (set for a job or step with a GPU ``--gres``).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name]}"
    return None


def _no_cuda_reason() -> str:
    build = f"torch {torch.__version__}"
    return f"{build} is a CPU-only build" if torch.version.cuda is None else \
        f"{build} (CUDA {torch.version.cuda}) finds no usable GPU: driver too old for it, or no device visible"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` refuses to fall back to the CPU when the environment shows that this job was given a
    GPU (:func:`_gpus_given`) but torch cannot see CUDA: such a run would silently take hours on the
    CPU of a GPU node.
    """
    fix = ("install the CUDA build of torch that matches the node's driver in the job's environment "
           "(https://pytorch.org/get-started/locally/; check with python -c 'import torch; "
           "print(torch.cuda.is_available())' on a GPU node), or set device: cpu to use the CPU on purpose")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        given = _gpus_given()
        if given:
            raise EvcfError(f"this job was given a GPU ({given}) but torch cannot see CUDA: {_no_cuda_reason()}",
                            fix=fix)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvcfError(f"device {name!r} requested but torch cannot see CUDA: {_no_cuda_reason()}",
                        fix=fix.replace("set device: cpu", "use --device cpu or auto"))
    return torch.device(name)


@contextlib.contextmanager
def numerics(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Inside the block: TF32 matmuls on CUDA when ``cfg.tf32``, deterministic algorithms when
    ``cfg.deterministic`` (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` on CUDA unless already set; cuBLAS
    reads it when first used, so it takes effect in a process that has not used CUDA yet, as
    ``evcf train``).  The previous settings are restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
            if cfg.deterministic and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict:
    """The random generators a run draws from: the CPU's, the shuffle's and, for a CUDA run, its own
    device's (not every visible GPU's: a CPU run never opens a CUDA context, and a resume on a
    node with fewer GPUs finds the state it needs)."""
    state = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(gen: torch.Generator, state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def beta_at(cfg: TrainConfig, epoch: int, update_count: int) -> float:
    """β of the schedule before a step of ``epoch`` (1-based) after ``update_count`` steps."""
    if cfg.beta_schedule == "liang":
        return beta_liang(update_count, cfg.total_anneal_steps, cfg.anneal_cap)
    if cfg.beta_schedule == "evcf":
        return beta_evcf(epoch, cfg.warmup_epochs, cfg.max_beta)
    return 0.0


def _warmed_up(cfg: TrainConfig, epoch: int, update_count: int) -> bool:
    """Early-stopping patience only counts once β has finished its warm-up."""
    if cfg.beta_schedule == "liang":
        return cfg.total_anneal_steps <= 0 or update_count >= cfg.total_anneal_steps * cfg.anneal_cap
    if cfg.beta_schedule == "evcf":
        return epoch >= cfg.warmup_epochs
    return True


COMPILE_BACKEND = "inductor"  # torch.compile's default (the CPU tests trace with "aot_eager": no C++ build)
_compiled: "weakref.WeakKeyDictionary[VAEModel, Any]" = weakref.WeakKeyDictionary()  # model -> its compiled loss


def compiled_loss(model: VAEModel) -> Any:
    """``torch.compile(model.loss)``, made once per model: one graph (``fullgraph``), static shapes.

    The padded click lists (:func:`~evcf.batches.padded_size`) and the fixed batch size leave a few
    shapes per run (a bucket or two of click counts, the last batch), each compiled once; β comes
    in as a 0-d tensor (:func:`train_step`), an input of the graph rather than a constant in it.
    """
    if model not in _compiled:
        _compiled[model] = torch.compile(model.loss, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    return _compiled[model]


def train_step(model: VAEModel, optimizer: torch.optim.Optimizer, batch: RowBatch | torch.Tensor, beta: float,
               *, autocast: bool = False, compile: bool = False) -> torch.Tensor:
    """One gradient step on ``batch``; returns the batch's loss, detached, on the device.

    ``batch`` is a :class:`~evcf.batches.RowBatch` (the rows and their clicks, as
    :class:`~evcf.batches.Batches` makes them) or the dense rows (B, I) alone.
    evcf's one training step: ``evcf train`` (:func:`train_pass`) and ``evcf bench`` call it.  The
    forward pass runs under bf16 autocast when ``autocast``, and through :func:`compiled_loss` when
    ``compile``.  Given a ``RowBatch``, nothing here reads a value back from the device or copies
    one to it, so on a GPU the host queues the next step while this one runs.
    """
    x, clicks = batch if isinstance(batch, RowBatch) else (batch, None)
    loss = compiled_loss(model) if compile else model.loss
    if compile:  # a 0-d CPU tensor (a scalar argument of the kernels): a float would be compiled in
        beta = torch.tensor(beta, dtype=torch.float32)
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        parts = loss(x, beta, clicks)
    optimizer.zero_grad(set_to_none=True)
    parts.loss.backward()
    optimizer.step()
    return parts.loss.detach()


def train_pass(model: VAEModel, optimizer: torch.optim.Optimizer, batches: Iterable[RowBatch | torch.Tensor],
                cfg: TrainConfig, *, epoch: int, update_count: int, device: torch.device
                ) -> tuple[torch.Tensor, int, int, float]:
    """One :func:`train_step` per batch, β from the schedule before each.

    Returns (the sum of the batch losses, a float64 tensor on the device; the number of batches; the
    update count after the pass; the last β).  No host synchronisation: the caller reads the sum
    once, at the end of the epoch (:func:`train_epoch`).
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_batches, beta = 0, beta_at(cfg, epoch, update_count)
    for x in batches:
        beta = beta_at(cfg, epoch, update_count)
        total += train_step(model, optimizer, x, beta, autocast=cfg.precision == "bf16", compile=cfg.compile)
        update_count += 1
        n_batches += 1
    return total, n_batches, update_count, beta


def make_optimizers(model: VAEModel, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimizer (``cfg.optimizer``, ``cfg.lr``) per group of ``model.optimizer_groups()``."""
    return {name: make_optimizer(cfg.optimizer, params, cfg.lr, fused=cfg.fused_optimizer)
            for name, params in model.optimizer_groups().items()}


class _Optimizers:
    """Several optimizers stepped as one (a phase that steps more than one group)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def epoch_passes(model: VAEModel, train: DeviceCSR, generator: torch.Generator, batch_size: int, epoch: int
                 ) -> list[tuple[Phase, Batches]]:
    """Each pass of epoch ``epoch`` (``model.epoch_phases``) with its batches, in a fresh order each.

    The orders are drawn from ``generator`` on the host, one ``randperm`` per pass, and copied to the
    device here (built before the epoch, as :class:`~evcf.batches.Batches` wants).
    """
    return [(phase, Batches(train, torch.randperm(train.n_rows, generator=generator), batch_size))
            for phase in model.epoch_phases(epoch)]


def train_epoch(model: VAEModel, optimizers: dict[str, torch.optim.Optimizer],
                 passes: Iterable[tuple[Phase, Iterable[RowBatch | torch.Tensor]]], cfg: TrainConfig, *,
                 epoch: int, update_count: int, device: torch.device) -> tuple[torch.Tensor, int, int, float]:
    """One epoch as ``evcf train`` runs it: ``model.on_epoch_start``, then per pass ``begin_phase`` and
    :func:`train_pass` with the optimizer(s) of the pass's groups.  ``evcf bench`` times this.

    Returns what :func:`train_pass` returns, summed over the passes (the loss sum, the number of
    batches), with the update count after the epoch and the last β.  No host synchronisation.
    """
    model.on_epoch_start(epoch)
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_batches, beta = 0, beta_at(cfg, epoch, update_count)
    for phase, batches in passes:
        model.begin_phase(phase)
        stepped = [optimizers[g] for g in phase.groups]
        optimizer = stepped[0] if len(stepped) == 1 else _Optimizers(stepped)
        part, n, update_count, beta = train_pass(model, optimizer, batches, cfg, epoch=epoch,
                                                  update_count=update_count, device=device)
        total, n_batches = total + part, n_batches + n
    return total, n_batches, update_count, beta


def _own_checkpoint(ckpt_path: Path, identity: dict) -> dict | None:
    """The run's checkpoint if this run wrote it, else None (a checkpoint of another run is set aside).

    Loaded on the CPU whatever the run's device: RNG states must stay CPU tensors, and
    ``load_state_dict`` places parameters and optimizer buffers on the device of the model.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None and ckpt.get("identity") != identity:
        # another run wrote it (settings, split, code, torch or device differ): never reuse its
        # weights; keep it aside and train from scratch
        stale = ckpt_path.with_name("checkpoint.stale.pt")
        os.replace(ckpt_path, stale)
        log.warning("%s belongs to another run (differs in %s); moved to %s, training from scratch",
                    ckpt_path, "; ".join(identity_diff(ckpt.get("identity"), identity)), stale.name)
        ckpt = None
    return ckpt


class Interrupted(EvcfError):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) and checkpointed."""

    def __init__(self, problem: str, *, path: Path, signum: int) -> None:
        super().__init__(problem, path=path, fix="run the same command again: it resumes from the checkpoint")
        self.signum = signum


# a repeat of the same signal within this many seconds is the same request to stop, not a second one
SAME_REQUEST_S = 2.0


class _Signals:
    """While active: the first SIGINT or SIGTERM asks the loop to stop at its next safe point (the end
    of the epoch, or of the setting for a self-fitting model), where it checkpoints and raises
    :class:`Interrupted`; a second one stops at once (the last checkpoint is kept).  Installed only in
    the main thread (signal handlers cannot be set elsewhere), otherwise a no-op."""

    def __init__(self, say: Callable[[str], None], where: str) -> None:
        self.received: int | None = None
        self._received_at = 0.0
        self._say, self._where = say, where
        self._saved: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signum and time.monotonic() - self._received_at < SAME_REQUEST_S:
            return  # one Ctrl-C delivered twice: to the process group, and forwarded by Snakemake
        if self.received is not None:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        self.received, self._received_at = signum, time.monotonic()
        self._say(f"{signal.Signals(signum).name} received: {self._where} stops at the end of the current "
                  f"{'epoch' if 'epoch' in self._where else 'setting'} and writes a checkpoint "
                  f"(send it again to stop now, losing the work since the last checkpoint)")

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved = {}


class _Progress:
    """``progress.json`` in the run folder, rewritten after every epoch (``evcf status`` reads it)."""

    def __init__(self, out_dir: Path, *, dataset: str, model: str, seed: int, epochs: int) -> None:
        self.path, self.epochs = out_dir / PROGRESS, epochs
        self.base = {"dataset": dataset, "model": model, "seed": seed}
        self.seconds: list[float] = []

    def write(self, epoch: int, state: str, message: str = "", seconds: float | None = None) -> None:
        if seconds is not None:
            self.seconds = (self.seconds + [seconds])[-5:]
        write_json(self.path, {**self.base, "epoch": epoch, "epochs": self.epochs,
                               "epoch_seconds": (sum(self.seconds) / len(self.seconds)) if self.seconds else None,
                               "updated": time.time(), "state": state, "message": message})


def _fit_vae(model: VAEModel, data: SplitData, cfg: TrainConfig, *, model_name: str, identity: dict,
             seed: int, device: torch.device, out_dir: Path, stop_at: int | None = None,
             say: Callable[[str], None] = log.info, progress: _Progress | None = None) -> tuple[dict, list[dict], int, int, bool, int]:
    """Train with per-epoch validation, up to ``stop_at`` epochs when given (a budget of the halving
    search: the run is left resumable there).

    Returns (best state, history, best epoch, epochs run, finished: the schedule ended, by its
    last epoch or by early stopping; the epoch it resumed from, 0 for a fresh start).
    """
    progress = progress or _Progress(out_dir, dataset="", model=model_name, seed=seed, epochs=cfg.epochs)
    ckpt_path = out_dir / CHECKPOINT
    shuffle_gen = torch.Generator().manual_seed(seed)
    train = DeviceCSR(data.train, device)
    val_in = DeviceCSR(data.validation_tr, device)
    n_init = model.rows_to_init_from()
    if n_init:
        pick = torch.randperm(train.n_rows, generator=shuffle_gen)[:n_init]
        model.init_from_rows(train.dense(pick))
    model.to(device)
    if not model.uses_beta and cfg.beta_schedule != "none":
        raise EvcfError(f"{model_name} weighs its KL term itself; train.beta_schedule = {cfg.beta_schedule!r} "
                        "would be ignored", path="params.yaml",
                        fix=f"set model_params.{model_name}.train.beta_schedule: none")
    optimizers = make_optimizers(model, cfg)

    epoch, update_count, bad_epochs = 0, 0, 0
    best = {"score": -math.inf, "epoch": 0, "state": None}
    history: list[dict] = []
    ckpt = _own_checkpoint(ckpt_path, identity)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(ckpt["optimizers"][name])
        epoch, update_count, bad_epochs = ckpt["epoch"], ckpt["update_count"], ckpt["bad_epochs"]
        best, history = ckpt["best"], ckpt["history"]
        _set_rng_state(shuffle_gen, ckpt["rng"], device)
        say(f"{model_name}: resuming from epoch {epoch} of {cfg.epochs} ({ckpt_path})")

    saved_epoch, saved_at, resumed_from = (epoch if ckpt is not None else None), _clock(), epoch

    def save() -> None:
        nonlocal saved_epoch, saved_at
        _atomic_torch_save(
            {"identity": identity, "model": model.state_dict(),
             "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
             "epoch": epoch, "update_count": update_count, "bad_epochs": bad_epochs, "best": best,
             "history": history, "rng": _rng_state(shuffle_gen, device), "evcf_version": __version__},
            ckpt_path,
        )
        saved_epoch, saved_at = epoch, _clock()

    last = cfg.epochs if stop_at is None else min(cfg.epochs, stop_at)
    stopped_early = False
    with _Signals(say, f"{model_name} (epoch {epoch + 1})") as signals:
        while epoch < last:
            # EVCF's rule (experiment.py: `if e > early_stopping_epochs: break`): stop once MORE than
            # `patience` epochs in a row brought no improvement
            if cfg.patience and bad_epochs > cfg.patience:
                log.info("early stop after epoch %d: no validation improvement for %d epochs", epoch, bad_epochs)
                stopped_early = True
                break
            epoch += 1
            signals._where = f"{model_name} (epoch {epoch})"
            started = time.perf_counter()
            model.train()
            # each pass's order on the host (its row lengths size each batch without asking the device),
            # copied to the device once
            passes = epoch_passes(model, train, shuffle_gen, cfg.batch_size, epoch)
            total, n_batches, update_count, beta = train_epoch(model, optimizers, passes, cfg, epoch=epoch,
                                                                update_count=update_count, device=device)
            loss = float(total) / max(n_batches, 1)  # the epoch's one read-back from the device
            if not math.isfinite(loss):
                kept = (f"The last checkpoint (epoch {saved_epoch}) is kept" if saved_epoch is not None
                        else "No checkpoint was written yet")
                progress.write(epoch - 1, "failed", f"loss became {loss} at epoch {epoch}")
                raise TrainingDiverged(
                    f"{model_name}: loss became {loss} at epoch {epoch} (mean over its {n_batches} steps; "
                    f"β = {beta:.4g}); likely causes: learning rate {cfg.lr} too high, bf16 overflow, "
                    f"or a degenerate batch. {kept}",
                    path=ckpt_path,
                    fix="lower train.lr (or use precision fp32) and run again; it resumes from the checkpoint",
                )
            model.eval()
            val = evaluate(model.score, val_in, data.validation_te, batch_size=cfg.eval_batch_size,
                           device=device, metrics=(SELECT_BY,), with_clicks=True).per_user[SELECT_BY].mean()
            improved = val > best["score"]
            if improved:
                best = {"score": float(val), "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0 if improved or not _warmed_up(cfg, epoch, update_count) else bad_epochs + 1
            history.append({"epoch": epoch, "train_loss": loss, "beta": beta,
                            f"val_{SELECT_BY}": float(val), "seconds": time.perf_counter() - started})
            log.info("%s epoch %d: loss %.4f β %.4f val NDCG@100 %.4f%s", model_name, epoch,
                     history[-1]["train_loss"], beta, val, " *" if improved else "")
            if signals.received is not None:
                save()
                progress.write(epoch, "interrupted", f"stopped by {signal.Signals(signals.received).name} "
                               f"after epoch {epoch}; checkpoint written")
                raise Interrupted(f"{model_name}: stopped after epoch {epoch} of {cfg.epochs} by "
                                  f"{signal.Signals(signals.received).name}; checkpoint written",
                                  path=ckpt_path, signum=signals.received)
            progress.write(epoch, "running", seconds=history[-1]["seconds"])
            if _clock() - saved_at >= 60.0 * cfg.checkpoint_minutes:
                save()
    finished = stopped_early or epoch >= cfg.epochs or (cfg.patience and bad_epochs > cfg.patience)
    if saved_epoch != epoch:
        save()  # the last state, whatever the interval: a budget's end (the next rung resumes here), or
        # the schedule's end (a crash before the results are written re-scores from it); a finished
        # run deletes it once its results are written
    return best["state"], history, best["epoch"], epoch, bool(finished), resumed_from


def _fit_self_fitting(model: SelfFittingModel, data: SplitData, *, model_name: str, identity: dict, seed: int,
                     device: torch.device, eval_batch_size: int, checkpoint_minutes: float,
                     out_dir: Path, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Try every candidate setting; keep the best by validation NDCG@100.

    The search is checkpointed as it goes (at most every ``checkpoint_minutes``, after an interrupt,
    and at the end): the settings tried, their scores and the best state.  A stopped run started
    again skips the settings it already tried; each fit depends only on its setting, the seed and,
    for a warm-started path (SLIM), the previous fit, which the checkpoint keeps (``path``), so the
    result is the uninterrupted run's.  Returns (the history, the in-run search: the selected
    setting and the number of settings tried).
    """
    ckpt_path = out_dir / CHECKPOINT
    candidates = list(model.candidates())
    best_score, best_state, best_setting = -math.inf, None, None
    tried: list[dict] = []
    ckpt = _own_checkpoint(ckpt_path, identity)
    if ckpt is not None:
        tried, best_score = ckpt["tried"], ckpt["best_score"]
        best_state, best_setting = ckpt["state"], ckpt["setting"]
        model.load_path_state(ckpt.get("path"))  # a warm-started path (SLIM) goes on from where it was
        say(f"{model_name}: resuming its search after {len(tried)} of {len(candidates)} settings ({ckpt_path})")
    val_in = DeviceCSR(data.validation_tr, device)
    started, saved_at = time.perf_counter(), _clock()

    def save() -> None:
        nonlocal saved_at
        _atomic_torch_save({"identity": identity, "model": model_name, "state": best_state, "setting": best_setting,
                            "best_score": best_score, "tried": tried, "evcf_version": __version__,
                            "path": model.path_state()}, ckpt_path)
        saved_at = _clock()

    # a model that keeps its best epoch (CDAE) scores its epochs on the validation users itself
    selects = {"validation": (val_in, data.validation_te, eval_batch_size)} if model.selects_epochs else {}
    with _Signals(say, f"{model_name}'s search") as signals:
        for setting in candidates[len(tried):]:
            model.fit(data.train, seed=seed, device=device, **selects, **setting)
            val = evaluate(model.score, val_in, data.validation_te, batch_size=eval_batch_size,
                           device=device, metrics=(SELECT_BY,)).per_user[SELECT_BY].mean()
            log.info("%s %s: val NDCG@100 %.4f", model_name, setting or "(no settings)", val)
            tried.append({**setting, **model.selection, f"val_{SELECT_BY}": float(val)})
            if val > best_score:
                best_score, best_state, best_setting = float(val), model.state(), setting
            if signals.received is not None and len(tried) < len(candidates):
                save()
                raise Interrupted(f"{model_name}: stopped after {len(tried)} of {len(candidates)} settings by "
                                  f"{signal.Signals(signals.received).name}; checkpoint written",
                                  path=ckpt_path, signum=signals.received)
            if len(tried) < len(candidates) and _clock() - saved_at >= 60.0 * checkpoint_minutes:
                save()
    model.clear_cache()
    model.load_state(best_state)
    # what was tried and what won, so the selection can be audited from the run folder
    write_csv(out_dir / "tuning.csv",
              pd.DataFrame(tried).assign(selected=lambda f: f[f"val_{SELECT_BY}"] == best_score))
    history = [{"epoch": 0, "train_loss": None, "beta": None, f"val_{SELECT_BY}": best_score,
                "seconds": time.perf_counter() - started}]
    return history, {"selected": best_setting, "settings_tried": len(tried)}


def _compact(value: Any, dtype: str) -> Any:
    """``value`` (a state: tensors, arrays, sparse matrices, nested in dicts and lists) with its
    floating-point numbers in half precision when ``dtype`` is fp16; unchanged for fp32."""
    if dtype == "fp32":
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float16) if value.is_floating_point() else value.detach().cpu()
    if isinstance(value, np.ndarray):
        return value.astype(np.float16) if np.issubdtype(value.dtype, np.floating) else value
    if sp.issparse(value):  # scipy's sparse matrices have no float16: float32 at most
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    if isinstance(value, dict):
        return {k: _compact(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_compact(v, dtype) for v in value)
    return value


def _finish_folder(out_dir: Path, *, weights: str, state: Any, identity: dict, hparams: dict) -> None:
    """The disk policy of a finished run: the best weights as ``model.pt`` (``train.weights``), and
    no resumable state (checkpoint, partial record) left behind."""
    if weights != "none":
        _atomic_torch_save({"identity": identity, "hparams": hparams, "weights": weights,
                            "state": _compact(state, weights), "evcf_version": __version__}, out_dir / WEIGHTS_FILE)
    else:
        (out_dir / WEIGHTS_FILE).unlink(missing_ok=True)
    for name in (CHECKPOINT, PARTIAL):
        (out_dir / name).unlink(missing_ok=True)


def _previous_record(out_dir: Path, identity: dict) -> dict | None:
    """What an earlier execution of this same run left in its folder: a finished run's metrics.json,
    or the partial record of a run stopped at a budget; None when absent or another run's."""
    for name in ("metrics.json", PARTIAL):
        path = out_dir / name
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        history = out_dir / "history.csv"
        if record.get("identity") == identity and history.exists():
            return {"finished": name == "metrics.json", "metrics": record,
                    "history": pd.read_csv(history).to_dict("records")}
    return None


def _reuse(source: Path, out_dir: Path, identity: dict) -> dict | None:
    """Copy the finished run in ``source`` (a grid point) into ``out_dir`` when it is this very run
    (equal identity): the first seed's Table 1 run of a searched row is the winning point's run."""
    try:
        metrics = json.loads((source / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if metrics.get("identity") != identity or not all((source / n).exists() for n in ("history.csv", "per_user.csv")):
        return None
    for name in ("history.csv", "per_user.csv", "tuning.csv", WEIGHTS_FILE):
        if (source / name).exists():
            data = (source / name).read_bytes()
            write_atomic(out_dir / name, data)
    for name in (CHECKPOINT, PARTIAL, PROGRESS):
        (out_dir / name).unlink(missing_ok=True)
    metrics = {**metrics, "reused_from": str(source)}
    metrics.pop("tuning", None)  # the caller records this run's own
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def run(
    data: SplitData,
    *,
    dataset: str,
    model_name: str,
    hparams: dict[str, Any],
    train: dict[str, Any],
    seed: int,
    out_dir: Path,
    device: str = "auto",
    stop_at: int | None = None,
    reuse_from: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit, select on validation, evaluate on test, write the run's result files.

    A finished run writes ``metrics.json``, ``history.csv``, ``per_user.csv`` and (``train.weights``)
    ``model.pt``, and deletes its checkpoint.  ``stop_at``: train at most that many epochs (a rung of
    the halving search); a run that has not finished its schedule by then writes ``history.csv`` and
    ``partial.json`` and keeps its checkpoint, and the returned dict has ``finished: False``.  An
    earlier record of the same run in ``out_dir`` that reaches the budget is answered from, without
    training.  ``reuse_from``: a finished run folder that is this very run (equal identity) is copied
    instead of training again.  ``say`` receives the lines meant for the terminal (resuming,
    interrupts).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = say or log.info
    cfg = train_config(train)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing in evcf uses the global numpy stream; this guards third-party code
    model = build_model(model_name, data.n_items, **hparams)
    identity = run_identity(model=model_name, hparams=hparams,
                            train={k: v for k, v in asdict(cfg).items() if k not in NOT_IN_IDENTITY},
                            seed=seed if model.seeded else None,
                            data=data.fingerprint or matrices_fingerprint(data), device=dev.type)

    if reuse_from is not None:
        reused = _reuse(Path(reuse_from), out_dir, identity)
        if reused is not None:
            say(f"{model_name}: the same run as {reuse_from} (equal identity): its results are reused, not retrained")
            return reused
    # this same run, finished by an earlier execution (its results in place: a run folder Snakemake
    # did not clear, or a halving point), or stopped at a budget at least as far as this one
    previous = _previous_record(out_dir, identity)
    if previous is not None and previous["finished"] and (out_dir / "per_user.csv").exists():
        say(f"{model_name}: already finished in {out_dir} (same identity): nothing to train")
        if stop_at is None:
            return previous["metrics"]
        return {"finished": True, "history": previous["history"], "reused": True}
    if stop_at is not None and previous is not None and previous["history"][-1]["epoch"] >= stop_at:
        return {"finished": previous["finished"], "history": previous["history"], "reused": True}

    progress = _Progress(out_dir, dataset=dataset, model=model_name, seed=seed,
                         epochs=0 if isinstance(model, SelfFittingModel) else cfg.epochs)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # a result of another run never stays beside this one
    with numerics(cfg, dev):
        if isinstance(model, SelfFittingModel):
            progress.write(0, "running", "searching its settings")
            try:
                history, in_run_search = _fit_self_fitting(model, data, model_name=model_name, identity=identity,
                                                          seed=seed, device=dev, eval_batch_size=cfg.eval_batch_size,
                                                          checkpoint_minutes=cfg.checkpoint_minutes, out_dir=out_dir,
                                                          say=say)
            except Interrupted as stopped:
                progress.write(0, "interrupted", stopped.problem)
                raise
            best_epoch, epochs_run, finished, best_state, resumed_from = 0, 0, True, model.state(), 0
        else:
            in_run_search = None
            best_state, history, best_epoch, epochs_run, finished, resumed_from = _fit_vae(
                model, data, cfg, model_name=model_name, identity=identity, seed=seed, device=dev,
                out_dir=out_dir, stop_at=stop_at, say=say, progress=progress)
            if not finished:
                write_csv(out_dir / "history.csv", pd.DataFrame(history))
                write_json(out_dir / PARTIAL, {"identity": identity, "epoch": epochs_run, "finished": False})
                progress.write(epochs_run, "stopped", f"budget of {stop_at} epochs reached; resumable")
                return {"finished": False, "history": history, "reused": False, "resumed_from_epoch": resumed_from}
            model.load_state_dict(best_state)
            model.eval()
        test = evaluate(model.score, data.test_tr, data.test_te, batch_size=cfg.eval_batch_size, device=dev,
                        with_clicks=isinstance(model, VAEModel))
    per_user = test.per_user.assign(uid=data.test_uids[test.per_user["row"].to_numpy()])
    per_user = per_user[["uid", "recall@20", "recall@50", "ndcg@100"]]
    metrics = {
        "dataset": dataset,
        "model": model_name,
        "seed": seed,
        **summarize(per_user),
        "validation_ndcg@100": max(h[f"val_{SELECT_BY}"] for h in history),
        "n_test_users": int(len(per_user)),
        "best_epoch": int(best_epoch),
        "epochs_run": int(epochs_run),
        "resumed_from_epoch": int(resumed_from),  # 0: trained from the first epoch in this execution
        "wall_seconds": round(time.perf_counter() - started, 3),
        "device": dev.type if dev.type == "cpu" else f"{dev.type} ({torch.cuda.get_device_name(dev)})",
        "threads": torch.get_num_threads(),
        # how the numbers were computed: training precision, TF32 matmuls (CUDA only), compiled loss,
        # deterministic algorithms
        "precision": cfg.precision,
        "tf32": bool(cfg.tf32 and dev.type == "cuda"),
        "compile": bool(cfg.compile and isinstance(model, VAEModel)),  # torch.compile of the training loss
        "deterministic": cfg.deterministic,
        "seeded": bool(model.seeded),
        # a model that searches its own settings inside the run (tuning.csv): what it selected
        **({"in_run_search": in_run_search} if in_run_search is not None else {}),
        "versions": environment(),
        "identity": identity,
    }
    write_csv(out_dir / "per_user.csv", per_user)
    write_csv(out_dir / "history.csv", pd.DataFrame(history))
    write_json(out_dir / "metrics.json", metrics)
    _finish_folder(out_dir, weights=cfg.weights, state=best_state, identity=identity, hparams=hparams)
    progress.write(epochs_run, "done", f"test NDCG@100 {metrics['ndcg@100']:.4f}")
    return metrics
