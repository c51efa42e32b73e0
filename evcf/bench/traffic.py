"""The bytes that one training step moves to and from memory (:func:`step_traffic`), counted as it
runs, and :func:`step_counts`: its FLOPs and bytes in one pass.  Imports the standard library only
at the top (the CLI's parser imports this package)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["step_traffic", "step_counts"]


# aten operations that make no data move (views, metadata, allocation without a fill)
_NO_TRAFFIC = frozenset({
    "view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "slice", "select", "unsqueeze",
    "squeeze", "detach", "alias", "lift_fresh", "split", "split_with_sizes", "unbind", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "_reshape_alias", "unfold", "diagonal", "resize_",
    "set_", "_local_scalar_dense", "is_nonzero", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
})
# operations that read or write only the rows that their index names: a table counts only those rows
_INDEXED = frozenset({
    "embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only", "_embedding_bag_backward",
    "_embedding_bag_dense_backward", "_embedding_bag_sparse_backward", "_embedding_bag_per_sample_weights_backward",
    "embedding_dense_backward", "index_add", "index_add_", "index_copy", "index_copy_", "index_select", "index",
    "index_put", "index_put_", "_index_put_impl_", "gather", "scatter", "scatter_", "scatter_add", "scatter_add_",
    "index_fill", "index_fill_", "take",
})


def step_traffic(model: Any, optimizer: Any, x: Any, beta: float, autocast: bool) -> int:
    """Bytes that one :func:`~evcf.training.train_step` moves to and from memory, counted as it runs.

    Every aten operation that runs (forward, backward, optimizer) is charged the bytes of each
    tensor it reads and each it writes (an in-place operation both), as if nothing stayed in a
    cache and no two operations were fused: the traffic of the step as eager torch issues it, the
    term that bounds a step whose operations are too small or too simple to be limited by their
    FLOPs (a GPU step's elementwise work, the optimizer's passes over every parameter).  Views and
    allocations move nothing and are not charged; an indexing operation (``embedding_bag``,
    ``index_add_``, a gather…) is charged only the rows its index reaches of a larger table.  An
    epoch's traffic floor is this × ⌈users / B⌉ steps ÷ :func:`~evcf.bench.timer.copy_rate`.
    """
    return step_counts(model, optimizer, x, beta, autocast)[1]


def _traffic_mode() -> type:
    """The dispatch mode that :func:`step_traffic` counts bytes with (made here: torch is imported
    inside functions only)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def name_of(func: Any) -> str:
        return func.overloadpacket.__name__  # e.g. "add_" for aten.add_.Tensor

    def charged(t: torch.Tensor, index_numel: int | None, index_dims: int) -> int:
        nbytes = t.numel() * t.element_size()
        if index_numel is None or t.dim() < index_dims or t.numel() <= index_numel:
            return nbytes
        rows = math.prod(t.shape[:index_dims]) or 1
        return min(nbytes, index_numel * (nbytes // rows))  # the rows the index reaches

    class Traffic(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = name_of(func)
            if name in _NO_TRAFFIC:
                return out
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            index_numel, index_dims = None, 1
            if name in _INDEXED:
                indices = [t for t in inputs if not t.is_floating_point() and t.dim() > 0]
                if indices:
                    index_numel = max(t.numel() for t in indices)
                if name.startswith(("index_put", "_index_put", "index")) and isinstance(args[1] if len(args) > 1
                                                                                       else None, (list, tuple)):
                    index_dims = sum(1 for t in args[1] if t is not None)
            # each distinct tensor read once and each written once (an in-place operation's both);
            # a 0-d CPU tensor is a scalar argument, not memory traffic
            read = {id(t): t for t in inputs if not (t.dim() == 0 and t.device.type == "cpu")}
            written = {id(t): t for t in outputs if not (t.dim() == 0 and t.device.type == "cpu")}
            # a fresh output (a dense gradient of a table) is written whole; an indexed table read or
            # written in place, only in the rows the index reaches
            self.bytes += sum(charged(t, index_numel, index_dims) for t in read.values())
            self.bytes += sum(charged(t, index_numel, index_dims) if t_id in read else charged(t, None, 1)
                              for t_id, t in written.items())
            return out

    return Traffic


def step_counts(model: Any, optimizer: Any, x: Any, beta: float, autocast: bool) -> tuple[int, int]:
    """(:func:`~evcf.bench.vae.step_flops`, :func:`step_traffic`) of one and the same step: the bench's first
    warm-up step counts both."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..training import train_step

    with FlopCounterMode(display=False) as flops, _traffic_mode()() as traffic:
        train_step(model, optimizer, x, beta, autocast=autocast)
    return int(flops.get_total_flops()), int(traffic.bytes)
