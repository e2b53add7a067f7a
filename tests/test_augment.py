"""Data augmentation (data.augment = "crop_flip"): a real crop and flip, seeded, equal in both engines."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim import ConfigError, Simulation, parse_config
from fedsim._augment import augment, augment_key, crop_flip
from fedsim.clients import LoopEngine
from fedsim.data import Dataset
from fedsim.vmap_engine import VmapEngine


def _numpy_candidates(img, pad):
    """Every crop (offsets in [0, 2 pad]) of the zero-padded image, unflipped and mirrored."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out[(dy - pad, dx - pad, False)] = crop
            out[(dy - pad, dx - pad, True)] = crop[:, :, ::-1]
    return out


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       key=st.integers(0, 2**32 - 1), pad=st.integers(0, 4))
def test_each_image_is_one_shift_within_pad_with_zero_fill_optionally_mirrored(n, c, h, w, key, pad):
    x = torch.from_numpy(np.random.default_rng(key).standard_normal((n, c, h, w)).astype(np.float32) + 3.0)
    out = crop_flip(x, key, pad=pad)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(n):
        cands = _numpy_candidates(x[i].numpy(), pad)
        hits = [k for k, v in cands.items() if np.array_equal(v, out[i].numpy())]
        assert hits, f"image {i} is no crop/flip of its padded input"
        assert all(abs(dy) <= pad and abs(dx) <= pad for dy, dx, _ in hits)


def test_flip_is_the_mirror_and_both_outcomes_and_all_offsets_occur():
    x = torch.randn(400, 2, 5, 6)
    flipped = crop_flip(x, 123, pad=0)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 100 < int(mirrored.sum()) < 300  # about half
    # Offsets: find each image's (dy, dx) through a one-hot probe image.
    probe = torch.zeros(2000, 1, 9, 9)
    probe[:, 0, 4, 4] = 1.0
    out = crop_flip(probe, 7, pad=4)
    pos = out.flatten(1).argmax(1)
    inside = out.flatten(1).amax(1) == 1
    dy, col = pos // 9, pos % 9
    assert set(dy[inside].tolist()) == set(range(9)) and set(col[inside].tolist()) == set(range(9))
    # An offset of 4 with the single bright pixel at the centre keeps it; none falls off (|shift| <= 4).
    assert bool(inside.all())


def test_deterministic_per_key_and_different_keys_differ():
    x = torch.randn(64, 3, 8, 8)
    a, b = crop_flip(x, 5), crop_flip(x, 5)
    assert torch.equal(a, b)
    assert not torch.equal(a, crop_flip(x, 6))
    assert augment("none", x, 5) is x
    assert augment_key(0, 4, 1, 2) == augment_key(0, 4, 1, 2) != augment_key(0, 4, 1, 3)


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(3, 8)), "batch of images"),
    (dict(key=-1), "key must be"),
    (dict(key=2**32), "key must be"),
    (dict(pad=-1), "pad must be"),
])
def test_bad_inputs(bad, match):
    kw = dict(x=torch.randn(2, 1, 4, 4), key=0, pad=4)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        crop_flip(kw["x"], kw["key"], pad=kw["pad"])
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment("cutout", kw["x"], 0)


# ----------------------------------------------------------------- in the simulator
def _spec(rule="fetchsgd", engine="loop", augment="crop_flip", **rule_kw):
    raw = {"data": {"dataset": "digits", "num_clients": 20, "augment": augment},
           "model": {"name": "cnn"},
           "train": {"rounds": 2, "clients_per_round": 4, "lr": 0.05, "threads": 1, "engine": engine,
                     "eval_every": 2},
           "rule": dict(rule_kw, name=rule, k=40, rows=3, cols=400, sketch_backend="numpy"),
           "output": {"progress": False, "checkpoint_every": 0, "plot": False}}
    (spec,) = parse_config(raw).runs()
    return spec


def test_client_batches_are_augmented_and_seeded_by_seed_round_client():
    sim = Simulation(_spec())
    plain = Simulation(_spec(augment="none"))
    x, y = sim.client_batch(3, 5)
    x0, y0 = plain.client_batch(3, 5)
    assert torch.equal(y, y0) and not torch.equal(x, x0)
    assert torch.equal(x, crop_flip(x0, augment_key(0, 4, 3, 5)))
    assert torch.equal(x, sim.client_batch(3, 5)[0])               # deterministic
    assert not torch.equal(x, sim.client_batch(4, 5)[0])           # another round
    other = Simulation(_spec(), dataset=sim.dataset)
    other.seed = 1
    assert not torch.equal(x, other.client_batch(3, 5)[0])         # another seed
    # FedAvg: a fresh augmentation per local epoch
    fn = sim.local_augment(3, 5)
    assert torch.equal(fn(x0, 1), crop_flip(x0, augment_key(0, 4, 3, 5, 1)))
    assert not torch.equal(fn(x0, 0), fn(x0, 1))
    assert plain.local_augment(3, 5) is None


@pytest.mark.parametrize("rule, kw", [
    ("fetchsgd", {}),                                     # sum-then-sketch path
    ("local_topk", {}),                                   # per-client gradients
    ("fedavg", {"local_epochs": 2, "local_batch_size": 16}),  # local SGD, fresh draws per epoch
])
def test_loop_and_vmap_engines_train_on_the_same_augmented_batches(rule, kw):
    loop = Simulation(_spec(rule, "loop", **kw))
    vm = Simulation(_spec(rule, "vmap", **kw), dataset=loop.dataset)
    for _ in range(2):
        loop.step()
        vm.step()
    torch.testing.assert_close(vm.params, loop.params, rtol=1e-4, atol=1e-6)
    plain = Simulation(_spec(rule, "loop", augment="none", **kw), dataset=loop.dataset)
    plain.step()
    plain.step()
    assert not torch.allclose(plain.params, loop.params)  # the augmentation reached the training


def test_engines_local_train_with_augments_agree():
    torch.manual_seed(0)
    from fedsim.models import build_model
    model = build_model("cnn", (1, 8, 8), 10)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (5, 3, 4)]
    augments = [lambda x, e, i=i: crop_flip(x, augment_key(9, i, e)) for i in range(3)]
    kw = dict(lr=0.1, epochs=2, batch_size=2, weight_decay=1e-3, augments=augments)
    a = VmapEngine(max_clients_per_chunk=2).local_train(model, flat, batches, **kw)
    b = LoopEngine().local_train(model, flat, batches, **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="augments has 2 entries"):
        VmapEngine().local_train(model, flat, batches, lr=0.1, augments=augments[:2])


def test_augment_needs_images_and_a_known_name():
    rng = np.random.default_rng(0)
    flat = Dataset("flat", rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 2, 40),
                   rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 2, 10), 2)
    spec = _spec()
    spec.model.name = "mlp"
    with pytest.raises(ConfigError, match="data.augment = 'crop_flip' needs images"):
        Simulation(spec, dataset=flat)
    with pytest.raises(ConfigError, match="data.augment must be one of"):
        _spec(augment="mixup")
