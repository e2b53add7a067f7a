"""Data augmentation on the device: random crop (zero padding) and horizontal flip.

The FetchSGD reference code trains CIFAR with a random 32x32 crop of the image
padded by 4 zero pixels and a random horizontal flip.  Here the whole batch is
transformed by a few torch ops on the batch's own device (one gather, no loop
over images, no host round trip), and the random draws come from a counter-based
hash of ``(key, position in the batch)``: the same on every device and every
rank, and a pure function of the key.  The simulator derives the key from
``(seed, round, client)`` (FedAvg: ``(seed, round, client, epoch)``, the position
then being the sample's slot in that epoch's order, so each local step draws
afresh), like every other random choice it makes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["AUGMENTATIONS", "augment", "augment_key", "crop_flip", "PAD"]

AUGMENTATIONS = ("none", "crop_flip")
PAD = 4  # the reference code's crop padding, in pixels
_MASK32 = 0xFFFFFFFF


def augment_key(*parts):
    """A 32-bit key from a tuple of non-negative ints (NumPy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _mul32(a, b):
    """``a * b mod 2**32`` for an int64 tensor ``a < 2**32`` and an int ``b < 2**32`` (no overflow)."""
    lo, hi = b & 0xFFFF, b >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(x):
    """A 32-bit mixing hash (lowbias32) of an int64 tensor of values < 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def crop_flip(x, key, pad=PAD):
    """Random crop of each image from its zero-padded copy, then a random horizontal flip.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W)
        Images (any floating dtype, any device).
    key : int
        Randomness key in ``[0, 2**32)`` (see :func:`augment_key`); image ``i`` draws its
        offsets and flip from ``hash(hash(i) ^ key)``.
    pad : int, default 4
        Zero padding on every side; each offset is uniform in ``[-pad, pad]`` pixels.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape, dtype and device.

    Raises
    ------
    ValueError
        ``x`` is not a 4-D batch of images, or ``key``/``pad`` is out of range.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"crop_flip needs a batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not (isinstance(key, int) and 0 <= key <= _MASK32):
        raise ValueError(f"key must be an int in [0, 2**32), got {key!r}")
    if not (isinstance(pad, int) and pad >= 0):
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    n, c, height, width = x.shape
    if n == 0:
        return x.clone()
    dev = x.device
    h = _hash32(_hash32(torch.arange(n, device=dev, dtype=torch.int64)) ^ key)
    span = 2 * pad + 1
    # 12 bits per offset: the modulo bias (4096 mod 9 = 1) is negligible.
    dy = (h & 0xFFF) % span
    dx = ((h >> 12) & 0xFFF) % span
    flip = ((h >> 24) & 1).bool()
    rows = dy[:, None] + torch.arange(height, device=dev)                       # (n, H)
    ar = torch.arange(width, device=dev)
    cols = dx[:, None] + torch.where(flip[:, None], width - 1 - ar, ar)         # (n, W)
    padded = F.pad(x, (pad, pad, pad, pad))
    flat_index = (rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]).reshape(n, 1, height * width)
    out = torch.gather(padded.reshape(n, c, -1), 2, flat_index.expand(n, c, height * width))
    return out.reshape(n, c, height, width)


def augment(name, x, key):
    """Apply the augmentation ``name`` (one of :data:`AUGMENTATIONS`) to a batch with ``key``.

    Parameters
    ----------
    name : str
        ``"none"`` returns ``x`` itself; ``"crop_flip"``: :func:`crop_flip` with 4-pixel padding.
    x : torch.Tensor
    key : int

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        Unknown name, or an input the augmentation cannot take.
    """
    if name == "none":
        return x
    if name == "crop_flip":
        return crop_flip(x, key)
    raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
