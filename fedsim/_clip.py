"""Per-client gradient clipping by global L2 norm (torch's ``clip_grad_norm_`` rule)."""
import torch

__all__ = ["clip_factor", "clip_rows"]

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6) too


def clip_factor(norms, max_norm):
    """Scale ``min(1, max_norm / (norm + 1e-6))`` per entry of ``norms``."""
    return torch.clamp(max_norm / (norms + _EPS), max=1.0)


def clip_rows(grads, max_norm):
    """Clip each row of a ``(W, d)`` stack to L2 norm ``max_norm`` (a new tensor)."""
    return grads * clip_factor(torch.linalg.vector_norm(grads, dim=1), max_norm).unsqueeze(1)
