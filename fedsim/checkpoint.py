"""Checkpoints: atomic, integrity-checked, tied to a config hash.

File layout: magic ``FEDSIMCK``, format version (u32), config hash (64 ASCII
hex), payload length (u64), SHA-256 of the payload, payload (``torch.save`` of
a dict of tensors and plain values).  Writing goes to a uniquely named
temporary file in the same folder, fsync, rename, fsync of the folder
(:func:`fedsim._atomic.atomic_write_bytes`): a crash leaves either the old
checkpoint or the new one, never half of one, and two writers never share a
temporary file.
"""
import hashlib
import io
import struct
from pathlib import Path

import torch

from ._atomic import atomic_write_bytes
from .errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

MAGIC = b"FEDSIMCK"
CHECKPOINT_VERSION = 1
_HEADER = struct.Struct("<8sI64sQ32s")


def save_checkpoint(path, payload, config_hash):
    """Write ``payload`` (a dict) to ``path`` atomically (a link is written through to its target)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    header = _HEADER.pack(MAGIC, CHECKPOINT_VERSION, config_hash.encode("ascii"), len(data),
                          hashlib.sha256(data).digest())
    atomic_write_bytes(path, header + data)


def load_checkpoint(path, config_hash):
    """Read a checkpoint written by :func:`save_checkpoint` for the same config.

    Raises
    ------
    CheckpointError
        Missing file, not a checkpoint, other format version, truncated,
        extended (bytes after the payload) or corrupt payload, or a config hash
        that differs from ``config_hash``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    if len(raw) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(raw)} bytes, shorter than its "
                              f"{_HEADER.size}-byte header")
    magic, version, chash, length, digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not a fedsim checkpoint")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this fedsim reads "
                              f"version {CHECKPOINT_VERSION}")
    data = raw[_HEADER.size:]
    if len(data) < length:
        raise CheckpointError(f"checkpoint {path} is truncated: payload has {len(data)} of {length} bytes")
    if len(data) > length:
        raise CheckpointError(f"checkpoint {path} has {len(data) - length} extra bytes after its {length}-byte "
                              f"payload (something was appended to it); it is not used")
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 does not match")
    chash = chash.decode("ascii")
    if chash != config_hash:
        raise CheckpointError(
            f"checkpoint {path} was written by another configuration (config hash {chash[:12]}..., "
            f"this run's is {config_hash[:12]}...); resume with the same config and overrides, "
            f"or start over without --resume")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # the digest matched, so this is a version mismatch of torch
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
