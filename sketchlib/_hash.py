"""The hash family of the sketch: (coordinate, row key) -> (bucket, sign).

This NumPy code is the specification (hash version 1).  The Numba and CUDA
versions are tested against it bit for bit.

Definition, all arithmetic on unsigned 32-bit words, wrapping::

    mix32(x)   = lowbias32: x ^= x>>16; x *= 0x7feb352d; x ^= x>>15;
                            x *= 0x846ca68b; x ^= x>>16
    lo, hi     = low and high 32 bits of the int64 coordinate i
    h          = mix32(mix32(lo ^ a_j) ^ hi ^ b_j)
    bucket     = (h * cols) >> 32            (64-bit product; Lemire's range map)
    sign       = +1 if h & 1 == 0 else -1

The row keys ``(a_j, b_j)`` are the two halves of ``splitmix64(seed + (j+1)*G)``
with ``G = 0x9E3779B97F4A7C15``; they are computed once on the host and passed
to every kernel, so nothing per coordinate is ever stored.  ``mix32`` is a
bijection, so for fixed keys two coordinates below 2**32 never share ``h``; the
bucket takes the high bits of ``h`` and the sign its low bit, which are
independent for any ``cols`` far below 2**32.
"""
import numpy as np

HASH_VERSION = 1
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN64 = 0x9E3779B97F4A7C15
MIX_C1 = 0x7FEB352D
MIX_C2 = 0x846CA68B


def _splitmix64(z):
    """One splitmix64 output for the Python int state ``z``."""
    z = (z + _GOLDEN64) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def row_keys(seed, rows):
    """Per-row hash keys as a ``(rows, 2)`` uint32 array ``[[a_0, b_0], ...]``."""
    keys = np.empty((rows, 2), dtype=np.uint32)
    for j in range(rows):
        z = _splitmix64((seed + (j + 1) * _GOLDEN64) & _M64)
        keys[j, 0] = z & _M32
        keys[j, 1] = z >> 32
    return keys


def _mix32(x):
    """lowbias32 on a uint32 array (wrapping)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(MIX_C1)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(MIX_C2)
    return x ^ (x >> np.uint32(16))


def hash32(indices, key_a, key_b):
    """The 32-bit hash ``h`` of int64 ``indices`` under one row's keys."""
    idx = np.asarray(indices, dtype=np.int64).view(np.uint64)
    lo = (idx & np.uint64(_M32)).astype(np.uint32)
    hi = (idx >> np.uint64(32)).astype(np.uint32)
    return _mix32(_mix32(lo ^ np.uint32(key_a)) ^ hi ^ np.uint32(key_b))


def buckets_and_signs(indices, key_a, key_b, cols):
    """Buckets (int64) and signs (+1/-1 as int8) of ``indices`` in one row."""
    h = hash32(indices, key_a, key_b)
    buckets = ((h.astype(np.uint64) * np.uint64(cols)) >> np.uint64(32)).astype(np.int64)
    signs = (1 - 2 * (h & np.uint32(1)).astype(np.int8)).astype(np.int8)
    return buckets, signs
