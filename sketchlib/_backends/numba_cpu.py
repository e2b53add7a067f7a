"""Numba CPU backend: parallel kernels with hashes computed on the fly.

Same contract as ``numpy_ref`` (see :mod:`sketchlib.backends`); tables are NumPy
arrays.  Numba is imported only when a kernel is first needed, so this module
imports without it and :func:`available` says whether it can run.

Results agree with the reference: bucket/sign assignments and estimates from a
given table are bit-identical; tables built by inserts differ only by float
rounding, because additions happen in another order (the reference sums each
bucket in float64 with ``bincount``, the kernels add into the table's dtype).

Top-k and threshold queries never sort d values: one parallel pass computes the
estimates and a histogram over the high bits of ``|estimate|`` (the bit pattern
of a non-negative float is monotone in its value), which gives the bin holding
the k-th largest; a second pass gathers the few coordinates at or above it and
an exact selection among those candidates finishes.

Inserts split the (row, coordinate) work into one contiguous range per thread
(a row shared by two threads gets one private copy, added in afterwards) and
scatter two whole rows per pass.  Calls too small to gain from threads run on
one (``_PARALLEL_WORK``); otherwise they use ``numba.get_num_threads()``, so
``numba.set_num_threads`` or ``NUMBA_NUM_THREADS`` bound them.
"""
import numpy as np

from ._host import (  # noqa: F401  (the shared part of the contract)
    abs_stats, add_scaled, array_module, as_input, copy_table, dense_from_topk, device_of, fill_zero, from_numpy, index_range,
    first_k, magnitude_key, scale, scatter_dense, to_host_scalars, to_numpy, zeros, zeros_tables)

NAME = "numba"
ARRAY_LIBRARY = "numpy"
# Whether top-k/heavy keep a d-length estimate buffer between their two passes
# (faster) or recompute estimates in the second pass (no per-coordinate memory).
STORE_ESTIMATES = True
# Below this many (coordinate, row) operations a call runs on one thread: a
# parallel launch costs little on an idle machine, but on a loaded one each
# barrier can wait a whole scheduler time slice (measured: 16 ms instead of
# 0.05 ms for a 5,000-index query while other processes held both cores).
_PARALLEL_WORK = 1 << 22
SUM_CHUNK = 1 << 22           # coordinates summed at a time by insert_stack_sum

_kernels = None


def available():
    """True when numba imports."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _k():
    """The compiled-kernel module (imports numba on first use)."""
    global _kernels
    if _kernels is None:
        from . import _numba_kernels
        _kernels = _numba_kernels
    return _kernels


class _Threads:
    """Context manager: run small work on one thread, large work on all of them."""

    def __init__(self, work):
        import numba
        self._numba = numba
        self._saved = numba.get_num_threads()
        self.n = self._saved if work >= _PARALLEL_WORK else 1

    def __enter__(self):
        self._numba.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc):
        self._numba.set_num_threads(self._saved)


def _keys64(keys):
    """Row keys widened to uint64, the kernels' integer type."""
    return np.ascontiguousarray(keys, dtype=np.uint64)


