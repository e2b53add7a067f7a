"""True top-k with error feedback (not communication-efficient: an upper bound).

``u <- rho u + g``; ``e <- e + lr u``; ``D = top-k(e)``; zero ``e`` (and ``u``,
momentum stopping) at D's coordinates; ``w <- w - D``.
"""
from dataclasses import dataclass

import torch

from ._base import ServerRule

__all__ = ["TrueTopK", "TrueTopKState"]


@dataclass
class TrueTopKState:
    """Momentum and error accumulators."""

    momentum: torch.Tensor
    error: torch.Tensor


class TrueTopK(ServerRule):
    """Exact top-k of the accumulated error; clients upload dense gradients."""

    name = "true_topk"

    def __init__(self, cfg, d, **kw):
        super().__init__(cfg, d, **kw)
        if cfg.k > d:
            from ..errors import ConfigError
            raise ConfigError(f"rule.k = {cfg.k} exceeds the model's d = {d}")
        self.state = TrueTopKState(self.zeros(), self.zeros())

    def upload_bytes(self):
        """d floats (the server needs the exact sum)."""
        return self.d * self.value_bytes

    def round(self, ctx):
        """Momentum, error feedback, exact top-k."""
        g = ctx.allreduce_(ctx.gradient_sum())
        u, e = self.state.momentum, self.state.error
        u.mul_(self.cfg.momentum).add_(g)
        inside = self.cfg.lr_placement == "inside"
        e.add_(u * torch.tensor(ctx.lr, dtype=u.dtype) if inside else u)
        idx = torch.topk(e.abs(), self.cfg.k, sorted=True).indices
        vals = e[idx].clone()
        e[idx] = 0
        if self.cfg.momentum_stopping:
            u[idx] = 0
        update = self.zeros()
        update[idx] = vals if inside else vals * ctx.lr
        return update
