"""Text models: preset sizes against the analytic counts, the LSTM against torch's nn.LSTM,
causality, and the vmap engine against the loop engine on sequences (float64)."""
import warnings

import pytest
import torch
from torch import nn

from fedsim.clients import LoopEngine
from fedsim.models import build_model, num_parameters
from fedsim._text_models import GPT_PRESETS, gpt_num_parameters, lstm_num_parameters
from adapters.torch import flatten_params
from fedsim.vmap_engine import VmapEngine

VOCAB, CONTEXT = 65, 80


@pytest.mark.parametrize("name", sorted(GPT_PRESETS))
def test_gpt_preset_parameter_counts(name):
    with torch.device("meta"):  # the 100M presets without allocating them
        model = build_model(name, (CONTEXT,), VOCAB)
    cfg = GPT_PRESETS[name]
    w = cfg.width
    # Independent closed form: embeddings + head (V+L+V)w, final LN 2w, per layer 12w^2 + 13w.
    closed = (2 * VOCAB + CONTEXT) * w + 2 * w + cfg.layers * (12 * w * w + 13 * w)
    assert num_parameters(model) == gpt_num_parameters(cfg, VOCAB, CONTEXT) == closed
    assert len(model.blocks) == cfg.layers and w % cfg.heads == 0


def test_preset_sizes_span_cpu_to_gpt2():
    count = {n: gpt_num_parameters(c, VOCAB, CONTEXT) for n, c in GPT_PRESETS.items()}
    assert 80_000 <= count["gpt_tiny"] <= 150_000
    assert count["gpt_small"] >= 10_000_000
    assert (GPT_PRESETS["gpt2"].layers, GPT_PRESETS["gpt2"].width) == (12, 768)  # GPT-2 small's shape
    assert count["gpt2_deep"] >= 100_000_000
    assert GPT_PRESETS["gpt2_deep"].width == 768


def test_lstm_matches_torch_lstm():
    torch.manual_seed(0)
    model = build_model("lstm_leaf", (20,), VOCAB).double()
    ref = nn.LSTM(8, 256, num_layers=2, batch_first=True).double()
    own = dict(model.named_parameters())
    assert num_parameters(model) == lstm_num_parameters(VOCAB) == (
        num_parameters(ref) + VOCAB * 8 + 256 * VOCAB + VOCAB)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(own[name])
    idx = torch.randint(0, VOCAB, (3, 20))
    h, _ = ref(model.embed(idx))
    expect = model.head(h).transpose(1, 2)
    torch.testing.assert_close(model(idx), expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gpt_tiny", "lstm_leaf"])
def test_models_are_causal(name):
    torch.manual_seed(1)
    model = build_model(name, (16,), VOCAB).double()
    idx = torch.randint(0, VOCAB, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    a, b = model(idx), model(changed)
    assert a.shape == (2, VOCAB, 16)
    torch.testing.assert_close(a[..., :9], b[..., :9], rtol=0, atol=0)
    assert not torch.allclose(a[..., 9:], b[..., 9:])


def _batches(sizes, length, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        seq = torch.randint(0, VOCAB, (n, length + 1), generator=g)
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


@pytest.mark.parametrize("name,length", [("gpt_tiny", 24), ("lstm_leaf", 6)])
def test_vmap_engine_equals_loop_engine_on_sequences(name, length):
    torch.manual_seed(2)
    model = build_model(name, (length,), VOCAB).double()
    flat = flatten_params(model, trainable_only=True, dtype=torch.float64)
    batches = _batches([3, 5, 2, 5], length, seed=3)  # unequal: padding and masking
    weights = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    loop, vm = LoopEngine(), VmapEngine(max_clients_per_chunk=3)
    kw = dict(rtol=1e-9, atol=1e-11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = vm.gradients(model, flat, batches)
    # Truly batched: no op fell back to torch's per-sample loop (SDPA, fused RNN kernels would).
    assert not [w for w in caught if "batching rule" in str(w.message)]
    torch.testing.assert_close(stack, loop.gradients(model, flat, batches), **kw)
    torch.testing.assert_close(vm.gradient_sum(model, flat, batches, weights),
                               loop.gradient_sum(model, flat, batches, weights), **kw)
    orders = [[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(i))] for i, (x, _) in
              enumerate(batches)]
    torch.testing.assert_close(
        vm.local_train(model, flat, batches, lr=0.1, batch_size=2, orders=orders),
        loop.local_train(model, flat, batches, lr=0.1, batch_size=2, orders=orders), **kw)


def test_unknown_or_misplaced_text_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'gpt_huge'.*gpt_tiny"):
        build_model("gpt_huge", (80,), VOCAB)
    with pytest.raises(ValueError, match="token sequences"):
        build_model("gpt_tiny", (1, 8, 8), 10)
    model = build_model("gpt_tiny", (8,), VOCAB)
    with pytest.raises(ValueError, match="exceeds the model's context of 8"):
        model(torch.zeros((1, 9), dtype=torch.int64))


def test_per_client_stacks_are_chunked_to_the_budget_at_d_10m():
    torch.manual_seed(4)
    model = build_model("gpt_small", (CONTEXT,), VOCAB)
    flat = flatten_params(model, trainable_only=True, dtype=torch.float32)
    d = flat.numel()
    assert d >= 10_000_000
    batches = _batches([2] * 8, CONTEXT, seed=5)
    engine = VmapEngine(memory_budget_mb=500)
    per = engine.per_client_bytes(model, flat, batches)
    assert per > 3 * d * 4  # three d-length float32 rows per client, plus saved activations
    size = engine.chunk_size(model, flat, batches)
    assert 1 <= size < len(batches) and size * per <= 500 * 2**20 < (size + 1) * per
