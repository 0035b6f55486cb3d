"""MPNet (microsoft/mpnet-base, sentence-transformers/all-mpnet-base-v2 and their fine-tunes).

A post-LayerNorm encoder like BERT with two differences: no token types, and a T5-style
relative position bias (32 buckets, one learned table in the encoder) added to every layer's
attention scores, on top of RoBERTa-style absolute positions that count from padding_idx + 1
and skip padding. Parameter names are the Hub's (mpnet.encoder.layer.N.attention.attn.q, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, Model, ModelConfig
from .bert import sanitize
from .common import activation, attention, merge_heads, padding_mask, split_heads

# transformers hard-codes these: the embeddings' padding index (whatever config.pad_token_id says)
# and the bucketing (compute_position_bias's defaults, not config.relative_attention_num_buckets)
PADDING_IDX = 1
NUM_BUCKETS = 32
MAX_DISTANCE = 128


@dataclass
class Config(ModelConfig):
    model_type: str = "mpnet"
    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    relative_attention_num_buckets: int = 32
    tie_word_embeddings: bool = True
    num_labels: int = 2

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        if self.relative_attention_num_buckets < NUM_BUCKETS:
            raise ValueError(f"relative_attention_num_buckets={self.relative_attention_num_buckets}: MPNet always "
                             f"computes {NUM_BUCKETS} buckets, so its table needs at least {NUM_BUCKETS} rows")


def relative_position_bucket(relative_position: torch.Tensor) -> torch.Tensor:
    """T5's bidirectional bucketing of (key - query) distances, with MPNet's constants: 16
    buckets per direction, exact up to 8, logarithmic up to 128."""
    n = -relative_position
    half = NUM_BUCKETS // 2
    bucket = (n < 0).to(torch.long) * half
    n = torch.abs(n)
    max_exact = half // 2
    # the same float operations as transformers, so every distance lands in the same bucket
    large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(MAX_DISTANCE / max_exact) * (half - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    return bucket + torch.where(n < max_exact, n, large)


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, C)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.max_len = config.max_position_embeddings - PADDING_IDX - 1  # positions start after padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ValueError(f"input of {T} tokens is longer than the model's {self.max_len} positions; truncate it")
        # RoBERTa's numbering: real tokens get 2, 3, ...; pads keep 1
        not_pad = input_ids.ne(PADDING_IDX)
        positions = torch.cumsum(not_pad, dim=1) * not_pad + PADDING_IDX
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))  # (B, T, C)


class Layer(nn.Module):
    """Post-LayerNorm block with the shared position bias added to the attention scores."""

    def __init__(self, config: Config):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.n_heads = config.num_attention_heads
        # ModuleDicts only to reproduce the Hub's nesting (attention.attn.q, output.LayerNorm, ...)
        self.attention = nn.ModuleDict(dict(
            attn=nn.ModuleDict(dict(q=nn.Linear(C, C), k=nn.Linear(C, C), v=nn.Linear(C, C), o=nn.Linear(C, C))),
            LayerNorm=nn.LayerNorm(C, eps=eps),
        ))
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(C, config.intermediate_size)))
        self.output = nn.ModuleDict(dict(
            dense=nn.Linear(config.intermediate_size, C), LayerNorm=nn.LayerNorm(C, eps=eps),
        ))
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention.attn
        q = split_heads(a.q(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(a.k(x), self.n_heads)
        v = split_heads(a.v(x), self.n_heads)
        y = merge_heads(attention(q, k, v, bias))  # (B, T, C)
        x = self.attention.LayerNorm(a.o(y) + x)
        h = self.act(self.intermediate.dense(x))  # (B, T, intermediate)
        return self.output.LayerNorm(self.output.dense(h) + x)


class MPNetModel(Model):
    """The encoder. forward → last hidden state (B, T, C)."""

    base_model_prefix = "mpnet"
    ignore_unexpected = ("pooler.",)  # MPNetModel saves a pooler that no head here reads

    def __init__(self, config: Config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.encoder.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets,
                                                            config.num_attention_heads)

    def position_bias(self, T: int, device) -> torch.Tensor:
        """(1, H, T, T): the learned bias of each (query, key) distance, shared by every layer."""
        positions = torch.arange(T, device=device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None])  # (T, T)
        return self.encoder.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        bias = self.position_bias(input_ids.shape[1], input_ids.device).to(x.dtype)
        mask = padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T) or None
        if mask is not None:
            bias = bias + mask  # (B, H, T, T)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x  # (B, T, C)


class _Head(Model):
    base_model_prefix = "mpnet"
    ignore_unexpected = ("pooler.",)

    def __init__(self, config: Config):
        super().__init__()
        self.mpnet = MPNetModel(config)


class MPNetForSequenceClassification(_Head):
    """forward → logits (B, num_labels): dense + tanh + out_proj on <s> (RoBERTa's head)."""

    def __init__(self, config: Config):
        super().__init__(config)
        C = config.hidden_size
        self.classifier = nn.ModuleDict(dict(dense=nn.Linear(C, C), out_proj=nn.Linear(C, config.num_labels)))

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        x = self.mpnet(input_ids, attention_mask)[:, 0]  # (B, C)
        return self.classifier.out_proj(torch.tanh(self.classifier.dense(x)))


class MPNetForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        return self.classifier(self.mpnet(input_ids, attention_mask))


class MPNetForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None):
        start, end = self.qa_outputs(self.mpnet(input_ids, attention_mask)).unbind(-1)  # (B, T) each
        return start.contiguous(), end.contiguous()


class MPNetForMaskedLM(_Head):
    """forward → logits (B, T, vocab). lm_head: dense, exact gelu, layer_norm, decoder tied to the embeddings."""

    def __init__(self, config: Config):
        super().__init__(config)
        C, V = config.hidden_size, config.vocab_size
        self.lm_head = nn.Module()
        self.lm_head.dense = nn.Linear(C, C)
        self.lm_head.layer_norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.lm_head.decoder = nn.Linear(C, V)
        self.lm_head.bias = nn.Parameter(torch.empty(V))
        self.tied_weights = ["lm_head.decoder.bias"]
        if config.tie_word_embeddings:
            self.tied_weights.append("lm_head.decoder.weight")

    def tie_weights(self):
        self.lm_head.decoder.bias = self.lm_head.bias
        if "lm_head.decoder.weight" in self.tied_weights:
            self.lm_head.decoder.weight = self.mpnet.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        head = self.lm_head
        x = self.mpnet(input_ids, attention_mask)
        x = x if select is None else x[select]
        return head.decoder(head.layer_norm(F.gelu(head.dense(x))))  # (B, T, V)


HEADS = {
    "base": MPNetModel,
    "sequence-classification": MPNetForSequenceClassification,
    "token-classification": MPNetForTokenClassification,
    "question-answering": MPNetForQuestionAnswering,
    "masked-lm": MPNetForMaskedLM,
}

# BERT's: drops the position_ids buffer older saves carry, and fills lm_head.bias from
# lm_head.decoder.bias when a save kept only that copy
FAMILIES = (Family(("mpnet",), Config, HEADS, sanitize),)
