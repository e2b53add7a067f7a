"""Models of the simulator: a small MLP and CNN, and the FetchSGD paper's ResNet9.

Every model is free of batch norm and of in-place operations on its inputs, so that
``torch.func.functional_call`` and ``torch.func.vmap`` (per-client gradients) work on it.
"""
from __future__ import annotations

import math
import operator

from torch import nn

from ._text_models import TEXT_MODELS, build_text_model
from .errors import ModelError

__all__ = ["MODELS", "RESNET9_CIFAR10_PARAMETERS", "TEXT_MODELS", "build_model", "num_parameters"]

MODELS = ("mlp", "cnn", "resnet9", "linear") + TEXT_MODELS
RESNET9_CIFAR10_PARAMETERS = 6_568_640


def num_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of `model`.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    int
    """
    return sum(p.numel() for p in model.parameters())


class _Scale(nn.Module):
    """Multiply by a constant (ResNet9's 0.125 output scale)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class _Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


def _conv(c_in, c_out):
    """3x3 same-padding conv without bias, then ReLU (no batch norm)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU())


def _resnet9(input_shape, num_classes):
    """ResNet9 of Page's DAWNBench entry as FetchSGD uses it: no batch norm, no biases."""
    channels = input_shape[0]
    model = nn.Sequential(
        _conv(channels, 64),                                              # prep
        _conv(64, 128), nn.MaxPool2d(2),                                  # layer1
        _Residual(nn.Sequential(_conv(128, 128), _conv(128, 128))),
        _conv(128, 256), nn.MaxPool2d(2),                                 # layer2
        _conv(256, 512), nn.MaxPool2d(2),                                 # layer3
        _Residual(nn.Sequential(_conv(512, 512), _conv(512, 512))),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(512, num_classes, bias=False),
        _Scale(0.125),
    )
    # Without batch norm, torch's default conv init shrinks the signal ~6x in variance per
    # layer: logits start near 1e-2 and SGD barely moves (measured: loss still 2.30 after
    # 180 steps). He init keeps the forward signal at unit scale, and the net trains.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    return model


def _mlp(input_shape, num_classes):
    """Two hidden layers of 128 (about 26k parameters on 8x8 digits)."""
    features = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _linear(input_shape, num_classes):
    """Softmax regression: one linear layer on the flattened input (d = features * C + C)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _cnn(input_shape, num_classes):
    """Two conv+pool stages (32, 64 channels) and a 128-unit hidden layer."""
    channels, height, width = input_shape
    if height < 4 or width < 4:
        raise ModelError(f"the 'cnn' model needs images of at least 4x4, got {input_shape}")
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def build_model(name: str, input_shape: tuple, num_classes: int) -> nn.Module:
    """Build a freshly initialised model, deterministic under ``torch.manual_seed``.

    The MLP and CNN use torch's default initialisation. ResNet9's convolutions use He
    (Kaiming normal, fan-in) initialisation: with torch's default and no batch norm the
    signal vanishes and the network does not train. Being unnormalised, ResNet9 also wants
    a much smaller learning rate than Page's batch-normed original: SGD with momentum 0.9
    and batch 64 trained at lr 0.01 and diverged at 0.05 in a quick CPU check.

    Parameters
    ----------
    name : str
        ``"mlp"`` (any input shape; flattens it), ``"cnn"`` (images ``(C, H, W)`` with
        H, W >= 4; for digits, MNIST, FEMNIST) or ``"resnet9"`` (images ``(C, H, W)`` with
        H, W >= 8; the FetchSGD paper's ResNet9 without batch norm and biases, output
        scaled by 0.125; 6,568,640 parameters for CIFAR-10) or ``"linear"`` (any input
        shape; softmax regression on the flattened input, for ``synthetic_highdim``).
        Text models (token sequences, input_shape ``(L,)``, logits ``(B, V, L)``): the
        character GPT presets ``"gpt_tiny"``, ``"gpt_small"``, ``"gpt2"``, ``"gpt2_deep"``
        and LEAF's LSTM ``"lstm_leaf"`` (see ``fedsim/_text_models.py``).
    input_shape : tuple of int
        Shape of one sample, e.g. ``Dataset.input_shape``.
    num_classes : int
        Number of outputs (logits).

    Returns
    -------
    torch.nn.Module
        Maps a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``.

    Raises
    ------
    ModelError
        Unknown name, or a shape or class count the model cannot take.
    """
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"input_shape must be a tuple of ints, got {input_shape!r}") from exc
    if not input_shape or min(input_shape) < 1:
        raise ModelError(f"input_shape must be non-empty with positive sizes, got {input_shape}")
    try:
        classes = operator.index(num_classes)
    except TypeError:
        classes = None
    if isinstance(num_classes, bool) or classes is None or classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = classes
    if name == "linear":
        return _linear(input_shape, num_classes)
    if name in TEXT_MODELS:
        return build_text_model(name, input_shape, num_classes)
    if name != "mlp" and len(input_shape) != 3:
        raise ModelError(f"the {name!r} model needs images (C, H, W), got input_shape "
                         f"{input_shape}")
    if name == "mlp":
        return _mlp(input_shape, num_classes)
    if name == "cnn":
        return _cnn(input_shape, num_classes)
    if min(input_shape[1:]) < 8:
        raise ModelError(f"the 'resnet9' model pools three times and needs images of at "
                         f"least 8x8, got {input_shape}")
    model = _resnet9(input_shape, num_classes)
    if input_shape[0] == 3 and num_classes == 10:
        count = num_parameters(model)
        if count != RESNET9_CIFAR10_PARAMETERS:
            raise ModelError(f"ResNet9 for CIFAR-10 has {count} parameters, the paper's "
                             f"has {RESNET9_CIFAR10_PARAMETERS}")
    return model
