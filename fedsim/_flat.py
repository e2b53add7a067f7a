"""The model's trainable parameters as one flat vector, and views back into it."""
import torch

__all__ = ["flatten_params", "param_views", "num_trainable"]


def _named(model):
    """Trainable parameters in ``named_parameters()`` order (the flat layout)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def num_trainable(model):
    """Number of trainable scalars."""
    return sum(p.numel() for _, p in _named(model))


def flatten_params(model, device=None, dtype=torch.float32):
    """A new flat vector holding the model's trainable parameters."""
    parts = [p.detach().reshape(-1) for _, p in _named(model)]
    return torch.cat(parts).to(device=device, dtype=dtype).contiguous()


def param_views(model, flat):
    """Dict name -> view of ``flat`` shaped like that parameter (for functional_call)."""
    out, start = {}, 0
    for name, p in _named(model):
        out[name] = flat[start:start + p.numel()].view(p.shape)
        start += p.numel()
    if start != flat.shape[0]:
        raise ValueError(f"flat vector has {flat.shape[0]} entries, the model {start} trainable parameters")
    return out


def fixed_tensors(model):
    """Buffers and frozen parameters, passed unchanged to every functional call."""
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    return fixed
