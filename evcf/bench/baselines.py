"""``evcf bench`` for the models that fit themselves: WMF, SLIM, CDAE, and popularity/EASE.

Each one calls the model's own training code on the bench's synthetic matrix, at the first point
of the model's grid (``candidates()``), and says which of its figures are measured and which are
extrapolated (keys ending in ``_extrapolated``, the formula next to them in ``*_formula``):

* **WMF** (:class:`evcf.models.wmf.WMF`): ``WMF.fit`` run with ``sweeps`` ALS iterations instead
  of the recipe's.  ``implicit`` times each sweep (the user step and the item step) and reports it
  to the callback that ``WMF.fit`` passes on (``sweep_callback``).  The fit at the recipe's iteration count is
  the measured fit's setup (the measured fit minus its sweeps) plus iterations × the median sweep.
* **SLIM** (:func:`evcf.models.slim.slim_weights`): a full fit is one elastic net per item, far
  too slow for a bench at ML-20M (20,108 of them), so a seeded sample of ``items`` items is fitted
  by the real solver, one thread, in a few chunks, at every setting of the grid in the order
  ``SLIM.candidates()`` gives (the regularisation path): from zero at each setting (cold) and, with
  ``warm_start``, from the previous setting's W (warm), as ``evcf train`` runs it.  Items differ
  in cost (popular items take longer), so the grid is extrapolated from the *mean* seconds per
  item, not the median: grid = settings × the CSC conversion + mean s / item along the path ×
  items / threads (the threads assumed to scale perfectly; each chunk also pays the copy of X's
  values that a fit's thread pays once, a slight overestimate); ``fit_s_extrapolated`` is that
  over the settings.  The warm path's W is compared with the cold one's at every setting
  (``warm_vs_cold_max_rel_diff``: both are solutions up to the stopping rule).  W's memory: the
  mean non-zeros per column × items × (8 + 4) bytes (float64 values, int32 row indices).
  Evaluation is not timed: it needs the whole W.
* **CDAE** (:class:`evcf.models.cdae.CDAETrainer`): the step that ``CDAE.fit`` takes, ``warmup``
  untimed then ``steps`` timed; the epoch is the median step × the steps of an epoch and the fit
  is the config's epochs of that.
* **popularity, EASE**: one whole fit (EASE above :data:`EASE_MAX_ITEMS` items is skipped).

The search of the whole grid, as ``evcf train`` runs it (a fit and a validation of the held-out
users per point), is extrapolated as points × (fit + evaluation).  WMF's points are all costed at
the first point's factors (100 in the default grid, the smaller of its two), so with that grid its
figure is a lower bound.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any, Iterator

from .timer import PeakMemory, load_average, spread, sync

__all__ = ["bench_baseline", "bench_wmf", "bench_slim", "bench_cdae", "bench_self_fitting", "SLIM_CHUNKS"]

EASE_MAX_ITEMS = 5_000  # above this, EASE's I×I inverse is skipped (time it with `evcf train`)
EASE_BENCH_LAMBDA = 500.0  # Steck 2019's choice for ML-20M
SLIM_CHUNKS = 8  # SLIM's sampled items are timed in this many chunks (the spread of s / item)


def bench_baseline(name: str, hparams: dict[str, Any], cfg: Any, data: dict[str, Any], *, steps: int, warmup: int,
                   seed: int, device: Any, memory: PeakMemory, wmf_sweeps: int, slim_items: int) -> dict[str, Any]:
    """The bench entry of model ``name`` (one that fits itself) with hyperparameters ``hparams``;
    ``cfg`` is its recipe's training settings (the evaluation batch size)."""
    if name == "wmf":
        return bench_wmf(hparams, cfg, data, sweeps=wmf_sweeps, seed=seed, device=device, memory=memory)
    if name == "slim":
        return bench_slim(hparams, data, items=slim_items, seed=seed, memory=memory)
    if name == "cdae":
        return bench_cdae(hparams, cfg, data, steps=steps, warmup=warmup, seed=seed, device=device, memory=memory)
    return bench_self_fitting(name, hparams, data, device, memory)


def _timed_evaluation(model: Any, data: dict[str, Any], batch_size: int, device: Any, memory: PeakMemory,
                      out: dict[str, Any]) -> None:
    """Evaluate the held-out users with ``model.score``: ``eval_s`` and ``eval_peak_rss_mib``."""
    from ..evaluate import evaluate

    with memory.phase(out, "eval_peak_rss_mib"):
        sync(device)
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=batch_size, device=device)
        sync(device)
        out.update(eval_s=time.perf_counter() - started, eval_batch_size=batch_size)


