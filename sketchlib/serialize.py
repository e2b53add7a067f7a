"""Serialization of sketches: a versioned header, the table, and a CRC32.

Layout (little-endian)::

    magic        8 bytes  b"CSKETCH\\0"
    format       uint16   FORMAT_VERSION
    hash         uint16   hash version of the table's hashes
    dtype        uint8    1 = float32, 2 = float64   (then 3 pad bytes)
    d            uint64
    rows, cols   uint32, uint32
    seed         uint64
    payload      uint64   number of table bytes that follow
    table        rows*cols*itemsize bytes, C order
    crc32        uint32   over everything before it

Anything else (truncated, corrupted, foreign, newer versions) raises
:class:`~sketchlib.errors.SerializationError`; no partial sketch is returned.
"""
import os
import struct
import tempfile
import zlib

import numpy as np

from ._hash import HASH_VERSIONS
from .errors import BackendUnavailable, SerializationError, SketchError, UnknownBackend

__all__ = ["FORMAT_VERSION", "sketch_to_bytes", "sketch_from_bytes", "save", "load"]

FORMAT_VERSION = 1
_MAGIC = b"CSKETCH\x00"
_HEADER = struct.Struct("<8sHHB3xQIIQQ")
_CRC = struct.Struct("<I")
_DTYPE_CODES = {"float32": 1, "float64": 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}


def sketch_to_bytes(sketch):
    """Serialize a sketch to bytes.

    Parameters
    ----------
    sketch : CountSketch

    Returns
    -------
    bytes

    Raises
    ------
    BackendUnavailable
        Only if the sketch's backend has become unusable (its table cannot be read).
    """
    table = np.ascontiguousarray(sketch._backend.to_numpy(sketch.table))
    payload = table.astype(table.dtype.newbyteorder("<"), copy=False).tobytes()
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, sketch.hash_version, _DTYPE_CODES[sketch.dtype.name],
                          sketch.d, sketch.rows, sketch.cols, sketch.seed, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header + payload + _CRC.pack(crc)


def sketch_from_bytes(data, *, backend="auto"):
    """Rebuild a sketch from :func:`sketch_to_bytes` output.

    Parameters
    ----------
    data : bytes-like
    backend : str, default "auto"
        Backend of the new sketch.

    Returns
    -------
    CountSketch

    Raises
    ------
    SerializationError
        For truncated, corrupted or foreign bytes, or unsupported versions.
    UnknownBackend, BackendUnavailable
        For a ``backend`` that is not registered or cannot run here.
    """
    from .sketch import CountSketch

    data = memoryview(data).cast("B")
    if len(data) < _HEADER.size + _CRC.size:
        raise SerializationError(f"truncated: {len(data)} bytes is shorter than a sketch header")
    magic, fmt, hver, code, d, rows, cols, seed, nbytes = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise SerializationError("not a serialized CountSketch (bad magic bytes)")
    if fmt != FORMAT_VERSION:
        raise SerializationError(f"unsupported format version {fmt} (this library reads {FORMAT_VERSION})")
    if hver not in HASH_VERSIONS:
        raise SerializationError(f"sketch uses hash version {hver}; this library implements {HASH_VERSIONS}")
    if code not in _CODE_DTYPES:
        raise SerializationError(f"unknown dtype code {code}")
    dtype = np.dtype(_CODE_DTYPES[code]).newbyteorder("<")
    expected = _HEADER.size + nbytes + _CRC.size
    if nbytes != rows * cols * dtype.itemsize:
        raise SerializationError(f"payload size {nbytes} does not match rows*cols*itemsize")
    if len(data) != expected:
        raise SerializationError(f"truncated or padded: expected {expected} bytes, got {len(data)}")
    (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(data[:expected - _CRC.size]) != crc:
        raise SerializationError("checksum mismatch: the bytes are corrupted")
    try:
        sketch = CountSketch(d, rows, cols, seed=seed, dtype=dtype.name, hash_version=hver, backend=backend)
    except (UnknownBackend, BackendUnavailable):
        raise                       # the caller's backend argument, not the bytes
    except SketchError as exc:
        raise SerializationError(f"header holds invalid parameters: {exc}") from exc
    table = np.frombuffer(data, dtype=dtype, count=rows * cols, offset=_HEADER.size).reshape(rows, cols)
    # from_numpy copies (host backends: into a 64-byte aligned table); the byte swap, if any, happens here.
    sketch._table = sketch._backend.from_numpy(table.astype(sketch.dtype, copy=False))
    return sketch


def save(sketch, path):
    """Write a sketch to ``path`` atomically: a temporary file, fsync, then rename.

    Parameters
    ----------
    sketch : CountSketch
    path : str or os.PathLike

    Raises
    ------
    OSError
        If the folder cannot be written (no partial file is left behind).
    """
    data = sketch_to_bytes(sketch)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".sketch", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, *, backend="auto"):
    """Read a sketch written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    backend : str, default "auto"

    Returns
    -------
    CountSketch

    Raises
    ------
    SerializationError
        For a file that does not hold a valid sketch.
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as fh:
        return sketch_from_bytes(fh.read(), backend=backend)
