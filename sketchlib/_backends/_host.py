"""Array plumbing shared by the backends whose tables are NumPy arrays."""
import numpy as np

__all__ = ["array_module", "device_of", "zeros", "to_numpy", "from_numpy", "dense_from_topk"]


def array_module():
    """The array module of host backends."""
    return np


def device_of(array):
    """Host arrays live on the CPU."""
    return "cpu"


def zeros(shape, dtype):
    """A zero table."""
    return np.zeros(shape, dtype=dtype)


def to_numpy(array):
    """The array itself (already on the host)."""
    return np.asarray(array)


def from_numpy(array):
    """A contiguous host array."""
    return np.ascontiguousarray(array)


def dense_from_topk(topk, table, d, k, keys, version):
    """The top-k unsketch of a host backend: its ``topk`` scattered into a zero d-vector."""
    idx, val = topk(table, d, k, keys, version)
    out = np.zeros(d, dtype=table.dtype)
    out[idx] = val
    return out
