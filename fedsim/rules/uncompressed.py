"""Uncompressed momentum SGD: ``u <- rho u + g``, ``w <- w - lr u``."""
from dataclasses import dataclass

import torch

from ._base import ServerRule

__all__ = ["Uncompressed", "UncompressedState"]


@dataclass
class UncompressedState:
    """Server momentum."""

    momentum: torch.Tensor


class Uncompressed(ServerRule):
    """Dense gradients up, momentum SGD on the server (the reference of every byte count)."""

    name = "uncompressed"

    def __init__(self, cfg, d, **kw):
        super().__init__(cfg, d, **kw)
        self.state = UncompressedState(self.zeros())

    def upload_bytes(self):
        """d floats."""
        return self.d * self.value_bytes

    def round(self, ctx):
        """Sum, all-reduce, momentum step."""
        g = ctx.allreduce_(ctx.gradient_sum())
        u = self.state.momentum
        u.mul_(self.cfg.momentum).add_(g)
        return u * ctx.lr
