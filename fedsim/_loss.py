"""Per-sample cross entropy for class labels ``(B,)`` and for sequences of targets ``(B, L)``."""
from torch.nn import functional as F

__all__ = ["per_sample_cross_entropy"]


def per_sample_cross_entropy(logits, y):
    """Cross entropy of each sample, shape ``(B,)``: a sequence's is the mean over its positions.

    With logits ``(B, V, L)`` and targets ``(B, L)`` the mean of these over the batch equals
    ``F.cross_entropy(logits, y)`` (every sequence has the same ``L``), so weighting samples
    keeps the loop engine's per-client mean.
    """
    per = F.cross_entropy(logits, y, reduction="none")
    return per if per.ndim == 1 else per.reshape(per.shape[0], -1).mean(dim=1)
