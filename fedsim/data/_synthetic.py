"""CIFAR-shaped synthetic data with class structure a conv net can learn."""
from __future__ import annotations

import numpy as np

from ._dataset import Dataset
from ._normalize import standardize_channels
from ..errors import DataError

IMAGE_SHAPE = (3, 32, 32)
MODES_PER_CLASS = 3      # a class is a mixture of a few smooth patterns, not one point
MAX_SHIFT = 4            # random translations: linear models lose, conv nets do not care
NUM_DISTRACTORS = 16     # class-independent patterns added on top, so the task is not trivial
SIGNAL = 0.2             # pattern amplitude relative to unit pixel noise
CHUNK = 4096


def _smooth_patterns(rng, count, shape):
    """`count` smooth random images of `shape` (C, H, W) with unit RMS."""
    c, h, w = shape
    coarse = rng.standard_normal((count, c, (h + 3) // 4, (w + 3) // 4)).astype(np.float32)
    img = coarse.repeat(4, axis=2).repeat(4, axis=3)[:, :, :h, :w]
    # A 3-tap box blur in each direction removes the blocky edges of the upsampling.
    for axis in (2, 3):
        img = (np.roll(img, 1, axis) + img + np.roll(img, -1, axis)) / 3.0
    rms = np.sqrt(np.mean(img ** 2, axis=(1, 2, 3), keepdims=True))
    return (img / rms).astype(np.float32)


def _shift_each(images, shift):
    """Roll image i by shift code i, a (dy, dx) in [-MAX_SHIFT, MAX_SHIFT]^2; in place."""
    side = 2 * MAX_SHIFT + 1
    for code in np.unique(shift):
        sel = shift == code
        dy, dx = divmod(int(code), side)
        images[sel] = np.roll(images[sel], (dy - MAX_SHIFT, dx - MAX_SHIFT), axis=(2, 3))
    return images


def _generate(rng, n, num_classes, patterns, distractors):
    """Draw `n` balanced labelled samples from the class patterns plus distractors and noise."""
    n_shift = (2 * MAX_SHIFT + 1) ** 2
    y = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    x = np.empty((n, *IMAGE_SHAPE), dtype=np.float32)
    for start in range(0, n, CHUNK):
        yc = y[start:start + CHUNK]
        m = len(yc)
        mode = rng.integers(0, MODES_PER_CLASS, m)
        shift = rng.integers(0, n_shift, m)
        amp = rng.uniform(0.5, 1.5, (m, 1, 1, 1)).astype(np.float32) * SIGNAL
        dis = distractors[rng.integers(0, len(distractors), m)]
        dis_amp = rng.uniform(0.0, 1.0, (m, 1, 1, 1)).astype(np.float32) * SIGNAL
        chunk = rng.standard_normal((m, *IMAGE_SHAPE), dtype=np.float32)
        chunk += amp * _shift_each(patterns[yc * MODES_PER_CLASS + mode], shift)
        chunk += dis_amp * dis
        x[start:start + m] = chunk
    return x, y


def synthetic_cifar(num_train: int = 50_000, num_test: int = 10_000, num_classes: int = 10,
                    seed: int = 0) -> Dataset:
    """CIFAR-shaped random images whose class is learnable.

    Each class owns ``MODES_PER_CLASS`` smooth random 3x32x32 patterns. A sample is one
    of its class's patterns, randomly scaled and translated by up to ``MAX_SHIFT`` pixels,
    plus a randomly scaled class-independent distractor pattern, plus unit Gaussian pixel
    noise. Labels are balanced. Both splits are standardized per channel with the
    training set's mean and standard deviation, as the CIFAR loaders do.

    Parameters
    ----------
    num_train, num_test : int
        Number of training and test samples (defaults: CIFAR-10's 50,000 and 10,000).
    num_classes : int
        Number of classes.
    seed : int
        Everything is a deterministic function of the arguments. The patterns and the
        test set do not depend on `num_train`.

    Returns
    -------
    Dataset
        Named ``"synthetic_cifar{num_classes}"``; images float32 ``(N, 3, 32, 32)``.

    Raises
    ------
    DataError
        A size or class count that is not an integer in range.
    """
    for name, value, low in (("num_train", num_train, 1), ("num_test", num_test, 1),
                             ("num_classes", num_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    patt_seq, dis_seq, train_seq, test_seq = np.random.SeedSequence(int(seed)).spawn(4)
    patterns = _smooth_patterns(np.random.default_rng(patt_seq),
                                num_classes * MODES_PER_CLASS, IMAGE_SHAPE)
    distractors = _smooth_patterns(np.random.default_rng(dis_seq), NUM_DISTRACTORS, IMAGE_SHAPE)
    x_train, y_train = _generate(np.random.default_rng(train_seq), int(num_train),
                                 int(num_classes), patterns, distractors)
    x_test, y_test = _generate(np.random.default_rng(test_seq), int(num_test),
                               int(num_classes), patterns, distractors)
    x_train, x_test = standardize_channels(x_train, x_test)
    return Dataset(f"synthetic_cifar{num_classes}", x_train, y_train, x_test, y_test,
                   num_classes=int(num_classes))
