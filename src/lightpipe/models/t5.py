"""T5, T5 v1.1 and FLAN-T5: pre-norm RMS layers, no position embeddings but a learned bias per
(relative distance bucket, head) added to the attention scores, and unscaled attention.

Only the first block of each stack owns `relative_attention_bias`; the bias it computes is
shared by every block of that stack. Parameter names follow the Hub (`shared`,
`encoder.block.0.layer.0.SelfAttention.q`, ...) with no base-model prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, attention, causal_allowed, clamp_fp16, merge_heads, padding_bias, split_heads
from .kv_cache import KVCache


@dataclass
class Config(ModelConfig):
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        self.num_decoder_layers = self.num_decoder_layers or self.num_layers

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        # "gated-gelu" is the tanh approximation (T5 v1.1), kept so for backward compatibility
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]


class RMSNorm(nn.Module):
    """T5LayerNorm: scale only, no mean subtraction, statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(self.weight.dtype)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Mesh TensorFlow's bucketing: exact buckets for small distances, log-spaced up to
    max_distance. The encoder splits buckets between both directions; the decoder only looks back."""
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # distance 0 takes the is_small branch; clamp avoids log(0) warnings in the other one
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class Attention(nn.Module):
    def __init__(self, cfg: Config, has_relative_attention_bias: bool, bidirectional: bool):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.n_heads = cfg.num_heads
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, q_positions: torch.Tensor, k_len: int):
        """Bias for queries at `q_positions` (B|1, T) against keys [0, k_len): (B|1, H, T, k_len)."""
        memory = torch.arange(k_len, device=q_positions.device)
        relative = memory[None, None, :] - q_positions[:, :, None]  # (B, T, K)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (B, H, T, K)

    def project_kv(self, x):
        return split_heads(self.k(x), self.n_heads), split_heads(self.v(x), self.n_heads)  # (B, H, S, D)

    def forward(self, x, k, v, bias):
        q = split_heads(self.q(x), self.n_heads)  # (B, H, T, D)
        # T5 folds the 1/sqrt(d) scaling into its initialisation: attention is unscaled
        return self.o(merge_heads(attention(q, k, v, mask=bias, scale=1.0)))


class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: Config, has_relative_attention_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = Attention(cfg, has_relative_attention_bias, bidirectional)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x, bias, i: int, cache: KVCache | None):
        h = self.layer_norm(x)
        k, v = self.SelfAttention.project_kv(h)
        if cache is not None:
            k, v = cache.update(i, k, v)
        return x + self.SelfAttention(h, k, v, bias)


class CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.EncDecAttention = Attention(cfg, False, False)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x, encoder_hidden, mask, i: int, cache: KVCache | None):
        kv = cache.cross(i) if cache is not None else None
        if kv is None:  # the encoder output is fixed during generation: project it once
            kv = self.EncDecAttention.project_kv(encoder_hidden)
            if cache is not None:
                cache.store_cross(i, *kv)
        return x + self.EncDecAttention(self.layer_norm(x), *kv, mask)  # no position bias across stacks


class DenseReluDense(nn.Module):
    """wi → act → wo, or gated (v1.1/FLAN): act(wi_0 x) * wi_1 x → wo."""

    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act = activation(cfg.act)
        self.gated = cfg.gated

    def forward(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h.to(self.wo.weight.dtype))  # FLAN-T5-XXL keeps wo in float32


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.DenseReluDense = DenseReluDense(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class Block(nn.Module):
    def __init__(self, cfg: Config, is_decoder: bool, first: bool):
        super().__init__()
        self.is_decoder = is_decoder
        layers = [SelfAttentionLayer(cfg, first, bidirectional=not is_decoder)]
        if is_decoder:
            layers.append(CrossAttentionLayer(cfg))
        layers.append(FeedForwardLayer(cfg))
        self.layer = nn.ModuleList(layers)

    def forward(self, x, bias, i, encoder_hidden=None, cross_mask=None, cache=None):
        # transformers clamps fp16 activations after each sublayer so T5 doesn't overflow to inf
        x = clamp_fp16(self.layer[0](x, bias, i, cache))
        if self.is_decoder:
            x = clamp_fp16(self.layer[1](x, encoder_hidden, cross_mask, i, cache))
        return clamp_fp16(self.layer[-1](x))


class Stack(nn.Module):
    def __init__(self, cfg: Config, embed_tokens: nn.Embedding, is_decoder: bool):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.is_decoder = is_decoder
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList(Block(cfg, is_decoder, first=(i == 0)) for i in range(n))
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask=None, encoder_hidden=None, encoder_mask=None,
                cache: KVCache | None = None):
        x = self.embed_tokens(input_ids)  # T5 doesn't scale its embeddings
        T = input_ids.shape[1]
        relative = self.block[0].layer[0].SelfAttention
        # one bias for the whole stack, masks folded in (SDPA takes it as an additive mask)
        if cache is not None:  # each row at its own length: its own relative positions
            bias = relative.position_bias(cache.positions, cache.key_length).to(x.dtype)
            allowed = cache.allowed()  # (B, 1, T, K) or None
        else:
            bias = relative.position_bias(torch.arange(T, device=x.device)[None], T).to(x.dtype)
            allowed = causal_allowed(T, x.device) if self.is_decoder and T > 1 else None  # (1, 1, T, T)
            if attention_mask is not None and not bool(attention_mask.all()):
                pad = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
                allowed = pad if allowed is None else allowed & pad
        if allowed is not None:
            bias = bias.masked_fill(~allowed, torch.finfo(x.dtype).min)  # (B or 1, H, T, K)
        enc_mask = None
        if cache is not None and self.is_decoder:
            enc_mask = cache.cross_mask(x.dtype)  # (B, 1, 1, S)
        elif self.is_decoder and encoder_mask is not None:
            enc_mask = padding_bias(encoder_mask, x.dtype)
        for i, block in enumerate(self.block):
            x = block(x, bias, i, encoder_hidden, enc_mask, cache)
        return self.final_layer_norm(x)


class T5Model(Model):
    """Encoder + decoder; returns the decoder's last hidden state."""

    base_model_prefix = ""

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        # one module under three names, as in transformers: the checkpoint needs only one of them
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, self.shared, is_decoder=False)
        self.decoder = Stack(cfg, self.shared, is_decoder=True)
        self.tied_weights = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def tie_weights(self):
        if self.shared.weight.is_meta:
            raise ValueError("checkpoint has no token embeddings (shared / encoder|decoder.embed_tokens)")

    def encode(self, input_ids, attention_mask=None):
        return self.encoder(input_ids, attention_mask)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("T5 needs decoder_input_ids (start them with decoder_start_token_id, the pad id)")
        enc = self.encode(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, decoder_attention_mask, enc, attention_mask)


