"""What every server rule shares: construction, byte sizes, checkpointable state."""
import dataclasses

import numpy as np
import torch

__all__ = ["ServerRule"]


def _table_numpy(sketch):
    """A NumPy copy of a compressor's table (CuPy tables are copied to the host)."""
    table = sketch.table
    return np.array(table) if isinstance(table, np.ndarray) else table.get()


class ServerRule:
    """Base class: a rule owns its state (a dataclass in ``self.state``) and runs one round.

    Subclasses set ``name`` and implement :meth:`round` and :meth:`upload_bytes`.
    ``round(ctx)`` receives the simulator's round context (client computations,
    all-reduce, learning rate) and returns the update ``u`` applied as
    ``w <- w - u``; it must not change its state before the clients' updates
    have passed the finiteness check (the context raises first).
    """

    name = "abstract"

    def __init__(self, cfg, d, *, device, value_bytes=4, index_bytes=4, world_size=1):
        self.cfg = cfg
        self.d = int(d)
        self.device = torch.device(device)
        self.value_bytes = value_bytes
        self.index_bytes = index_bytes
        self.world_size = world_size
        self.state = None

    def zeros(self):
        """A zero float32 d-vector on the run's device."""
        return torch.zeros(self.d, dtype=torch.float32, device=self.device)

    def upload_bytes(self):
        """Bytes one client uploads in one round."""
        raise NotImplementedError

    def extra_download_bytes(self):
        """Bytes one client downloads per round besides the changed weights."""
        return 0

    def round(self, ctx):
        """Run one round; return the update (a d-vector, w <- w - update)."""
        raise NotImplementedError

    # ------------------------------------------------------------ checkpoints
    def state_dict(self):
        """The state as tensors, ints and dicts of tensors (host copies)."""
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
        """Restore what :meth:`state_dict` returned (in place, on the rule's device)."""
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
                    raise ValueError(f"saved {f.name} has shape {arr.shape}, expected {value.table.shape}")
                if isinstance(value.table, np.ndarray):
                    value.table[...] = arr
                else:
                    import cupy
                    value.table[...] = cupy.asarray(arr)
            else:
                setattr(self.state, f.name, saved)

