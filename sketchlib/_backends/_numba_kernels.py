"""Numba kernels of the CPU backend (imported only when the backend is used).

Hashes are computed in the kernels and are bit-identical to ``sketchlib._hash``:
Numba widens integer arithmetic to 64 bits, so every value lives in a uint64
and is masked back to 32 bits after each multiply.  All constants, shift
amounts included, are uint64: mixing int64 and uint64 in Numba gives float64.

Scatter-adds would race under ``prange``, so inserts split the (row,
coordinate) work into one contiguous range per thread; a row shared by two
threads gets one private copy, added in afterwards (see ``insert_flat``).
"""
import numpy as np
from numba import njit, prange

M32 = np.uint64(0xFFFFFFFF)
C1 = np.uint64(0x7FEB352D)
C2 = np.uint64(0x846CA68B)
S15 = np.uint64(15)
S16 = np.uint64(16)
S32 = np.uint64(32)
ONE = np.uint64(1)
TWO = np.uint64(2)
THREE = np.uint64(3)
BLOCK = 2048          # coordinates per block: a (rows, BLOCK) scratch stays in L1/L2
NBINS = 1 << 15       # histogram bins over the high bits of |estimate|


@njit(cache=True)
def _mix(x):
    """lowbias32 on a uint64 holding a 32-bit word."""
    x = x ^ (x >> S16)
    x = (x * C1) & M32
    x = x ^ (x >> S15)
    x = (x * C2) & M32
    return x ^ (x >> S16)


@njit(cache=True)
def _hash(i, a, b):
    """The 32-bit hash of int64 coordinate ``i`` under row keys ``a, b`` (uint64)."""
    u = np.uint64(i)
    return _mix(_mix((u & M32) ^ a) ^ (u >> S32) ^ b)


@njit(cache=True)
def _code_v2(i, a, b, ugroups):
    """``bucket << 1 | signbit`` of coordinate ``i`` under hash version 2 (blocks of four)."""
    u = np.uint64(i)
    off = u & THREE
    h = _hash(u >> TWO, a, b)
    bucket = (((h * ugroups) >> S32) << TWO) | (off ^ (h & THREE))
    return np.int64((bucket << ONE) | ((h >> (TWO + off)) & ONE))


@njit(cache=True)
def _code(i, a, b, ucols, hv):
    """``bucket << 1 | signbit`` of coordinate ``i`` under hash version ``hv``."""
    if hv == 1:
        h = _hash(i, a, b)
        return np.int64((((h * ucols) >> S32) << ONE) | (h & ONE))
    return _code_v2(i, a, b, ucols >> TWO)


@njit(cache=True)
def hash_many(indices, a, b, cols, hv):
    """Buckets (int64) and signs (int8) of ``indices`` in one row (for tests)."""
    n = indices.shape[0]
    buckets = np.empty(n, np.int64)
    signs = np.empty(n, np.int8)
    ua, ub, uc = np.uint64(a), np.uint64(b), np.uint64(cols)
    for k in range(n):
        e = _code(indices[k], ua, ub, uc, hv)
        buckets[k] = e >> 1
        signs[k] = 1 - 2 * np.int8(e & 1)
    return buckets, signs


# ------------------------------------------------------------------- inserts
@njit(cache=True)
def _codes_range(codes, base, n, a, b, ucols, hv):
    """``codes[k] = bucket << 1 | signbit`` of coordinate ``base + k`` (vectorizes)."""
    if hv == 1:
        for k in range(n):
            h = _hash(base + k, a, b)
            codes[k] = np.int64((((h * ucols) >> S32) << ONE) | (h & ONE))
    else:
        # A hash per coordinate, not one per block of four: this loop vectorizes; one loop
        # making four codes from one hash measured 1.7x slower on the 2-core CPU, and a
        # loop of block hashes followed by a loop of codes 1.6x slower.
        ugroups = ucols >> TWO
        for k in range(n):
            codes[k] = _code_v2(base + k, a, b, ugroups)


@njit(cache=True)
def _codes_idx(codes, indices, base, n, a, b, ucols, hv):
    """``codes[k] = bucket << 1 | signbit`` of coordinate ``indices[base + k]``."""
    for k in range(n):
        codes[k] = _code(indices[base + k], a, b, ucols, hv)


@njit(cache=True)
def _scatter_range(out, x, base, lo, hi, a, b, ucols, hv):
    """``out[h(base + i)] += s(base + i) * x[i]`` for i in [lo, hi).

    Hashes of a block are computed first, in a loop of their own, so that it
    vectorizes; the scatter loop then only loads, negates (a select, not a
    branch) and adds.
    """
    codes = np.empty(BLOCK, np.int64)
    for c0 in range(lo, hi, BLOCK):
        n = min(BLOCK, hi - c0)
        _codes_range(codes, base + c0, n, a, b, ucols, hv)
        for k in range(n):
            e = codes[k]
            v = x[c0 + k]
            out[e >> 1] += -v if e & 1 else v


