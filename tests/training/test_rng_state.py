"""The checkpoint's random state: the run's own device only.

A CPU run must not touch CUDA (on a GPU node it would open a CUDA context on every visible GPU),
and a CUDA run saves and restores its own device's generator, so a resume on a node with fewer
GPUs (or with the run's GPU at another index) finds the state it needs.  CUDA is replaced here by
a recorder, so this runs on any machine; tests/test_cuda.py resumes on a real GPU.
"""

from __future__ import annotations

import pytest
import torch

from evcf.training import folder


class FakeCuda:
    """Records the torch.cuda RNG calls made; fails on every other one."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.states: dict[int, torch.Tensor] = {0: torch.tensor([1], dtype=torch.uint8),
                                                1: torch.tensor([2], dtype=torch.uint8)}

    def get_rng_state(self, device):
        self.calls.append(("get", torch.device(device)))
        return self.states[torch.device(device).index or 0].clone()

    def set_rng_state(self, state, device):
        self.calls.append(("set", torch.device(device), int(state[0])))

    def __getattr__(self, name):
        raise AssertionError(f"torch.cuda.{name} used")


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(folder.torch, "cuda", fake)
    return fake


def test_a_cpu_run_never_touches_cuda(fake_cuda):
    gen = torch.Generator().manual_seed(3)
    state = folder._rng_state(gen, torch.device("cpu"))
    assert set(state) == {"torch", "shuffle"}
    expected = torch.rand(3, generator=gen), torch.rand(3)
    folder._set_rng_state(gen, state, torch.device("cpu"))
    assert torch.equal(torch.rand(3, generator=gen), expected[0]) and torch.equal(torch.rand(3), expected[1])
    # a checkpoint that holds a CUDA state (written on a GPU) resumes on the CPU without CUDA
    folder._set_rng_state(gen, {**state, "cuda": torch.tensor([9], dtype=torch.uint8)}, torch.device("cpu"))
    assert fake_cuda.calls == []


def test_a_cuda_run_saves_and_restores_its_own_device_only(fake_cuda):
    gen = torch.Generator().manual_seed(3)
    state = folder._rng_state(gen, torch.device("cuda:1"))
    assert torch.equal(state["cuda"], fake_cuda.states[1])
    folder._set_rng_state(gen, state, torch.device("cuda:0"))  # resumed where the run's GPU is cuda:0
    assert fake_cuda.calls == [("get", torch.device("cuda:1")), ("set", torch.device("cuda:0"), 2)]

