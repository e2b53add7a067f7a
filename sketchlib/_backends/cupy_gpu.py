"""CuPy backend: the whole sketch on a CUDA device, with hand-written kernels.

The kernels (``_cuda_src``) hash coordinates on the fly, so nothing per
coordinate is stored: an insert touches only the input and the table, and
estimate-all / top-k / heavy hitters use one d-length buffer for the estimates.
Every kernel and every CuPy operation runs on the current CuPy stream
(``cupy.cuda.get_current_stream()``), so a caller that wraps a torch stream in
``cupy.cuda.ExternalStream`` gets the work ordered on its own stream.

Top-k never sorts d values: the estimate kernel also builds a 4096-bin histogram
of the top 12 bits of ``|estimate|`` (the float bits of a non-negative float
order like unsigned integers), one block finds the bin holding the k-th
largest, a compaction pass keeps the coordinates above that bin (all in the
top-k) and those inside it (candidates); further 12-bit passes narrow the bin
down while it holds too many candidates, and one radix sort of the survivors
(k plus the candidates) orders them and drops the extra candidates.  Two tails
(``_options["topk"]``): "sync" reads the counts back once per pass to size its
buffers (one pass in practice); "dev" never waits for the device: the last block
of each histogram pass picks the bin and keeps the state in device memory, the
candidates of the first bin are narrowed by further passes down to a single key,
and exactly k entries are written, then sorted as packed 64-bit keys.  float32:
the result is exactly the first k by (``|v|`` descending, index ascending), the
index being the last digits of the select key; float64 gets that order from two
stable sorts, but which of several coordinates tied at the k-th magnitude it takes
is up to the order of the atomics (as for "sync", whose ties come in any order).

Dense inserts are bound by random float atomics into the table (~100 G/s on an
H200, whatever the kernel: every variant in ``INSERT_VARIANTS`` timed within 4%
of the others, except "dsmem", which keeps the table in distributed shared
memory and was 2.6x slower); ``bench/bench_gpu.py`` times them all.  Hash
version 2 cuts the atomics four-fold: its groups of four coordinates land in
aligned groups of four buckets, added with one 16-byte vector atomic, and
estimates read a group with one 16-byte load.  The source is compiled once per
hash version (``-DSK_HASH_VERSION``), so the kernels carry no version branch.

Floating-point atomics land in a device-chosen order, so a table built here
equals the NumPy reference's only up to float rounding: each bucket is a sum of
the same terms in another order (relative difference of order
``eps * (sum of |terms|) / |sum|``; tests use ``rtol = 100 eps`` and
``atol = 10 eps (d / cols) max|x|``, each bucket summing about ``d / cols``
terms).  Queries, estimates, top-k and heavy hitters on a given table are
exact: they match the reference bit for bit.
"""
import numpy as np

from . import _cuda_src

__all__ = []

NAME = "cupy"
ARRAY_LIBRARY = "cupy"

INSERT_VARIANTS = ("simple", "rowy", "vec", "vec2x", "veccs", "vec2xcs", "dsmem")
EACH_VARIANTS = ("simple", "v4", "v4rows", "v4rows1")
TOPK_VARIANTS = ("sync", "dev")
# Private tuning switches (the GPU benchmark times every variant):
#   insert      - dense insert kernel, one of INSERT_VARIANTS ("dsmem": float32 on sm_90+,
#                 else "veccs")
#   stack_each  - sketch_each kernel for float32, one of EACH_VARIANTS ("v4rows": "v4"
#                 over groups of rows whose scratch fits in a third of the L2 cache;
#                 "v4rows1": one row at a time)
#   topk        - top-k tail, one of TOPK_VARIANTS: "sync" reads the radix counts back
#                 once per pass to size its buffers; "dev" keeps them on the device
#   unsketch    - top-k unsketch: "sync" (top-k, then a scatter into zeros), "dev" (the
#                 "dev" chain, then the estimate buffer masked in place to the top k: no
#                 sort, no output buffer), "auto" ("dev" up to d = DEV_UNSKETCH_MAX_D, else
#                 "sync"), or None (follow "topk")
#   cand_cap    - top-k candidate buffer size (None: max(2k, 65536)); tests shrink it
#                 to exercise the extra radix passes and the overflow paths
#   blocks_per_sm - grid size of the grid-stride kernels
# Defaults from one H100 run (bench/RESULTS.md): "v4rows" batched-each 14.4 ms vs 23.0 ms for
# "v4"; the "dev" top-k is not the default until a GPU run has timed it (its probe there
# compared two calls' picks among tied magnitudes, which may differ: fixed since).
_options = {"insert": "veccs", "stack_each": "v4rows", "topk": "sync", "unsketch": "auto", "cand_cap": None,
            "blocks_per_sm": 8}
