"""Llama, Mistral and Qwen2: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.

The three differ only in small ways, all read from config.json:
  llama    optional `attention_bias` on q/k/v/o and `mlp_bias`; rope_scaling (linear, dynamic, llama3)
  mistral  no biases; a `sliding_window` on every layer
  qwen2    bias on q/k/v (never o); a sliding window on layers >= max_window_layers when
           `use_sliding_window` (or as `layer_types` says); usually tied embeddings
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, Model, ModelConfig
from .common import (
    RMSNorm,
    activation,
    apply_rotary,
    decoder_mask,
    lm_logits,
    merge_heads,
    padded_positions,
    rotary_cos_sin,
)
from .kv_cache import KVCache


@dataclass
class Config(ModelConfig):
    null_means_default = False  # a null stays None, as transformers reads it

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    max_window_layers: int = 28
    layer_types: list | None = None

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_windows(self) -> list[int | None]:
        """The sliding window of each layer (None: full attention), as transformers 4.57 decides it."""
        n = self.num_hidden_layers
        if self.model_type == "mistral":
            return [self.sliding_window] * n
        if self.model_type == "qwen2":
            window = self.sliding_window if self.use_sliding_window else None
            types = self.layer_types or [
                "sliding_attention" if window is not None and i >= self.max_window_layers else "full_attention"
                for i in range(n)
            ]
            return [window if t == "sliding_attention" else None for t in types]
        return [None] * n


def rope_parameters(c: Config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """inv_freq (D/2,) and the cos/sin scaling for `c.rope_scaling`, as transformers computes them."""
    scaling = c.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    dim, base = c.head_dim, c.rope_theta
    if kind == "dynamic":
        seq_len = max(seq_len or 0, c.max_position_embeddings)
        factor = scaling["factor"]
        base = base * ((factor * seq_len / c.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    # explicit cpu: the model is built under torch.device("meta"), but these few numbers must be real
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if kind in ("default", "dynamic"):
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ValueError(
        f"rope_scaling type {kind!r} is not supported by lightpipe; supported: default, linear, dynamic, llama3"
    )


class Rotary(nn.Module):
    """cos/sin for position ids. `dynamic` NTK scaling regrows inv_freq past the trained length, as transformers does."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        scaling = config.rope_scaling or {}
        self.dynamic = scaling.get("rope_type", scaling.get("type")) == "dynamic"
        inv_freq, self.attention_scaling = rope_parameters(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # dynamic rope's regrown frequencies: (length, inv_freq) or None. One attribute replaced whole,
        # so a forward in another thread reads a consistent pair; the trained inv_freq is never changed
        self.grown: tuple[int, torch.Tensor] | None = None

    def reset(self, device=None):
        """Recompute in float32 on `device` (after loading, or after a model.to(dtype) rounded them)."""
        inv_freq, self.attention_scaling = rope_parameters(self.config)
        self.inv_freq = inv_freq.to(device)
        self.grown = None

    def forward(self, position_ids, dtype, per_row: bool = False):
        """cos/sin at `position_ids` (B, T). Dynamic NTK scaling regrows the frequencies past the
        trained length: by the batch's longest position, as transformers does (a stateful module),
        or, `per_row` (generation: rows at their own lengths), by each row's own longest
        position, so a row's numbers don't depend on the rows beside it."""
        if self.inv_freq.dtype != torch.float32:  # a later model.to(dtype) must not round the frequencies
            self.reset(self.inv_freq.device)
        inv_freq = self.inv_freq
        if self.dynamic and per_row:  # one host sync per forward, only for this rope type
            trained = self.config.max_position_embeddings
            lengths = (position_ids.max(1).values + 1).tolist()
            if max(lengths) > trained:
                grown = {n: rope_parameters(self.config, n)[0].to(inv_freq.device) for n in set(lengths) if n > trained}
                inv_freq = torch.stack([grown.get(n, inv_freq) for n in lengths])  # (B, D/2)
        elif self.dynamic:  # one host sync per forward, only for this rope type
            seq_len = int(position_ids.max()) + 1
            trained = self.config.max_position_embeddings
            grown = self.grown
            if seq_len > (grown[0] if grown else trained):
                grown = self.grown = (seq_len, rope_parameters(self.config, seq_len)[0].to(inv_freq.device))
            elif seq_len < trained and grown:
                grown = self.grown = None
            if grown:
                inv_freq = grown[1].to(inv_freq.device)  # a no-op unless the model moved since
        return rotary_cos_sin(inv_freq, position_ids, dtype, self.attention_scaling)


class Attention(nn.Module):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        qkv_bias = config.attention_bias or config.model_type == "qwen2"
        o_bias = config.attention_bias and config.model_type != "qwen2"
        self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, x, cos, sin, mask, is_causal, cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv != self.n_head
        )
        return self.o_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Model):
    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.context_length = config.max_position_embeddings  # rotary positions: no hard limit (max_positions None)
        self.windows = config.layer_windows()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config)

    def post_load(self):
        self.rotary.reset(self.embed_tokens.weight.device)

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        c, w = self.config, self.embed_tokens.weight
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, dtype or w.dtype, device or w.device,
                       budget_tokens)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None):
        B, T = input_ids.shape
        if cache is not None:  # each row at its own length
            position_ids = cache.positions
        elif position_ids is None:
            if attention_mask is not None:
                position_ids = padded_positions(attention_mask, T)
            else:
                position_ids = torch.arange(T, device=input_ids.device)[None]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype, per_row=cache is not None)
        if cache is not None:
            masks = {w: cache.mask(x.dtype, w) for w in set(self.windows)}
        else:
            masks = {w: decoder_mask(attention_mask, T, x.dtype, x.device, w) for w in set(self.windows)}
        for layer, window in zip(self.layers, self.windows):
            x = layer(x, cos, sin, *masks[window], cache)
        return self.norm(x)


class LlamaForCausalLM(Model):
    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.context_length = config.max_position_embeddings
        self.tied_weights = ["lm_head.weight"] if config.tie_word_embeddings else []

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def post_load(self):
        self.model.post_load()

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        return self.model.new_cache(budget_tokens, dtype, device)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep: int = 0):
        x = self.model(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return lm_logits(self.lm_head, x)


HEADS = {"base": LlamaModel, "causal-lm": LlamaForCausalLM}


def sanitize(state: dict) -> dict:
    """Drop the rotary inv_freq buffers that some older checkpoints saved."""
    return {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}


FAMILIES = (Family(("llama", "mistral", "qwen2"), Config, HEADS, sanitize),)
