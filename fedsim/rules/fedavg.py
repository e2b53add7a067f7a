"""FedAvg: clients run local epochs of SGD and upload their weight change; the server averages.

``agg = -sum_i w_i (w_i_final - w)``; with server momentum ``u <- rho u + agg``
and ``w <- w - server_lr u``, else ``w <- w - server_lr agg``.  The local
learning rate follows the run's schedule.
"""
from dataclasses import dataclass

import torch

from ._base import ServerRule

__all__ = ["FedAvg", "FedAvgState"]


@dataclass
class FedAvgState:
    """Server momentum (unused without server_momentum)."""

    momentum: torch.Tensor


class FedAvg(ServerRule):
    """Federated averaging with local epochs."""

    name = "fedavg"

    def __init__(self, cfg, d, **kw):
        super().__init__(cfg, d, **kw)
        self.state = FedAvgState(self.zeros())

    def upload_bytes(self):
        """d floats (the weight change)."""
        return self.d * self.value_bytes

    def round(self, ctx):
        """Local training, weighted average of the changes, server step."""
        deltas = ctx.local_train(self.cfg.local_epochs, self.cfg.local_batch_size)
        agg = -(ctx.my_weights.to(deltas.dtype) @ deltas) if deltas.shape[0] else self.zeros()
        ctx.allreduce_(agg)
        if self.cfg.server_momentum:
            u = self.state.momentum
            u.mul_(self.cfg.momentum).add_(agg)
            return u * self.cfg.server_lr
        return agg * self.cfg.server_lr
