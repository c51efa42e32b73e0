"""The batch types that data and models share: device-resident sparse rows, densified one batch at
a time on the device, and where each batch's clicks are.

This module sits below both ``evcf.data`` and ``evcf.models``: a model takes tensors and
:class:`Clicks` and never imports the data package.

The training matrix stays a CSR (indptr, indices) held by torch on the training device; a batch of
arbitrary rows becomes a dense (batch, n_items) 0/1 tensor there with one scatter.  The whole
matrix is never densified.

Nothing here waits for the device when the rows are known on the host: the number of clicks of a
batch (the size of its scatter) is summed from a host copy of the row lengths, and
``repeat_interleave`` is told that size (``output_size``), so no value is read back from a GPU.
:class:`Batches` cuts one epoch's order into batches that way, copying the order to the device once
per epoch, and hands each batch over as a :class:`RowBatch`: the dense rows and the coordinates of
their clicks, which the scatter computed anyway.  The models' sparse first layer reads the clicks
from there; finding them again in the dense rows (``nonzero``) would make the host wait.
Bucketed shapes: the click list of a batch is padded (:func:`padded_size`: in steps of 64 to 4,096
entries, less than 1/16 of padding beyond 1,024 clicks) with entries of value 0 spread over the batch's rows and
items (:func:`pad_clicks`), so that a compiled step (``train.compile``) sees tens of shapes per run
instead of one per batch (the click count differs from batch to batch).

The step is not capturable as a CUDA graph, and nothing here claims it is: a batch's click list
still has a length that depends on the data (a bucket, not one size), the last batch of an epoch
has fewer rows, β reaches the models as a Python float (a 0-d CPU tensor under ``train.compile``),
and the optimizers count their steps on the host (evcf/optim.py).  Capture would need every one of
those on the device and one static shape; ``docs/gpu.md`` says why that was not done.

Training, evaluation and CDAE's own loop all cut their batches with :class:`Batches`.  Its
``dense_on_host`` option builds each batch as the reference codes do instead (a scipy row slice,
``toarray()`` on the host, then a copy to the device): the baseline of ``evcf bench``.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["DeviceCSR", "Batches", "Clicks", "RowBatch", "padded_size", "pad_clicks", "clicks_of",
           "MIN_PADDED_CLICKS", "MAX_PADDING_STEP"]

MIN_PADDED_CLICKS = 64  # ours: the shortest click list, and the smallest step between padded lengths
MAX_PADDING_STEP = 4096  # ours: the largest step between padded lengths (long lists: < 4,096 entries of padding)
PADDING_STEPS_PER_DOUBLING = 32  # ours: padded lengths per power of two: at most ~1/16 of a list is padding


def padded_size(n_clicks: int) -> int:
    """The length a batch's click list is padded to: the next multiple of a step that grows with it.

    The step is 1/32 of the power of two at or above ``n_clicks`` (itself a power of two), at least
    64 and at most 4,096: 2,048 for ML-20M's ~34K clicks at batch 500, 4,096 for Netflix's ~65K.
    Beyond 1,024 clicks the padding is then less than 1/16 of them (about 1/32 on average; 2.4% at
    34,000 clicks; below, less than 64 entries), where the next power of two (this function's
    first form) wasted up to half.  The price
    is more shapes per run: about 32 per doubling of the click count, against one, so a compiled
    step (``train.compile``) may see more shapes than a power-of-two padding gave it.
    """
    if n_clicks <= MIN_PADDED_CLICKS:
        return MIN_PADDED_CLICKS
    scale = 1 << (n_clicks - 1).bit_length()  # the power of two at or above n_clicks
    step = min(MAX_PADDING_STEP, max(MIN_PADDED_CLICKS, scale // PADDING_STEPS_PER_DOUBLING))
    return -(-n_clicks // step) * step


class Clicks(NamedTuple):
    """Where the clicks of a batch of rows are: the k-th entry is at (``batch_row[k]``, ``cols[k]``)
    and holds ``values[k]``.

    Row-major: ``batch_row`` ascending; unpadded, columns ascending within a row
    (``torch.nonzero``'s order).  A padded list (:meth:`DeviceCSR.batch`, :func:`pad_clicks`) has
    entries of value 0 after each row's clicks, at items spread over the catalogue: every sum over
    the entries weighted by ``values`` (the first layer's product, the likelihood's click terms)
    is unchanged by them.
    """

    batch_row: torch.Tensor  # (n,) int64, the row of the batch
    cols: torch.Tensor  # (n,) int64, the item
    values: torch.Tensor  # (n,) the entry's value: 1 for a click, 0 for padding


def pad_clicks(clicks: Clicks, n_rows: int, n_items: int = 1) -> Clicks:
    """``clicks`` padded to :func:`padded_size` entries of value 0, spread over the rows and the items.

    Each row gets an equal share of the padding (⌊pad / n_rows⌋ entries, one more in each of the
    first ``pad mod n_rows`` rows) right after its own clicks, so the list stays row-major (each
    row's entries contiguous: the bags of ``embedding_bag``); the padding's items run through
    0, 1, …, ``n_items`` − 1 by position in the list.  So no row holds much of the padding and no
    item gets much of it: on a GPU ``embedding_bag`` gives each (bag, feature) pair to one thread,
    which loops over its bag, and the backward pass's ``index_add_`` adds atomically per address
    (one bag and one item holding all the padding, this function's first form, made both serial).
    Sums weighted by ``values`` are unchanged (the padding's are 0); only their order differs.

    Made on the clicks' device with sizes known on the host: no read-back, no copy from the host.
    """
    batch_row, cols, values = clicks
    n = batch_row.numel()
    n_pad = padded_size(n) - n if n_rows else 0
    if not n_pad:
        return clicks
    device, size = batch_row.device, n + n_pad
    per_row, extra = divmod(n_pad, n_rows)
    rows = torch.arange(n_rows, device=device)  # (B,)
    padding = (rows < extra).to(batch_row.dtype).add_(per_row)  # (B,) each row's padding entries
    lengths = torch.zeros(n_rows, dtype=batch_row.dtype, device=device).index_add_(
        0, batch_row, torch.ones_like(batch_row))  # (B,) each row's clicks
    padded_rows = torch.repeat_interleave(rows, lengths + padding, output_size=size)  # (size,)
    # click k of row r moves down by the padding of the rows before r: r · per_row + min(r, extra)
    where = torch.arange(n, device=device) + batch_row * per_row + batch_row.clamp(max=extra)  # (n,)
    padded_cols = torch.arange(size, dtype=cols.dtype, device=device).remainder_(max(n_items, 1))
    padded_values = torch.zeros(size, dtype=values.dtype, device=device)
    return Clicks(padded_rows, padded_cols.index_copy_(0, where, cols), padded_values.index_copy_(0, where, values))


def clicks_of(x: torch.Tensor, pad: bool = True) -> Clicks:
    """The non-zeros of the rows ``x`` (B, I), found with ``nonzero`` (on a GPU the host waits for
    it: a batch from :class:`Batches` brings its clicks instead), padded as a batch's are."""
    batch_row, cols = torch.nonzero(x, as_tuple=True)  # (nnz,) each, row-major
    clicks = Clicks(batch_row, cols, x[batch_row, cols])
    return pad_clicks(clicks, x.shape[0], x.shape[1]) if pad else clicks


class RowBatch(NamedTuple):
    """One training batch: the dense 0/1 rows and where their clicks are."""

    x: torch.Tensor  # (B, I)
    clicks: Clicks


class DeviceCSR:
    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu"):
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        self.matrix = matrix  # the host CSR, for batches densified on the host
        self.shape = matrix.shape
        self.device = torch.device(device)
        self.indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.device)
        self.indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(self.device)
        self.row_nnz = self.indptr[1:] - self.indptr[:-1]  # (n_rows,) on the device
        self.row_nnz_host = np.diff(matrix.indptr).astype(np.int64)  # (n_rows,) the same, on the host

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def _rows(self, rows: torch.Tensor | np.ndarray | Sequence[int],
              n_nonzeros: int | None) -> tuple[torch.Tensor, int]:
        """(rows on the device, their number of stored entries).

        The count is ``n_nonzeros`` when given; otherwise it is summed on the host for rows given
        there (a numpy array, a list, a CPU tensor), and read back from the device (a sync) for rows
        given as a device tensor.
        """
        if not isinstance(rows, torch.Tensor):
            host = np.asarray(rows, dtype=np.int64).reshape(-1)
            if n_nonzeros is None:
                n_nonzeros = int(self.row_nnz_host[host].sum())
            return torch.from_numpy(host).to(self.device), n_nonzeros
        if n_nonzeros is None:
            n_nonzeros = (int(self.row_nnz_host[rows.numpy()].sum())
                          if rows.device.type == "cpu"
                          else int(self.row_nnz[rows].sum()))  # host sync: pass n_nonzeros to avoid it
        return rows.to(self.device), n_nonzeros

    def nonzeros(self, rows: torch.Tensor | np.ndarray | Sequence[int], *, n_nonzeros: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch_row, column) of every stored entry of ``rows``; batch_row indexes into ``rows``.

        Row by row in the order of ``rows``, columns ascending within a row.
        """
        rows, total = self._rows(rows, n_nonzeros)
        lengths = self.row_nnz[rows]  # (batch,)
        batch_row = torch.repeat_interleave(torch.arange(rows.numel(), device=self.device), lengths,
                                            output_size=total)  # (nnz,)
        # the k-th entry of a row sits at indptr[row] + k; k = global counter - the row's first counter
        shift = self.indptr[rows] - (torch.cumsum(lengths, 0) - lengths)  # (batch,)
        return batch_row, self.indices[torch.arange(total, device=self.device) + shift[batch_row]]

    def dense(self, rows: torch.Tensor | np.ndarray | Sequence[int], dtype: torch.dtype = torch.float32,
              *, n_nonzeros: int | None = None) -> torch.Tensor:
        """Dense 0/1 rows (batch, n_items) on the device."""
        return self.batch(rows, dtype, n_nonzeros=n_nonzeros).x

    def batch(self, rows: torch.Tensor | np.ndarray | Sequence[int], dtype: torch.dtype = torch.float32,
              *, n_nonzeros: int | None = None, pad: bool = True) -> RowBatch:
        """The dense 0/1 rows (batch, n_items) on the device, with the coordinates of their clicks.

        With ``pad`` the click list is padded to :func:`padded_size` entries (value 0, spread over
        the rows and items: :func:`pad_clicks`); without it, it holds the clicks alone.  The padding
        is made on the device.
        """
        batch_row, cols = self.nonzeros(rows, n_nonzeros=n_nonzeros)
        n_rows, n_clicks = len(rows), batch_row.numel()
        out = torch.zeros(n_rows, self.shape[1], dtype=dtype, device=self.device)
        out.view(-1).index_fill_(0, batch_row * self.shape[1] + cols, 1)
        clicks = Clicks(batch_row, cols, torch.ones(n_clicks, dtype=dtype, device=self.device))
        return RowBatch(out, pad_clicks(clicks, n_rows, self.shape[1]) if pad else clicks)


class Batches:
    """One epoch's mini-batches: the rows of ``order``, ``batch_size`` at a time, on the device.

    ``order`` (a host array or CPU tensor of row indices) is copied to the device once; each batch
    is a slice of that copy, and its click count comes from the host, so building a batch never
    waits for the device.  With ``dense_on_host`` each batch is built the reference codes' way
    instead (Liang's ``vae_cf``, RecVAE, EVCF): the scipy rows sliced and densified on the host
    with ``toarray()``, then copied to the device.  Both give equal dense rows; the first yields
    :class:`RowBatch` (rows and clicks), the reference style plain tensors (the rows alone).
    """

    def __init__(self, data: DeviceCSR, order: torch.Tensor | np.ndarray, batch_size: int, *,
                 dtype: torch.dtype = torch.float32, dense_on_host: bool = False):
        self.data = data
        self.batch_size = batch_size
        self.dtype = dtype  # of the dense rows (the reference style's are float32)
        self.dense_on_host = dense_on_host
        host = order.numpy() if isinstance(order, torch.Tensor) else np.asarray(order)
        self.order_host = np.ascontiguousarray(host, dtype=np.int64)  # (n,)
        self.n_order = int(self.order_host.size)
        # clicks before each position of the order: a batch's click count is a difference of two
        self.clicks_before = np.concatenate([[0], np.cumsum(data.row_nnz_host[self.order_host])])
        self.order = None if dense_on_host else torch.from_numpy(self.order_host).to(data.device)

    def __len__(self) -> int:
        return math.ceil(self.n_order / self.batch_size)

    def spans(self) -> Iterator[tuple[torch.Tensor, int]]:
        """Each batch's rows (a slice of the order on the device) and their number of clicks."""
        for start in range(0, self.n_order, self.batch_size):
            stop = min(start + self.batch_size, self.n_order)
            yield self.order[start:stop], int(self.clicks_before[stop] - self.clicks_before[start])

    def __iter__(self) -> Iterator[RowBatch | torch.Tensor]:
        if not self.dense_on_host:
            for rows, n_clicks in self.spans():
                yield self.data.batch(rows, self.dtype, n_nonzeros=n_clicks)
            return
        for start in range(0, self.n_order, self.batch_size):  # the reference style: float32
            rows = self.data.matrix[self.order_host[start : start + self.batch_size]].toarray().astype(np.float32)
            yield torch.from_numpy(rows).to(self.data.device)
