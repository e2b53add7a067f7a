"""CIFAR-10 and CIFAR-100 from the standard python pickled batches."""
from __future__ import annotations

import pickle

import numpy as np

from ._dataset import Dataset
from ._files import find_folder, resolve
from ._normalize import standardize_channels
from ..errors import DataError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
CIFAR100_TRAIN = ["train"]
CIFAR100_TEST = ["test"]


def _read_batch(path, label_key):
    """(images uint8 (N, 3, 32, 32), labels int64) from one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR python batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR python batch: holds a {type(batch).__name__}")
    # Batches pickled by Python 3 have str keys, the official ones bytes keys.
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks the keys 'data' and {label_key!r} "
                        f"(has {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got data "
                        f"{data.shape} and labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_split(folder, names, label_key, num_classes):
    """Concatenate batches and scale pixels to float32 [0, 1]."""
    parts = [_read_batch(resolve(folder, n), label_key) for n in names]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32)
    x *= np.float32(1 / 255)
    y = np.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{folder}: labels must lie in [0, {num_classes}), "
                         f"found {y.min()}..{y.max()}")
    return x, y


def load_cifar(name: str, root=None) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels), standardized per channel with train stats."""
    if name == "cifar10":
        subs, train, test, key, classes = ["cifar-10-batches-py"], CIFAR10_TRAIN, CIFAR10_TEST, \
            "labels", 10
    else:
        subs, train, test, key, classes = ["cifar-100-python"], CIFAR100_TRAIN, CIFAR100_TEST, \
            "fine_labels", 100
    folder = find_folder(name, root, subs, train + test)
    x_train, y_train = _read_split(folder, train, key, classes)
    x_test, y_test = _read_split(folder, test, key, classes)
    x_train, x_test = standardize_channels(x_train, x_test)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=classes)
