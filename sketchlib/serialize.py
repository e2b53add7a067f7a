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
A table holding NaN/inf is refused too unless ``allow_nonfinite=True`` (only
``check_finite=False`` inserts make one).

:func:`save` writes ``.tmp-<name>.<pid>.<random>.sketch`` next to the target
and renames it; a process killed in between leaves that file, and the next
save to the same target removes the ones whose process is dead.  Saving onto
a symbolic link writes through to the link's target.
"""
import errno
import logging
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
_log = logging.getLogger("sketchlib")


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


def sketch_from_bytes(data, *, backend="auto", allow_nonfinite=False):
    """Rebuild a sketch from :func:`sketch_to_bytes` output.

    Parameters
    ----------
    data : bytes-like
    backend : str, default "auto"
        Backend of the new sketch.
    allow_nonfinite : bool, default False
        Accept a table holding NaN or infinity (refused by default: a valid
        CRC over a poisoned table is still a poisoned table).

    Returns
    -------
    CountSketch

    Raises
    ------
    SerializationError
        For truncated, corrupted or foreign bytes, unsupported versions, or
        (without ``allow_nonfinite``) a table holding NaN/inf.
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
    if not allow_nonfinite and not np.isfinite(table).all():
        raise SerializationError("the table holds NaN or infinity (a sketch poisoned by check_finite=False); "
                                 "pass allow_nonfinite=True to load it anyway")
    # from_numpy copies (host backends: into a 64-byte aligned table); the byte swap, if any, happens here.
    sketch._table = sketch._backend.from_numpy(table.astype(sketch.dtype, copy=False))
    sketch._bound = float(np.abs(table).max()) if rows * cols else 0.0
    return sketch


def _alive(pid):
    """Whether a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:          # EPERM: it exists, owned by someone else
        return exc.errno == errno.EPERM
    return True


def _remove_stale(folder, name):
    """Remove temporaries of earlier saves to ``name`` whose writing process is dead."""
    prefix = f".tmp-{name}."
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".sketch")):
            continue
        pid = entry[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, entry))
                _log.info("removed %s, left by a save killed in process %s", entry, pid)
            except OSError:
                pass


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

    Notes
    -----
    ``path`` may be a symbolic link: the file it points to is replaced (the
    link stays).  The temporary is named after the target and the writer's
    pid; one left by a killed process is removed by the next save to the same
    target (only when that process is gone: a live writer's file is kept).
    """
    data = sketch_to_bytes(sketch)
    path = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(path)
    _remove_stale(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{name}.{os.getpid()}.", suffix=".sketch", dir=folder)
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


def load(path, *, backend="auto", allow_nonfinite=False):
    """Read a sketch written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    backend : str, default "auto"
    allow_nonfinite : bool, default False
        As :func:`sketch_from_bytes`.

    Returns
    -------
    CountSketch

    Raises
    ------
    SerializationError
        For a file that does not hold a valid sketch (or, by default, a table with NaN/inf).
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as fh:
        return sketch_from_bytes(fh.read(), backend=backend, allow_nonfinite=allow_nonfinite)
