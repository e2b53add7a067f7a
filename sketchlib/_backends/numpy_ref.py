"""Plain NumPy reference backend: slow, obviously right, the oracle of the others.

Same contract as every backend (see :mod:`sketchlib.backends`).  Every function works a row at a time and, for long vectors, a chunk of
coordinates at a time, so temporaries stay bounded.  Estimates use
``numpy.median`` over rows: for an even number of rows, the mean of the two
middle values.
"""
import numpy as np

from .._hash import buckets_and_signs

from ._host import (  # noqa: F401  (the shared part of the contract)
    abs_stats, add_scaled, array_module, as_input, copy_table, dense_from_topk, device_of, fill_zero, from_numpy, index_range,
    first_k, scale, scatter_dense, to_host_scalars, to_numpy, zeros, zeros_tables)

NAME = "numpy"
ARRAY_LIBRARY = "numpy"
CHUNK = 1 << 20


def available():
    """Always usable: NumPy is the one hard dependency."""
    return True


def all_finite(x):
    """True when no element is NaN or infinite (the flag read as one host read)."""
    return bool(to_host_scalars(np.isfinite(x).all())[0])


def _chunks(n):
    """Start/stop pairs covering ``range(n)``."""
    for start in range(0, n, CHUNK):
        yield start, min(n, start + CHUNK)


def _scatter(acc_row, indices, values, key, cols, version):
    """Add ``sign * value`` of each coordinate into its bucket of one float64 scratch row."""
    buckets, signs = buckets_and_signs(indices, key[0], key[1], cols, version)
    acc_row += np.bincount(buckets, weights=signs * values.astype(np.float64), minlength=cols)


def _accumulate_dense(acc, x, keys, version):
    """``acc += S(x)`` into a float64 scratch table."""
    rows, cols = acc.shape
    for start, stop in _chunks(x.shape[0]):
        idx = np.arange(start, stop, dtype=np.int64)
        for j in range(rows):
            _scatter(acc[j], idx, x[start:stop], keys[j], cols, version)


def _commit(table, acc):
    """``table += acc`` rounded to the table dtype: the one step that changes the table.

    Everything before it only fills the scratch, so an exception (a
    KeyboardInterrupt between chunks) leaves the table as it was.
    """
    table += acc.astype(table.dtype)


def insert_dense(table, x, keys, version):
    """``table += S(x)`` for a dense vector ``x`` of length d."""
    acc = np.zeros(table.shape, dtype=np.float64)
    _accumulate_dense(acc, x, keys, version)
    _commit(table, acc)


def insert_sparse(table, indices, values, keys, version):
    """``table += S(v)`` where ``v`` is zero except ``v[indices] += values``."""
    rows, cols = table.shape
    acc = np.zeros(table.shape, dtype=np.float64)
    for start, stop in _chunks(indices.shape[0]):
        for j in range(rows):
            _scatter(acc[j], indices[start:stop], values[start:stop], keys[j], cols, version)
    _commit(table, acc)


def insert_stack_sum(table, stack, keys, version):
    """``table += S(stack[0] + ... + stack[n-1])``, one vector at a time into one scratch."""
    acc = np.zeros(table.shape, dtype=np.float64)
    for x in stack:
        _accumulate_dense(acc, x, keys, version)
    _commit(table, acc)


def insert_stack_each(tables, stack, keys, version):
    """``tables[i] += S(stack[i])`` for every i (new tables: nobody sees a partial one)."""
    for table, x in zip(tables, stack):
        insert_dense(table, x, keys, version)


def _row_values(table, indices, keys, version):
    """``(rows, n)`` array of ``s_j(i) * T[j, h_j(i)]``."""
    rows, cols = table.shape
    out = np.empty((rows, indices.shape[0]), dtype=table.dtype)
    for j in range(rows):
        buckets, signs = buckets_and_signs(indices, keys[j, 0], keys[j, 1], cols, version)
        out[j] = table[j, buckets] * signs
    return out


def query(table, indices, keys, version):
    """Median-over-rows estimates of the given coordinates."""
    if indices.shape[0] == 0:
        return np.zeros(0, dtype=table.dtype)
    return np.median(_row_values(table, indices, keys, version), axis=0).astype(table.dtype)


def estimate_all(table, d, keys, version):
    """Estimates of all d coordinates."""
    out = np.empty(d, dtype=table.dtype)
    for start, stop in _chunks(d):
        out[start:stop] = query(table, np.arange(start, stop, dtype=np.int64), keys, version)
    return out


def topk(table, d, k, keys, version):
    """The k coordinates of largest |estimate| (NaN above inf), by |estimate| descending."""
    est = estimate_all(table, d, keys, version)
    return first_k(np.arange(d, dtype=np.int64), est, k)


def unsketch_topk(table, d, k, keys, version):
    """Dense d-vector holding the top-k estimates, zeros elsewhere."""
    return dense_from_topk(topk, table, d, k, keys, version)


def heavy(table, d, threshold, keys, version):
    """Coordinates with ``|estimate| >= threshold``, ascending."""
    est = estimate_all(table, d, keys, version)
    idx = np.flatnonzero(~(np.abs(est) < threshold)).astype(np.int64)   # NaN is heavy
    return idx, est[idx]


def zero_buckets(table, indices, keys, version):
    """Zero, in every row, each bucket that one of ``indices`` hashes to."""
    rows, cols = table.shape
    flat = np.concatenate([buckets_and_signs(indices, keys[j, 0], keys[j, 1], cols, version)[0] + j * cols
                           for j in range(rows)])
    table.reshape(-1)[flat] = 0      # one assignment: an interrupt cannot leave some rows zeroed


def l2_estimate(table):
    """``sqrt(median_j sum_b T[j, b]**2)``."""
    row_sq = np.einsum("ij,ij->i", table.astype(np.float64), table.astype(np.float64))
    return float(np.sqrt(np.median(to_host_scalars(row_sq))))
