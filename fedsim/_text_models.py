"""Character-level text models: a GPT decoder (several sizes) and LEAF's Shakespeare LSTM.

Both map int64 token sequences ``(B, L)`` to next-token logits ``(B, V, L)`` (class axis
second, the layout ``torch.nn.functional.cross_entropy`` takes with targets ``(B, L)``),
so every position is a target. Both are free of batch norm, dropout and in-place
operations on their inputs, so ``torch.func.functional_call`` and ``vmap`` work on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ModelError

__all__ = ["GPT_PRESETS", "TEXT_MODELS", "GPTConfig", "build_text_model", "gpt_num_parameters",
           "lstm_num_parameters"]


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT decoder: layers, width, heads (the MLP is 4x the width)."""

    layers: int
    width: int
    heads: int


# gpt_tiny ~0.11M (CPU), gpt_small ~10.7M (GPU), gpt2 = GPT-2 small's trunk (85.2M with a
# 65-character vocabulary: GPT-2's own 124M holds 38.6M of 50k-token embeddings), and
# gpt2_deep = 17 such layers (120.7M), the paper's d ~ 124M on characters.
GPT_PRESETS = {
    "gpt_tiny": GPTConfig(layers=2, width=64, heads=4),
    "gpt_small": GPTConfig(layers=6, width=384, heads=6),
    "gpt2": GPTConfig(layers=12, width=768, heads=12),
    "gpt2_deep": GPTConfig(layers=17, width=768, heads=12),
}
LSTM_EMBED, LSTM_HIDDEN, LSTM_LAYERS = 8, 256, 2  # LEAF's Shakespeare model
TEXT_MODELS = tuple(GPT_PRESETS) + ("lstm_leaf",)


def gpt_num_parameters(cfg: GPTConfig, vocab: int, context: int) -> int:
    """Analytic parameter count of :class:`_GPT` (per layer 12 w^2 + 13 w; see the class)."""
    w = cfg.width
    per_layer = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (4 * w * w + 4 * w) + (4 * w * w + w)
    return vocab * w + context * w + cfg.layers * per_layer + 2 * w + vocab * w


def lstm_num_parameters(vocab: int, embed=LSTM_EMBED, hidden=LSTM_HIDDEN, layers=LSTM_LAYERS) -> int:
    """Analytic parameter count of :class:`_LSTM` (torch's nn.LSTM layout: two biases per layer)."""
    count = vocab * embed
    for i in range(layers):
        inp = embed if i == 0 else hidden
        count += 4 * hidden * (inp + hidden) + 8 * hidden
    return count + hidden * vocab + vocab


def _under_vmap(t):
    """True when ``t`` is (wrapped around) a ``torch.func.vmap`` batched tensor.

    Uses torch's functorch introspection (``torch._C._functorch``), the only way to ask; if
    that ever changes, the answer is False and attention stays on SDPA (slower under vmap,
    still exact).
    """
    try:
        ft = torch._C._functorch
        while ft.is_functorch_wrapped_tensor(t):
            if ft.is_batchedtensor(t):
                return True
            t = ft.get_unwrapped(t)
    except (AttributeError, RuntimeError):
        pass
    return False


def _causal_attention(q, k, v):
    """Causal softmax attention: SDPA, or the same sum written out under vmap.

    ``scaled_dot_product_attention`` has no vmap batching rule (torch 2.13: the CPU flash kernel
    falls back to a per-client loop, with a warning), so the per-client paths of the vmap engine
    (local top-k, FedAvg) would compute attention client by client; written out, it is plain
    batched matmuls.
    """
    if not _under_vmap(q):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=-1)
        shape = (b, t, self.heads, w // self.heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        att = _causal_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, w))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _GPT(nn.Module):
    """Character GPT: token + learned position embeddings, pre-LN blocks, final LN, untied head."""

    def __init__(self, cfg: GPTConfig, vocab: int, context: int):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, cfg.width)
        self.pos = nn.Embedding(context, cfg.width)
        self.blocks = nn.Sequential(*[_Block(cfg.width, cfg.heads) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab, bias=False)
        # GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 layers).
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        t = idx.shape[-1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens exceeds the model's context of {self.context}")
        x = self.tok(idx) + self.pos.weight[:t]
        logits = self.head(self.ln_f(self.blocks(x)))
        return logits.transpose(1, 2)


class _LSTM(nn.Module):
    """LEAF's Shakespeare LSTM (embedding 8, two LSTM layers of 256, linear head), written out.

    The recurrence is spelled out with matmuls instead of ``nn.LSTM`` (same parameter names
    and layout) because ``torch.func.vmap`` has no batching rule for torch's fused RNN
    kernels (``aten::mkldnn_rnn_layer`` on CPU falls back to a slow per-sample loop; the cuDNN
    path is untested under vmap), while plain matmuls batch natively.
    """

    def __init__(self, vocab: int, embed=LSTM_EMBED, hidden=LSTM_HIDDEN, layers=LSTM_LAYERS):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embed = nn.Embedding(vocab, embed)
        bound = 1.0 / math.sqrt(hidden)
        for i in range(layers):
            inp = embed if i == 0 else hidden
            for name, shape in ((f"weight_ih_l{i}", (4 * hidden, inp)), (f"weight_hh_l{i}", (4 * hidden, hidden)),
                                (f"bias_ih_l{i}", (4 * hidden,)), (f"bias_hh_l{i}", (4 * hidden,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx):
        x = self.embed(idx)
        b, t = idx.shape
        for i in range(self.layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{i}"), getattr(self, f"weight_hh_l{i}")
            bias = getattr(self, f"bias_ih_l{i}") + getattr(self, f"bias_hh_l{i}")
            pre = x @ w_ih.T + bias  # input part of every step at once
            h = x.new_zeros(b, self.hidden)
            c = x.new_zeros(b, self.hidden)
            outs = []
            for s in range(t):
                i_g, f_g, g_g, o_g = (pre[:, s] + h @ w_hh.T).chunk(4, dim=-1)
                c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
                h = torch.sigmoid(o_g) * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs, dim=1)
        return self.head(x).transpose(1, 2)


def build_text_model(name: str, input_shape: tuple, num_classes: int) -> nn.Module:
    """A text model for sequences of ``input_shape = (L,)`` tokens over ``num_classes`` symbols.

    Parameters
    ----------
    name : str
        A key of :data:`GPT_PRESETS` or ``"lstm_leaf"``.
    input_shape : tuple of int
        ``(L,)``: the sequence length (the GPT's context).
    num_classes : int
        Vocabulary size.

    Returns
    -------
    torch.nn.Module
        Maps ``(B, L)`` int64 tokens to logits ``(B, num_classes, L)``.

    Raises
    ------
    ModelError
        Unknown name or an input shape that is not ``(L,)`` (a ValueError).
    """
    if name not in TEXT_MODELS:
        raise ModelError(f"unknown text model {name!r}; valid: {', '.join(TEXT_MODELS)}")
    if len(input_shape) != 1:
        raise ModelError(f"the {name!r} model takes token sequences, input_shape (L,), got {input_shape}")
    if name == "lstm_leaf":
        return _LSTM(num_classes)
    return _GPT(GPT_PRESETS[name], num_classes, int(input_shape[0]))