# H100, hash 2, k = 50,000: "dev" unsketch 0.36 ms vs "sync" 0.51 ms at d = 6.57M (whose
# host round trips cost more than its kernels), but 3.3 vs 1.96 ms at d = 124M; the
# crossover between the two sizes was not measured.
DEV_UNSKETCH_MAX_D = 1 << 25

_BLOCK = _cuda_src.BLOCK
_HIST_BITS = _cuda_src.HIST_BITS
_NULL = np.uint64(0)          # a null pointer argument
_SUFFIX = {"float32": "f32", "float64": "f64"}
_KEY_BITS = {"float32": 31, "float64": 63}
_VEC_WIDTH = {"float32": 4, "float64": 2}

_modules = {}
_functions = {}
_keys_cache = {}
_sm_counts = {}
_l2_sizes = {}
_dsmem_smem = {}
_dsmem_plans = {}


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
def _fn(name, version=None):
    """Kernel ``name`` compiled for the current device and hash ``version`` (cached).

    ``version=None`` is for kernels that do not hash: any module already built serves.
    """
    cp = _cp()
    dev = cp.cuda.Device().id
    if version is None:
        version = next((v for (d, v) in _modules if d == dev), 1)
    key = (dev, version, name)
    fn = _functions.get(key)
    if fn is None:
        if (dev, version) not in _modules:
            _modules[(dev, version)] = cp.RawModule(
                code=_cuda_src.SOURCE, options=("-std=c++17", f"-DSK_HASH_VERSION={int(version)}"))
        fn = _functions[key] = _modules[(dev, version)].get_function(name)
    return fn


