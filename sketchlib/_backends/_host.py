"""Array plumbing and table arithmetic shared by the backends whose tables are NumPy arrays.

Every array allocated here starts on a 64-byte boundary (``ALIGN``): NumPy only
promises 16, and consumers such as ``jax.numpy.from_dlpack(..., copy=False)``
import host memory without a copy only when it is aligned (XLA's CPU buffers).
"""
import math

import numpy as np

from . import record_host_transfer

__all__ = ["ALIGN", "array_module", "device_of", "zeros", "zeros_tables", "to_numpy", "from_numpy",
           "to_host_scalars", "as_input", "index_range", "abs_stats", "fill_zero", "scale", "add_scaled", "copy_table",
           "scatter_dense", "dense_from_topk", "magnitude_key", "first_k"]

ALIGN = 64


def _aligned_buffer(shape, dtype, zero):
    """A C-contiguous array of ``shape`` whose data starts on an ``ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    # NumPy aligns to at least the item size, so the offset is a whole number of items.
    raw = (np.zeros if zero else np.empty)(n + ALIGN // dtype.itemsize, dtype=dtype)   # calloc: lazy zero pages
    start = (-raw.ctypes.data % ALIGN) // dtype.itemsize
    return raw[start:start + n].reshape(shape)


def array_module():
    """The array module of host backends."""
    return np


def device_of(array):
    """Host arrays live on the CPU."""
    return "cpu"


def zeros(shape, dtype):
    """A zero array, 64-byte aligned."""
    return _aligned_buffer(shape, dtype, zero=True)


def zeros_tables(n, rows, cols, dtype):
    """``n`` zero ``(rows, cols)`` tables as one ``(n, rows, cols)`` array, each table 64-byte aligned.

    When a table's bytes are not a multiple of ``ALIGN`` each is padded, and
    the array is a strided view (not C-contiguous).
    """
    dtype = np.dtype(dtype)
    per = rows * cols
    step = -(-per * dtype.itemsize // ALIGN) * ALIGN // dtype.itemsize if per else 0
    if step == per:
        return zeros((n, rows, cols), dtype)
    return zeros((n, step), dtype)[:, :per].reshape(n, rows, cols)


def to_numpy(array):
    """The array itself (already on the host)."""
    return np.asarray(array)


def from_numpy(array):
    """A new 64-byte aligned copy of a host array."""
    array = np.asarray(array)
    out = _aligned_buffer(array.shape, array.dtype, zero=False)
    out[...] = array
    return out


def to_host_scalars(array):
    """The elements of a small array as a tuple of Python scalars (recorded as one host read)."""
    array = np.asarray(array)
    record_host_transfer(array.nbytes)
    return tuple(array.reshape(-1).tolist())


def as_input(x, dtype):
    """``x`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(x, dtype=dtype)


def index_range(indices):
    """``(min, max)`` of a non-empty integer array, as Python ints (one host read)."""
    record_host_transfer(2 * indices.dtype.itemsize)
    return int(indices.min()), int(indices.max())


def abs_stats(x, table):
    """``(sum |x|, max |table|)`` as Python floats in one host read; 0.0 for a None; NaN/inf propagate.

    The sum runs a chunk at a time in x's dtype (float16 in float64): memory-bound like
    the finiteness check it replaces, relative error far below the contract's 1e-3.
    """
    total = 0.0
    if x is not None:
        flat = x.reshape(-1)
        wide = np.float64 if flat.dtype.itemsize < 4 else None
        for i in range(0, flat.shape[0], 1 << 20):
            total += float(np.abs(flat[i:i + (1 << 20)]).sum(dtype=wide))
    tmax = 0.0
    if table is not None:
        tmax = float(np.maximum(table.max(), -table.min()))   # NaN propagates, no table-sized temporary
    return to_host_scalars(np.array([total, tmax]))


def fill_zero(table):
    """Set every element to zero, in place."""
    table[...] = 0


def scale(table, alpha):
    """``table *= alpha``, in place, ``alpha`` cast to the table dtype."""
    table *= table.dtype.type(alpha)


def add_scaled(table, other, alpha):
    """``table += alpha * other``, in place (a plain add when ``alpha == 1``)."""
    if alpha == 1.0:
        table += other
    else:
        table += other * table.dtype.type(alpha)


def copy_table(table):
    """A new 64-byte aligned copy of a table."""
    return from_numpy(table)


def scatter_dense(d, indices, values, dtype):
    """A zero d-vector with ``out[indices] = values``."""
    out = zeros((d,), dtype)
    out[indices] = values
    return out


def magnitude_key(values):
    """The float bits of ``|v|`` as unsigned integers: the contract's top-k order (NaN above +inf).

    Every NaN gets the key of the default quiet NaN, whatever its payload.
    """
    key = np.abs(values).view(np.uint32 if values.dtype == np.float32 else np.uint64)
    nan = np.isnan(values)
    if nan.any():
        key = key.copy()
        key[nan] = np.abs(np.array(np.nan, dtype=values.dtype)).view(key.dtype)
    return key


def first_k(indices, values, k, ordered=True):
    """The first k entries by (``magnitude_key`` descending, index ascending), in that order unless not ``ordered``.

    Exact on ties (a radix select with the index in its low key bits picks the
    same): the entries strictly above the k-th key, then the tied ones of
    smallest index.  ``indices`` must be ascending.
    """
    key = ~magnitude_key(values)                 # ascending = larger |v| first
    if key.shape[0] > k:
        kth = np.partition(key, k - 1)[k - 1]
        above = np.flatnonzero(key < kth)
        keep = np.concatenate([above, np.flatnonzero(key == kth)[:k - above.shape[0]]])
        indices, values, key = indices[keep], values[keep], key[keep]
    if not ordered:
        return indices, values
    order = np.lexsort((indices, key))
    return indices[order], values[order]


def dense_from_topk(topk, table, d, k, keys, version):
    """The top-k unsketch of a host backend: its ``topk`` scattered into a zero d-vector."""
    idx, val = topk(table, d, k, keys, version)
    return scatter_dense(d, idx, val, table.dtype)
