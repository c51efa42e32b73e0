"""The device a run trains on, and the numeric settings it trains under.

:func:`resolve_device` refuses a CPU fallback when the job was given a GPU (``CUDA_VISIBLE_DEVICES``,
SLURM's GPU variables) that torch cannot see; :func:`numerics` sets TF32 and deterministic
algorithms for the length of a run.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ..errors import EvcfError
from .config import TrainConfig

__all__ = ["resolve_device", "numerics"]


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
