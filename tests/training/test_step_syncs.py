"""A training step never waits for the device and never copies to it: no host synchronisation and
no host-to-device copy inside an epoch or an evaluation batch.  Every VAE row's step, and CDAE's
(its own loop: evcf/models/cdae.py), are checked.

On a GPU, reading a value back (``.item()``, ``float()``, a tensor in an ``if``), or an operation
whose output size depends on the data (``nonzero``, ``bincount``, ``repeat_interleave`` without
``output_size``, boolean-mask indexing), makes the host wait for every queued kernel.  CUDA's
``torch.cuda.set_sync_debug_mode`` catches them only on a GPU (tests/test_cuda.py), so here, on the
CPU, the Python entry points of those operations are wrapped and every call made directly from
evcf's code during an epoch is recorded.  Calls from torch's own Python code (the optimizers read
their CPU-side step counters) are not syncs on a GPU and are not recorded.

Host-to-device copies (each one blocks the host on a GPU when its source is pageable memory) are
counted by running the same epochs and evaluations on torch's ``meta`` device, a device without
data: every tensor that goes from the CPU to it passes through the dispatcher as a ``_to_copy`` or
``copy_`` from a CPU tensor (caught by a ``TorchDispatchMode``, wherever the call comes from:
evcf, torch's optimizers, the metrics), or through ``torch.tensor``/``as_tensor`` with a device
(wrapped here, as they bypass the dispatcher).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pytest
import torch

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from evcf.batches import Batches, DeviceCSR
from evcf.data.shapes import synthetic_matrix
from evcf.models import build_model
from evcf.optim import make_optimizer
from evcf.training import epoch_passes, make_optimizers, train_config, train_pass, train_epoch, train_step

EVCF = Path(__file__).resolve().parents[2] / "evcf"
MODELS = EVCF / "models"
N_ITEMS = 60
SMALL = {  # every VAE model, small; the optimizer of the paper each comes from
    "mult-dae": ({"hidden_size": 16}, "adam"),
    "mult-vae": ({"hidden_size": 16, "latent_size": 6}, "adam"),
    "mult-vae-gated": ({"hidden_size": 16, "latent_size": 6}, "adam-normgrad"),
    "mult-vae-evcf": ({"hidden_size": 16, "latent_size": 6}, "adam-normgrad"),
    "vamp": ({"hidden_size": 16, "latent_size": 6, "n_pseudo": 5}, "adam-normgrad"),
    "hvamp": ({"hidden_size": 16, "z1_size": 6, "z2_size": 5, "n_pseudo": 5, "num_layers": 2}, "adam-normgrad"),
    "hvamp-gated": ({"hidden_size": 16, "z1_size": 6, "z2_size": 5, "n_pseudo": 5, "num_layers": 2},
                    "adam-normgrad"),
    "recvae": ({"hidden_size": 16, "latent_size": 6}, "adam"),  # its epoch: 3 encoder passes, 1 decoder pass
}


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _no_output_size(*args, **kwargs) -> bool:
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


ALWAYS = None
# (owner, name, condition): calls that make the host wait for the device
SYNCS = [
    *((torch.Tensor, name, ALWAYS) for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__",
                                               "cpu", "numpy", "nonzero", "bincount", "unique", "masked_select")),
    *((torch, name, ALWAYS) for name in ("nonzero", "argwhere", "bincount", "unique", "masked_select")),
    (torch.Tensor, "repeat_interleave", lambda self, *a, **k: _no_output_size(self, *a, **k)),
    (torch, "repeat_interleave", _no_output_size),
    (torch.Tensor, "__getitem__", lambda self, index: _bool_index(index)),
    (torch.Tensor, "__setitem__", lambda self, index, value: _bool_index(index)),
]


@contextlib.contextmanager
def host_syncs(counted: Callable[[Path], bool]) -> Iterator[list[str]]:
    """Record ``name file:line`` for every call in :data:`SYNCS` made from a file ``counted`` accepts."""
    calls: list[str] = []

    def wrap(real: Callable, name: str, condition: Callable | None) -> Callable:
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1)
            path = Path(caller.f_code.co_filename)
            if counted(path) and (condition is None or condition(*args, **kwargs)):
                calls.append(f"{name} {path.relative_to(EVCF.parent)}:{caller.f_lineno}")
            return real(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        for owner, name, condition in SYNCS:
            patch.setattr(owner, name, wrap(getattr(owner, name), name, condition))
        yield calls


def outside_models(path: Path) -> bool:
    """evcf's loop, batches and optimizers (the models' files are checked separately below)."""
    return path.is_relative_to(EVCF) and not path.is_relative_to(MODELS)


def anywhere_in_evcf(path: Path) -> bool:
    return path.is_relative_to(EVCF)


@pytest.fixture(scope="module")
def train() -> DeviceCSR:
    return DeviceCSR(synthetic_matrix(120, N_ITEMS, 1500, seed=4))


def epoch_under_watch(name: str, train: DeviceCSR, counted: Callable[[Path], bool], precision: str = "fp32"
                      ) -> tuple[list[str], torch.Tensor]:
    hparams, optimizer_name = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, **hparams)
    model.train()
    cfg = train_config({"batch_size": 40, "precision": precision, "optimizer": optimizer_name, "lr": 1e-3,
                        "beta_schedule": "liang" if model.uses_beta else "none", "total_anneal_steps": 10})
    optimizers = make_optimizers(model, cfg)
    # built outside the watch, as once per epoch in the loop: each pass's order goes to the device here
    passes = epoch_passes(model, train, torch.Generator().manual_seed(1), cfg.batch_size, epoch=1)
    with host_syncs(counted) as calls:
        # the loop's epoch: the model's hooks, then each of its passes (one for all but RecVAE)
        total, n_batches, updates, _ = train_epoch(model, optimizers, passes, cfg, epoch=1, update_count=0,
                                                    device=train.device)
        train_step(model, next(iter(optimizers.values())),
                   train.batch([3, 4, 5], n_nonzeros=int(train.row_nnz_host[3:6].sum())), 0.1)
    assert (n_batches, updates) == (3 * len(passes), 3 * len(passes)) and total.dtype == torch.float64
    return calls, total


def test_the_counter_sees_what_it_should():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    with host_syncs(lambda path: True) as calls:
        x.sum().item()
        bool(x.any())
        torch.nonzero(x)
        torch.repeat_interleave(torch.arange(2), torch.tensor([1, 2]))
        torch.repeat_interleave(torch.arange(2), torch.tensor([1, 2]), output_size=3)  # not counted
        x[x > 0]
    assert [c.split()[0] for c in calls] == ["item", "__bool__", "nonzero", "repeat_interleave", "__getitem__"]


@pytest.mark.parametrize("name", list(SMALL))
def test_an_epoch_of_the_loop_never_waits_for_the_device(train, name):
    """train_epoch, train_pass, train_step, the batches and the optimizers: no host synchronisation at all."""
    calls, total = epoch_under_watch(name, train, outside_models)
    assert calls == []
    assert torch.isfinite(total)  # read here, once, as the loop reads it at the end of the epoch


def test_a_bf16_epoch_never_waits_for_the_device(train):
    calls, _ = epoch_under_watch("mult-vae", train, outside_models, precision="bf16")
    assert calls == []


@pytest.mark.parametrize("name", list(SMALL))
def test_a_whole_step_with_the_models_never_waits_for_the_device(train, name):
    """The models' own code too: their sparse first layer reads the clicks the batch brings."""
    calls, _ = epoch_under_watch(name, train, anywhere_in_evcf)
    assert calls == []


