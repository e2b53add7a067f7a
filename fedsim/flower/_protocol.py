"""What travels between the strategy and the clients: record names, config keys, conversions.

Down (train message): ``"arrays"`` = ArrayRecord ``{"weights": flat float32 d-vector}`` (the
full model, every round: clients keep no state) and ``"config"`` = ConfigRecord with
``server-round``, ``rule``, ``lr``, ``weight-decay``, ``seed`` and the rule's knobs
(``sketch-*`` for FetchSGD, ``k`` for local top-k, ``local-epochs``/``local-batch-size`` for
FedAvg).  Up (reply): ``"upload"`` = ArrayRecord (``table``; ``indices`` + ``values``;
``gradient``; or ``delta``) and ``"metrics"`` = MetricRecord ``{"num-examples", "train-loss"}``.
"""
import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from ..errors import FedsimError

__all__ = ["FlowerRoundError", "weights_record", "weights_from_record", "UPLOAD_KIND", "array_of"]

ARRAYS, CONFIG, UPLOAD, METRICS, WEIGHTS = "arrays", "config", "upload", "metrics", "weights"
NUM_EXAMPLES = "num-examples"

# What each rule's clients upload (the keys of the "upload" ArrayRecord).
UPLOAD_KIND = {"fetchsgd": ("table",), "local_topk": ("indices", "values"), "uncompressed": ("gradient",),
               "true_topk": ("gradient",), "fedavg": ("delta",)}


class FlowerRoundError(FedsimError):
    """A Flower round could not run: too few nodes connected, or no usable reply came back."""


def weights_record(flat):
    """An ArrayRecord ``{"weights": ...}`` holding a flat float32 weight vector.

    Parameters
    ----------
    flat : torch.Tensor or numpy.ndarray
        1-D weights (any device; copied to the host as float32).

    Returns
    -------
    flwr.app.ArrayRecord

    Raises
    ------
    ValueError
        ``flat`` is not 1-D.
    """
    if isinstance(flat, torch.Tensor):
        flat = flat.detach().to("cpu", torch.float32).numpy()
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    if flat.ndim != 1:
        raise ValueError(f"weights must be a flat vector, got shape {flat.shape}")
    return ArrayRecord({WEIGHTS: Array(flat)})


def weights_from_record(record, d=None):
    """The flat weights of an ArrayRecord made by :func:`weights_record`.

    Parameters
    ----------
    record : flwr.app.ArrayRecord
    d : int, optional
        The expected length.

    Returns
    -------
    torch.Tensor
        A new float32 CPU tensor.

    Raises
    ------
    ValueError
        No ``"weights"`` array, or not a float32 vector of length ``d``.
    """
    if WEIGHTS not in record:
        raise ValueError(f"the ArrayRecord has no {WEIGHTS!r} array (keys: {sorted(record.keys())})")
    w = record[WEIGHTS].numpy()
    if w.ndim != 1 or (d is not None and w.shape[0] != d) or w.dtype != np.float32:
        raise ValueError(f"{WEIGHTS!r} must be a float32 vector of length {d}, got {w.dtype} {w.shape}")
    return torch.from_numpy(np.array(w))


def array_of(record, key, what):
    """``record[key]`` as a writable NumPy array, or a ValueError naming ``what`` is missing."""
    if key not in record:
        raise ValueError(f"{what} has no {key!r} array (keys: {sorted(record.keys())})")
    return np.array(record[key].numpy())
