"""The in-memory dataset container shared by every loader."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ..errors import DataError


@dataclass
class Dataset:
    """A train/test split held as NumPy arrays.

    Attributes
    ----------
    name : str
        Dataset name, as given to :func:`fedsim.data.load_dataset`.
    x_train, x_test : numpy.ndarray
        float32 samples: images as ``(N, C, H, W)``, tabular data as ``(N, F)``; or int64
        token sequences ``(N, L)`` (text).
    y_train, y_test : numpy.ndarray
        int64 labels in ``[0, num_classes)``: one per sample ``(N,)``, or one per position
        ``(N, L)`` for token sequences (next-token targets).
    num_classes : int
        Number of classes.
    writers_train : numpy.ndarray or None
        int64 writer (user) id of every training sample, for the "natural"
        partition; None when the dataset has no such notion.
    vocab : str or None
        Text datasets: the character of every token id.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    writers_train: np.ndarray | None = None
    vocab: str | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim < 2:
                raise DataError(f"x_{split} must have a sample axis and at least one feature "
                                f"axis, got shape {x.shape}")
            if y.shape != (x.shape[0],) and not (y.ndim == 2 and y.shape == x.shape):
                raise DataError(f"y_{split} must have shape ({x.shape[0]},) or, for sequences, "
                                f"{x.shape} to match x_{split}, got {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"train and test samples differ in shape: "
                            f"{self.x_train.shape[1:]} vs {self.x_test.shape[1:]}")
        if self.writers_train is not None and self.writers_train.shape != (self.num_train,):
            raise DataError(f"writers_train must have shape ({self.num_train},), "
                            f"got {self.writers_train.shape}")

    @property
    def sample_labels(self) -> np.ndarray:
        """One label per training sample, for partitioning: ``y_train``, or for sequences the
        last target of each."""
        return self.y_train if self.y_train.ndim == 1 else self.y_train[:, -1]

    @property
    def input_shape(self) -> tuple:
        """Shape of one sample, e.g. ``(3, 32, 32)``.

        Returns
        -------
        tuple of int
        """
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training samples.

        Returns
        -------
        int
        """
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples.

        Returns
        -------
        int
        """
        return int(self.x_test.shape[0])
