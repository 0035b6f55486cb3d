"""Phi-3, Phi-3.5 and Phi-4-mini (model_type phi3): llama's decoder with

  - q, k and v in one fused projection (`qkv_proj`) and the MLP's gate and up in another
    (`gate_up_proj`), kept fused as the checkpoints store them
  - rotary positions on the first `partial_rotary_factor` of each head (Phi-4-mini: 3/4)
  - LongRoPE scaling (`rope_scaling` type "longrope", or the older "su" / "yarn" names that
    transformers reads as longrope): per-frequency `short_factor`s while a sequence fits
    `original_max_position_embeddings`, `long_factor`s past it, and cos/sin scaled by
    sqrt(1 + ln(max_position_embeddings / original) / ln(original))
  - an optional `sliding_window` on every layer

Which factors apply is decided per forward pass, by the length the sequence reaches in it: as
transformers' rotary does, by the longest row of a plain batch; with the KV cache (generation),
by each row's own length, so a row doesn't depend on its neighbours. The keys a row cached
while it was short keep their short factors once it grows past the original length; 4.57.6's
generate() instead runs the whole sequence again with the long factors at that step
(docs/deviations.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import llama
from .base import Family
from .common import activation, apply_rotary, rotary_cos_sin

LONGROPE_NAMES = ("longrope", "su", "yarn")  # transformers' Phi3Config renames the older two to longrope


@dataclass
class Config(llama.Config):
    model_type: str = "phi3"
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    partial_rotary_factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        self.rotary_dim = int(self.head_dim * self.partial_rotary_factor)
        if self.rope_scaling is None:
            return
        kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
        if kind not in LONGROPE_NAMES:
            raise ValueError(f"rope_scaling type {kind!r} is not supported for phi3 (transformers reads only "
                             f"'longrope', and 'su' / 'yarn' as longrope)")
        for key in ("short_factor", "long_factor"):
            factors = self.rope_scaling.get(key)
            if not isinstance(factors, list) or len(factors) != self.rotary_dim // 2:
                raise ValueError(f"rope_scaling's {key} must be a list of {self.rotary_dim // 2} numbers "
                                 f"(rotary dims / 2), got {factors!r:.80}")

    def layer_windows(self) -> list[int | None]:
        return [self.sliding_window] * self.num_hidden_layers


def rope_parameters(c: Config) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(short inv_freq, long inv_freq or None, cos/sin scaling), as transformers computes them
    (_compute_default_rope_parameters / _compute_longrope_parameters)."""
    dim = c.rotary_dim
    # explicit cpu: the model is built under torch.device("meta"), but these few numbers must be real
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    if c.rope_scaling is None:
        return 1.0 / (c.rope_theta**exponents), None, 1.0
    original = c.original_max_position_embeddings
    factor = c.max_position_embeddings / original
    scaling = c.rope_scaling.get("attention_factor")
    if scaling is None:
        scaling = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    short, long = (torch.tensor(c.rope_scaling[k], dtype=torch.float32, device="cpu")
                   for k in ("short_factor", "long_factor"))
    return 1.0 / (short * c.rope_theta**exponents), 1.0 / (long * c.rope_theta**exponents), scaling


class Rotary(nn.Module):
    """cos/sin (B, 1, T, rotary_dim) for position ids, with the long factors for the sequences
    that reach past original_max_position_embeddings."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        short, long, self.attention_scaling = rope_parameters(config)
        self.register_buffer("inv_freq", short, persistent=False)
        self.register_buffer("long_inv_freq", long if long is not None else short, persistent=False)
        self.longrope = long is not None

    def reset(self, device=None):
        """Recompute in float32 on `device` (after loading, or after a model.to(dtype) rounded them)."""
        short, long, self.attention_scaling = rope_parameters(self.config)
        self.inv_freq = short.to(device)
        self.long_inv_freq = (long if long is not None else short).to(device)

    def forward(self, position_ids, dtype, per_row: bool = False):
        if self.inv_freq.dtype != torch.float32:  # a later model.to(dtype) must not round the frequencies
            self.reset(self.inv_freq.device)
        inv_freq = self.inv_freq
        if self.longrope:  # decided on the device: no host sync
            original = self.config.original_max_position_embeddings
            if per_row:  # each row by its own length: (B, D/2)
                long = (position_ids.max(1).values + 1 > original)[:, None]
            else:  # the batch by its longest row, as transformers
                long = position_ids.max() + 1 > original
            inv_freq = torch.where(long, self.long_inv_freq, self.inv_freq)
        return rotary_cos_sin(inv_freq, position_ids, dtype, self.attention_scaling)


class Attention(llama.Attention):
    def __init__(self, config: Config, layer_idx: int):
        nn.Module.__init__(self)  # not llama's projections: one fused qkv_proj
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.rotary_dim = config.rotary_dim
        self.qkv_proj = nn.Linear(config.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=False)

    def project(self, x):
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_head + 2 * self.n_kv, self.head_dim)
        q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, H_kv, T, D) x 2

    def rotate(self, x, cos, sin):
        if self.rotary_dim == self.head_dim:
            return apply_rotary(x, cos, sin)
        rotated, passed = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        return torch.cat((apply_rotary(rotated, cos, sin), passed), dim=-1)


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.act(gate))


class Layer(llama.Layer):
    attention_class = Attention
    mlp_class = MLP


class Phi3Model(llama.LlamaModel):
    layer_class = Layer
    rotary_class = Rotary


class Phi3ForCausalLM(llama.LlamaForCausalLM):
    base_class = Phi3Model


HEADS = {"base": Phi3Model, "causal-lm": Phi3ForCausalLM}

FAMILIES = (Family(("phi3",), Config, HEADS, llama.sanitize),)
