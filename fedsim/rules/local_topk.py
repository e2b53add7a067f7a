"""Local top-k: each client uploads the top-k of its own gradient (k values and k indices).

Options: local momentum (``local_momentum = rho_l``: a per-client velocity
``v_i <- rho_l v_i + g_i``, sent in place of the gradient and zeroed where the
client sent, the reference code's momentum factor masking), local error
feedback (a per-client error ``e_i``: the client sends top-k of ``e_i + v_i``
and keeps the rest), and global momentum on the server.  Per-client state
lives as long as the run, for every client that ever took part (W_total x d
floats at worst), and on one process only.
"""
from dataclasses import dataclass, field

import torch

from .._fields import check
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
    local_momentum: float = knob(0.0, "per-client momentum rho_l in [0, 1) (the reference code's 0.9); 0: none")

    def validate(self):
        """local_momentum in [0, 1)."""
        super().validate()
        check(0 <= self.local_momentum < 1, f"rule.local_momentum must be in [0, 1), got {self.local_momentum}")


@dataclass
class LocalTopKState:
    """Server momentum and the clients' local errors and velocities (client id -> d-vector)."""

    momentum: torch.Tensor
    errors: dict = field(default_factory=dict)
    velocities: dict = field(default_factory=dict)


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
        if (params.local_error_feedback or params.local_momentum) and self.world_size > 1:
            raise ConfigError("local_topk with local_error_feedback or local_momentum keeps per-client state "
                              "on one process; run it with a world size of 1")
        self.state = LocalTopKState(self.zeros())

    def upload_bytes(self):
        """k values and k indices.

        Returns
        -------
        int
        """
        return self.params.k * (self.value_bytes + self.index_bytes)

    def round(self, ctx):
        """Per-client (momentum, error,) top-k; weighted sum, optional global momentum.

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
        new_errors, new_velocities = {}, {}
        rho_l = self.params.local_momentum
        for i, cid in enumerate(ctx.my_ids):
            v = grads[i]
            if rho_l:
                v = self.state.velocities.get(int(cid), self.zeros()) * rho_l + v
                velocity = v
            if self.params.local_error_feedback:
                v = self.state.errors.get(int(cid), self.zeros()) + v
            idx = torch.topk(v.abs(), self.params.k, sorted=True).indices
            payload.index_add_(0, idx, v[idx] * ctx.my_weights[i])
            if self.params.local_error_feedback:
                v = v.clone()
                v[idx] = 0
                new_errors[int(cid)] = v
            if rho_l:
                velocity = velocity.clone()
                velocity[idx] = 0
                new_velocities[int(cid)] = velocity
        # State changes only now: ctx.gradients() has passed every client's finiteness check.
        self.state.errors.update(new_errors)
        self.state.velocities.update(new_velocities)
        ctx.allreduce_(payload)
        if self.params.global_momentum:
            u = self.state.momentum
            u.mul_(self.params.momentum).add_(payload)
            return u * ctx.lr
        return payload * ctx.lr
