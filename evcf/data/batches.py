"""Device-resident sparse rows, densified one batch at a time on the device.

The training matrix stays a CSR (indptr, indices) held by torch on the training device; a batch of
arbitrary rows becomes a dense (batch, n_items) 0/1 tensor there with one scatter.  The whole
matrix is never densified and nothing crosses the host-device boundary per step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["DeviceCSR"]


class DeviceCSR:
    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu"):
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        self.shape = matrix.shape
        self.device = torch.device(device)
        self.indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.device)
        self.indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(self.device)
        self.row_nnz = self.indptr[1:] - self.indptr[:-1]  # (n_rows,)

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def nonzeros(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch_row, column) of every stored entry of ``rows``; batch_row indexes into ``rows``."""
        rows = rows.to(self.device)
        lengths = self.row_nnz[rows]  # (batch,)
        starts = self.indptr[rows]
        batch_row = torch.repeat_interleave(torch.arange(rows.numel(), device=self.device), lengths)
        # position of each entry within its row: global counter minus the row's first counter value
        first = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum()), device=self.device) - first[batch_row]
        return batch_row, self.indices[starts[batch_row] + within]

    def dense(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense 0/1 rows (batch, n_items) on the device."""
        batch_row, cols = self.nonzeros(rows)
        out = torch.zeros(rows.numel(), self.shape[1], dtype=dtype, device=self.device)
        out[batch_row, cols] = 1
        return out