@pytest.mark.parametrize("name", list(SMALL))
def test_evaluation_waits_for_the_device_only_for_the_final_copies(train, name):
    """Batches of held-out users are scored (the model's own code included: it gets the clicks)
    and ranked without a sync; each metric's column is copied to the host once, at the end,
    however many batches there are."""
    from evcf.evaluate import METRICS, evaluate

    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, **SMALL[name][0])
    heldout = synthetic_matrix(120, N_ITEMS, 600, seed=5)
    with host_syncs(anywhere_in_evcf) as calls:
        result = evaluate(model.score, train, heldout, batch_size=25, with_clicks=True)  # 5 batches
    assert len(result.per_user) == 120
    # the clicks change where the first layer reads its inputs from, not the scores
    pd.testing.assert_frame_equal(result.per_user, evaluate(model.score, train, heldout, batch_size=25).per_user)
    assert len(calls) == 2 * len(METRICS)  # .cpu() and .numpy() of each metric's column
    assert len({c.split()[1] for c in calls}) == 1, calls  # all on evaluate's final line
    assert {c.split()[0] for c in calls} == {"cpu", "numpy"}


# --------------------------------------------------------------------------------------------------
# Host-to-device copies, counted on the meta device

META = torch.device("meta")


def _where() -> str:
    """The innermost frame of evcf's code (or of this test) on the stack, as ``file:line``."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if path.is_relative_to(EVCF) or path == Path(__file__):
            return f"{path.name}:{frame.lineno}"
    return "?"


class HostCopies(TorchDispatchMode):
    """Records every copy from a CPU tensor into a tensor on another device (``to_device``), and
    every copy back (``to_host``: answered with zeros, as a meta tensor has no values)."""

    def __init__(self):
        super().__init__()
        self.to_device: list[str] = []
        self.to_host: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func is aten._to_copy.default:
            source, target = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            if source.type == "cpu" and target.type != "cpu":
                self.to_device.append(f"to {_where()}")
            elif source.type == "meta" and target.type == "cpu":
                self.to_host.append(f"to {_where()}")
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        elif func is aten.copy_.default and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.to_device.append(f"copy_ {_where()}")
        else:  # an operation that reads a CPU tensor (more than a 0-d scalar) into a device result
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(t.device.type != "cpu" for t in tensors) and any(t.device.type == "cpu" and t.dim() > 0
                                                                    for t in tensors):
                self.to_device.append(f"{func} {_where()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_copies() -> Iterator[HostCopies]:
    """:class:`HostCopies`, plus ``torch.tensor``/``as_tensor``/``asarray`` given a device other than
    the CPU (they build the tensor on the host and copy it below the dispatcher)."""
    mode = HostCopies()

    def wrap(real: Callable, name: str) -> Callable:
        def wrapper(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                mode.to_device.append(f"torch.{name} {_where()}")
            return real(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        for name in ("tensor", "as_tensor", "asarray"):
            patch.setattr(torch, name, wrap(getattr(torch, name), name))
        with mode:
            yield mode


def test_the_copy_counter_sees_what_it_should():
    on_device = torch.zeros(3, device=META)
    with host_copies() as copies:
        torch.ones(3).to(META)
        on_device.copy_(torch.ones(3))
        torch.tensor([1.0, 2.0], device=META)
        with pytest.raises(RuntimeError):  # a CPU tensor read by a device operation (an error on meta)
            on_device + torch.ones(3)
        on_device * 2.0 + torch.tensor(1.0)  # a 0-d CPU tensor: a scalar argument, not a copy
        torch.arange(3, device=META) + 1  # made on the device: nothing copied
        host = on_device.cpu()
    assert [c.split()[0] for c in copies.to_device] == ["to", "copy_", "torch.tensor", "aten.add.Tensor"]
    assert len(copies.to_host) == 1 and host.shape == (3,)


# the models' optimizers as the loop builds them; torch's fused Adam refuses the meta device, so
# plain Adam is checked in its unfused form (its fused kernel keeps its step count on the device)
def _optimizers(name: str) -> list[tuple[str, bool]]:
    optimizer = SMALL[name][1]
    return [(optimizer, False)] if optimizer == "adam" else [(optimizer, True), (optimizer, False)]


@pytest.fixture(scope="module")
def train_meta(train) -> DeviceCSR:
    return DeviceCSR(train.matrix, META)


@pytest.mark.parametrize("name", list(SMALL))
def test_an_epoch_copies_nothing_to_the_device(train_meta, name):
    """train_pass and train_step, with the models and the optimizers: no host-to-device copy."""
    for optimizer_name, fused in _optimizers(name):
        torch.manual_seed(0)
        model = build_model(name, N_ITEMS, **SMALL[name][0]).to(META).train()
        optimizer = make_optimizer(optimizer_name, model.parameters(), 1e-3, fused=fused)
        cfg = train_config({"batch_size": 40, "beta_schedule": "liang", "total_anneal_steps": 10})
        # built outside the watch, as once per epoch in the loop: the order goes to the device here
        epochs = [Batches(train_meta, torch.randperm(120, generator=torch.Generator().manual_seed(e)), 40)
                  for e in range(2)]
        with host_copies() as copies:
            for epoch, batches in enumerate(epochs, start=1):  # the first allocates the optimizer's state
                total, n_batches, _, _ = train_pass(model, optimizer, batches, cfg, epoch=epoch,
                                                     update_count=3 * (epoch - 1), device=META)
        assert n_batches == 3 and total.device == META
        assert copies.to_device == [], (optimizer_name, fused, copies.to_device)
        assert copies.to_host == []


@pytest.mark.parametrize("name", list(SMALL))
def test_evaluation_copies_to_the_device_only_while_setting_up(train_meta, name):
    """Scoring and ranking a batch copies nothing over: 1 batch or 5 of the same users make the
    same copies (the held-out rows and the users, once), and each metric's column comes back once."""
    from evcf.evaluate import METRICS, evaluate

    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, **SMALL[name][0]).to(META).eval()
    heldout = synthetic_matrix(120, N_ITEMS, 600, seed=5)

    def copies(batch_size: int) -> HostCopies:
        with host_copies() as seen:
            result = evaluate(model.score, train_meta, heldout, batch_size=batch_size, device=META,
                              with_clicks=True)
        assert len(result.per_user) == 120
        return seen

    one, five = copies(120), copies(25)
    assert len(five.to_device) == len(one.to_device) <= 8, five.to_device
    assert {c.split()[1].split(":")[0] for c in five.to_device} == {"batches.py"}  # DeviceCSR, Batches
    assert len(five.to_host) == len(one.to_host) == len(METRICS)  # each column's .cpu(), once


