"""Models: shapes, the paper's ResNet9 parameter count, torch.func compatibility, training."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.data import load_dataset
from fedsim.models import MODELS, RESNET9_CIFAR10_PARAMETERS, build_model, num_parameters


def _resnet9_count(channels, classes):
    """Weights of the paper's ResNet9 layer by layer: 3x3 convs and a linear, no biases."""
    convs = [(channels, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512),
             (512, 512), (512, 512)]
    return sum(9 * a * b for a, b in convs) + 512 * classes


def test_resnet9_parameter_count_is_the_papers():
    model = build_model("resnet9", (3, 32, 32), 10)
    assert num_parameters(model) == RESNET9_CIFAR10_PARAMETERS == 6_568_640
    assert _resnet9_count(3, 10) == RESNET9_CIFAR10_PARAMETERS
    assert num_parameters(build_model("resnet9", (3, 32, 32), 100)) == _resnet9_count(3, 100)
    assert num_parameters(build_model("resnet9", (1, 28, 28), 62)) == _resnet9_count(1, 62)
    for module in model.modules():
        assert not isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.bias is None
        if isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3)


def test_resnet9_forward_shape_and_output_scale():
    torch.manual_seed(0)
    model = build_model("resnet9", (3, 32, 32), 10)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # The last module scales the linear layer's output by 0.125, as in Page's ResNet9.
    head = model[:-1](x)
    torch.testing.assert_close(out, head * 0.125)


def test_resnet9_signal_does_not_vanish():
    """He init keeps unit-variance inputs at unit scale through the unnormalised net."""
    torch.manual_seed(2)
    model = build_model("resnet9", (3, 16, 16), 10)
    with torch.no_grad():
        features = model[:-2](torch.randn(2, 3, 16, 16))  # before the linear layer
    rms = features.pow(2).mean().sqrt().item()
    assert 0.5 < rms < 100  # torch's default conv init gives about 0.09 here


@pytest.mark.parametrize("name,shape,classes", [
    ("mlp", (1, 8, 8), 10), ("mlp", (20,), 3), ("cnn", (1, 8, 8), 10),
    ("cnn", (1, 28, 28), 62), ("cnn", (3, 32, 32), 10), ("resnet9", (1, 8, 8), 10),
])
def test_forward_shapes(name, shape, classes):
    model = build_model(name, shape, classes)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes) and out.dtype == torch.float32


def test_mlp_size_matches_the_digits_experiment():
    # The quick experiment in the project notes used an MLP of about 26k parameters.
    assert num_parameters(build_model("mlp", (1, 8, 8), 10)) == 26_122


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)),
                                        ("resnet9", (3, 8, 8))])
def test_vmap_per_sample_grads_equal_loop(name, shape):
    """functional_call + vmap(grad) gives the same per-sample gradients as a plain loop."""
    torch.manual_seed(1)
    model = build_model(name, shape, 10)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(2, *shape)
    y = torch.tensor([3, 7])

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(logits, yi[None])

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(batched[k][i], p.grad, rtol=1e-4, atol=1e-6)
    x_before = x.clone()
    model(x)
    assert torch.equal(x, x_before)  # no in-place change of the input


def test_mlp_learns_digits():
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    assert np.mean(pred == ds.y_test) > 0.9


def test_bad_arguments():
    with pytest.raises(ValueError) as info:
        build_model("vgg", (3, 32, 32), 10)
    assert all(name in str(info.value) for name in MODELS)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (4,), 1)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (4,), True)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", (0, 3), 10)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("cnn", (64,), 10)
    with pytest.raises(ValueError, match="8x8"):
        build_model("resnet9", (3, 4, 4), 10)
    with pytest.raises(ValueError, match="4x4"):
        build_model("cnn", (1, 2, 2), 10)
