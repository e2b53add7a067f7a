"""CuPy backend: the whole sketch on a CUDA device, with hand-written kernels.

The kernels (``_cuda_src``) hash coordinates on the fly, so nothing per
coordinate is stored: an insert touches only the input and the table, and
estimate-all / top-k / heavy hitters use one d-length buffer for the estimates.
Every kernel and every CuPy operation runs on the current CuPy stream
(``cupy.cuda.get_current_stream()``), so a caller that wraps a torch stream in
``cupy.cuda.ExternalStream`` gets the work ordered on its own stream.  Kernels are
looked up by their C++ name expressions (``_cuda_src.KERNELS``, compiled through
``RawModule(name_expressions=...)``), once per hash version, with the shared
constants passed as defines (``_cuda_src.compile_options``).

What ships is what runs: each operation has one kernel (dense insert: "veccs",
``sk_insert_vec``, a group of four coordinates per thread with streaming 16-byte loads,
or "simple" when the input or, under hash version 2, the table is not 16-byte aligned;
batched-each: "v4rows" for float32, "simple" for float64).  The other kernel shapes that
were timed (insert "rowy", "vec", "vec2x", "vec2xcs", "dsmem"; batched-each "v4",
"v4rows1") were removed after their benchmarks: their numbers are in ``bench/RESULTS.md``
(and their code in the git history).

Top-k never sorts d values: the estimate kernel also builds a 4096-bin histogram
of the top 12 bits of ``|estimate|`` (the float bits of a non-negative float
order like unsigned integers), one block finds the bin holding the k-th
largest, a compaction pass keeps the coordinates above that bin (all in the
top-k) and those inside it (candidates); further 12-bit passes narrow the bin
down while it holds too many candidates, and one radix sort of the survivors
(k plus the candidates) orders them and drops the extra candidates.  Two tails,
both shipped because each is the default somewhere (``TOPK_TAIL``,
``UNSKETCH_TAIL``): "sync" reads the counts back once per pass to size its
buffers (one pass in practice); "dev" (``_cuda_topk.topk_dev``) never waits for the
device: the last block of each histogram pass picks the bin and keeps the state in
device memory, the candidates of the first bin are narrowed by further passes down to
a single key, and exactly k entries are written, then sorted as packed 64-bit keys, so
it can be captured in a CUDA graph.  float32: the result is exactly the first k by
(``|v|`` descending, index ascending), the index being the last digits of the select
key; float64 gets that order from two stable sorts, but which of several coordinates
tied at the k-th magnitude it takes is up to the order of the atomics (as for "sync",
whose ties come in any order).

Dense inserts are bound by random float atomics into the table (~100 G/s on an
H200).  Hash version 2 cuts the atomics four-fold: its groups of four coordinates
land in aligned groups of four buckets, added with one 16-byte vector atomic, and
estimates read a group with one 16-byte load.  The source is compiled once per hash
version (``-DSK_HASH_VERSION``), so the kernels carry no version branch.

Floating-point atomics land in a device-chosen order, so a table built here
equals the NumPy reference's only up to float rounding: each bucket is a sum of
the same terms in another order (relative difference of order
``eps * (sum of |terms|) / |sum|``; tests use ``rtol = 100 eps`` and
``atol = 10 eps (d / cols) max|x|``, each bucket summing about ``d / cols``
terms).  Queries, estimates, top-k and heavy hitters on a given table are
exact: they match the reference bit for bit.
"""
import numpy as np

from ..errors import SketchError
from . import _cuda_src, _cuda_topk

__all__ = []

NAME = "cupy"
ARRAY_LIBRARY = "cupy"

TOPK_TAILS = ("sync", "dev")
# Default tail of ``topk``: "sync" (H100, k = 50,000: 0.50 vs 0.57 ms at d = 6.57M, 5.17 vs
# 6.72 ms at d = 124M); "dev" never waits for the host (CUDA-graph capture, no sync).
TOPK_TAIL = "sync"
# Default of ``unsketch_topk``: "auto" is "dev" (the estimate buffer masked in place: no sort,
# no output buffer) up to DEV_UNSKETCH_MAX_D coordinates, "sync" above.  H100, hash 2,
# k = 50,000: "dev" 0.34 ms vs "sync" 0.51 ms at d = 6.57M (whose host round trips cost more
# than its kernels), but 3.66 vs 2.0 ms at d = 124M; the crossover was not measured.
UNSKETCH_TAIL = "auto"
DEV_UNSKETCH_MAX_D = 1 << 25
# Grid of the grid-stride kernels: this many blocks per SM at most (tests pass 1 to make each
# warp loop over several chunks).
BLOCKS_PER_SM = 8

