"""The VAE loop: mini-batch steps, epochs, per-epoch validation, best-epoch selection, resumable.

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
import logging
import math
import signal
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import __version__
from ..batches import Batches, DeviceCSR, RowBatch
from ..data.sparse import SplitData
from ..errors import EvcfError
from ..evaluate import evaluate
from ..models.base import Phase, VAEModel
from ..optim import make_optimizer
from ..schedules import beta_evcf, beta_liang
from .config import SELECT_BY, TrainConfig
from .folder import CHECKPOINT, _atomic_torch_save, _clock, _own_checkpoint, _Progress, _rng_state, _set_rng_state
from .signals import Interrupted, _Signals

__all__ = ["TrainingDiverged", "beta_at", "compiled_loss", "train_step", "train_pass", "make_optimizers",
           "epoch_passes", "train_epoch"]

log = logging.getLogger(__name__)


class TrainingDiverged(EvcfError):
    """The loss became NaN or infinite."""


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
