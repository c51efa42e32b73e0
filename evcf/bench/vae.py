"""The VAE rows' training step, timed as ``evcf train`` takes it (:func:`evcf.training.train_step`).

:func:`bench_vae` times one model at one recipe: its step's FLOPs (:func:`step_flops`), the step's
latency (each step synchronised, against the reference style's), optionally its pipelined
throughput (many steps queued, one synchronisation at the end: what an epoch of training gets on
a GPU), and the evaluation of the held-out users.  Imports the standard library only at the top.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator

from ..errors import EvcfError
from .timer import PeakMemory, load_average, spread, sync
from .traffic import step_counts

__all__ = ["step_flops", "batch_stream", "bench_vae", "bench_phases", "set_floor", "gemm_window", "PIPELINED_ROUNDS"]

PIPELINED_ROUNDS = 5  # the pipelined steps are timed in this many rounds (the spread of their step time)


def _split(total: int, parts: int) -> list[range]:
    """``range(total)`` cut into at most ``parts`` runs of near-equal length (none empty)."""
    parts = max(1, min(parts, total))
    return [range(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


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

    from ..training import train_step

    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, x, beta, autocast=autocast)
    return int(counter.get_total_flops())


def batch_stream(train: Any, batch_size: int, seed: int, dense_on_host: bool) -> Iterator[Any]:
    """Batches as training takes them, epoch after epoch (a fresh seeded order each epoch)."""
    import torch

    from ..batches import Batches

    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from Batches(train, torch.randperm(train.n_rows, generator=gen), batch_size,
                           dense_on_host=dense_on_host)


def time_evaluation(model: Any, data: dict[str, Any], cfg: Any, *, device: Any, memory: PeakMemory,
                    into: dict[str, Any]) -> None:
    """Time one evaluation of the held-out users with ``model`` in eval mode (``eval_s``, its peak memory)."""
    from ..evaluate import evaluate

    with memory.phase(into, "eval_peak_rss_mib"):
        model.eval()
        sync(device)
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=cfg.eval_batch_size, device=device,
                 with_clicks=True)
        sync(device)
        into.update(eval_s=time.perf_counter() - started, eval_batch_size=cfg.eval_batch_size)


def bench_phases(name: str, hparams: dict, cfg: Any, data: dict[str, Any], *, steps: int, warmup: int, seed: int,
                 device: Any, memory: PeakMemory) -> dict[str, Any]:
    """A model whose epoch is several passes (``epoch_phases``: RecVAE's encoder and decoder passes),
    timed as the loop trains it: its optimizers (``training.make_optimizers``), ``on_epoch_start``,
    then per pass ``begin_phase`` and synchronised :func:`~evcf.training.train_step` calls with that
    pass's optimizer(s).  The epoch is the sum over the passes of the median step × the steps of a
    pass; ``epoch_flops`` sums each pass's matrix-product FLOPs the same way (the caller turns it
    into the floor: :func:`set_floor`).  No reference path (the
    authors' code is not ours to run) and no pipelined rounds.
    """
    import torch

    from ..models import build_model
    from ..training import beta_at, make_optimizers, train_step

    train = data["train"]
    batch = min(cfg.batch_size, train.n_rows)
    steps_per_pass = math.ceil(train.n_rows / batch)
    beta = beta_at(cfg, max(1, cfg.warmup_epochs), cfg.total_anneal_steps)
    autocast = cfg.precision == "bf16"
    torch.manual_seed(seed)
    out: dict[str, Any] = {"batch_size": batch, "optimizer": cfg.optimizer, "fused_optimizer": cfg.fused_optimizer,
                           "lr": cfg.lr, "precision": cfg.precision, "tf32": cfg.tf32, "hparams": hparams,
                           "steps_per_epoch": None, "load_average_start": load_average()}
    with memory.phase(out, "peak_rss_mib"):
        model = build_model(name, train.shape[1], **hparams).to(device).train()
        optimizers = make_optimizers(model, cfg)
        batches = batch_stream(train, batch, seed, dense_on_host=False)
        model.on_epoch_start(1)
        phases = list(model.epoch_phases(1))
        passes = []
        for phase in phases:
            model.begin_phase(phase)
            stepped = [optimizers[g] for g in phase.groups]
            if len(stepped) != 1:
                raise EvcfError(f"bench: pass {phase.name!r} of {name} steps {len(stepped)} optimizer groups",
                                fix="the bench times passes that step one group each")
            flops, traffic = step_counts(model, stepped[0], next(batches), beta, autocast)
            for _ in range(warmup - 1):
                train_step(model, stepped[0], next(batches), beta, autocast=autocast)
            times = []
            for _ in range(steps):
                sync(device)
                started = time.perf_counter()
                train_step(model, stepped[0], next(batches), beta, autocast=autocast)
                sync(device)
                times.append(time.perf_counter() - started)
            passes.append({"phase": phase.name, "groups": list(phase.groups), "step_flops": flops, "step_bytes": traffic,
                           "step_s": spread(times)["median"], "step_spread_s": spread(times), "step_times_s": times})
    time_evaluation(model, data, cfg, device=device, memory=memory, into=out)
    epoch_s = sum(p["step_s"] for p in passes) * steps_per_pass
    out.update(passes=passes, steps_per_epoch=steps_per_pass * len(passes), steps_per_pass=steps_per_pass,
               step_flops=sum(p["step_flops"] for p in passes) // len(passes),
               epoch_flops=sum(p["step_flops"] for p in passes) * steps_per_pass,
               step_bytes=sum(p["step_bytes"] for p in passes) // len(passes),
               epoch_bytes=sum(p["step_bytes"] for p in passes) * steps_per_pass,
               step_s=epoch_s / (steps_per_pass * len(passes)), epoch_s=epoch_s,
               users_per_s=train.n_rows / epoch_s, reference_epoch_s=None, speedup=None,
               load_average_end=load_average())
    return out


def set_floor(out: dict[str, Any], gemm: dict[str, Any], bandwidth: dict[str, Any] | None = None) -> None:
    """The epoch's FLOP floor, ``epoch_flops`` ÷ the GEMM rate ``gemm["gflops"]``, and "× floor" of
    each path the model's entry timed (ours, pipelined, reference).  ``run_bench`` gives the rate
    measured around the model's own steps (:func:`gemm_window`), so a machine whose speed drifts
    during a bench divides each model's times by its own window's rate.

    Beside it, with ``bandwidth`` (:func:`~evcf.bench.timer.copy_rate`), the memory-traffic floor:
    ``epoch_bytes`` (:func:`step_traffic`) ÷ the copy rate, and "× traffic floor" of each path.  A
    step is bound by the larger of the two floors (``bound``); on a GPU the FLOP floor alone is far
    below a VAE step, whose elementwise work and optimizer passes move memory."""
    floor = out["epoch_flops"] / (gemm["gflops"] * 1e9)
    out.update(gemm_gflops=gemm["gflops"], gemm_window=gemm, floor_epoch_s=floor, x_floor=out["epoch_s"] / floor)
    for path in ("pipelined", "reference"):
        if out.get(f"{path}_epoch_s") is not None:
            out[f"{path}_x_floor"] = out[f"{path}_epoch_s"] / floor
    if bandwidth is None or out.get("epoch_bytes") is None:
        return
    traffic = out["epoch_bytes"] / (bandwidth["gbs"] * 1e9)
    out.update(copy_gbs=bandwidth["gbs"], traffic_floor_epoch_s=traffic, x_traffic_floor=out["epoch_s"] / traffic,
               bound="memory traffic" if traffic > floor else "FLOPs")
    for path in ("pipelined", "reference"):
        if out.get(f"{path}_epoch_s") is not None:
            out[f"{path}_x_traffic_floor"] = out[f"{path}_epoch_s"] / traffic


def gemm_window(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The GEMM rate of a model's window: the mean of the rates measured just before and just after
    its bench (each the median of its products), both kept so a drift shows."""
    return {"gflops": (before["gflops"] + after["gflops"]) / 2, "before_gflops": before["gflops"],
            "after_gflops": after["gflops"]}


def bench_vae(name: str, hparams: dict, reference_hparams: dict, cfg: Any, data: dict[str, Any], *,
              steps: int, warmup: int, reference_steps: int, seed: int, device: Any, memory: PeakMemory,
              pipelined_steps: int = 0, reference_cfg: Any = None,
              reference_batches: str = "host") -> dict[str, Any]:
    """Memory phases first (each path alone), then the timed steps of both paths interleaved.

    1. the reference style alone: one step of a fresh model (its peak memory);
    2. ours alone: a fresh model, its first step counted by :func:`step_flops`, then the rest of
       the warm-up (peak memory), kept for timing;
    3. evaluation of the held-out users with that model (time, peak memory);
    4. a fresh reference-style model and its warm-up, then the timed steps of both, alternating,
       each step synchronised before and after (its latency);
    5. with ``pipelined_steps``: ours again, that many steps in :data:`PIPELINED_ROUNDS` rounds,
       each round's steps issued back to back with one synchronisation at its end (the host queues
       work ahead of the device, as in training); the round's time ÷ its steps is one sample of the
       pipelined step time.  On a CPU the two agree (its work is done when issued); on a GPU the
       difference is the time the device waited for the host between synchronised steps.
    A timed step is building the batch plus :func:`~evcf.training.train_step`.

    The reference path trains with ``reference_cfg`` (default: ``cfg`` with the optimizer unfused,
    as the reference codes step it) and the model options ``reference_hparams``, on batches densified
    on the host (``reference_batches="host"``, the reference codes' way) or built on the device as
    ours (``"device"``: today's evcf step against a changed one, e.g. new defaults).
    """
    import torch

    from ..batches import RowBatch
    from ..models import build_model
    from ..optim import make_optimizer
    from ..training import beta_at, train_step

    train = data["train"]
    batch = min(cfg.batch_size, train.n_rows)
    autocast = cfg.precision == "bf16"
    rcfg = reference_cfg if reference_cfg is not None else dataclasses.replace(cfg, fused_optimizer=False)
    # β where its annealing ends (the cost of a step does not depend on it)
    beta = beta_at(cfg, max(1, cfg.warmup_epochs), cfg.total_anneal_steps)
    steps_per_epoch = math.ceil(train.n_rows / batch)
    out: dict[str, Any] = {"batch_size": batch, "optimizer": cfg.optimizer, "fused_optimizer": cfg.fused_optimizer,
                           "lr": cfg.lr, "beta": beta,
                           "precision": cfg.precision, "tf32": cfg.tf32, "hparams": hparams,
                           "reference_hparams": reference_hparams, "reference_batches": reference_batches,
                           "reference_train": {"optimizer": rcfg.optimizer, "fused_optimizer": rcfg.fused_optimizer,
                                               "lr": rcfg.lr, "precision": rcfg.precision},
                           "steps_per_epoch": steps_per_epoch,
                           "load_average_start": load_average()}

    def fresh(reference: bool) -> tuple[Any, Any, Iterator[Any], bool]:
        """(model, optimizer, batches, autocast) of a path, the model freshly seeded."""
        torch.manual_seed(seed)
        model = build_model(name, train.shape[1], **{**hparams, **(reference_hparams if reference else {})})
        model.to(device).train()
        c = rcfg if reference else cfg
        return (model, make_optimizer(c.optimizer, model.parameters(), c.lr, fused=c.fused_optimizer),
                batch_stream(train, batch, seed, dense_on_host=reference and reference_batches == "host"),
                c.precision == "bf16")

    def step(model: Any, optimizer: Any, batches: Iterator[Any], path_autocast: bool) -> None:
        train_step(model, optimizer, next(batches), beta, autocast=path_autocast)

    if reference_steps:
        with memory.phase(out, "reference_peak_rss_mib"):
            step(*fresh(reference=True))
    with memory.phase(out, "peak_rss_mib"):
        model, optimizer, batches, _ = fresh(reference=False)
        out["step_flops"], out["step_bytes"] = step_counts(model, optimizer, next(batches), beta, autocast)
        for _ in range(warmup - 1):
            step(model, optimizer, batches, autocast)
    time_evaluation(model, data, cfg, device=device, memory=memory, into=out)
    model.train()

    paths = {"ours": (model, optimizer, batches, autocast)}
    if reference_steps:
        paths["reference"] = fresh(reference=True)
        for _ in range(warmup):
            step(*paths["reference"])
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for i in range(max(steps, reference_steps)):
        for kind in (("ours", "reference") if i % 2 == 0 else ("reference", "ours")):
            if i < (steps if kind == "ours" else reference_steps):
                sync(device)
                started = time.perf_counter()
                step(*paths[kind])
                sync(device)
                times[kind].append(time.perf_counter() - started)

    rounds: list[float] = []  # pipelined: seconds per step of each round
    if pipelined_steps:
        per_round = [len(r) for r in _split(pipelined_steps, PIPELINED_ROUNDS)]
        for n in per_round:
            sync(device)
            started = time.perf_counter()
            for _ in range(n):
                step(model, optimizer, batches, autocast)
            sync(device)
            rounds.append((time.perf_counter() - started) / n)
        piped = spread(rounds)
        out.update(pipelined_steps=pipelined_steps, pipelined_round_steps=per_round,
                   pipelined_step_s=piped["median"], pipelined_step_spread_s=piped, pipelined_round_step_s=rounds,
                   pipelined_steps_per_s=1.0 / piped["median"], pipelined_users_per_s=batch / piped["median"],
                   pipelined_epoch_s=piped["median"] * steps_per_epoch)

    del paths, model, optimizer, batches
    ours = spread(times["ours"])
    out.update(step_s=ours["median"], step_spread_s=ours, step_times_s=times["ours"],
               epoch_s=ours["median"] * steps_per_epoch, users_per_s=batch / ours["median"],
               epoch_flops=out["step_flops"] * steps_per_epoch, epoch_bytes=out["step_bytes"] * steps_per_epoch,
               reference_epoch_s=None, speedup=None)
    if reference_steps:
        ref = spread(times["reference"])
        pairs = [r / o for r, o in zip(times["reference"], times["ours"])]  # neighbours in time
        # eval-mode losses of the two fresh models on one batch built both ways: no dropout, no
        # sampling, so equal up to rounding unless the reference's model options change the model
        losses = []
        for reference in (False, True):
            model, _, batches, _ = fresh(reference)
            with torch.no_grad():
                rows = next(batches)  # a RowBatch (ours) or the dense rows (the reference style)
                x, clicks = rows if isinstance(rows, RowBatch) else (rows, None)
                losses.append(float(model.eval().loss(x, beta, clicks).loss))
            del model, batches
        out.update(reference_step_s=ref["median"], reference_step_spread_s=ref,
                   reference_step_times_s=times["reference"], reference_epoch_s=ref["median"] * steps_per_epoch,
                   speedup=ref["median"] / ours["median"], speedup_paired=spread(pairs),
                   check_loss=losses[0], reference_check_loss=losses[1],
                   check_loss_rel_diff=abs(losses[0] - losses[1]) / max(abs(losses[1]), 1e-12))
    out["load_average_end"] = load_average()
    return out


