"""The embedded default dataset: scikit-learn's 8x8 handwritten digits."""
from __future__ import annotations

import numpy as np

from ._dataset import Dataset
from ._split import stratified_split

TEST_FRACTION = 0.2


def load_digits_dataset(seed: int = 0) -> Dataset:
    """1797 digits as float32 ``(N, 1, 8, 8)`` in [0, 1], stratified 80/20 split by `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' dataset needs scikit-learn: "
                          "pip install scikit-learn (or sketchgrad[fedsim])") from exc
    bunch = load_digits()
    # Pixel values are counts 0..16 of an 4x4 block of the original 32x32 bitmap.
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, TEST_FRACTION, seed)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)