def _grid(out: dict[str, Any], points: int, fit_s: float, eval_s: float | None) -> None:
    out["grid_points"] = points
    out["grid_s_extrapolated"] = points * (fit_s + (eval_s or 0.0))
    out["grid_formula"] = ("grid_points x (fit_s_extrapolated + eval_s)" if eval_s is not None
                           else "grid_points x fit_s_extrapolated (evaluation not timed)")


# ==================================================================================================
# WMF


def bench_wmf(hparams: dict[str, Any], cfg: Any, data: dict[str, Any], *, sweeps: int, seed: int, device: Any,
              memory: PeakMemory) -> dict[str, Any]:
    """``WMF.fit`` with ``sweeps`` ALS iterations at the first grid point, then the fold-in of the
    held-out users (module docstring)."""
    import torch

    from ..models import build_model

    train = data["train"].matrix
    recipe = build_model("wmf", train.shape[1], **hparams)
    points = list(recipe.candidates())
    setting, iterations = points[0], recipe.config.iterations
    model = build_model("wmf", train.shape[1], **{**hparams, "iterations": sweeps})
    out: dict[str, Any] = {"setting": setting, "iterations": iterations, "sweeps_timed": sweeps,
                           "use_cg": recipe.config.use_cg, "threads": torch.get_num_threads(),
                           "load_average_start": load_average()}
    seconds: list[float] = []  # implicit's own timing of each sweep, through WMF.fit's callback
    with memory.phase(out, "peak_rss_mib"):
        started = time.perf_counter()
        model.fit(train, seed=seed, device=device, sweep_callback=lambda _i, elapsed, _loss: seconds.append(elapsed),
                  **setting)
        measured = time.perf_counter() - started
    if len(seconds) != sweeps:
        raise RuntimeError(f"bench: expected {sweeps} ALS sweep times from implicit, got {len(seconds)}")
    sweep = spread(seconds)
    fit_s = measured - sum(seconds) + iterations * sweep["median"]
    out.update(sweep_s=sweep["median"], sweep_spread_s=sweep, sweep_times_s=seconds, epoch_s=sweep["median"],
               measured_fit_s=measured, fit_s_extrapolated=fit_s,
               fit_formula="measured_fit_s - sum(sweep_times_s) + iterations x sweep_s")
    _timed_evaluation(model, data, cfg.eval_batch_size, device, memory, out)
    _grid(out, len(points), fit_s, out["eval_s"])
    out["grid_note"] = (f"every point costed at the first point's {setting['factors']} factors; "
                        "points with more factors cost more")
    out["note"] = f"s / epoch: one ALS sweep ({sweeps} timed); ~fit: {iterations} sweeps, {setting['factors']} factors"
    out["load_average_end"] = load_average()
    return out


# ==================================================================================================
# SLIM


