"""Small pieces shared by the model families: activations, masks, attention, rotary positions.
The KV cache has its own file (kv_cache.py).

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


def fuse_qkv(layer: nn.Module, linears) -> None:
    """Give an encoder layer one (3C, C) matmul for its query/key/value linears (0-5% off a
    forward on CPU): they become row views of the fused weight, kept as the non-persistent
    buffers qkv_weight / qkv_bias, so state_dict names and memory stay as loaded.
    quantize_int8 drops the fusion again (drop_qkv_fusions): the three then run in int8."""
    weight = torch.cat([m.weight for m in linears])  # (3C, C)
    bias = torch.cat([m.bias for m in linears])
    for part, m in enumerate(linears):
        rows = slice(part * m.out_features, (part + 1) * m.out_features)
        m.weight = nn.Parameter(weight[rows], requires_grad=False)
        m.bias = nn.Parameter(bias[rows], requires_grad=False)
    layer.register_buffer("qkv_weight", weight, persistent=False)
    layer.register_buffer("qkv_bias", bias, persistent=False)


def drop_qkv_fusions(model: nn.Module) -> None:
    """Undo fuse_qkv in every layer of `model` (quantize_int8: the three linears are int8 now,
    and the float fusion would run instead of them and keep its memory)."""
    for module in model.modules():
        if hasattr(module, "qkv_weight"):
            del module.qkv_weight, module.qkv_bias


def qkv_heads(layer: nn.Module, linears, x: torch.Tensor, n_heads: int):
    """q, k, v (B, H, T, D) of `x`: through the layer's fused weight (fuse_qkv), else (a model
    built by hand, not through load_model, or quantized) through the three linears."""
    if hasattr(layer, "qkv_weight"):
        B, T, C = x.shape
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias).view(B, T, 3, n_heads, C // n_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return tuple(split_heads(m(x), n_heads) for m in linears)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


def attention(q, k, v, mask=None, causal=False, scale=None):
    """Scaled dot-product attention on (B, H, T, D) tensors; `mask` additive or boolean."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)


def causal_allowed(q_len: int, device, window: int | None = None) -> torch.Tensor:
    """(1, 1, T, T) booleans for a pass without a cache: query i sees keys j <= i, within an
    optional sliding `window` (i - window < j). Cached passes get theirs from the KVCache."""
    q = torch.arange(q_len, device=device)[:, None]
    k = torch.arange(q_len, device=device)[None, :]
    allowed = k <= q  # (T, T)
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed[None, None]


def decoder_mask(attention_mask, q_len: int, dtype, device, window: int | None = None):
    """Self-attention mask of a decoder pass without a cache over `q_len` tokens.

    Returns (mask, is_causal) for `attention()`: no mask when SDPA's causal flag does it alone
    (no padding, no window cutting in), else an additive (B|1, 1, T, T) mask combining causality,
    the 1/0 `attention_mask` (B, T) and the `window`.
    """
    if attention_mask is None and (window is None or q_len <= window):
        return None, q_len > 1
    allowed = causal_allowed(q_len, device, window)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :q_len].bool()
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
    """cos, sin (B, 1, T, D) for rotary embeddings at `position_ids` (B, T), computed in float32;
    `inv_freq` (D/2,) for every row, or (B, D/2) one per row."""
    if inv_freq.dim() == 2:
        inv_freq = inv_freq[:, None, :]
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
