"""The fit of a self-fitting model: its in-run search over its settings, resumable."""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .. import __version__
from ..batches import DeviceCSR
from ..data.sparse import SplitData
from ..evaluate import evaluate
from ..io import write_csv
from ..models.base import SelfFittingModel
from .config import SELECT_BY
from .folder import CHECKPOINT, _atomic_torch_save, _clock, _own_checkpoint
from .signals import Interrupted, _Signals


log = logging.getLogger(__name__)


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
