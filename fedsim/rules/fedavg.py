"""FedAvg: clients run local epochs of SGD and upload their weight change; the server averages.

``agg = -sum_i w_i (w_i_final - w)``; with server momentum ``u <- rho u + agg``
and ``w <- w - server_lr u``, else ``w <- w - server_lr agg``.  The local
learning rate follows the run's schedule.
"""
import typing
from dataclasses import dataclass

import torch

from .._fields import check
from ._base import ServerRule
from ._params import MomentumParams, knob
from ._registry import register_rule

__all__ = ["FedAvg", "FedAvgParams", "FedAvgState"]


@dataclass
class FedAvgParams(MomentumParams):
    """FedAvg: local epochs and batch, server learning rate and optional server momentum."""

    local_epochs: int = knob(1, "epochs of local SGD per round")
    local_batch_size: typing.Optional[int] = knob(None, "local minibatch size; none: all the client's samples")
    server_lr: float = knob(1.0, "server learning rate on the averaged change")
    server_momentum: bool = knob(False, "apply the shared momentum on the server")

    def validate(self):
        """Positive epochs, batch size and server learning rate."""
        super().validate()
        check(self.local_epochs > 0, f"rule.local_epochs must be positive, got {self.local_epochs}")
        check(self.local_batch_size is None or self.local_batch_size > 0,
              f"rule.local_batch_size must be positive, got {self.local_batch_size}")
        check(self.server_lr > 0, f"rule.server_lr must be positive, got {self.server_lr}")


@dataclass
class FedAvgState:
    """Server momentum (unused without server_momentum)."""

    momentum: torch.Tensor


@register_rule
class FedAvg(ServerRule):
    """Federated averaging with local epochs.

    Parameters
    ----------
    params : FedAvgParams
    d : int
        Number of trainable parameters.
    **kw
        See :class:`~fedsim.rules.ServerRule`.
    """

    name = "fedavg"
    Params = FedAvgParams

    def __init__(self, params, d, **kw):
        super().__init__(params, d, **kw)
        self.state = FedAvgState(self.zeros())

    def upload_bytes(self):
        """d floats (the weight change).

        Returns
        -------
        int
        """
        return self.d * self.value_bytes

    def round(self, ctx):
        """Local training, weighted average of the changes, server step.

        Parameters
        ----------
        ctx : fedsim.RoundContext

        Returns
        -------
        torch.Tensor
            The update (``w <- w - update``).
        """
        deltas = ctx.local_train(self.params.local_epochs, self.params.local_batch_size)
        agg = -(ctx.my_weights.to(deltas.dtype) @ deltas) if deltas.shape[0] else self.zeros()
        ctx.allreduce_(agg)
        if self.params.server_momentum:
            u = self.state.momentum
            u.mul_(self.params.momentum).add_(agg)
            return u * self.params.server_lr
        return agg * self.params.server_lr
