"""The torch paths of evcf bench's data (scripts/gpu_check.sh on a machine without numpy and scipy):
HostCSR batches and evaluation equal the scipy ones on the same matrix, and the torch-drawn synthetic
matrix has the numpy one's sizes.  (The whole check with those packages blocked: tests/test_gpu_check.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from evcf.batches import Batches, DeviceCSR, HostCSR
from evcf.data.shapes import heldout_split, heldout_split_host, synthetic_host_csr, synthetic_matrix
from evcf.errors import EvcfError
from evcf.evaluate import evaluate, summarize


def host(matrix) -> HostCSR:
    return HostCSR(torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
                   matrix.shape)


def test_hostcsr_batches_equal_scipy_batches():
    matrix = synthetic_matrix(300, 120, 4000, seed=3)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    ours, theirs = Batches(DeviceCSR(host(matrix)), order, 64), Batches(DeviceCSR(matrix), order, 64)
    assert len(ours) == len(theirs) == 5
    for (x, clicks), (y, their_clicks) in zip(ours, theirs, strict=True):
        assert torch.equal(x, y) and all(torch.equal(a, b) for a, b in zip(clicks, their_clicks))
    assert torch.equal(DeviceCSR(host(matrix)).dense([5, 7, 9]), DeviceCSR(matrix).dense([5, 7, 9]))
    with pytest.raises(EvcfError, match="need scipy"):
        Batches(DeviceCSR(host(matrix)), order, 64, dense_on_host=True)


def test_hostcsr_evaluation_equals_scipy_evaluation():
    fold_in, heldout = heldout_split(synthetic_matrix(200, 80, 3000, seed=1), seed=2)
    weights = torch.randn(80, 80, generator=torch.Generator().manual_seed(0))

    def score(x):
        return x @ weights

    theirs = evaluate(score, fold_in, heldout, batch_size=64)
    ours = evaluate(score, host(fold_in), host(heldout), batch_size=64)
    assert torch.equal(ours.per_user["row"], torch.tensor(theirs.per_user["row"].to_numpy()))
    for name, value in summarize(theirs.per_user).items():
        assert summarize(ours.per_user)[name] == pytest.approx(value, rel=1e-12), name


def test_the_torch_drawn_matrix_has_the_sizes_and_a_valid_heldout_split():
    matrix = synthetic_host_csr(500, 200, 9000, seed=0)
    lengths = matrix.indptr[1:] - matrix.indptr[:-1]
    assert matrix.shape == (500, 200) and matrix.nnz == 9000 and int(lengths.min()) >= 5 and int(lengths.max()) <= 100
    for r in range(500):  # distinct columns, ascending, in every row
        cols = matrix.indices[matrix.indptr[r]:matrix.indptr[r + 1]]
        assert bool((cols[1:] > cols[:-1]).all())
    fold_in, held = heldout_split_host(matrix, seed=1)
    assert fold_in.nnz + held.nnz == 9000
    held_len = held.indptr[1:] - held.indptr[:-1]
    assert torch.equal(held_len, torch.where(lengths >= 5, (0.2 * lengths.double()).long(), 0))
    # the same rows as heldout_split gives on the same matrix (which clicks: another generator)
    scipy_matrix = sp.csr_matrix((np.ones(9000, np.float32), matrix.indices.numpy(), matrix.indptr.numpy()),
                                 shape=(500, 200))
    assert np.array_equal(np.diff(heldout_split(scipy_matrix, seed=1)[1].indptr), held_len.numpy())
