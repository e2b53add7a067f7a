"""The embedded default dataset: the 8x8 handwritten digits scikit-learn ships.

``digits.npz`` holds scikit-learn's ``load_digits()`` (UCI "Optical Recognition of
Handwritten Digits", test part; CC BY 4.0) as uint8: ``images`` (1797, 8, 8) with values
0..16 and ``labels`` (1797,). It is embedded so that loading needs neither scikit-learn
nor its multi-second import, which every simulator worker process would pay.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from ._dataset import Dataset
from ._split import stratified_split

TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _raw():
    """(images uint8 (1797, 8, 8), labels uint8) from the embedded file."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f:
        blob = np.load(f)
        images, labels = blob["images"], blob["labels"]
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_digits_dataset(seed: int = 0) -> Dataset:
    """1797 digits as float32 ``(N, 1, 8, 8)`` in [0, 1], stratified 80/20 split by `seed`."""
    images, labels = _raw()
    # Pixel values count set pixels (0..16) in 4x4 blocks of the original 32x32 bitmaps.
    x = images[:, None].astype(np.float32) / np.float32(16)
    y = labels.astype(np.int64)
    train, test = stratified_split(y, TEST_FRACTION, seed)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)
