"""A run's training settings: :class:`TrainConfig` (``train:`` in params.yaml), checked when built."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import EvcfError

__all__ = ["TrainConfig", "train_config", "WEIGHTS", "NOT_IN_IDENTITY", "SELECT_BY"]

SELECT_BY = "ndcg@100"  # the validation metric a run selects its epoch or setting by
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
    # ours (issue 14): a checkpoint holds the weights and every optimizer's state, large at ML-20M's
    # shape, and an epoch on a GPU is short, so write one when this many minutes have passed since
    # the last (and after the last epoch); 0 = after every epoch.  Not part of the run's identity: it does not change the numbers.
    checkpoint_minutes: float = 10.0
    # ours: the optimizer step as torch's fused Adam kernel (for Adam and AdamNormGrad): one pass over
    # each parameter instead of a chain of elementwise operations, the same update up to float
    # rounding (tests/training/test_optim.py); off = the elementwise form of the reference codes
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
