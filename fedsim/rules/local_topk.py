"""Local top-k: each client uploads the top-k of its own gradient (k values and k indices).

Options: local error feedback (a per-client error vector, which a client that
rarely takes part keeps for a long time) and global momentum on the server.
"""
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ._base import ServerRule
from ._params import TopKParams, knob
from ._registry import register_rule

__all__ = ["LocalTopK", "LocalTopKParams", "LocalTopKState"]


@dataclass
class LocalTopKParams(TopKParams):
    """Local top-k: momentum, k, and the two options."""

    local_error_feedback: bool = knob(False, "each client keeps the part of its gradient it did not send")
    global_momentum: bool = knob(True, "momentum on the server's sum of the clients' top-k")


@dataclass
class LocalTopKState:
    """Server momentum and the clients' local errors (client id -> d-vector)."""

    momentum: torch.Tensor
    errors: dict = field(default_factory=dict)


@register_rule
class LocalTopK(ServerRule):
    """Per-client top-k sparsification, summed on the server.

    Parameters
    ----------
    params : LocalTopKParams
    d : int
        Number of trainable parameters.
    **kw
        See :class:`~fedsim.rules.ServerRule`.

    Raises
    ------
    ConfigError
        ``k > d``, or local error feedback with a world size above 1.
    """

    name = "local_topk"
    Params = LocalTopKParams

    def __init__(self, params, d, **kw):
        super().__init__(params, d, **kw)
        if params.local_error_feedback and self.world_size > 1:
            raise ConfigError("local_topk with local_error_feedback keeps per-client state on one "
                              "process; run it with a world size of 1")
        self.state = LocalTopKState(self.zeros())

    def upload_bytes(self):
        """k values and k indices.

        Returns
        -------
        int
        """
        return self.params.k * (self.value_bytes + self.index_bytes)

    def round(self, ctx):
        """Per-client top-k, weighted sum, optional global momentum.

        Parameters
        ----------
        ctx : fedsim.RoundContext

        Returns
        -------
        torch.Tensor
            The update (``w <- w - update``).
        """
        grads = ctx.gradients()
        payload = self.zeros()
        new_errors = {}
        for i, cid in enumerate(ctx.my_ids):
            v = grads[i]
            if self.params.local_error_feedback:
                v = self.state.errors.get(int(cid), self.zeros()) + v
            idx = torch.topk(v.abs(), self.params.k, sorted=True).indices
            payload.index_add_(0, idx, v[idx] * ctx.my_weights[i])
            if self.params.local_error_feedback:
                v = v.clone()
                v[idx] = 0
                new_errors[int(cid)] = v
        self.state.errors.update(new_errors)
        ctx.allreduce_(payload)
        if self.params.global_momentum:
            u = self.state.momentum
            u.mul_(self.params.momentum).add_(payload)
            return u * ctx.lr
        return payload * ctx.lr
