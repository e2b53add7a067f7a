"""What every server rule shares: construction, byte sizes, checkpointable state."""
import dataclasses

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ._params import RuleParams

__all__ = ["ServerRule"]


def _table_numpy(sketch):
    """A NumPy copy of a compressor's table (CuPy tables are copied to the host)."""
    table = sketch.table
    return np.array(table) if isinstance(table, np.ndarray) else table.get()


class ServerRule:
    """Base class: a rule owns its parameters, its state (a dataclass in ``self.state``) and runs a round.

    Subclasses set ``name`` and ``Params`` (their :class:`~fedsim.rules.RuleParams`
    dataclass), are decorated with :func:`~fedsim.rules.register_rule`, and
    implement :meth:`round` and :meth:`upload_bytes`.  ``round(ctx)`` receives
    the simulator's round context (client computations, all-reduce, learning
    rate) and returns the update ``u`` applied as ``w <- w - u``; it must not
    change its state before the clients' updates have passed the finiteness
    check (the context raises first).

    Parameters
    ----------
    params : RuleParams
        An instance of this rule's ``Params``.
    d : int
        Number of trainable parameters of the model.
    device : torch.device or str, default "cpu"
        Where the rule's state lives.
    value_bytes, index_bytes : int, default 4
        Bytes of one transmitted value and one index (byte counting).
    world_size : int, default 1
        Number of ranks simulating the run.

    Raises
    ------
    ConfigError
        ``params`` are not this rule's parameters, or do not fit ``d`` (e.g. ``k > d``).
    """

    name = "abstract"
    Params = RuleParams

    def __init__(self, params, d, *, device="cpu", value_bytes=4, index_bytes=4, world_size=1):
        if not isinstance(params, self.Params):
            raise ConfigError(f"rule {self.name!r} needs {self.Params.__name__}, got {type(params).__name__}")
        params.check_dimension(int(d))
        self.params = params
        self.d = int(d)
        self.device = torch.device(device)
        self.value_bytes = value_bytes
        self.index_bytes = index_bytes
        self.world_size = world_size
        self.state = None

    def zeros(self):
        """A zero float32 d-vector on the run's device.

        Returns
        -------
        torch.Tensor
        """
        return torch.zeros(self.d, dtype=torch.float32, device=self.device)

    def upload_bytes(self):
        """Bytes one client uploads in one round.

        Returns
        -------
        int

        Raises
        ------
        NotImplementedError
            In the base class.
        """
        raise NotImplementedError

    def extra_download_bytes(self):
        """Bytes one client downloads per round besides the changed weights.

        Returns
        -------
        int
        """
        return 0

    def round(self, ctx):
        """Run one round.

        Parameters
        ----------
        ctx : fedsim.RoundContext
            The round's client computations, all-reduce and learning rate.

        Returns
        -------
        torch.Tensor
            The update (a d-vector, ``w <- w - update``).

        Raises
        ------
        NotImplementedError
            In the base class.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ checkpoints
    def state_dict(self):
        """The state as tensors, ints and dicts of tensors (host copies).

        Returns
        -------
        dict
        """
        out = {}
        for f in dataclasses.fields(self.state):
            value = getattr(self.state, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value.detach().cpu().clone()
            elif isinstance(value, dict):
                out[f.name] = {int(k): v.detach().cpu().clone() for k, v in value.items()}
            elif hasattr(value, "table"):
                out[f.name] = torch.from_numpy(_table_numpy(value))
            else:
                out[f.name] = value
        return out

    def load_state_dict(self, sd):
        """Restore what :meth:`state_dict` returned (in place, on the rule's device).

        Parameters
        ----------
        sd : dict
            A :meth:`state_dict` of a rule with the same parameters and ``d``.

        Raises
        ------
        CheckpointError
            A saved sketch table has another shape than this rule's.
        """
        for f in dataclasses.fields(self.state):
            value = getattr(self.state, f.name)
            saved = sd[f.name]
            if isinstance(value, torch.Tensor):
                value.copy_(saved.to(value.device))
            elif isinstance(value, dict):
                value.clear()
                value.update({int(k): v.to(self.device) for k, v in saved.items()})
            elif hasattr(value, "table"):
                arr = saved.numpy()
                if tuple(arr.shape) != tuple(value.table.shape):
                    raise CheckpointError(f"saved {f.name} has shape {arr.shape}, expected {value.table.shape}")
                if isinstance(value.table, np.ndarray):
                    value.table[...] = arr
                else:
                    import cupy
                    value.table[...] = cupy.asarray(arr)
            else:
                setattr(self.state, f.name, saved)

