"""The bench figures that ``evcf plan`` costs runs with: read from ``evcf bench`` JSONs
(:func:`bench_figures`), and the one measured at a run's own settings picked (:func:`pick`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "bench_figures", "pick", "COST_NEUTRAL"]

# model settings that change no operation's size or count (a weight in the loss): a figure measured
# with another value still costs the run
COST_NEUTRAL = frozenset({
    "model.gamma",  # RecVAE's KL weight
    "model.likelihood",  # one pass over the (B, I) logits either way; the figure's note names the other
})



@dataclass
class Figure:
    """One model's measured cost on one device and shape (from an ``evcf bench`` JSON)."""

    source: str
    epoch_s: float | None = None  # gradient-trained: one training epoch
    eval_s: float | None = None  # the validation pass, for eval_users users
    eval_users: int | None = None
    fit_s: float | None = None  # self-fitting: one setting's fit
    recorded: dict = field(default_factory=dict)  # settings the figure was measured with
    note: str = ""  # the bench's note (e.g. why it skipped the model)
    startup_s: float | None = None  # a job's process start-up on that machine (the bench's job_startup)
    items: int | None = None  # the items of the bench's matrix (a generated dataset's own)
    pipelined: bool = False  # epoch_s is the pipelined epoch (a CUDA figure)


def bench_figures(folder: Path) -> dict[tuple[str, str, str], list[Figure]]:
    """(device type, shape name, model) → the figures of every bench JSON in ``folder``."""
    figures: dict[tuple[str, str, str], list[Figure]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            device, shape = str(data["device"]).split(":")[0], data["shape"]["name"]
            models = data["models"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue  # not a bench result (the GPU check writes other JSON files here too)
        for model, m in models.items():
            if not isinstance(m, dict):
                continue
            recorded = {k: m[k] for k in ("batch_size", "fused_optimizer", "precision", "optimizer") if k in m}
            recorded.update({f"model.{k}": v for k, v in (m.get("hparams") or {}).items()})
            # on CUDA an epoch of training is the pipelined one: the host queues steps while the
            # device runs (a synchronised step also pays the host's time)
            pipelined = device == "cuda" and m.get("pipelined_epoch_s") is not None
            figure = Figure(source=path.name, epoch_s=m["pipelined_epoch_s"] if pipelined else m.get("epoch_s"),
                            eval_s=m.get("eval_s"), eval_users=data.get("eval_users"), recorded=recorded,
                            # a fit too long to time is extrapolated; a short one (popularity) timed whole
                            fit_s=m.get("fit_s_extrapolated", m.get("fit_s")), note=str(m.get("note") or ""),
                            startup_s=(data.get("job_startup") or {}).get("seconds"), pipelined=pipelined,
                            items=data["shape"].get("items"))
            figures.setdefault((device, shape, model), []).append(figure)
    return figures


def pick(figures: list[Figure], hparams: dict, train: dict) -> tuple[Figure | None, str]:
    """The figure measured with the run's own settings where one exists; else why none fits."""
    if not figures:
        return None, "no figure"
    wanted = {**{k: train.get(k) for k in ("batch_size", "fused_optimizer", "precision", "optimizer")},
              **{f"model.{k}": v for k, v in hparams.items()}}

    def mismatches(figure: Figure) -> list[str]:
        return [k for k, v in figure.recorded.items() if k in wanted and wanted[k] is not None and wanted[k] != v]

    def matches(figure: Figure) -> int:
        return sum(1 for k, v in figure.recorded.items() if k in wanted and wanted[k] == v)

    def sizes(figure: Figure) -> list[str]:  # settings that change what a step computes
        return [k for k in mismatches(figure) if k == "batch_size" or (k.startswith("model.") and k not in COST_NEUTRAL)]

    # no setting that sizes the step differs; then fewest other differences; then the figure that
    # recorded most settings (a figure from before a setting existed says nothing about it)
    ranked = sorted(figures, key=lambda f: (len(sizes(f)), len(mismatches(f)), -matches(f)))
    best = ranked[0]
    if sizes(best):  # another batch size, network or search: its cost says nothing about this one
        return None, "no figure at " + ", ".join(f"{k.removeprefix('model.')}={wanted[k]}" for k in sizes(best))
    other = mismatches(best)
    return best, (f"measured with other {', '.join(other)}" if other else "")