@njit(cache=True)
def _scatter_pair(out0, out1, x, base, d, a0, b0, a1, b1, ucols, hv):
    """Two rows' ``out[h(base + i)] += s(base + i) * x[i]`` for i in [0, d), interleaved.

    Measured 9% faster than two single-row passes (x loaded once, two
    independent scatter streams per iteration).
    """
    codes0 = np.empty(BLOCK, np.int64)
    codes1 = np.empty(BLOCK, np.int64)
    for c0 in range(0, d, BLOCK):
        n = min(BLOCK, d - c0)
        _codes_range(codes0, base + c0, n, a0, b0, ucols, hv)
        _codes_range(codes1, base + c0, n, a1, b1, ucols, hv)
        for k in range(n):
            v = x[c0 + k]
            e = codes0[k]
            out0[e >> 1] += -v if e & 1 else v
            e = codes1[k]
            out1[e >> 1] += -v if e & 1 else v


@njit(parallel=True, cache=True)
def insert_flat(tables, stack, base, keys, hv, bufs, buf_row):
    """Scatter-add sources into the ``(Q, cols)`` rows of ``tables``, work split evenly.

    Flat row q is key row ``q % rows`` of source ``stack[q // rows]``, whose
    element i is coordinate ``base + i``.  The ``Q * d`` (row, coordinate)
    pairs are cut into ``len(buf_row)`` equal contiguous ranges, one per
    thread.  A range that begins inside a row adds that first piece into its
    private ``bufs[t]`` (``buf_row[t]`` names the row), everything else goes
    straight into the table, so no two threads write the same row; the private
    pieces are added in at the end.  With 5 rows on 2 threads only one row is
    split, against every row with a split into (row, part) tasks.
    """
    nflat, cols = tables.shape
    rows = keys.shape[0]
    d = stack.shape[1]
    ntasks = buf_row.shape[0]
    work = nflat * d
    ucols = np.uint64(cols)
    for t in prange(ntasks):
        lo = work * t // ntasks
        hi = work * (t + 1) // ntasks
        pos = lo
        while pos < hi:
            q = pos // d
            i0 = pos - q * d
            i1 = min(d, i0 + (hi - pos))
            j = q % rows
            if i0 == 0 and pos + 2 * d <= hi and j + 1 < rows:
                # Two whole rows of one source: one pass reads x once for both.
                _scatter_pair(tables[q], tables[q + 1], stack[q // rows], base, d,
                              keys[j, 0], keys[j, 1], keys[j + 1, 0], keys[j + 1, 1], ucols, hv)
                pos += 2 * d
                continue
            out = bufs[t] if (pos == lo and i0 != 0) else tables[q]
            _scatter_range(out, stack[q // rows], base, i0, i1, keys[j, 0], keys[j, 1], ucols, hv)
            pos += i1 - i0
    _add_rows(tables, bufs, buf_row)


@njit(parallel=True, cache=True)
def _add_rows(tables, bufs, buf_row):
    """``tables[buf_row[t]] += bufs[t]`` for every t with a private piece, by column block."""
    cols = tables.shape[1]
    nb = (cols + 16383) // 16384
    for blk in prange(nb):
        lo = blk * 16384
        hi = min(cols, lo + 16384)
        for t in range(buf_row.shape[0]):
            q = buf_row[t]
            if q >= 0:
                for c in range(lo, hi):
                    tables[q, c] += bufs[t, c]


@njit(parallel=True, cache=True)
def insert_sparse(table, indices, values, keys, hv):
    """``table += S(v)``, ``v[indices] += values`` (duplicates accumulate); by row."""
    rows, cols = table.shape
    ucols = np.uint64(cols)
    for j in prange(rows):
        a, b = keys[j, 0], keys[j, 1]
        for k in range(indices.shape[0]):
            e = _code(indices[k], a, b, ucols, hv)
            v = values[k]
            table[j, e >> 1] += -v if e & 1 else v


@njit(parallel=True, cache=True)
def zero_buckets(table, indices, keys, hv):
    """Zero, in every row, the buckets that ``indices`` hash to."""
    rows, cols = table.shape
    ucols = np.uint64(cols)
    for j in prange(rows):
        a, b = keys[j, 0], keys[j, 1]
        for k in range(indices.shape[0]):
            table[j, _code(indices[k], a, b, ucols, hv) >> 1] = 0


# ----------------------------------------------------------------- estimates
@njit(cache=True)
def _median_col(scratch, k, rows, tmp):
    """numpy.median of ``scratch[:rows, k]`` (mean of the middle two if rows is even; NaN if any is NaN)."""
    if rows == 1:
        return scratch[0, k]
    nan = False
    for j in range(rows):
        nan |= scratch[j, k] != scratch[j, k]
    if nan:                 # as numpy.median; min/max networks and the sort would drop it
        return np.nan
    if rows == 3:
        x, y, z = scratch[0, k], scratch[1, k], scratch[2, k]
        return max(min(x, y), min(max(x, y), z))
    if rows == 5:
        a, b, c, d, e = scratch[0, k], scratch[1, k], scratch[2, k], scratch[3, k], scratch[4, k]
        f = max(min(a, b), min(c, d))
        g = min(max(a, b), max(c, d))
        return max(min(e, f), min(max(e, f), g))
    for j in range(rows):
        v = scratch[j, k]
        q = j
        while q > 0 and tmp[q - 1] > v:
            tmp[q] = tmp[q - 1]
            q -= 1
        tmp[q] = v
    m = rows // 2
    if rows % 2:
        return tmp[m]
    return (tmp[m - 1] + tmp[m]) / 2


@njit(cache=True)
def _estimate_block(table, keys, hv, indices, use_idx, base, n, out, off, scratch, codes, tmp):
    """Estimates of n coordinates into ``out[off:off+n]``, one table row at a time.

    Coordinates are ``indices[base:base+n]`` if ``use_idx`` else ``base..base+n-1``.
    """
    rows, cols = table.shape
    ucols = np.uint64(cols)
    for j in range(rows):
        if use_idx:
            _codes_idx(codes, indices, base, n, keys[j, 0], keys[j, 1], ucols, hv)
        else:
            _codes_range(codes, base, n, keys[j, 0], keys[j, 1], ucols, hv)
        trow = table[j]
        for k in range(n):
            e = codes[k]
            v = trow[e >> 1]
            scratch[j, k] = -v if e & 1 else v
    for k in range(n):
        out[off + k] = _median_col(scratch, k, rows, tmp)


@njit(parallel=True, cache=True)
def query(table, indices, keys, hv, out):
    """Median-over-rows estimates of ``indices`` into ``out``."""
    rows = table.shape[0]
    n = indices.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    for t in prange(nb):
        scratch = np.empty((rows, BLOCK), table.dtype)
        tmp = np.empty(rows, table.dtype)
        codes = np.empty(BLOCK, np.int64)
        lo = t * BLOCK
        _estimate_block(table, keys, hv, indices, True, lo, min(BLOCK, n - lo), out, lo, scratch, codes, tmp)


@njit(parallel=True, cache=True)
def estimate_all(table, keys, hv, out):
    """Estimates of coordinates 0..len(out)-1 into ``out``."""
    rows = table.shape[0]
    d = out.shape[0]
    dummy = np.empty(1, np.int64)
    nb = (d + BLOCK - 1) // BLOCK
    for t in prange(nb):
        scratch = np.empty((rows, BLOCK), table.dtype)
        tmp = np.empty(rows, table.dtype)
        codes = np.empty(BLOCK, np.int64)
        lo = t * BLOCK
        _estimate_block(table, keys, hv, dummy, False, lo, min(BLOCK, d - lo), out, lo, scratch, codes, tmp)


# -------------------------------------------------------------- top-k / heavy
@njit(cache=True)
def _abs_key(bits, absmask, shift):
    """Histogram bin of a float's bit pattern: high bits of |value|, monotone in |value|."""
    return np.int64((bits & absmask) >> shift)


@njit(parallel=True, cache=True)
def est_hist(table, keys, hv, d, ntasks, est_bits, store, absmask, shift):
    """Per-task histograms of the bins of |estimate| over [0, d).

    With ``store`` the estimates are kept in ``est_bits`` (a d-length buffer,
    viewed as unsigned ints of the float's width); otherwise nothing per
    coordinate is written.
    """
    rows = table.shape[0]
    hist = np.zeros((ntasks, NBINS), np.int64)
    dummy = np.empty(1, np.int64)
    for t in prange(ntasks):
        scratch = np.empty((rows, BLOCK), table.dtype)
        tmp = np.empty(rows, table.dtype)
        codes = np.empty(BLOCK, np.int64)
        vals = np.empty(BLOCK, table.dtype)
        bits = vals.view(est_bits.dtype)
        lo = d * t // ntasks
        hi = d * (t + 1) // ntasks
        for c0 in range(lo, hi, BLOCK):
            n = min(BLOCK, hi - c0)
            _estimate_block(table, keys, hv, dummy, False, c0, n, vals, 0, scratch, codes, tmp)
            for k in range(n):
                hist[t, _abs_key(bits[k], absmask, shift)] += 1
            if store:
                for k in range(n):
                    est_bits[c0 + k] = bits[k]
    return hist


@njit(parallel=True, cache=True)
def gather_bins(table, keys, hv, d, ntasks, est_bits, stored, absmask, shift, min_bin, offsets,
                out_idx, out_bits):
    """Coordinates whose |estimate| bin is >= ``min_bin``, task t writing from ``offsets[t]``.

    Reads the stored estimates if ``stored``, else recomputes them.  Output
    indices come out ascending.
    """
    rows = table.shape[0]
    dummy = np.empty(1, np.int64)
    for t in prange(ntasks):
        lo = d * t // ntasks
        hi = d * (t + 1) // ntasks
        pos = offsets[t]
        if stored:
            for i in range(lo, hi):
                if _abs_key(est_bits[i], absmask, shift) >= min_bin:
                    out_idx[pos] = i
                    out_bits[pos] = est_bits[i]
                    pos += 1
        else:
            scratch = np.empty((rows, BLOCK), table.dtype)
            tmp = np.empty(rows, table.dtype)
            codes = np.empty(BLOCK, np.int64)
            vals = np.empty(BLOCK, table.dtype)
            bits = vals.view(est_bits.dtype)
            for c0 in range(lo, hi, BLOCK):
                n = min(BLOCK, hi - c0)
                _estimate_block(table, keys, hv, dummy, False, c0, n, vals, 0, scratch, codes, tmp)
                for k in range(n):
                    if _abs_key(bits[k], absmask, shift) >= min_bin:
                        out_idx[pos] = c0 + k
                        out_bits[pos] = bits[k]
                        pos += 1


@njit(parallel=True, cache=True)
def count_above(table, keys, hv, d, ntasks, est, store, threshold):
    """Per-task counts of |estimate| >= threshold (estimates kept in ``est`` if ``store``)."""
    rows = table.shape[0]
    counts = np.zeros(ntasks, np.int64)
    dummy = np.empty(1, np.int64)
    for t in prange(ntasks):
        scratch = np.empty((rows, BLOCK), table.dtype)
        tmp = np.empty(rows, table.dtype)
        codes = np.empty(BLOCK, np.int64)
        vals = np.empty(BLOCK, table.dtype)
        lo = d * t // ntasks
        hi = d * (t + 1) // ntasks
        c = 0
        for c0 in range(lo, hi, BLOCK):
            n = min(BLOCK, hi - c0)
            _estimate_block(table, keys, hv, dummy, False, c0, n, vals, 0, scratch, codes, tmp)
            for k in range(n):
                c += not abs(vals[k]) < threshold   # NaN counts (the contract's order)
            if store:
                for k in range(n):
                    est[c0 + k] = vals[k]
        counts[t] = c
    return counts


@njit(parallel=True, cache=True)
def gather_above(table, keys, hv, d, ntasks, est, stored, threshold, offsets, out_idx, out_val):
    """Coordinates with |estimate| >= threshold, ascending, task t writing from ``offsets[t]``."""
    rows = table.shape[0]
    dummy = np.empty(1, np.int64)
    for t in prange(ntasks):
        lo = d * t // ntasks
        hi = d * (t + 1) // ntasks
        pos = offsets[t]
        if stored:
            for i in range(lo, hi):
                if not abs(est[i]) < threshold:
                    out_idx[pos] = i
                    out_val[pos] = est[i]
                    pos += 1
        else:
            scratch = np.empty((rows, BLOCK), table.dtype)
            tmp = np.empty(rows, table.dtype)
            codes = np.empty(BLOCK, np.int64)
            vals = np.empty(BLOCK, table.dtype)
            for c0 in range(lo, hi, BLOCK):
                n = min(BLOCK, hi - c0)
                _estimate_block(table, keys, hv, dummy, False, c0, n, vals, 0, scratch, codes, tmp)
                for k in range(n):
                    if not abs(vals[k]) < threshold:
                        out_idx[pos] = c0 + k
                        out_val[pos] = vals[k]
                        pos += 1


# --------------------------------------------------------------------- misc
@njit(parallel=True, cache=True)
def row_sq_sums(table):
    """Per-row sum of squares in float64."""
    rows, cols = table.shape
    out = np.zeros(rows, np.float64)
    for j in prange(rows):
        s = 0.0
        for c in range(cols):
            v = np.float64(table[j, c])
            s += v * v
        out[j] = s
    return out
