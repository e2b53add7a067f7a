"""A test-only backend: the whole contract of ``sketchlib.backends`` in the plainest NumPy.

It shows that a backend is one module plus one ``register_backend`` call (made
below, on import) and that it needs only public names of sketchlib.  Tables
are NumPy arrays; inserts use ``np.add.at`` in the table dtype, estimates a
gather and ``np.median``, top-k a full stable sort: slow and obviously right,
and written independently of ``numpy_ref`` (which sums buckets in float64 with
``bincount`` and selects with ``argpartition``).

It also never writes into an array it is given: every updating function
returns a new table, as a backend of immutable arrays (JAX) would, which the
contract allows (the sketch adopts a returned table).
"""
import sys

import numpy as np

from sketchlib.backends import record_host_transfer, register_backend
from sketchlib.hashing import buckets_and_signs

NAME = "toy"
ARRAY_LIBRARY = "numpy"


# ---------------------------------------------------------------- plumbing
def available():
    """NumPy is always there."""
    return True


def array_module():
    """NumPy."""
    return np


def device_of(array):
    """Host memory."""
    return "cpu"


def zeros(shape, dtype):
    """A NumPy zero array (no alignment promise: only the built-in host backends make one)."""
    return np.zeros(shape, dtype=dtype)


def zeros_tables(n, rows, cols, dtype):
    """``n`` zero tables in one array."""
    return np.zeros((n, rows, cols), dtype=dtype)


def from_numpy(array):
    """A copy."""
    return np.array(array, copy=True, order="C")


def to_numpy(array):
    """Already NumPy."""
    return array


def to_host_scalars(array):
    """Python scalars, recorded as one read."""
    array = np.asarray(array)
    record_host_transfer(array.nbytes)
    return tuple(array.reshape(-1).tolist())


def as_input(x, dtype):
    """C-contiguous in ``dtype``."""
    return np.ascontiguousarray(x, dtype=dtype)


def all_finite(x):
    """No NaN or infinity."""
    return bool(to_host_scalars(np.isfinite(x).all())[0])


def abs_stats(x, table):
    """``(sum |x|, max |table|)``, one read."""
    total = 0.0 if x is None else np.abs(x).sum(dtype=np.float64)
    tmax = 0.0 if table is None else np.abs(table).max()
    return to_host_scalars(np.array([total, tmax], dtype=np.float64))


def index_range(indices):
    """Minimum and maximum, one read."""
    return to_host_scalars(np.array([indices.min(), indices.max()]))


# -------------------------------------------------------- table arithmetic
def fill_zero(table):
    """A zero table."""
    return np.zeros_like(table)


def scale(table, alpha):
    """``alpha * table``."""
    return table * table.dtype.type(alpha)


def add_scaled(table, other, alpha):
    """``table + alpha * other``."""
    return table + other if alpha == 1.0 else table + other * table.dtype.type(alpha)


def copy_table(table):
    """A copy."""
    return table.copy()


def scatter_dense(d, indices, values, dtype):
    """Zeros with ``out[indices] = values``."""
    out = np.zeros(d, dtype=dtype)
    out[indices] = values
    return out


# ------------------------------------------------------------ the sketch
def _hashes(table, indices, keys, version):
    """Per row: buckets and signs of ``indices``."""
    cols = table.shape[1]
    return [buckets_and_signs(indices, keys[j, 0], keys[j, 1], cols, version) for j in range(table.shape[0])]


def insert_sparse(table, indices, values, keys, version):
    """A new table: ``np.add.at`` of ``sign * value`` into each row of a copy."""
    out = table.copy()
    for j, (buckets, signs) in enumerate(_hashes(table, indices, keys, version)):
        np.add.at(out[j], buckets, (signs * values).astype(table.dtype))
    return out


def insert_dense(table, x, keys, version):
    """A dense vector is the sparse vector of all its coordinates."""
    return insert_sparse(table, np.arange(x.shape[0], dtype=np.int64), x, keys, version)


def insert_stack_sum(table, stack, keys, version):
    """One row of the stack at a time."""
    for x in stack:
        table = insert_dense(table, x, keys, version)
    return table


def insert_stack_each(tables, stack, keys, version):
    """Each row into its own table, stacked anew."""
    if stack.shape[0] == 0:
        return tables
    return np.stack([insert_dense(table, x, keys, version) for table, x in zip(tables, stack)])


def query(table, indices, keys, version):
    """Median over rows of the signed buckets."""
    if indices.shape[0] == 0:
        return np.zeros(0, dtype=table.dtype)
    per_row = np.stack([table[j, b] * s for j, (b, s) in enumerate(_hashes(table, indices, keys, version))])
    return np.median(per_row, axis=0).astype(table.dtype)


def estimate_all(table, d, keys, version):
    """``query`` of every coordinate."""
    return query(table, np.arange(d, dtype=np.int64), keys, version)


def topk(table, d, k, keys, version):
    """A full sort by (|estimate| bits descending, NaN above inf, index ascending)."""
    est = estimate_all(table, d, keys, version)
    bits = np.abs(est).view(np.uint32 if est.dtype == np.float32 else np.uint64).copy()
    bits[np.isnan(est)] = np.abs(np.array(np.nan, est.dtype)).view(bits.dtype)   # one key for every NaN
    order = np.argsort(~bits, kind="stable")[:k].astype(np.int64)
    return order, est[order]


def unsketch_topk(table, d, k, keys, version):
    """Top-k scattered into zeros."""
    idx, vals = topk(table, d, k, keys, version)
    return scatter_dense(d, idx, vals, table.dtype)


def heavy(table, d, threshold, keys, version):
    """Every estimate at or above the threshold in magnitude."""
    est = estimate_all(table, d, keys, version)
    idx = np.flatnonzero(~(np.abs(est) < table.dtype.type(threshold))).astype(np.int64)
    return idx, est[idx]


def zero_buckets(table, indices, keys, version):
    """A copy with each index's bucket zeroed in each row."""
    out = table.copy()
    for j, (buckets, _) in enumerate(_hashes(table, indices, keys, version)):
        out[j, buckets] = 0
    return out


def l2_estimate(table):
    """Median of the row sums of squares, square-rooted."""
    rows = to_host_scalars((table.astype(np.float64) ** 2).sum(axis=1))
    return float(np.sqrt(np.median(rows)))


register_backend(NAME, sys.modules[__name__], array_library=ARRAY_LIBRARY, priority=-10, replace=True)