_BLOCK = _cuda_src.BLOCK
_HIST_BITS = _cuda_src.HIST_BITS
_NULL = _cuda_topk._NULL      # a null pointer argument
_KEY_BITS = _cuda_topk.KEY_BITS

_modules = {}
_functions = {}
_keys_cache = {}
_sm_counts = {}
_l2_sizes = {}


def _cp():
    """The cupy module (imported lazily)."""
    import cupy
    return cupy


def available():
    """True when CuPy imports and at least one CUDA device is visible."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, driver too old: all mean "not here"
        return False


def array_module():
    """The array module of this backend."""
    return _cp()


def device_of(array):
    """``"cuda:N"`` for a CuPy array."""
    return f"cuda:{array.device.id}"


def zeros(shape, dtype):
    """A zero array on the current device."""
    return _cp().zeros(shape, dtype=dtype)


def to_numpy(array):
    """Copy a device array to the host."""
    return _cp().asnumpy(array)


def from_numpy(array):
    """Copy a host array to the current device."""
    return _cp().asarray(np.ascontiguousarray(array))


# ------------------------------------------------------------------ kernel plumbing
def _fn(expr, version=None):
    """Kernel ``expr`` (a name expression of ``_cuda_src.KERNELS``) for the current device
    and hash ``version`` (cached).  ``version=None`` is for kernels that do not hash: any
    module already built serves."""
    cp = _cp()
    dev = cp.cuda.Device().id
    if version is None:
        version = next((v for (d, v) in _modules if d == dev), 1)
    key = (dev, version, expr)
    fn = _functions.get(key)
    if fn is None:
        if (dev, version) not in _modules:
            _modules[(dev, version)] = cp.RawModule(code=_cuda_src.SOURCE, options=_cuda_src.compile_options(version),
                                                    name_expressions=list(_cuda_src.KERNELS))
        fn = _functions[key] = _modules[(dev, version)].get_function(expr)
    return fn


def _grid(work, blocks_per_sm=BLOCKS_PER_SM):
    """Blocks for a grid-stride loop over ``work`` items: enough to fill the device."""
    cp = _cp()
    dev = cp.cuda.Device().id
    if dev not in _sm_counts:
        _sm_counts[dev] = cp.cuda.Device(dev).attributes["MultiProcessorCount"]
    cap = _sm_counts[dev] * int(blocks_per_sm)
    return int(max(1, min(cap, -(-int(work) // _BLOCK))))


def _launch(expr, work, args, version=None, blocks_per_sm=BLOCKS_PER_SM):
    """Launch kernel ``expr`` (of hash ``version``) over ``work`` items on the current stream."""
    _fn(expr, version)((_grid(work, blocks_per_sm),), (_BLOCK,), args)


def _dev_keys(keys):
    """The row keys as a flat device uint32 array (cached per device and keys)."""
    cp = _cp()
    host = np.ascontiguousarray(keys, dtype=np.uint32)
    ck = (cp.cuda.Device().id, host.tobytes())
    dk = _keys_cache.get(ck)
    if dk is None:
        if len(_keys_cache) > 256:
            _keys_cache.clear()
        dk = _keys_cache[ck] = cp.asarray(host.ravel())
    return dk


def _k(name, array, *params):
    """The name expression of kernel ``name`` for ``array``'s dtype."""
    return _cuda_src.kernel(name, array.dtype.name, *params)


def _aligned(array):
    """Whether the array's data starts on a 16-byte boundary (vector loads)."""
    return array.data.ptr % 16 == 0


def _groups_ok(table, version):
    """Whether the group kernels may run: version 2's vector atomics and loads need an aligned table."""
    return version == 1 or _aligned(table)


def _table_args(table, keys):
    """The ``(table, keys, rows, cols)`` kernel arguments."""
    rows, cols = table.shape
    return table, _dev_keys(keys), np.int32(rows), np.uint32(cols)


