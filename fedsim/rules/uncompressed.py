"""Uncompressed momentum SGD: ``u <- rho u + g``, ``w <- w - lr u``."""
from dataclasses import dataclass

import torch

from ._base import ServerRule
from ._params import MomentumParams
from ._registry import register_rule

__all__ = ["Uncompressed", "UncompressedParams", "UncompressedState"]


@dataclass
class UncompressedParams(MomentumParams):
    """Uncompressed momentum SGD: only the shared ``momentum``."""


@dataclass
class UncompressedState:
    """Server momentum."""

    momentum: torch.Tensor


@register_rule
class Uncompressed(ServerRule):
    """Dense gradients up, momentum SGD on the server (the reference of every byte count).

    Parameters
    ----------
    params : UncompressedParams
    d : int
        Number of trainable parameters.
    **kw
        See :class:`~fedsim.rules.ServerRule`.
    """

    name = "uncompressed"
    Params = UncompressedParams

    def __init__(self, params, d, **kw):
        super().__init__(params, d, **kw)
        self.state = UncompressedState(self.zeros())

    def upload_bytes(self):
        """d floats.

        Returns
        -------
        int
        """
        return self.d * self.value_bytes

    def round(self, ctx):
        """Sum, all-reduce, momentum step.

        Parameters
        ----------
        ctx : fedsim.RoundContext

        Returns
        -------
        torch.Tensor
            The update (``w <- w - update``).
        """
        g = ctx.allreduce_(ctx.gradient_sum())
        u = self.state.momentum
        u.mul_(self.params.momentum).add_(g)
        return u * ctx.lr
