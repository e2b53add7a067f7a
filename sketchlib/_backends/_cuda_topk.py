"""The GPU backend's "dev" top-k as one launch sequence, written once.

``topk_dev`` allocates the buffers, launches the chain of kernels and finishes the
result.  It touches arrays only through the array module ``xp`` it is given and kernels
only through a ``launch`` callable, so the same code runs:

* on a device: ``cupy_gpu`` passes ``cupy`` and a launcher of the compiled kernels
  (``bench/bench_gpu.py`` times it through ``cupy_gpu``);
* on the CPU: ``tests/test_cuda_emulated.py`` passes NumPy and a launcher of the same
  kernels built with g++ over ``tests/_cuda_emu.h``, which also checks every argument's
  size and kind against the kernel's parameters.

No array library is imported here: this module needs only NumPy (for the scalar types).
"""
import numpy as np

from . import _cuda_src

__all__ = []

KEY_BITS = {"float32": 31, "float64": 63}   # bits of |v|'s order-preserving key
_NULL = np.uint64(0)                         # a null pointer argument


def default_cap(k):
    """Candidate buffer size of a top-k when the caller gives none."""
    return max(2 * k, 1 << 16)


def refine_passes(kbits, ib):
    """Refinement passes after pass 1: enough 12-bit digits for the whole select key (no-ops once resolved)."""
    return -(-(kbits + ib - _cuda_src.HIST_BITS) // _cuda_src.HIST_BITS)


def topk_dev(xp, launch, argsort, table, keys, d, k, groups, cap, dense=False, packed=None):
    """Top-k (or, ``dense``, the top-k unsketch) of a table with every count kept on the device.

    Estimates + 12-bit histogram + pick (last block), compaction of the entries above the
    picked bin (output) and in it (candidates), refinement passes over the candidates
    down to one key, selection of exactly k, then one sort.  float32 with ``d <= 2**32``
    selects on |v| then the reversed index, so the result is exactly the first k by
    (|v| descending, index ascending), and sorts packed u64 keys; otherwise two stable
    argsorts give that order to the k taken (ties at the k-th magnitude taken in atomic
    order).  ``dense``: with packed keys, the estimate buffer itself becomes the result,
    every entry outside the top k zeroed in one pass (no output buffer, no sort);
    otherwise the top k are scattered into zeros.

    Parameters
    ----------
    xp : module
        Array module of ``table`` (``zeros``, ``empty``, ``abs``).
    launch : callable
        ``launch(expr, args)`` runs the kernel ``expr`` (from ``_cuda_src.KERNELS``) with
        ``args`` over a grid for d coordinates, in order with the previous launches.
    argsort : callable
        A stable argsort of ``xp`` arrays.
    table : array
        The ``(rows, cols)`` table, float32 or float64.
    keys : array
        The row keys, flat ``2 * rows`` uint32, in ``xp``'s memory.
    d, k : int
        Coordinates, and how many to take (``1 <= k <= d``).
    groups : bool
        Pass 1 estimates a group of four coordinates per thread (hash version 2 on a
        16-byte-aligned table).
    cap : int
        Candidate buffer size (at least 1); overflowing it only costs rescans of the estimates.
    dense : bool
        Return the dense d-vector of the top k (zeros elsewhere) instead of ``(idx, val)``.
    packed : bool or None
        Packed 64-bit output keys; None: float32 with ``d <= 2**32`` (the backend never
        passes it).  False makes float32 take the index/value outputs it otherwise takes
        only past 2**32 coordinates: the CPU emulation covers that path this way.

    Returns
    -------
    (indices, values) by |value| descending, or the dense d-vector when ``dense``.
    """
    dt = table.dtype
    name = dt.name
    kbits = KEY_BITS[name]
    fits = name == "float32" and d <= 2**32          # the packed key holds a float32 and a 32-bit index
    packed = fits if packed is None else bool(packed) and fits
    if dense and not packed:
        idx, val = topk_dev(xp, launch, argsort, table, keys, d, k, groups, cap, packed=False)
        out = xp.zeros(d, dtype=dt)
        out[idx] = val
        return out
    ib = (d - 1).bit_length() if packed else 0   # index bits of the select key: see skt_ckey
    hb = 1 << _cuda_src.HIST_BITS
    work = xp.zeros(hb + _cuda_src.TOPK_WORDS, dtype=np.uint64)   # histogram and state: one memset
    hist, state = work[:hb], work[hb:]
    est = xp.empty(d, dtype=dt)
    cand_idx, cand_val = xp.empty(cap, dtype=np.int64), xp.empty(cap, dtype=dt)
    if dense:
        out_key, out_idx, out_val = _NULL, _NULL, _NULL
    elif packed:
        out_key, out_idx, out_val = xp.empty(k, dtype=np.uint64), _NULL, _NULL
    else:
        out_key, out_idx, out_val = _NULL, xp.empty(k, dtype=np.int64), xp.empty(k, dtype=dt)
    rows, cols = table.shape
    n, ncap, nib = np.int64(d), np.int64(cap), np.int32(ib)
    launch(_cuda_src.kernel("skt_estimates", name, _cuda_src.median_rows(rows), bool(groups)),
           (table, keys, np.int32(rows), np.uint32(cols), n, est, hist, state, np.uint64(k), np.int32(kbits), nib))
    launch(_cuda_src.kernel("skt_compact", name),
           (est, n, state, cand_idx, cand_val, ncap, out_idx, out_val, out_key, nib))
    refine = _cuda_src.kernel("skt_refine", name)
    for _ in range(refine_passes(kbits, ib)):
        launch(refine, (est, n, cand_idx, cand_val, ncap, hist, state, nib))
    if dense:
        launch(_cuda_src.kernel("skt_mask", name), (est, n, state, nib))
        return est
    launch(_cuda_src.kernel("skt_select", name),
           (est, n, cand_idx, cand_val, ncap, state, out_idx, out_val, out_key, nib))
    del est, cand_idx, cand_val
    if packed:
        out_key.sort()
        idx, val = xp.empty(k, dtype=np.int64), xp.empty(k, dtype=dt)
        launch(_cuda_src.kernel("skt_unpack"), (out_key, np.int64(k), idx, val))
        return idx, val
    first = argsort(out_idx)                       # stable sorts: index, then -|v|
    order = first[argsort(-xp.abs(out_val[first]))]
    return out_idx[order], out_val[order]