# --------------------------------------------------------------------------- checks
def all_finite(x):
    """True when no element is NaN or infinite (one flag, no d-sized temporary)."""
    cp = _cp()
    with x.device:
        if x.dtype.name not in _cuda_src.CTYPES or not x.flags.c_contiguous:
            return bool(to_host_scalars(cp.isfinite(x).all())[0])
        bad = cp.zeros(1, dtype=np.int32)
        if x.size:
            _launch(_k("sk_all_finite", x), x.size, (x, np.int64(x.size), bad))
        return not bool(to_host_scalars(bad)[0])


# -------------------------------------------------------------------------- inserts
def insert_dense(table, x, keys, version):
    """``table += S(x)``: groups of four through 16-byte loads ("vec"), or one coordinate per
    thread ("simple") when ``x`` or, under version 2, the table is not 16-byte aligned."""
    with table.device:
        t, k, rows, cols = _table_args(table, keys)
        d = x.shape[0]
        args = (x, np.int64(d), t, k, rows, cols)
        if _aligned(x) and _groups_ok(table, version):
            _launch(_k("sk_insert_vec", table), d // 4, args, version=version)
        else:
            _launch(_k("sk_insert_simple", table), d, args, version=version)
    return None


def insert_sparse(table, indices, values, keys, version):
    """``table += S(v)`` for ``v[indices] += values`` (duplicates accumulate)."""
    with table.device:
        t, k, rows, cols = _table_args(table, keys)
        n = indices.shape[0]
        _launch(_k("sk_insert_sparse", table), n, (indices, values, np.int64(n), t, k, rows, cols), version=version)


def insert_stack_sum(table, stack, keys, version):
    """``table += S(sum of the rows of stack)``: summed in registers, one atomic per row."""
    with table.device:
        n, d = stack.shape
        if n == 0 or d == 0:
            return
        t, k, rows, cols = _table_args(table, keys)
        vec = (d * stack.dtype.itemsize) % 16 == 0 and _aligned(stack) and _groups_ok(table, version)
        _launch(_k("sk_stack_sum_vec" if vec else "sk_stack_sum_simple", table), d // 4 if vec else d,
                (stack, np.int64(n), np.int64(d), t, k, rows, cols), version=version)


def insert_stack_each(tables, stack, keys, version):
    """``tables[i] += S(stack[i])``: float32 four vectors at a time through 16-byte atomics
    ("v4rows"), float64 one coordinate of every vector per thread ("simple")."""
    with tables.device:
        n, d = stack.shape
        if n == 0 or d == 0:
            return
        _, rows, cols = tables.shape
        k = _dev_keys(keys)
        if tables.dtype.name == "float32":
            return _stack_each_v4rows(tables, stack, k, version)
        _launch(_k("sk_stack_each_simple", tables), d,
                (stack, np.int64(n), np.int64(d), tables, k, np.int32(rows), np.uint32(cols)), version=version)


def _l2_bytes():
    """L2 cache size of the current device (cached; 40 MB when the driver does not say)."""
    cp = _cp()
    dev = cp.cuda.Device().id
    if dev not in _l2_sizes:
        _l2_sizes[dev] = int(cp.cuda.Device(dev).attributes.get("L2CacheSize", 40 << 20) or (40 << 20))
    return _l2_sizes[dev]


def _stack_each_v4rows(tables, stack, k, version):
    """``sk_stack_each_v4r`` by groups of rows whose interleaved scratch fits in a third of L2.

    With all rows at once a 500k-column scratch (40 MB) left the 16-byte atomics to
    DRAM: the H100/H200 times scaled with memory bandwidth.  Each group of rows reads
    the four vectors again (streamed), a smaller cost.
    """
    cp = _cp()
    n, d = stack.shape
    _, rows, cols = tables.shape
    per = max(1, min(rows, (_l2_bytes() // 3) // (16 * cols)))
    scratch = cp.zeros(per * cols * 4, dtype=np.float32)
    rc = rows * cols
    each, spread = _cuda_src.kernel("sk_stack_each_v4r"), _cuda_src.kernel("sk_deinterleave_at")
    for n0 in range(0, n, 4):
        ng = np.int32(min(4, n - n0))
        for j0 in range(0, rows, per):
            j1 = min(rows, j0 + per)
            _launch(each, d, (stack, np.int64(n0), ng, np.int64(d), scratch, k, np.int32(j0), np.int32(j1),
                              np.uint32(cols)), version=version)
            m = (j1 - j0) * cols
            _launch(spread, m, (scratch, np.int64(m), tables, np.int64(rc), np.int64(j0 * cols), np.int64(n0), ng),
                    version=version)


# -------------------------------------------------------------------------- queries
def _estimates(table, keys, version, idx, n, out, hist=_NULL, prefix=0, shift=0, width=_HIST_BITS,
               count=_NULL, thr=0.0, blocks_per_sm=BLOCKS_PER_SM):
    """Launch the estimate kernel (optionally with a radix histogram or a threshold count).

    Version 2 estimates of all coordinates go a group of four per thread (16-byte gathers).
    """
    t, k, rows, cols = _table_args(table, keys)
    groups = idx is None and version == 2 and _aligned(table) and _aligned(out)
    args = (t, k, rows, cols, _NULL if idx is None else idx, np.int64(n), out, hist, np.uint64(prefix),
            np.int32(shift), np.int32(width), count, table.dtype.type(thr))
    _launch(_k("sk_estimates", table, _cuda_src.median_rows(rows), groups), -(-n // 4) if groups else n, args,
            version=version, blocks_per_sm=blocks_per_sm)


def query(table, indices, keys, version):
    """Median-over-rows estimates of the given coordinates."""
    cp = _cp()
    with table.device:
        n = indices.shape[0]
        out = cp.empty(n, dtype=table.dtype)
        if n:
            _estimates(table, keys, version, indices, n, out)
        return out


def estimate_all(table, d, keys, version):
    """Estimates of all d coordinates (the one d-length buffer)."""
    cp = _cp()
    with table.device:
        out = cp.empty(d, dtype=table.dtype)
        _estimates(table, keys, version, None, d, out)
        return out


def _pick(hist, width, need, state, version):
    """Find, on the device, the bin where the count from the top reaches ``need``; read it back."""
    _fn(_cuda_src.kernel("sk_radix_pick"), version)((1,), (_cuda_src.PICK_BLOCK,),
                                                    (hist, np.int32(1 << width), np.uint64(need), state))
    b, above, eq = (int(v) for v in to_host_scalars(state))
    return b, above, eq


def _tail_error(tail, choices):
    """The error for an unknown top-k tail."""
    return SketchError(f"unknown top-k tail {tail!r}; choose one of {choices}")


def topk(table, d, k, keys, version, *, tail=TOPK_TAIL, cand_cap=None, blocks_per_sm=BLOCKS_PER_SM):
    """The k coordinates of largest |estimate|, by |estimate| descending (radix select).

    ``tail``: "sync" or "dev" (see the module docstring); ``cand_cap``: candidate buffer size
    (None: ``max(2k, 65536)``; tests shrink it to force the extra radix passes and the
    overflow paths); ``blocks_per_sm``: grid of the grid-stride kernels.
    """
    if tail == "dev":
        return _topk_dev(table, d, k, keys, version, cand_cap=cand_cap, blocks_per_sm=blocks_per_sm)
    if tail != "sync":
        raise _tail_error(tail, TOPK_TAILS)
    return _topk_sync(table, d, k, keys, version, cand_cap, blocks_per_sm)


def unsketch_topk(table, d, k, keys, version, *, tail=UNSKETCH_TAIL, cand_cap=None, blocks_per_sm=BLOCKS_PER_SM):
    """Dense d-vector holding the top-k estimates, zeros elsewhere.

    ``tail``: "sync" (top-k, then a scatter into zeros), "dev" (the "dev" chain, then the
    estimate buffer masked in place to the top k), or "auto" ("dev" up to
    ``DEV_UNSKETCH_MAX_D`` coordinates, else "sync"); ``cand_cap`` and ``blocks_per_sm`` as
    for ``topk``.
    """
    if tail == "auto":
        tail = "dev" if d <= DEV_UNSKETCH_MAX_D else "sync"
    if tail == "dev":
        return _topk_dev(table, d, k, keys, version, dense=True, cand_cap=cand_cap, blocks_per_sm=blocks_per_sm)
    if tail != "sync":
        raise _tail_error(tail, TOPK_TAILS + ("auto",))
    cp = _cp()
    with table.device:
        idx, val = _topk_sync(table, d, k, keys, version, cand_cap, blocks_per_sm)
        out = cp.zeros(d, dtype=table.dtype)
        out[idx] = val
        return out


def _chain_launcher(version, d, blocks_per_sm, only=None):
    """``launch(expr, args)`` for ``_cuda_topk.topk_dev``: one grid for d items, kernels looked up
    once per call (the host must stay ahead of the device).  ``only``: a prefix of the
    expressions to launch, the others skipped (the benchmark's pass-1 breakdown)."""
    grid, block, fns = (_grid(d, blocks_per_sm),), (_BLOCK,), {}

    def launch(expr, args):
        if only is not None and not expr.startswith(only):
            return
        fn = fns.get(expr)
        if fn is None:
            fn = fns[expr] = _fn(expr, version)
        fn(grid, block, args)
    return launch


def _topk_dev(table, d, k, keys, version, dense=False, cand_cap=None, blocks_per_sm=BLOCKS_PER_SM, only=None):
    """The "dev" top-k chain (``_cuda_topk.topk_dev``) on the device: the host never waits."""
    cp = _cp()
    with table.device:
        cap = max(1, cand_cap or _cuda_topk.default_cap(k))
        groups = version == 2 and _aligned(table)    # version 2: 16-byte gathers
        return _cuda_topk.topk_dev(cp, _chain_launcher(version, d, blocks_per_sm, only), cp.argsort, table,
                                   _dev_keys(keys), d, k, groups, cap, dense=dense)


def _topk_sync(table, d, k, keys, version, cand_cap=None, blocks_per_sm=BLOCKS_PER_SM):
    """Top-k reading the radix counts back once per pass (the first design)."""
    cp = _cp()
    with table.device:
        dt = table.dtype
        cap = cand_cap or _cuda_topk.default_cap(k)
        cap = max(cap, k)  # room for the whole answer even when every candidate ties
        est = cp.empty(d, dtype=dt)
        hist = cp.zeros(1 << _HIST_BITS, dtype=np.uint64)
        state = cp.empty(3, dtype=np.uint64)  # sk_radix_pick always writes it
        pshift = _KEY_BITS[dt.name]
        width = min(_HIST_BITS, pshift)
        _estimates(table, keys, version, None, d, est, hist=hist, prefix=0, shift=pshift - width, width=width,
                   blocks_per_sm=blocks_per_sm)
        prefix, above_total, need = 0, 0, k
        while True:
            b, above, eq = _pick(hist, width, need, state, version)
            prefix, pshift = (prefix << width) | b, pshift - width
            above_total, need = above_total + above, need - above
            if eq <= cap or pshift == 0:
                break
            width = min(_HIST_BITS, pshift)
            hist.fill(0)
            _launch(_k("sk_radix_hist", table), d,
                    (est, np.int64(d), hist, np.uint64(prefix), np.int32(pshift - width), np.int32(width)),
                    version=version, blocks_per_sm=blocks_per_sm)
        n_cand = min(eq, cap)
        n_out = above_total + n_cand
        out_idx, out_val, out_key = cp.empty(n_out, np.int64), cp.empty(n_out, dt), cp.empty(n_out, dt)
        counters = cp.zeros(2, dtype=np.uint64)
        _launch(_k("sk_radix_compact", table), d,
                (est, np.int64(d), np.uint64(prefix), np.int32(pshift), out_idx, out_val, out_key, counters,
                 np.int64(above_total), np.int64(n_cand)), version=version, blocks_per_sm=blocks_per_sm)
        del est
        # Every "sure" entry outranks every candidate, so one radix sort of -|v| over the
        # k + a few candidates both selects and orders.  (cupy.argpartition, tried first,
        # cost ~1 ms here.)
        order = cp.argsort(out_key)[:k]
        return out_idx[order], out_val[order]


def heavy(table, d, threshold, keys, version):
    """Coordinates with ``|estimate| >= threshold``, ascending (count, compact, sort the few)."""
    cp = _cp()
    with table.device:
        dt = table.dtype
        thr = dt.type(threshold)
        est = cp.empty(d, dtype=dt)
        count = cp.zeros(1, dtype=np.uint64)
        _estimates(table, keys, version, None, d, est, count=count, thr=thr)
        m = int(to_host_scalars(count)[0])
        out_idx, out_val = cp.empty(m, np.int64), cp.empty(m, dt)
        if m == 0:
            return out_idx, out_val
        n_out = cp.zeros(1, dtype=np.uint64)
        _launch(_k("sk_threshold_compact", table), d,
                (est, np.int64(d), thr, out_idx, out_val, n_out, np.int64(m)), version=version)
        del est
        order = cp.argsort(out_idx)
        return out_idx[order], out_val[order]


def zero_buckets(table, indices, keys, version):
    """Zero, in every row, each bucket that one of ``indices`` hashes to."""
    with table.device:
        t, k, rows, cols = _table_args(table, keys)
        n = indices.shape[0]
        _launch(_k("sk_zero_buckets", table), n, (indices, np.int64(n), t, k, rows, cols), version=version)


def l2_estimate(table):
    """``sqrt(median_j sum_b T[j, b]**2)``, the row sums in float64."""
    cp = _cp()
    with table.device:
        t = table.astype(cp.float64)
        row_sq = np.array(to_host_scalars((t * t).sum(axis=1)))
        return float(np.sqrt(np.median(row_sq)))


def _buckets_and_signs(indices, keys, cols, version=1):
    """Device buckets ``(rows, n)`` int64 and signs int8 of ``indices`` (tests the hash spec)."""
    cp = _cp()
    with indices.device:
        rows = keys.shape[0]
        n = indices.shape[0]
        buckets = cp.empty((rows, n), dtype=np.int64)
        signs = cp.empty((rows, n), dtype=np.int8)
        if n:
            _launch("sk_hash_rows", n, (indices, np.int64(n), _dev_keys(keys), np.int32(rows),
                                        np.uint32(cols), buckets, signs), version=version)
        return buckets, signs


# ---- contract: table arithmetic and host transfers
# The parts of the backend contract (sketchlib.backends) that launch no
# hand-written kernel: CuPy element-wise operations on the table's device and
# the one counted device-to-host read.
def zeros_tables(n, rows, cols, dtype):
    """``n`` zero tables as one C-contiguous ``(n, rows, cols)`` array on the current device."""
    return _cp().zeros((n, rows, cols), dtype=dtype)


def to_host_scalars(array):
    """The elements of a small device array as Python scalars: one device-to-host read, recorded."""
    from . import record_host_transfer
    host = _cp().asnumpy(array)
    record_host_transfer(host.nbytes)
    return tuple(host.reshape(-1).tolist())


def as_input(x, dtype):
    """``x`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return _cp().ascontiguousarray(x, dtype=dtype)


def index_range(indices):
    """``(min, max)`` of a non-empty integer array: both reduced on the device, one read."""
    cp = _cp()
    with indices.device:
        return to_host_scalars(cp.stack((indices.min(), indices.max())))


def fill_zero(table):
    """Set every element to zero, in place."""
    with table.device:
        table.fill(0)


def scale(table, alpha):
    """``table *= alpha``, in place, ``alpha`` cast to the table dtype."""
    with table.device:
        table *= table.dtype.type(alpha)


def add_scaled(table, other, alpha):
    """``table += alpha * other``, in place (a plain add when ``alpha == 1``)."""
    with table.device:
        if alpha == 1.0:
            table += other
        else:
            table += other * table.dtype.type(alpha)


def copy_table(table):
    """A new copy of a table, on the table's device."""
    with table.device:
        return table.copy()


def scatter_dense(d, indices, values, dtype):
    """A zero d-vector with ``out[indices] = values``, on the device of ``indices``."""
    with indices.device:
        out = _cp().zeros(d, dtype=dtype)
        out[indices] = values
        return out


def abs_stats(x, table):
    """``(sum |x|, max |table|)`` reduced on the device and read back together: one host read."""
    cp = _cp()
    ref = x if x is not None else table
    with ref.device:
        total = cp.zeros((), dtype=cp.float64) if x is None else cp.abs(x).sum(dtype=cp.float64)
        tmax = cp.zeros((), dtype=cp.float64) if table is None else cp.abs(table).max().astype(cp.float64)
        return to_host_scalars(cp.stack((total, tmax)))
