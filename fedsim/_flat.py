"""What a functional call needs besides the flat weights (the flat layout itself: adapters.torch)."""

__all__ = ["fixed_tensors"]


def fixed_tensors(model):
    """Buffers and frozen parameters, passed unchanged to every functional call."""
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    return fixed
