"""Gemma 2: llama's rotary grouped-query attention and gated MLP, with Gemma's own touches, all
read from config.json:

  - token embeddings scaled by sqrt(hidden_size); RMSNorm weights stored as offsets from 1
    (x * (1 + w)); a norm before and after both the attention and the MLP
  - gelu (tanh approximation) in the gated MLP (`hidden_activation`)
  - queries scaled by query_pre_attn_scalar**-0.5, not head_dim**-0.5
  - attention scores soft-capped (tanh(s / cap) * cap, `attn_logit_softcapping`) before the
    mask, and the final logits too (`final_logit_softcapping`)
  - a sliding window (`sliding_window`) on every other layer, starting with the first, or as
    `layer_types` says

Soft-capped scores can't go through SDPA, so those layers compute attention explicitly, as
transformers' eager attention does. transformers 4.57.6 runs Gemma 2 with SDPA by default,
which skips the attention soft-capping its config documents; lightpipe applies it, which is
transformers' `attn_implementation="eager"` (docs/deviations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import llama
from .base import Family


@dataclass
class Config(llama.Config):
    model_type: str = "gemma2"
    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    head_dim: int | None = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    final_logit_softcapping: float | None = 30.0
    attn_logit_softcapping: float | None = 50.0

    def __post_init__(self):
        super().__post_init__()
        self.hidden_act = self.hidden_activation  # Gemma reads hidden_activation; llama's MLP reads hidden_act

    def default_layer_types(self) -> list[str]:
        return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(self.num_hidden_layers)]

    def layer_windows(self) -> list[int | None]:
        types = self.layer_types or self.default_layer_types()
        if len(types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(types)} entries for {self.num_hidden_layers} layers")
        return [self.sliding_window if t == "sliding_attention" else None for t in types]


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), all in float32: Gemma stores the weight as an offset from 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class Attention(llama.Attention):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scale = config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcapping

    def attend(self, q, k, v, mask, is_causal):
        if self.softcap is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
                                                  enable_gqa=self.n_kv != self.n_head)
        # explicitly: the cap acts on the scores before the mask, which SDPA can't do
        if self.n_kv != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, T, S)
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is not None:
            scores = scores + mask
        elif is_causal:
            T, S = scores.shape[-2:]
            future = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(S - T + 1)
            scores = scores.masked_fill(future, float("-inf"))
        return scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v  # (B, H, T, D)


class Layer(nn.Module):
    attention_class = Attention

    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self.attention_class(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = llama.MLP(config)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(llama.LlamaModel):
    layer_class = Layer
    norm_class = RMSNorm

    def embed(self, input_ids):
        x = self.embed_tokens(input_ids)
        # sqrt(hidden_size) rounded to the activations' dtype first, as transformers does
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)


class Gemma2ForCausalLM(llama.LlamaForCausalLM):
    base_class = Gemma2Model

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep: int = 0):
        logits = super().forward(input_ids, attention_mask, position_ids, cache, logits_to_keep)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


HEADS = {"base": Gemma2Model, "causal-lm": Gemma2ForCausalLM}

FAMILIES = (Family(("gemma2",), Config, HEADS, llama.sanitize),)
