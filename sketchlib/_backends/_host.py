"""Array plumbing shared by the backends whose tables are NumPy arrays."""
import numpy as np

__all__ = ["array_module", "device_of", "zeros", "to_numpy", "from_numpy"]


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