def bench_slim(hparams: dict[str, Any], data: dict[str, Any], *, items: int, seed: int,
               memory: PeakMemory) -> dict[str, Any]:
    """The real per-item solver along the model's whole grid (its regularisation path) on a seeded
    sample of ``items`` items, single-threaded, in :data:`SLIM_CHUNKS` chunks: from zero at every
    setting (cold) and, with ``warm_start``, each setting from the previous one's W (warm).  The
    full fit, the grid and W's memory are extrapolated (module docstring)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from ..models import build_model
    from ..models.slim import slim_weights

    train = data["train"].matrix
    n_items = train.shape[1]
    model = build_model("slim", n_items, **hparams)
    c = model.config
    points = list(model.candidates())
    threads = torch.get_num_threads()
    sample = np.random.default_rng(seed).choice(n_items, size=min(items, n_items), replace=False)
    chunks = np.array_split(sample, min(SLIM_CHUNKS, sample.size))
    styles = ("cold", "warm") if c.warm_start else ("cold",)
    out: dict[str, Any] = {"setting": points[0], "path": points, "max_iter": c.max_iter, "tol": c.tol,
                           "penalty_units": c.penalty_units, "warm_start": c.warm_start,
                           "hparams": {"warm_start": c.warm_start, "penalty_units": c.penalty_units},
                           "items_fitted": int(sample.size), "chunk_items": [int(chunk.size) for chunk in chunks],
                           "threads": threads, "epoch_s": None, "load_average_start": load_average()}
    # seconds[style][k][chunk]: the chunk's items at the path's k-th setting
    seconds = {style: [[0.0] * len(chunks) for _ in points] for style in styles}
    nnz: list[int] = []
    worst = 0.0  # the largest |W_warm - W_cold| / max |W_cold| along the path
    worst_objective = 0.0  # the largest |f(w_warm) - f(w_cold)| / f(w_cold) of an item's problem
    importlib.import_module("sklearn.linear_model")  # the solver's first import, not an item's cost
    with memory.phase(out, "peak_rss_mib"):
        started = time.perf_counter()
        x = sp.csc_matrix(train, dtype=np.float64)  # what slim_weights does first, once per fit
        x.sort_indices()
        out["setup_s"] = time.perf_counter() - started
        for b, chunk in enumerate(chunks):
            previous = None  # the warm path's last W (float32, as SLIM.fit keeps it)
            for k, setting in enumerate(points):
                fitted = {}
                for style in styles:
                    started = time.perf_counter()
                    fitted[style] = slim_weights(x, setting["l1"], setting["l2"], items=chunk, threads=1,
                                                 max_iter=c.max_iter, tol=c.tol, penalty_units=c.penalty_units,
                                                 start=previous if style == "warm" else None)
                    seconds[style][k][b] = time.perf_counter() - started
                if "warm" in fitted:
                    previous = fitted["warm"].astype(np.float32)
                    scale = abs(fitted["cold"]).max()
                    if scale > 0:
                        worst = max(worst, float(abs(fitted["warm"] - fitted["cold"]).max() / scale))
                    cold_obj = _slim_objectives(x, fitted["cold"], chunk, setting, c.penalty_units)
                    warm_obj = _slim_objectives(x, fitted["warm"], chunk, setting, c.penalty_units)
                    worst_objective = max(worst_objective, float(np.max(np.abs(warm_obj - cold_obj) / cold_obj)))
                if k == 0:
                    nnz.extend(np.diff(fitted["cold"].indptr)[chunk].tolist())
    used = "warm" if c.warm_start else "cold"
    first = [seconds["cold"][0][b] / chunk.size for b, chunk in enumerate(chunks)]  # s / item, first setting
    path_item_s = {style: sum(map(sum, seconds[style])) / sample.size for style in styles}  # s / item, whole path
    grid_fit_s = out["setup_s"] * len(points) + path_item_s[used] * n_items / threads
    nnz_per_item = float(np.mean(nnz))
    out.update(item_s_mean=sum(seconds["cold"][0]) / sample.size, item_spread_s=spread(first),
               path_item_s=path_item_s,
               path_setting_s={style: [sum(row) for row in seconds[style]] for style in styles},
               grid_fit_s_extrapolated=grid_fit_s,
               grid_fit_formula=f"grid_points x setup_s + path_item_s[{used}] x items / threads",
               # the mean fit of one setting along the path (what `evcf plan` multiplies by the settings)
               fit_s_extrapolated=grid_fit_s / len(points), fit_formula="grid_fit_s_extrapolated / grid_points",
               w_nnz_per_item=nnz_per_item, w_nnz_per_item_max=int(max(nnz)),
               w_mib_extrapolated=nnz_per_item * n_items * (8 + 4) / 2**20,
               thread_copy_mib=x.nnz * 8 / 2**20, eval_s=None)
    if c.warm_start:
        out["warm_start_speedup"] = path_item_s["cold"] / path_item_s["warm"]
        out["warm_vs_cold_max_rel_diff"] = worst
        out["warm_vs_cold_objective_max_rel_diff"] = worst_objective
    _grid(out, len(points), out["fit_s_extrapolated"], None)
    speed = (f"; warm starts {out['warm_start_speedup']:.2f}x faster than cold (objectives within "
             f"{worst_objective:.1e} of cold's, W within {worst:.1e})" if c.warm_start else "")
    out["note"] = (f"{sample.size:,} of {n_items:,} items fitted along the {len(points)}-setting path, "
                   f"{path_item_s[used]:.3g} s / item ({used}){speed}; ~grid = s / item x items / {threads} "
                   f"threads; W ~{out['w_mib_extrapolated']:,.0f} MiB (first setting); eval not timed (needs all of W)")
    out["load_average_end"] = load_average()
    return out


def _slim_objectives(x: Any, w: Any, items: Any, setting: dict[str, float], penalty_units: str) -> Any:
    """SLIM's objective  ½ ‖x_j − X w_j‖² + (l2 / 2) ‖w_j‖² + l1 Σ w_j  of each item j in ``items``
    (w_j ≥ 0 and w_jj = 0, so X w_j needs no zeroed column), in Ning–Karypis units; ``sklearn``
    units are those penalties times the users (evcf/models/slim.py)."""
    import numpy as np

    scale = x.shape[0] if penalty_units == "sklearn" else 1.0
    l1, l2 = setting["l1"] * scale, setting["l2"] * scale
    cols = w[:, items]  # (I, n) the items' coefficients
    residual = x[:, items].toarray() - (x @ cols).toarray()  # (U, n)
    squares = np.asarray(cols.multiply(cols).sum(axis=0)).ravel()
    return 0.5 * (residual ** 2).sum(axis=0) + 0.5 * l2 * squares + l1 * np.asarray(cols.sum(axis=0)).ravel()


# ==================================================================================================
# CDAE


def bench_cdae(hparams: dict[str, Any], cfg: Any, data: dict[str, Any], *, steps: int, warmup: int, seed: int,
               device: Any, memory: PeakMemory) -> dict[str, Any]:
    """``CDAETrainer.step`` (the step of ``CDAE.fit``): warm-up, evaluation, then the timed steps."""
    from ..models import build_model

    train = data["train"].matrix
    model = build_model("cdae", train.shape[1], **hparams)
    c = model.config
    points = list(model.candidates())
    setting = points[0]
    batch = min(c.batch_size, train.shape[0])
    steps_per_epoch = math.ceil(train.shape[0] / c.batch_size)
    out: dict[str, Any] = {"setting": setting, "batch_size": batch, "optimizer": "adam", "lr": c.lr,
                           "epochs": c.epochs, "steps_per_epoch": steps_per_epoch, "hparams": hparams,
                           "load_average_start": load_average()}

    def endless(trainer: Any) -> Iterator[tuple[Any, int]]:
        while True:
            yield from trainer.epoch()

    with memory.phase(out, "peak_rss_mib"):
        trainer = model.start_fit(train, seed=seed, device=device, **setting)
        batches = endless(trainer)
        for _ in range(warmup):
            trainer.step(*next(batches))
        sync(device)
    model.network.eval()
    _timed_evaluation(model, data, cfg.eval_batch_size, device, memory, out)
    model.network.train()
    times = []
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        trainer.step(*next(batches))
        sync(device)
        times.append(time.perf_counter() - started)
    step = spread(times)
    epoch_s = step["median"] * steps_per_epoch
    fit_s = epoch_s * c.epochs
    out.update(step_s=step["median"], step_spread_s=step, step_times_s=times, epoch_s=epoch_s,
               users_per_s=batch / step["median"], fit_s_extrapolated=fit_s,
               fit_formula="step_s x steps_per_epoch x epochs")
    _grid(out, len(points), fit_s, out["eval_s"])
    out["note"] = f"~fit: {c.epochs} epochs"
    out["load_average_end"] = load_average()
    return out


# ==================================================================================================
# Popularity and EASE


def bench_self_fitting(name: str, hparams: dict[str, Any], data: dict[str, Any], device: Any,
                      memory: PeakMemory) -> dict[str, Any]:
    """One whole fit and an evaluation (EASE with λ = :data:`EASE_BENCH_LAMBDA`)."""
    from ..evaluate import evaluate
    from ..models import build_model

    train = data["train"].matrix
    out: dict[str, Any] = {"epoch_s": None, "users_per_s": None, "reference_epoch_s": None, "speedup": None}
    if name == "ease" and train.shape[1] > EASE_MAX_ITEMS:
        out["note"] = (f"skipped: EASE's fit is an {train.shape[1]:,}^2 inverse "
                       f"(above {EASE_MAX_ITEMS:,} items the bench leaves it to `evcf train`)")
        return out
    with memory.phase(out, "peak_rss_mib"):
        model = build_model(name, train.shape[1], **hparams)
        started = time.perf_counter()
        model.fit(train, device=device, **({"lambda": EASE_BENCH_LAMBDA} if name == "ease" else {}))
        out["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        evaluate(model.score, data["eval_in"], data["eval_out"], batch_size=2000, device=device)
        sync(device)
        out["eval_s"] = time.perf_counter() - started
    out["note"] = "closed form: one whole fit"
    return out
