"""Per-channel standardization with training-set statistics."""
from __future__ import annotations

import numpy as np

CHUNK = 4096


def channel_stats(x: np.ndarray):
    """Per-channel (axis 1) mean and std of `x`, accumulated in float64 chunk by chunk."""
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    # Chunks keep the float64 temporaries small; float64 keeps 50M-pixel sums exact enough.
    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start:start + CHUNK].astype(np.float64)
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
    count = x.size // x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean, std


def standardize_channels(x_train: np.ndarray, x_test: np.ndarray):
    """Subtract the train per-channel mean and divide by its std, in place (float32 arrays)."""
    mean, std = channel_stats(x_train)
    std[std == 0] = 1.0
    shape = (1, -1) + (1,) * (x_train.ndim - 2)
    mean32 = mean.astype(np.float32).reshape(shape)
    inv32 = (1.0 / std).astype(np.float32).reshape(shape)
    for x in (x_train, x_test):
        x -= mean32
        x *= inv32
    return x_train, x_test
