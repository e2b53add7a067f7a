"""Datasets and client partitions for the federated simulator.

NumPy only: nothing here imports torch.
"""
from ._dataset import Dataset
from ._highdim import synthetic_highdim
from ._loaders import DATASETS, load_dataset
from ._partition import SCHEMES, partition
from ._synthetic import synthetic_cifar

__all__ = ["DATASETS", "Dataset", "SCHEMES", "load_dataset", "partition", "synthetic_cifar", "synthetic_highdim"]
