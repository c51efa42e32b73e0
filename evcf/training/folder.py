"""The run folder: what a run writes besides its results, and what it finds there from an earlier execution.

The resumable checkpoint (written atomically, with the random generators' state) and whether it is
this run's (:func:`_own_checkpoint`: equal identity); ``progress.json``; the record of an earlier
execution of the same run (:func:`_previous_record`) or of an equal run elsewhere (:func:`_reuse`);
and the disk policy of a finished run (:func:`_finish_folder`: ``model.pt`` kept as
``train.weights`` says, the checkpoint and the partial record deleted).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import __version__
from ..identity import identity_diff
from ..io import write_atomic, write_json

__all__ = ["CHECKPOINT", "PARTIAL", "PROGRESS", "WEIGHTS_FILE"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"  # resumable training state; deleted when the run finishes
PARTIAL = "partial.json"  # a run stopped at a halving budget: its identity and epoch (with history.csv)
PROGRESS = "progress.json"  # epoch, ETA and state, rewritten every epoch (evcf status reads it)
WEIGHTS_FILE = "model.pt"  # a finished run's best weights (train.weights)
_clock = time.monotonic  # checkpoint intervals are counted on it (tests replace it in loop and self_fitting)


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
