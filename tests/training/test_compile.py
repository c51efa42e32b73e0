"""train.compile: the training loss through torch.compile, one graph, a few static shapes.

On a CPU the graphs are traced with the ``aot_eager`` backend (dynamo's capture and autograd's
joint graph, run with eager kernels): that checks what compiling depends on (one graph with no
break, the padded click lists giving a few shapes, the same loss and gradients) in seconds.
Inductor itself (``COMPILE_BACKEND``, the option's backend) builds C++ kernels on a CPU, about two
minutes for the smallest model on this project's 2-core machine, so it runs on CUDA only
(tests/test_cuda.py::test_compiled_training_on_cuda_matches_eager).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_synthetic_split
from evcf import training
from evcf.batches import Batches, DeviceCSR
from evcf.data.shapes import synthetic_matrix
from evcf.data.sparse import load_split
from evcf.models import build_model
from evcf.optim import make_optimizer
from evcf.training import loop, train_step

N_ITEMS = 60


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name,optimizer", [("mult-vae", "adam"), ("vamp", "adam-normgrad")])
def test_a_compiled_step_takes_the_eager_steps_in_few_graphs(name, optimizer):
    """Two epochs of 40-user batches (click counts vary; the last batch is shorter), in eval mode
    so that no random draw differs: the compiled and the eager step give the same losses and
    parameters up to rounding, with one graph per (batch size, click bucket) whatever β is."""
    from torch._dynamo.utils import counters

    data = DeviceCSR(synthetic_matrix(110, N_ITEMS, 1400, seed=4))
    hparams = {"hidden_size": 16, "latent_size": 6, **({"n_pseudo": 5} if name == "vamp" else {})}
    runs, shapes = [], set()
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_model(name, N_ITEMS, **hparams).eval()
        opt = make_optimizer(optimizer, model.parameters(), 1e-3)
        counters.clear()
        losses = []
        for epoch in range(2):
            for k, batch in enumerate(Batches(data, torch.randperm(110, generator=torch.Generator().manual_seed(epoch)),
                                              40)):
                shapes.add((batch.x.shape[0], batch.clicks.batch_row.numel()))
                losses.append(train_step(model, opt, batch, 0.0 if epoch == k == 0 else 0.1 * (k + 1),
                                         compile=compile))
        runs.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
        graphs = counters["stats"]["unique_graphs"]
    (eager_losses, eager_params), (compiled_losses, compiled_params) = runs
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert 2 <= len(shapes) <= 4  # two batch sizes, one or two click buckets
    assert graphs == len(shapes), (graphs, shapes)  # β is an input, not compiled in


def test_train_compile_is_applied_and_recorded_in_metrics_json(tmp_path, monkeypatch):
    processed = write_synthetic_split(tmp_path / "toy", 40, n_users=300, n_items=80, mean_items=15,
                                      n_topics=4, seed=5)
    calls = []
    real = loop.compiled_loss
    monkeypatch.setattr(loop, "compiled_loss", lambda model: calls.append(1) or real(model))
    train = {"epochs": 2, "batch_size": 64, "total_anneal_steps": 10, "checkpoint_minutes": 0}
    for compile in (False, True):
        metrics = training.run(load_split(processed), dataset="toy", model_name="mult-vae",
                               hparams={"hidden_size": 16, "latent_size": 6}, train={**train, "compile": compile},
                               seed=1, out_dir=tmp_path / f"compile-{compile}", device="cpu")
        written = json.loads((tmp_path / f"compile-{compile}" / "metrics.json").read_text())
        assert metrics["compile"] is written["compile"] is compile
        assert (len(calls) > 0) is compile  # every step of the compiled run, none of the other
