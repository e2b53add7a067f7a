"""MNIST from the original idx files (plain or gzip)."""
from __future__ import annotations

import gzip

import numpy as np

from ._dataset import Dataset
from ._files import find_folder, resolve
from ._normalize import standardize_channels
from ..errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def read_idx(path) -> np.ndarray:
    """An idx file of unsigned bytes as a uint8 array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: only unsigned-byte idx data (type 0x08) is supported, "
                        f"got type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(f"{path}: header declares shape {shape} ({count} bytes) but the file "
                        f"holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_split(folder, split):
    """Images as float32 (N, 1, 28, 28) in [0, 1] and int64 labels of one split."""
    images_name, labels_name = FILES[split]
    images = read_idx(resolve(folder, images_name))
    labels = read_idx(resolve(folder, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                        f"do not match")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{folder}: MNIST labels must lie in [0, 10), found {labels.max()}")
    x = images[:, None].astype(np.float32)
    x *= np.float32(1 / 255)
    return x, labels.astype(np.int64)


def load_mnist(root=None) -> Dataset:
    """MNIST, pixels scaled to [0, 1] then standardized with the train mean and std."""
    folder = find_folder("mnist", root, ["mnist", "MNIST/raw"],
                         [n for pair in FILES.values() for n in pair])
    x_train, y_train = _read_split(folder, "train")
    x_test, y_test = _read_split(folder, "test")
    x_train, x_test = standardize_channels(x_train, x_test)
    return Dataset("mnist", x_train, y_train, x_test, y_test, num_classes=10)
