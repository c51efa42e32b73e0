"""The bench's clock and gauges: the GEMM rate, the spread of timed steps, peak memory, the machine.

Everything here imports only the standard library at the top (torch inside the functions that
need it), so that the CLI's parser loads it without loading torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["gemm_rate", "copy_rate", "job_startup", "sync", "spread", "load_average", "machine", "maxrss_mib", "PeakMemory", "rounded",
           "PRECISIONS", "precision_settings"]

# --precision of the bench and the GPU check: the training settings that each one means
PRECISIONS = {
    "fp32": {"precision": "fp32", "tf32": False},  # float32 everywhere, TF32 off
    "tf32": {"precision": "fp32", "tf32": True},  # float32 tensors, TF32 matrix products (CUDA)
    "bf16": {"precision": "bf16", "tf32": False},  # bf16 autocast of the forward pass
}


def precision_settings(name: str) -> dict[str, Any]:
    """The training settings (``train.precision``, ``train.tf32``) of the bench's precision ``name``."""
    from ..errors import EvcfError

    if name not in PRECISIONS:
        raise EvcfError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}", fix="use fp32, tf32 or bf16")
    return dict(PRECISIONS[name])


def gemm_rate(device: Any, dtype: Any, size: int, repeats: int = 5, *, tf32: bool = False) -> dict[str, Any]:
    """This machine's matrix-product rate: ``repeats`` timed (size×size)·(size×size) products after
    two untimed ones, each synchronised; FLOP/s = 2·size³ ÷ the median time.  ``tf32``: float32
    products with TF32 allowed (``torch.backends.cuda.matmul.allow_tf32``, restored afterwards)."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    times = []
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for i in range(repeats + 2):
            sync(device)
            started = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - started)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    rates = [2.0 * size**3 / t for t in times]
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "tf32": tf32,
            "gflops": statistics.median(rates) / 1e9, "gflops_min": min(rates) / 1e9,
            "gflops_max": max(rates) / 1e9}


def copy_rate(device: Any, mib: int = 256, repeats: int = 5) -> dict[str, Any]:
    """This machine's memory bandwidth as a copy sees it: ``repeats`` timed copies of a ``mib``-MiB
    float32 tensor into another after two untimed ones, each synchronised; bytes moved = 2 × the
    tensor (read once, written once), GB/s = that ÷ the median time.  The divisor of the bench's
    memory-traffic floor, as :func:`gemm_rate` is of the FLOP floor."""
    import torch

    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):
        sync(device)
        started = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    rates = [2.0 * src.nbytes / t for t in times]
    return {"mib": mib, "gbs": statistics.median(rates) / 1e9, "gbs_min": min(rates) / 1e9,
            "gbs_max": max(rates) / 1e9}


# what a training job imports before its first step (evcf train: the loop, the models, the data, evaluation)
JOB_IMPORTS = "import evcf.cli, evcf.training, evcf.models, evcf.data.sparse, evcf.evaluate, torch.optim"


def job_startup(repeats: int = 3) -> dict[str, Any]:
    """Seconds a fresh Python process takes to import what a training job imports (the median of
    ``repeats`` processes): the start-up that every job of the pipeline pays once (``evcf plan``
    counts it per job, which matters for short runs such as the quick start's)."""
    import subprocess

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", JOB_IMPORTS], capture_output=True, text=True)
        if proc.returncode != 0:  # a machine without the pipeline's packages (the GPU check's): said, not timed
            return {"seconds": None, "imports": JOB_IMPORTS, "error": proc.stderr.strip().splitlines()[-1:]}
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "min_s": min(times), "max_s": max(times), "imports": JOB_IMPORTS}


def sync(device: Any) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU, whose work is done when issued)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def spread(times: list[float]) -> dict[str, float]:
    """Median, quartiles (``statistics.quantiles``, exclusive method), min and max."""
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median": statistics.median(times), "q1": q1, "q3": q3, "min": min(times), "max": max(times)}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def machine(device: Any = None) -> dict[str, Any]:
    """The CPU, its cores, and the GPU of ``device`` (None on the CPU or without a device)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = None
    if device is not None and device.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(device)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "gpu": gpu,
            "summary": f"{cpu}, {usable} cores" + (f", {gpu}" if gpu else "")}


def _read_hwm_kib() -> int | None:
    with contextlib.suppress(OSError):
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        return int(found.group(1)) if found else None
    return None


def maxrss_mib() -> float:
    """This process's peak resident memory so far (``getrusage``), in MiB."""
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class PeakMemory:
    """Peak RSS per phase: VmHWM reset through ``/proc/self/clear_refs`` where the kernel allows;
    otherwise ``getrusage``'s peak so far (an upper bound on the phase's peak).  On CUDA also the
    peak of ``torch.cuda.max_memory_allocated`` (a key with ``cuda`` for ``rss``)."""

    def __init__(self, device: Any):
        self.device = device
        self.overall_mib = maxrss_mib()
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
        return hwm / 1024.0 if hwm is not None and self.can_reset else maxrss_mib()

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


def rounded(value: Any) -> Any:
    """Floats to 4 significant digits, through dicts and lists (the JSON's figures)."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value