class T5ForConditionalGeneration(T5Model):
    is_encoder_decoder = True
    # relative positions: no hard length limit (max_positions stays None), and no context_length
    # to cap the default generation length: transformers' T5Config has no max_position_embeddings

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.tied_weights = self.tied_weights + ["lm_head.weight"]

    def tie_weights(self):
        super().tie_weights()
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def post_load(self):
        self.tie_weights()

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        # the token embedding's dtype: quantize="int8" turns lm_head's weight into int8
        cfg, w = self.config, self.shared.weight
        return KVCache(cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv, dtype or w.dtype, device or w.device,
                       budget_tokens)

    def decode(self, decoder_input_ids, encoder_hidden=None, encoder_mask=None, cache=None, decoder_attention_mask=None):
        h = self.decoder(decoder_input_ids, decoder_attention_mask, encoder_hidden, encoder_mask, cache)
        if self.config.tie_word_embeddings:  # Mesh TF rescales before the tied projection
            h = h * self.config.d_model**-0.5
        return self.lm_head(h)  # (B, T, V)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("T5 needs decoder_input_ids (start them with decoder_start_token_id, the pad id)")
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask=decoder_attention_mask)


HEADS = {"base": T5Model, "seq2seq-lm": T5ForConditionalGeneration}


def sanitize(state: dict) -> dict:
    # some old checkpoints carry a cross-attention position bias that T5 never uses
    return {k: v for k, v in state.items() if "EncDecAttention.relative_attention_bias" not in k}


FAMILIES = (Family(("t5",), Config, HEADS, sanitize),)