def _grid(work):
    """Blocks for a grid-stride loop over ``work`` items: enough to fill the device."""
    cp = _cp()
    dev = cp.cuda.Device().id
    if dev not in _sm_counts:
        _sm_counts[dev] = cp.cuda.Device(dev).attributes["MultiProcessorCount"]
    cap = _sm_counts[dev] * _options["blocks_per_sm"]
    return int(max(1, min(cap, -(-int(work) // _BLOCK))))


def _launch(name, work, args, grid_y=1, version=None):
    """Launch kernel ``name`` (of hash ``version``) over ``work`` items on the current stream."""
    _fn(name, version)((_grid(work), grid_y), (_BLOCK,), args)


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


def _sfx(array):
    """Kernel name suffix for an array's dtype."""
    return _SUFFIX[array.dtype.name]


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
        if x.dtype.name not in _SUFFIX or not x.flags.c_contiguous:
            return bool(to_host_scalars(cp.isfinite(x).all())[0])
        bad = cp.zeros(1, dtype=np.int32)
        if x.size:
            _launch("sk_all_finite_" + _sfx(x), x.size, (x, np.int64(x.size), bad))
        return not bool(to_host_scalars(bad)[0])


# -------------------------------------------------------------------------- inserts
def insert_dense(table, x, keys, version):
    """``table += S(x)`` for a dense vector (kernel chosen by ``_options['insert']``)."""
    with table.device:
        variant = _options["insert"]
        if variant not in INSERT_VARIANTS:
            raise ValueError(f"unknown insert variant {variant!r}; choose one of {INSERT_VARIANTS}")
        if variant == "dsmem":
            if table.dtype == np.float32 and int(_cp().cuda.Device().compute_capability) >= 90:
                return _insert_dsmem(table, x, keys, version)
            variant = "veccs"
        if variant.startswith("vec") and not (_aligned(x) and _groups_ok(table, version)):
            variant = "simple"
        t, k, rows, cols = _table_args(table, keys)
        d = x.shape[0]
        args = (x, np.int64(d), t, k, rows, cols)
        work = d // 4 if variant.startswith("vec") else d
        _launch(f"sk_insert_{variant}_{_sfx(table)}", work, args, grid_y=int(rows) if variant == "rowy" else 1,
                version=version)
    return None


def _dsmem_plan(rows, cols):
    """Column segments for the cluster insert: ``(nseg, seg_cols, per_block)``.

    Enough segments that one cluster's shared memory holds one, and, when
    rows are few, that the rows x segments clusters fill the device.
    """
    dev = _cp().cuda.Device()
    plan = _dsmem_plans.get((dev.id, rows, cols))
    if plan is not None:
        return plan
    attrs = dev.attributes
    cap = min(attrs["MaxSharedMemoryPerBlockOptin"] // 4 - 64, 56 * 1024)
    max_clusters = max(1, attrs["MultiProcessorCount"] // _cuda_src.CLUSTER)
    nseg = max(-(-cols // (_cuda_src.CLUSTER * cap)), max_clusters // rows, 1)
    nseg = min(nseg, cols)
    seg_cols = -(-cols // nseg)
    plan = _dsmem_plans[(dev.id, rows, cols)] = (nseg, seg_cols, -(-seg_cols // _cuda_src.CLUSTER))
    return plan


def _insert_dsmem(table, x, keys, version):
    """Launch the distributed-shared-memory insert (float32, sm_90)."""
    t, k, rows, cols = _table_args(table, keys)
    nseg, seg_cols, per_block = _dsmem_plan(int(rows), int(cols))
    fn = _fn("sk_insert_dsmem_f32", version)
    smem = per_block * 4
    dev = _cp().cuda.Device().id
    if smem > _dsmem_smem.get(dev, 48 * 1024):  # a driver call: only when the maximum grows
        fn.max_dynamic_shared_size_bytes = smem
        _dsmem_smem[dev] = smem
    grid = _cuda_src.CLUSTER * int(rows) * nseg
    fn((grid,), (_cuda_src.DSMEM_BLOCK,),
       (x, np.int64(x.shape[0]), t, k, rows, cols, np.int32(nseg), np.uint32(seg_cols), np.uint32(per_block)),
       shared_mem=smem)


def insert_sparse(table, indices, values, keys, version):
    """``table += S(v)`` for ``v[indices] += values`` (duplicates accumulate)."""
    with table.device:
        t, k, rows, cols = _table_args(table, keys)
        n = indices.shape[0]
        _launch("sk_insert_sparse_" + _sfx(table), n, (indices, values, np.int64(n), t, k, rows, cols),
                version=version)


def insert_stack_sum(table, stack, keys, version):
    """``table += S(sum of the rows of stack)``: summed in registers, one atomic per row."""
    with table.device:
        n, d = stack.shape
        if n == 0 or d == 0:
            return
        t, k, rows, cols = _table_args(table, keys)
        vec = (d * stack.dtype.itemsize) % 16 == 0 and _aligned(stack) and _groups_ok(table, version)
        name = f"sk_stack_sum_{'vec' if vec else 'simple'}_{_sfx(table)}"
        _launch(name, d // 4 if vec else d, (stack, np.int64(n), np.int64(d), t, k, rows, cols), version=version)


def insert_stack_each(tables, stack, keys, version):
    """``tables[i] += S(stack[i])``; float32 goes four vectors at a time through 16-byte atomics."""
    cp = _cp()
    with tables.device:
        n, d = stack.shape
        if n == 0 or d == 0:
            return
        _, rows, cols = tables.shape
        k = _dev_keys(keys)
        if tables.dtype.name == "float32" and _options["stack_each"] in ("v4rows", "v4rows1"):
            return _stack_each_v4rows(tables, stack, k, version, one_row=_options["stack_each"] == "v4rows1")
        if tables.dtype.name == "float32" and _options["stack_each"] == "v4":
            rc = rows * cols
            scratch = cp.zeros(rc * 4, dtype=np.float32)
            for n0 in range(0, n, 4):
                ng = np.int32(min(4, n - n0))
                _launch("sk_stack_each_v4_f32", d,
                        (stack, np.int64(n0), ng, np.int64(d), scratch, k, np.int32(rows), np.uint32(cols)),
                        version=version)
                _launch("sk_deinterleave_f32", rc, (scratch, np.int64(rc), tables, np.int64(n0), ng), version=version)
            return
        _launch("sk_stack_each_simple_" + _sfx(tables), d,
                (stack, np.int64(n), np.int64(d), tables, k, np.int32(rows), np.uint32(cols)), version=version)


def _l2_bytes():
    """L2 cache size of the current device (cached; 40 MB when the driver does not say)."""
    cp = _cp()
    dev = cp.cuda.Device().id
    if dev not in _l2_sizes:
        _l2_sizes[dev] = int(cp.cuda.Device(dev).attributes.get("L2CacheSize", 40 << 20) or (40 << 20))
    return _l2_sizes[dev]


def _stack_each_v4rows(tables, stack, k, version, one_row=False):
    """``sk_stack_each_v4`` by groups of rows whose interleaved scratch fits in L2.

    With all rows at once a 500k-column scratch (40 MB) left the 16-byte atomics to
    DRAM: the H100/H200 times scaled with memory bandwidth.  Each group of rows reads
    the four vectors again (streamed), a smaller cost.
    """
    cp = _cp()
    n, d = stack.shape
    _, rows, cols = tables.shape
    per = 1 if one_row else max(1, min(rows, (_l2_bytes() // 3) // (16 * cols)))
    scratch = cp.zeros(per * cols * 4, dtype=np.float32)
    rc = rows * cols
    for n0 in range(0, n, 4):
        ng = np.int32(min(4, n - n0))
        for j0 in range(0, rows, per):
            j1 = min(rows, j0 + per)
            _launch("sk_stack_each_v4r_f32", d, (stack, np.int64(n0), ng, np.int64(d), scratch, k,
                                                 np.int32(j0), np.int32(j1), np.uint32(cols)), version=version)
            m = (j1 - j0) * cols
            _launch("sk_deinterleave_at_f32", m, (scratch, np.int64(m), tables, np.int64(rc),
                                                  np.int64(j0 * cols), np.int64(n0), ng), version=version)


# -------------------------------------------------------------------------- queries
def _estimates(table, keys, version, idx, n, out, hist=_NULL, prefix=0, shift=0, width=_HIST_BITS,
               count=_NULL, thr=0.0):
    """Launch the estimate kernel (optionally with a radix histogram or a threshold count).

    Version 2 estimates of all coordinates go a group of four per thread (16-byte gathers).
    """
    t, k, rows, cols = _table_args(table, keys)
    r = int(rows) if int(rows) in _cuda_src.MEDIAN_ROWS else 0
    tail = (np.uint64(prefix), np.int32(shift), np.int32(width), count, table.dtype.type(thr))
    if idx is None and version == 2 and _aligned(table) and _aligned(out):
        _launch(f"sk_estimates4_{_sfx(table)}_r{r}", -(-n // 4), (t, k, rows, cols, np.int64(n), out, hist) + tail,
                version=version)
        return
    _launch(f"sk_estimates_{_sfx(table)}_r{r}", n,
            (t, k, rows, cols, _NULL if idx is None else idx, np.int64(n), out, hist) + tail, version=version)


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
    _fn("sk_radix_pick", version)((1,), (1024,), (hist, np.int32(1 << width), np.uint64(need), state))
    b, above, eq = (int(v) for v in to_host_scalars(state))
    return b, above, eq


def topk(table, d, k, keys, version):
    """The k coordinates of largest |estimate|, by |estimate| descending (radix select)."""
    variant = _options["topk"]
    if variant == "dev":
        return _topk_dev(table, d, k, keys, version)
    if variant != "sync":
        raise ValueError(f"unknown top-k variant {variant!r}; choose one of {TOPK_VARIANTS}")
    return _topk_sync(table, d, k, keys, version)


def unsketch_topk(table, d, k, keys, version):
    """Dense d-vector holding the top-k estimates, zeros elsewhere (``_options['unsketch']``)."""
    variant = _options["unsketch"] or _options["topk"]
    if variant == "auto":
        variant = "dev" if d <= DEV_UNSKETCH_MAX_D else "sync"
    if variant == "dev":
        return _topk_dev(table, d, k, keys, version, dense=True)
    if variant != "sync":
        raise ValueError(f"unknown unsketch variant {variant!r}; choose one of {TOPK_VARIANTS}")
    cp = _cp()
    with table.device:
        idx, val = _topk_sync(table, d, k, keys, version)
        out = cp.zeros(d, dtype=table.dtype)
        out[idx] = val
        return out


def _topk_dev(table, d, k, keys, version, dense=False):
    """Top-k with every count kept on the device: the host enqueues the chain and never waits.

    Estimates + 12-bit histogram + pick (last block), compaction of the entries above
    the picked bin (output) and in it (candidates), refinement passes over the
    candidates down to one key, selection of exactly k, then one sort.  float32 with
    ``d <= 2**32`` selects on |v| then the reversed index, so the result is exactly the
    first k by (|v| descending, index ascending), and sorts packed u64 keys; otherwise
    two stable argsorts give that order to the k taken (ties at the k-th magnitude
    taken in atomic order).  ``dense`` (the unsketch): with packed keys, the estimate
    buffer itself becomes the result, every entry outside the top k zeroed in one pass
    (no output buffer, no sort); otherwise the top k are scattered into zeros.
    """
    cp = _cp()
    with table.device:
        dt = table.dtype
        sfx = _sfx(table)
        kbits = _KEY_BITS[dt.name]
        cap = max(1, _options["cand_cap"] or max(2 * k, 1 << 16))
        packed = dt == np.float32 and d <= 2**32
        if dense and not packed:
            idx, val = _topk_dev(table, d, k, keys, version)
            out = cp.zeros(d, dtype=dt)
            out[idx] = val
            return out
        ib = (d - 1).bit_length() if packed else 0   # index bits of the select key: see skt_ckey
        work = cp.zeros((1 << _HIST_BITS) + _cuda_src.TOPK_WORDS, dtype=np.uint64)  # one memset
        hist, state = work[:1 << _HIST_BITS], work[1 << _HIST_BITS:]
        est = cp.empty(d, dtype=dt)
        cand_idx, cand_val = cp.empty(cap, np.int64), cp.empty(cap, dt)
        if dense:
            out_key, out_idx, out_val = _NULL, _NULL, _NULL
        elif packed:
            out_key, out_idx, out_val = cp.empty(k, np.uint64), _NULL, _NULL
        else:
            out_key, out_idx, out_val = _NULL, cp.empty(k, np.int64), cp.empty(k, dt)
        t, kk, rows, cols = _table_args(table, keys)
        r = int(rows) if int(rows) in _cuda_src.MEDIAN_ROWS else 0
        grid, block, n, ncap = (_grid(d),), (_BLOCK,), np.int64(d), np.int64(cap)
        # The host must stay ahead of the device here: grid and kernels looked up once.
        groups = "4" if version == 2 and _aligned(table) else ""   # version 2: 16-byte gathers
        estimates, compact, refine, select, mask = (_fn(name, version) for name in (
            f"skt_estimates{groups}_{sfx}_r{r}", "skt_compact_" + sfx, "skt_refine_" + sfx, "skt_select_" + sfx,
            "skt_mask_" + sfx))
        nib = np.int32(ib)
        estimates(grid, block, (t, kk, rows, cols, n, est, hist, state, np.uint64(k), np.int32(kbits), nib))
        compact(grid, block, (est, n, state, cand_idx, cand_val, ncap, out_idx, out_val, out_key, nib))
        for _ in range(-(-(kbits + ib - _HIST_BITS) // _HIST_BITS)):  # no-ops once resolved
            refine(grid, block, (est, n, cand_idx, cand_val, ncap, hist, state, nib))
        if dense:
            mask(grid, block, (est, n, state, nib))
            return est
        select(grid, block, (est, n, cand_idx, cand_val, ncap, state, out_idx, out_val, out_key, nib))
        del est, cand_idx, cand_val
        if packed:
            out_key.sort()
            idx, val = cp.empty(k, np.int64), cp.empty(k, dt)
            _launch("skt_unpack_f32", k, (out_key, np.int64(k), idx, val), version=version)
            return idx, val
        first = cp.argsort(out_idx)                       # stable sorts: index, then -|v|
        order = first[cp.argsort(-cp.abs(out_val[first]))]
        return out_idx[order], out_val[order]


def _topk_sync(table, d, k, keys, version):
    """Top-k reading the radix counts back once per pass (the first design)."""
    cp = _cp()
    with table.device:
        dt = table.dtype
        sfx = _sfx(table)
        cap = _options["cand_cap"] or max(2 * k, 1 << 16)
        cap = max(cap, k)  # room for the whole answer even when every candidate ties
        est = cp.empty(d, dtype=dt)
        hist = cp.zeros(1 << _HIST_BITS, dtype=np.uint64)
        state = cp.empty(3, dtype=np.uint64)  # sk_radix_pick always writes it
        pshift = _KEY_BITS[dt.name]
        width = min(_HIST_BITS, pshift)
        _estimates(table, keys, version, None, d, est, hist=hist, prefix=0, shift=pshift - width, width=width)
        prefix, above_total, need = 0, 0, k
        while True:
            b, above, eq = _pick(hist, width, need, state, version)
            prefix, pshift = (prefix << width) | b, pshift - width
            above_total, need = above_total + above, need - above
            if eq <= cap or pshift == 0:
                break
            width = min(_HIST_BITS, pshift)
            hist.fill(0)
            _launch("sk_radix_hist_" + sfx, d,
                    (est, np.int64(d), hist, np.uint64(prefix), np.int32(pshift - width), np.int32(width)),
                    version=version)
        n_cand = min(eq, cap)
        n_out = above_total + n_cand
        out_idx, out_val, out_key = cp.empty(n_out, np.int64), cp.empty(n_out, dt), cp.empty(n_out, dt)
        counters = cp.zeros(2, dtype=np.uint64)
        _launch("sk_radix_compact_" + sfx, d,
                (est, np.int64(d), np.uint64(prefix), np.int32(pshift), out_idx, out_val, out_key, counters,
                 np.int64(above_total), np.int64(n_cand)), version=version)
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
        _launch("sk_threshold_compact_" + _sfx(table), d,
                (est, np.int64(d), thr, out_idx, out_val, n_out, np.int64(m)), version=version)
        del est
        order = cp.argsort(out_idx)
        return out_idx[order], out_val[order]


def zero_buckets(table, indices, keys, version):
    """Zero, in every row, each bucket that one of ``indices`` hashes to."""
    with table.device:
        t, k, rows, cols = _table_args(table, keys)
        n = indices.shape[0]
        _launch("sk_zero_buckets_" + _sfx(table), n, (indices, np.int64(n), t, k, rows, cols), version=version)


def l2_estimate(table):
    """``sqrt(median_j sum_b T[j, b]**2)``, the row sums in float64."""
    cp = _cp()
    with table.device:
        t = table.astype(cp.float64)
        row_sq = np.asarray(to_host_scalars((t * t).sum(axis=1)))
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
