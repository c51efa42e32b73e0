"""``evcf plan``: what a selection will cost before anything runs.

Reads params.yaml (the one subcommand that does: it answers a question about the whole
configuration, as the Snakefile does) with ``--config`` overrides applied as Snakemake applies
them, and prints for each (dataset, model):

* the jobs of each step: search runs (``tune_point`` under ``tuning: full``, ``tune_rung`` under
  ``halving``), Table 1 runs (``train_model``; the first seed's run of a searched row is the
  winning point's run, reused: not counted as a run, but its job's start-up is);
* the epochs trained, under ``full`` and under ``halving``, whichever is selected (an upper bound:
  early stopping can end a run sooner; a recorded run of the dataset, :mod:`~evcf.plan.measured`,
  says how soon for the rows with patience);
* the hours on the chosen device, from ``evcf bench`` figures for the dataset's shape
  (``results/bench/*.json``; a generated dataset such as ``synthetic`` is benched on its own split:
  ``evcf bench --shape synthetic --params params.yaml``): epoch seconds (plus the validation pass,
  scaled to the dataset's held-out users) for gradient-trained models, each grid point at its own
  batch size and network (a figure measured at another batch size or depth is not used), the
  fit of one setting times the settings for the self-fitting ones; each job also pays its
  start-up (the bench's, or what the quickest job of an uncontended recorded run took) and one
  test evaluation.  On CUDA the epoch is the pipelined one
  (steps queued back to back, as training runs them), not the synchronised one.  Where no figure
  exists for that device, shape, model and settings, it says so (with the bench command that would
  measure it) and leaves it out; it never guesses;
* the disk that the finished runs keep (``train.weights``: the best weights) and what the same runs
  kept before this policy (one resumable checkpoint each: the weights, the best copy and the
  optimizer's two moment buffers).

The package, one job per file: :mod:`~evcf.plan.config` reads params.yaml with the overrides,
:mod:`~evcf.plan.figures` the bench figures, :mod:`~evcf.plan.cost` costs each row,
:mod:`~evcf.plan.format` prints the plan, :mod:`~evcf.plan.cli` is the command.
"""

from importlib import import_module
from typing import Any

__all__ = ["load_config", "bench_figures", "make_plan", "format_plan", "Figure", "Row"]

# each name from its module, imported when first used: the CLI's parser imports evcf.plan.cli, and
# its start-up should not load torch, numpy or pandas (tests/bench/test_bench.py checks it)
_HOME = {"load_config": "config", "bench_figures": "figures", "Figure": "figures", "make_plan": "cost",
         "Row": "cost", "format_plan": "format"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
