"""What goes down to a node: the full weights, or only those changed since the node last took part.

``download="changed"`` is fedsim's accounting made real: the server keeps, per coordinate,
the model version that last changed it, and per node the version it holds; a node that
took part before gets the changed coordinates (int32/int64 indices and float32 values) or
the full weights when that is smaller, and keeps its copy in its Context state.  A node the
server knows nothing about (first contact, or a failed last round) gets the full weights.
"""
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from ..errors import ConfigError
from ._protocol import WEIGHTS, array_of, weights_from_record, weights_record

__all__ = ["DownloadState", "DOWNLOADS", "apply_download"]

DOWNLOADS = ("full", "changed")
_STATE_WEIGHTS, _STATE_VERSION = "fedsim.weights", "fedsim.version"


class DownloadState:
    """Server side: model version, per-coordinate last change, per-node held version."""

    def __init__(self, d):
        self.d = d
        self.version = 0
        self.last_changed = torch.zeros(d, dtype=torch.int64)  # 0: unchanged since the initial weights
        self.held = {}  # node id -> version whose weights the node holds

    def payload(self, node, weights):
        """``(ArrayRecord, config entries)`` to send ``node`` the current ``weights``."""
        base = self.held.get(node)
        cfg = {"download": "full", "version": self.version, "keep-weights": True}
        if base is not None:
            idx = torch.nonzero(self.last_changed > base).flatten()
            index_dtype = np.int32 if self.d <= 2**31 else np.int64
            if idx.numel() * (4 + np.dtype(index_dtype).itemsize) < 4 * self.d:
                values = weights[idx].numpy()
                cfg.update({"download": "changed", "base-version": base})
                return ArrayRecord({"indices": Array(idx.numpy().astype(index_dtype)),
                                    "values": Array(np.ascontiguousarray(values))}), cfg
        return weights_record(weights), cfg

    def replied(self, node, version):
        """``node`` answered a message that carried ``version``: it holds those weights now."""
        self.held[node] = version

    def failed(self, node):
        """``node`` failed: what it holds is unknown, so it gets the full weights next time."""
        self.held.pop(node, None)

    def applied(self, update):
        """The server applied ``update``: a new version; record the coordinates it changed."""
        self.version += 1
        self.last_changed[update != 0] = self.version


def apply_download(arrays, cfg, state, d):
    """Client side: the current weights (CPU float32 tensor) from a train message and the node's state.

    Parameters
    ----------
    arrays : ArrayRecord
        The message's ``"arrays"``.
    cfg : ConfigRecord
        The message's ``"config"`` (``download``, ``version``, ``base-version``, ``keep-weights``).
    state : RecordDict or None
        The node's ``Context.state``; needed (and updated) when the server says ``keep-weights``.
    d : int
        The model's number of trainable parameters.

    Raises
    ------
    ConfigError
        Wrong sizes, or a change list for weights this node does not hold.
    """
    mode = cfg.get("download", "full")
    if mode not in DOWNLOADS:
        raise ConfigError(f"unknown download mode {mode!r} from the server")
    if mode == "full":
        try:
            w = weights_from_record(arrays, d)
        except ValueError as exc:
            raise ConfigError(f"{exc} (the model has {d} trainable parameters)") from None
    else:
        held = None if state is None else state.config_records.get(_STATE_VERSION)
        # Changes since ``base`` carry current values, so any copy at least that recent will do.
        if held is None or not cfg["base-version"] <= held.get("version", -1) <= cfg["version"]:
            raise ConfigError(f"the server sent changes since version {cfg['base-version']} but this node holds "
                              f"{'no weights' if held is None else 'version ' + str(held.get('version'))}")
        w = weights_from_record(state.array_records[_STATE_WEIGHTS], d)
        try:
            idx, values = array_of(arrays, "indices", "the download"), array_of(arrays, "values", "the download")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if idx.shape != values.shape or idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= d)):
            raise ConfigError(f"the download's indices must be 1-D in [0, {d}) with one value each")
        w[torch.from_numpy(idx.astype(np.int64))] = torch.from_numpy(values.astype(np.float32))
    if cfg.get("keep-weights", False):
        if state is None:
            raise ConfigError("the server downloads changed weights only, so the client must keep them: "
                              "pass the node's context to client_train")
        state[_STATE_WEIGHTS] = ArrayRecord({WEIGHTS: Array(w.numpy())})
        state[_STATE_VERSION] = ConfigRecord({"version": int(cfg["version"])})
    return w
