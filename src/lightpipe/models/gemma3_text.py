"""Gemma 3's text model (model_type gemma3_text: Gemma3ForCausalLM, gemma-3-1b and
EmbeddingGemma): gemma2.py's layers with

  - an RMSNorm (Gemma's 1 + w) on each head's queries and keys, before the rotary positions
  - no attention soft-capping (transformers 4.57.6 ignores `attn_logit_softcapping` here);
    the final logits are capped only if `final_logit_softcapping` is set (null on the Hub)
  - two rotary tables: local (sliding-window) layers use `rope_local_base_freq` unscaled,
    global layers `rope_theta` with `rope_scaling` (linear on the 4B+ checkpoints)
  - a sliding window on 5 layers of every 6 (`sliding_window_pattern`), or as `layer_types` says
  - `use_bidirectional_attention` (EmbeddingGemma): every layer sees the whole input — global
    layers all of it, local layers the keys within sliding_window // 2 + 1 positions either
    side (transformers rewrites sliding_window so when it reads the config) — and there is no
    generation
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import gemma2, llama, qwen3
from .base import Family
from .common import padding_mask


@dataclass
class Config(gemma2.Config):
    model_type: str = "gemma3_text"
    vocab_size: int = 262208
    max_position_embeddings: int = 131072
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    sliding_window_pattern: int = 6
    use_bidirectional_attention: bool = False

    def default_layer_types(self) -> list[str]:
        pattern = self.sliding_window_pattern
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(self.num_hidden_layers)]

    def layer_windows(self) -> list[int | None]:
        windows = super().layer_windows()
        if self.use_bidirectional_attention:  # transformers' Gemma3TextConfig: "due to fa we set exclusive bounds"
            return [None if w is None else w // 2 + 1 for w in windows]
        return windows

    def local_rope(self) -> Config:
        """The config of the local layers' rotary table: rope_local_base_freq, no scaling."""
        return replace(self, rope_theta=self.rope_local_base_freq, rope_scaling=None)


class Attention(gemma2.Attention):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.softcap = None
        self.q_norm = gemma2.RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = gemma2.RMSNorm(self.head_dim, config.rms_norm_eps)

    project = qwen3.Attention.project  # Qwen3's: q and k normed per head before rotary (here with Gemma's norm)


class Layer(gemma2.Layer):
    attention_class = Attention


class Gemma3TextModel(gemma2.Gemma2Model):
    layer_class = Layer

    def __init__(self, config: Config):
        super().__init__(config)
        self.rotary_local = llama.Rotary(config.local_rope())

    def post_load(self):
        super().post_load()
        self.rotary_local.reset(self.embed_tokens.weight.device)

    def new_cache(self, budget_tokens=None, dtype=None, device=None):
        if self.config.use_bidirectional_attention:
            raise self._bidirectional()
        return super().new_cache(budget_tokens, dtype, device)

    @staticmethod
    def _bidirectional() -> TypeError:
        return TypeError("this Gemma 3 checkpoint uses bidirectional attention (use_bidirectional_attention, as "
                         "EmbeddingGemma): it embeds text and can't generate it")

    def bidirectional_masks(self, attention_mask, T, dtype, device) -> dict:
        """(mask, is_causal) per window without causality: the padding alone for global layers,
        |query - key| < window within the real tokens for local ones."""
        masks = {None: (padding_mask(attention_mask, dtype), False)}
        idx = torch.arange(T, device=device)
        for w in set(self.windows) - {None}:
            allowed = ((idx[:, None] - idx[None, :]).abs() < w)[None, None]  # (1, 1, T, T)
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, :].bool()
            zero = torch.zeros((), dtype=dtype, device=device)
            masks[w] = (torch.where(allowed, zero, torch.finfo(dtype).min), False)
        return masks

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        x = self.embed(input_ids)
        position_ids = self.positions(input_ids, attention_mask, position_ids, cache)
        per_row = cache is not None
        rotary = {False: self.rotary(position_ids, x.dtype, per_row),  # by "is this layer local"
                  True: self.rotary_local(position_ids, x.dtype, per_row)}
        if self.config.use_bidirectional_attention:
            if cache is not None:
                raise self._bidirectional()
            masks = self.bidirectional_masks(attention_mask, input_ids.shape[1], x.dtype, x.device)
        else:
            masks = self.masks(attention_mask, x, cache)
        for layer, window in zip(self.layers, self.windows):
            x = layer(x, *rotary[window is not None], *masks[window], cache)
        return self.norm(x)


class Gemma3ForCausalLM(gemma2.Gemma2ForCausalLM):
    base_class = Gemma3TextModel


HEADS = {"base": Gemma3TextModel, "causal-lm": Gemma3ForCausalLM}

FAMILIES = (Family(("gemma3_text",), Config, HEADS, llama.sanitize),)
