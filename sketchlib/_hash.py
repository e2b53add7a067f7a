"""The hash families of the sketch: (coordinate, row key) -> (bucket, sign).

This NumPy code is the specification of both hash versions.  The Numba and
CUDA versions are tested against it bit for bit.

Version 1, all arithmetic on unsigned 32-bit words, wrapping::

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

Version 2 ("blocked", needs ``cols % 4 == 0``) hashes aligned blocks of four
coordinates, so that the four land in one aligned group of four buckets and a
GPU adds them with a single 16-byte vector atomic instead of four::

    blk, off   = i >> 2, i & 3
    h          = version-1 hash of blk
    bucket     = 4 * ((h * (cols/4)) >> 32)  +  (off ^ (h & 3))
    sign       = +1 if (h >> (2 + off)) & 1 == 0 else -1

The XOR with two hash bits shuffles the block inside its bucket group, so two
coordinates of different blocks collide with probability ``4/cols * 1/4 =
1/cols`` whatever their offsets, as in version 1 (without it, coordinates with
equal offsets would collide four times as often).  Coordinates of one block
never collide, and every coordinate has its own sign bit: the variance of an
estimate is that of version 1 for every vector.  What changes is higher-order:
collisions come four at a time (``tests/test_hash_quality.py`` measures the
estimation error of both versions).
"""
import numpy as np

from .errors import SketchError

HASH_VERSIONS = (1, 2)
BLOCKED_WIDTH = 4         # coordinates per block in version 2
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
    """Per-row hash keys as a ``(rows, 2)`` uint32 array ``[[a_0, b_0], ...]``.

    Parameters
    ----------
    seed : int
        In ``[0, 2**64)``.
    rows : int

    Returns
    -------
    numpy.ndarray of shape (rows, 2), uint32
    """
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
    """The 32-bit hash ``h`` of int64 ``indices`` under one row's keys (version 1).

    Parameters
    ----------
    indices : integer array
    key_a, key_b : int
        The row's two uint32 keys.

    Returns
    -------
    numpy.ndarray of uint32
    """
    idx = np.asarray(indices, dtype=np.int64).view(np.uint64)
    lo = (idx & np.uint64(_M32)).astype(np.uint32)
    hi = (idx >> np.uint64(32)).astype(np.uint32)
    return _mix32(_mix32(lo ^ np.uint32(key_a)) ^ hi ^ np.uint32(key_b))


def auto_hash_version(cols):
    """The version a sketch gets by default: 2 when ``cols`` is divisible by 4, else 1.

    Parameters
    ----------
    cols : int

    Returns
    -------
    int
    """
    return 2 if cols % BLOCKED_WIDTH == 0 else 1


def buckets_and_signs(indices, key_a, key_b, cols, version=1):
    """Buckets (int64) and signs (+1/-1 as int8) of ``indices`` in one row.

    Parameters
    ----------
    indices : integer array
        Coordinates (int64 range).
    key_a, key_b : int
        The row's keys (a row of :func:`row_keys`).
    cols : int
        Buckets per row (divisible by 4 for version 2).
    version : {1, 2}, default 1

    Returns
    -------
    buckets : numpy.ndarray of int64, in ``[0, cols)``
    signs : numpy.ndarray of int8, +1 or -1

    Raises
    ------
    SketchError
        An unknown hash version.
    """
    if version == 1:
        h = hash32(indices, key_a, key_b)
        buckets = ((h.astype(np.uint64) * np.uint64(cols)) >> np.uint64(32)).astype(np.int64)
        signbit = h & np.uint32(1)
    elif version == 2:
        idx = np.asarray(indices, dtype=np.int64)
        off = (idx & 3).astype(np.uint32)
        h = hash32(idx >> 2, key_a, key_b)
        group = (h.astype(np.uint64) * np.uint64(cols // BLOCKED_WIDTH)) >> np.uint64(32)
        buckets = (group * np.uint64(BLOCKED_WIDTH) + (off ^ (h & np.uint32(3)))).astype(np.int64)
        signbit = (h >> (np.uint32(2) + off)) & np.uint32(1)
    else:
        raise SketchError(f"hash version must be one of {HASH_VERSIONS}, got {version!r}")
    signs = (1 - 2 * signbit.astype(np.int8)).astype(np.int8)
    return buckets, signs
