"""The batch types moved to :mod:`evcf.batches` (below both ``evcf.data`` and ``evcf.models``);
re-exported here for code that still imports them from the data package."""

from evcf.batches import Batches, Clicks, DeviceCSR, RowBatch  # noqa: F401

__all__ = ["DeviceCSR", "Batches", "Clicks", "RowBatch"]