# --------------------------------------------------------------------------------------------------
# CDAE: its own loop (evcf/models/cdae.py), under the same two checks as the VAE rows

CDAE_SMALL = {"hidden_size": 8, "batch_size": 40, "epochs": 1, "weight_decays": [0.1], "fold_in_steps": 2}


def cdae_epoch(train_csr, device: torch.device, variant: str) -> tuple[object, list[tuple[torch.Tensor, int]]]:
    """A CDAE fit's trainer on ``device`` and one epoch's batches (built outside the watch, as the
    loop builds each epoch's order once)."""
    model = build_model("cdae", N_ITEMS, **CDAE_SMALL, variant=variant)
    trainer = model.start_fit(train_csr, seed=1, device=device, weight_decay=0.1)
    return trainer, list(trainer.epoch())


@pytest.mark.parametrize("variant", ["liang2018", "wu2016"])
def test_a_cdae_epoch_never_waits_for_the_device(train, variant):
    """CDAE.fit's inner loop: its step (network, user vectors, both optimizers, corruption and the
    sampled negatives of Wu's variant), the epoch's loss summed on the device as fit sums it."""
    trainer, batches = cdae_epoch(train.matrix, torch.device("cpu"), variant)
    assert len(batches) == 3
    with host_syncs(anywhere_in_evcf) as calls:
        total = torch.zeros((), dtype=torch.float64)
        for rows, clicks in batches:
            total += trainer.step(rows, clicks).double() * rows.numel()
    assert calls == []
    assert torch.isfinite(total)


@pytest.mark.parametrize("variant", ["liang2018", "wu2016"])
def test_a_cdae_epoch_copies_nothing_to_the_device(train, variant):
    """The same steps on the meta device: no host-to-device copy, nothing read back.  (The
    trainer is built on the CPU and moved: torch makes no generator for the meta device, whose
    operations draw nothing anyway.)"""
    trainer, _ = cdae_epoch(train.matrix, torch.device("cpu"), variant)
    trainer.device, trainer.step_gen = META, None
    trainer.model.network.to(META)  # the same Parameter objects: Adam's references hold
    trainer.users = trainer.opt_users.table = trainer.users.to(META)
    trainer.opt_users.exp_avg, trainer.opt_users.exp_avg_sq = (trainer.opt_users.exp_avg.to(META),
                                                               trainer.opt_users.exp_avg_sq.to(META))
    trainer.rows_of = DeviceCSR(train.matrix, META)
    batches = list(trainer.epoch())
    with host_copies() as copies:
        for rows, clicks in batches:
            loss = trainer.step(rows, clicks)
    assert loss.device == META
    assert copies.to_device == [] and copies.to_host == [], copies.to_device