def all_finite(x):
    """True when no element is NaN or infinite.

    NumPy in chunks: memory-bound, as fast as a Numba kernel on one thread
    (0.9 ms for 6.6M floats), with a bounded temporary and early exit.
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    step = 1 << 20
    ok = all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.shape[0], step))
    return bool(to_host_scalars(np.bool_(ok))[0])   # the read a device backend makes


def _insert(tables, stack, base, keys, version):
    """Scatter ``stack[q // rows]`` into flat row q of ``tables`` on the threads available."""
    nflat, cols = tables.shape
    d = stack.shape[1]
    with _Threads(nflat * d) as threads:
        # Thread t's share of the nflat * d (row, coordinate) pairs starts at
        # work * t // threads; if that is inside a row, its first piece goes to
        # a private row buffer (zero pages cost nothing until touched).
        work = nflat * d
        buf_row = np.array([(work * t // threads) // d if (work * t // threads) % d else -1
                            for t in range(threads)], dtype=np.int64)
        bufs = np.zeros((threads, cols), dtype=tables.dtype)
        _k().insert_flat(tables, stack, base, keys, version, bufs, buf_row)


def insert_dense(table, x, keys, version):
    """``table += S(x)`` for a dense vector ``x`` of length d."""
    _insert(table, x.reshape(1, -1), 0, _keys64(keys), version)


def insert_sparse(table, indices, values, keys, version):
    """``table += S(v)`` where ``v`` is zero except ``v[indices] += values``."""
    with _Threads(indices.shape[0] * table.shape[0]):
        _k().insert_sparse(table, indices, values, _keys64(keys), version)


def insert_stack_sum(table, stack, keys, version):
    """``table += S(stack[0] + ... + stack[n-1])``.

    The sum is formed a chunk of coordinates at a time (``SUM_CHUNK`` floats)
    and each chunk inserted: measured faster than a fused kernel that re-sums
    the stack for every row, and the temporary stays bounded.
    """
    if stack.shape[0] == 0:
        return
    d = stack.shape[1]
    keys64 = _keys64(keys)
    # Several kernel calls: fill a scratch and commit it with one add, so that an
    # exception between calls (KeyboardInterrupt) leaves the table as it was.
    target = table if d <= SUM_CHUNK else np.zeros_like(table)
    for lo in range(0, d, SUM_CHUNK):
        hi = min(d, lo + SUM_CHUNK)
        part = np.add.reduce(stack[:, lo:hi], axis=0)
        _insert(target, part.reshape(1, -1), lo, keys64, version)
    if target is not table:
        table += target


def insert_stack_each(tables, stack, keys, version):
    """``tables[i] += S(stack[i])`` for every i."""
    if stack.shape[0] == 0:
        return
    n, rows, cols = tables.shape
    work = np.ascontiguousarray(tables)  # so the reshape below is a view
    _insert(work.reshape(n * rows, cols), stack, 0, _keys64(keys), version)
    if work is not tables:
        tables[...] = work


def query(table, indices, keys, version):
    """Median-over-rows estimates of the given coordinates."""
    out = np.empty(indices.shape[0], dtype=table.dtype)
    if indices.shape[0]:
        with _Threads(indices.shape[0] * table.shape[0]):
            _k().query(table, indices, _keys64(keys), version, out)
    return out


def estimate_all(table, d, keys, version):
    """Estimates of all d coordinates."""
    out = np.empty(d, dtype=table.dtype)
    with _Threads(d * table.shape[0]):
        _k().estimate_all(table, _keys64(keys), version, out)
    return out


def _bits_layout(dtype):
    """Unsigned view dtype, mask clearing the sign bit, and shift giving 15-bit bins."""
    if dtype == np.float32:
        return np.uint32, np.uint32(0x7FFFFFFF), np.uint32(16)
    return np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF), np.uint64(48)


def _order_by_magnitude(indices, values):
    """Sort by |value| descending, ties by index ascending.

    For float32 values and indices below 2**32 both fit one uint64 key
    (reversed |value| bits high, index low) and one argsort does it: 0.5 ms
    for 50,000 entries against 6 ms for ``np.lexsort``.
    """
    if values.dtype == np.float32 and (indices.shape[0] == 0 or int(indices.max()) < 2**32):
        high = (magnitude_key(values) ^ np.uint32(0x7FFFFFFF)).astype(np.uint64)
        order = np.argsort((high << np.uint64(32)) | indices.astype(np.uint64))
    else:
        order = np.lexsort((indices, ~magnitude_key(values)))
    return indices[order], values[order]


def _ntasks(d, threads):
    """Parallel tasks for a pass over d coordinates (a few per thread, for balance)."""
    return int(max(1, min(4 * threads, d // 4096)))


def topk(table, d, k, keys, version):
    """The k coordinates of largest |estimate|, by |estimate| descending."""
    with _Threads(d * table.shape[0]) as threads:
        return _topk(table, d, k, keys, version, threads)


def _topk(table, d, k, keys, version, threads):
    """Histogram pass, candidate gather, exact selection among the candidates."""
    kern = _k()
    keys64 = _keys64(keys)
    ubits, absmask, shift = _bits_layout(table.dtype)
    ntasks = _ntasks(d, threads)
    est_bits = np.empty(d if STORE_ESTIMATES else 1, dtype=ubits)
    hist = kern.est_hist(table, keys64, version, d, ntasks, est_bits, STORE_ESTIMATES, absmask, shift)
    total = hist.sum(axis=0)
    from_top = np.cumsum(total[::-1])
    # Highest bin b such that bins >= b hold at least k coordinates.
    min_bin = int(total.shape[0] - 1 - np.searchsorted(from_top, k))
    per_task = hist[:, min_bin:].sum(axis=1)
    offsets = np.zeros(ntasks, dtype=np.int64)
    np.cumsum(per_task[:-1], out=offsets[1:])
    n = int(per_task.sum())
    cand_idx = np.empty(n, dtype=np.int64)
    cand_bits = np.empty(n, dtype=ubits)
    kern.gather_bins(table, keys64, version, d, ntasks, est_bits, STORE_ESTIMATES, absmask, shift,
                     min_bin, offsets, cand_idx, cand_bits)
    del est_bits
    cand_val = cand_bits.view(table.dtype)
    if n > k:       # exact on ties: the smallest indices among equal keys (as the reference)
        order = np.argsort(cand_idx, kind="stable")
        cand_idx, cand_val = first_k(cand_idx[order], cand_val[order], k, ordered=False)
    return _order_by_magnitude(cand_idx, cand_val)


def unsketch_topk(table, d, k, keys, version):
    """Dense d-vector holding the top-k estimates, zeros elsewhere."""
    return dense_from_topk(topk, table, d, k, keys, version)


def heavy(table, d, threshold, keys, version):
    """Coordinates with ``|estimate| >= threshold``, ascending."""
    with _Threads(d * table.shape[0]) as threads:
        return _heavy(table, d, threshold, keys, version, threads)


def _heavy(table, d, threshold, keys, version, threads):
    """Counting pass, then a gather at per-task offsets (ascending by construction)."""
    kern = _k()
    keys64 = _keys64(keys)
    ntasks = _ntasks(d, threads)
    est = np.empty(d if STORE_ESTIMATES else 1, dtype=table.dtype)
    # Compared in the table's dtype, as NumPy does for the reference's float32 array.
    thr = table.dtype.type(threshold)
    counts = kern.count_above(table, keys64, version, d, ntasks, est, STORE_ESTIMATES, thr)
    offsets = np.zeros(ntasks, dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    (n,) = to_host_scalars(counts.sum())   # sizes the output: a device backend reads it back
    idx = np.empty(n, dtype=np.int64)
    vals = np.empty(n, dtype=table.dtype)
    kern.gather_above(table, keys64, version, d, ntasks, est, STORE_ESTIMATES, thr, offsets, idx, vals)
    return idx, vals


def zero_buckets(table, indices, keys, version):
    """Zero, in every row, each bucket that one of ``indices`` hashes to."""
    with _Threads(indices.shape[0] * table.shape[0]):
        _k().zero_buckets(table, indices, _keys64(keys), version)


def l2_estimate(table):
    """``sqrt(median_j sum_b T[j, b]**2)``."""
    with _Threads(table.size):
        return float(np.sqrt(np.median(to_host_scalars(_k().row_sq_sums(table)))))
