"""Small pieces shared by the model families: activations, masks, attention, the KV cache.

Keep this file small. A family that needs a variant writes its own rather than growing
flags here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


class Conv1D(nn.Module):
    """y = x @ weight + bias with weight (in, out): GPT-2's layout on the Hub, kept as stored
    (gpt2.py says why). quantize_int8 knows it and transposes the weight."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], self.out_features)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 mask → additive (B, 1, 1, S) mask, always built: a decode step's cross-attention
    mask can't ask the device whether anything is padded without stalling on a sync.

    Additive (not boolean) because a fully masked row must not turn into NaN in SDPA.
    """
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """padding_bias(), or None when nothing is padded (SDPA's fast path; one host sync)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return padding_bias(attention_mask, dtype)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


def attention(q, k, v, mask=None, causal=False, scale=None):
    """Scaled dot-product attention on (B, H, T, D) tensors; `mask` additive or boolean."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)


class KVCache:
    """Preallocated keys/values for every layer: written in place, never concatenated.

    Shapes: (layers, B, H_kv, max_len, D). `length` is how many positions are filled;
    a forward pass writes its T new positions at [length, length + T) and `advance(T)`
    moves the cursor once all layers have written. `cross` holds encoder-decoder
    cross-attention keys/values, computed once per generation.
    """

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H_kv, T, D) at the cursor; return all filled keys/values for `layer`."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search re-ranking, dropping finished rows)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.cross = {i: (k.index_select(0, index), v.index_select(0, index)) for i, (k, v) in self.cross.items()}


def causal_allowed(q_len: int, past: int, device, window: int | None = None) -> torch.Tensor:
    """(1, 1, T, S) booleans: which of the past + q_len keys each of the q_len new queries (at
    positions [past, past + q_len)) may see — itself and earlier ones, within an optional sliding
    `window` (key j visible from query i when i - window < j <= i, in cache slots)."""
    q = torch.arange(past, past + q_len, device=device)[:, None]
    k = torch.arange(past + q_len, device=device)[None, :]
    allowed = k <= q  # (T, S)
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed[None, None]


def decoder_mask(attention_mask, q_len: int, past: int, dtype, device, window: int | None = None):
    """Self-attention mask for `q_len` new queries after `past` cached positions.

    Returns (mask, is_causal) for `attention()`: no mask at all when SDPA can do it alone (no
    padding: a single decode step sees every key; a fresh prefill is plainly causal, while with a
    past SDPA's `is_causal` would align the triangle top-left, which is wrong), else an additive
    (B|1, 1, T, S) mask combining causality, the 1/0 `attention_mask` (B, S) and the `window`.
    """
    total = past + q_len
    if attention_mask is None and (window is None or total <= window):
        if q_len == 1:
            return None, False
        if past == 0:
            return None, True
    allowed = causal_allowed(q_len, past, device, window)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :total].bool()
    # built as one boolean, converted once: adding two finfo.min masks would overflow to -inf
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min), False


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    # transformers clamps fp16 activations that overflowed (BART, T5), so a long input doesn't turn into inf/NaN
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


def padded_positions(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Position ids of the last `q_len` columns of a left-padded (B, S) mask, as transformers counts them."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    return positions[:, -q_len:]


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (llama, mistral, qwen2)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype, scaling: float = 1.0):
    """cos, sin (B, 1, T, D) for rotary embeddings at `position_ids` (B, T), computed in float32."""
    freqs = position_ids[:, :, None].float() * inv_freq.float()  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def lm_logits(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """head(x) for a vocabulary-sized bias-free nn.Linear (an LM head).

    On CPU, for a handful of rows (a batch of decode steps, a few beams), MKL computes
    (W @ x.T).T about twice as fast as x @ W.T (measured: 8 rows x GPT-2's 50257 x 768);
    for one row or many rows F.linear is as fast or faster.
    """
    rows = x.numel() // x.shape[-1]
    if type(head) is nn.Linear and head.bias is None and x.device.type == "cpu" and 4 <= rows <= 32:
        out = torch.mm(head.weight, x.reshape(rows, x.shape[-1]).t()).t()  # (rows, V), a transposed view
        return out.view(*x.shape[:-1], out.shape[-1])
    return head(x)
