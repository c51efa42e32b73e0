"""Training: ``run(...)`` is what ``evcf train`` calls.

It fits a model on the training users, picks the epoch (or, for self-fitting models, the setting)
with the best validation NDCG@100, scores the test users with it and writes ``metrics.json``,
``history.csv`` and ``per_user.csv``.  The package's modules, one job each:

* :mod:`.config`: the training settings (:class:`TrainConfig`);
* :mod:`.device`: the device (GPU checks, SLURM's variables) and the numeric settings;
* :mod:`.loop`: the VAE loop (:func:`train_step`, the one step of evcf, up to ``_fit_vae``);
* :mod:`.self_fitting`: a self-fitting model's search over its settings;
* :mod:`.folder`: the run folder (checkpoint, progress, reuse of an earlier execution, disk policy);
* :mod:`.signals`: stopping on SIGINT or SIGTERM at a safe point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..data.sparse import SplitData
from ..evaluate import evaluate, summarize
from ..identity import environment, matrices_fingerprint, run_identity
from ..io import write_csv, write_json
from ..models import build_model
from ..models.base import SelfFittingModel, VAEModel
from .config import NOT_IN_IDENTITY, SELECT_BY, WEIGHTS, TrainConfig, train_config
from .device import numerics, resolve_device
from .folder import CHECKPOINT, PARTIAL, PROGRESS, WEIGHTS_FILE, _finish_folder, _previous_record, _Progress, _reuse
from .loop import (TrainingDiverged, _fit_vae, _warmed_up, beta_at, compiled_loss, epoch_passes, make_optimizers,
                   train_epoch, train_pass, train_step)
from .self_fitting import _fit_self_fitting
from .signals import Interrupted

__all__ = ["TrainConfig", "TrainingDiverged", "Interrupted", "run", "beta_at", "resolve_device", "train_config",
           "train_step", "train_pass", "make_optimizers", "epoch_passes", "train_epoch", "numerics",
           "compiled_loss", "CHECKPOINT", "PARTIAL", "PROGRESS", "WEIGHTS_FILE", "WEIGHTS", "NOT_IN_IDENTITY",
           "SELECT_BY"]

log = logging.getLogger(__name__)


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
