"""True top-k with error feedback (not communication-efficient: an upper bound).

``u <- rho u + g``; ``e <- e + lr u``; ``D = top-k(e)``; zero ``e`` (and ``u``,
momentum stopping) at D's coordinates; ``w <- w - D``.
"""
from dataclasses import dataclass

import torch

from ._base import ServerRule
from ._params import ErrorFeedbackParams, knob
from ._registry import register_rule

__all__ = ["TrueTopK", "TrueTopKParams", "TrueTopKState"]


@dataclass
class TrueTopKParams(ErrorFeedbackParams):
    """True top-k: momentum, k, lr placement and momentum stopping."""

    momentum_stopping: bool = knob(True, "zero the momentum where the update was applied")


@dataclass
class TrueTopKState:
    """Momentum and error accumulators."""

    momentum: torch.Tensor
    error: torch.Tensor


@register_rule
class TrueTopK(ServerRule):
    """Exact top-k of the accumulated error; clients upload dense gradients.

    Parameters
    ----------
    params : TrueTopKParams
    d : int
        Number of trainable parameters.
    **kw
        See :class:`~fedsim.rules.ServerRule`.

    Raises
    ------
    ConfigError
        ``k > d``.
    """

    name = "true_topk"
    Params = TrueTopKParams

    def __init__(self, params, d, **kw):
        super().__init__(params, d, **kw)
        self.state = TrueTopKState(self.zeros(), self.zeros())

    def upload_bytes(self):
        """d floats (the server needs the exact sum).

        Returns
        -------
        int
        """
        return self.d * self.value_bytes

    def round(self, ctx):
        """Momentum, error feedback, exact top-k.

        Parameters
        ----------
        ctx : fedsim.RoundContext

        Returns
        -------
        torch.Tensor
            The update (``w <- w - update``).
        """
        g = ctx.allreduce_(ctx.gradient_sum())
        u, e = self.state.momentum, self.state.error
        u.mul_(self.params.momentum).add_(g)
        inside = self.params.lr_placement == "inside"
        e.add_(u * torch.tensor(ctx.lr, dtype=u.dtype) if inside else u)
        idx = torch.topk(e.abs(), self.params.k, sorted=True).indices
        vals = e[idx].clone()
        e[idx] = 0
        if self.params.momentum_stopping:
            u[idx] = 0
        update = self.zeros()
        update[idx] = vals if inside else vals * ctx.lr
        return update
