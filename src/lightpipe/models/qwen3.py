"""Qwen3 (and Qwen3-Embedding): Qwen2 with an RMSNorm on each head's queries and keys
(q_norm / k_norm, before the rotary positions), biases only with `attention_bias` (on q, k, v
and o alike), and `head_dim` from config.json (128 by default, not hidden_size / heads).

Everything else is llama.py's: rotary positions and their scaling, grouped-query attention,
the SwiGLU MLP, the sliding window on layers >= max_window_layers (or as `layer_types` says).
Qwen3-Embedding checkpoints are the base model ("base" head) behind sentence-transformers'
last-token pooling; lightpipe.sentence_embedding runs that chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import llama
from .base import Family
from .common import RMSNorm


@dataclass
class Config(llama.Config):
    model_type: str = "qwen3"
    vocab_size: int = 151936
    intermediate_size: int = 22016
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    sliding_window: int | None = 4096
    tie_word_embeddings: bool = False


class Attention(llama.Attention):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)  # over each head's D, not the whole width
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def project(self, x):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return q, k, v


class Layer(llama.Layer):
    attention_class = Attention


class Qwen3Model(llama.LlamaModel):
    layer_class = Layer


class Qwen3ForCausalLM(llama.LlamaForCausalLM):
    base_class = Qwen3Model


HEADS = {"base": Qwen3Model, "causal-lm": Qwen3ForCausalLM}

FAMILIES = (Family(("qwen3",), Config, HEADS, llama.sanitize),)
