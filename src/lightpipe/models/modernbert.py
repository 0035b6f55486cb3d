"""ModernBERT (answerdotai/ModernBERT-base / -large and their fine-tunes).

A pre-LayerNorm encoder with rotary positions and no biases (by default): every layer is
x += attn(norm(x)); x += mlp(norm(x)), the first layer without the attention norm, and a final
norm after the last. Attention alternates: every `global_attn_every_n_layers`-th layer (0, 3,
6, ...) sees the whole input with rotary base `global_rope_theta`; the others see a sliding
window of `local_attention // 2` tokens on each side, with base `local_rope_theta`. The MLP is a
GeGLU (Wi makes input and gate in one matmul). The heads put a dense + act + norm "head" before
the classifier or the tied decoder, and the sequence classifier pools `classifier_pooling`:
the first token ("cls") or the mean of the real tokens ("mean").

transformers runs it unpadded (flash-attention varlen) when it can, else padded with SDPA and
masks; lightpipe runs the padded layout, which gives the same numbers. Parameter names are the
Hub's (model.layers.N.attn.Wqkv, head.dense, decoder, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, apply_rotary, attention, merge_heads, padding_mask, rotary_cos_sin

POOLINGS = ("cls", "mean")


@dataclass
class Config(ModelConfig):
    model_type: str = "modernbert"
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = True
    num_labels: int = 2

    @classmethod
    def from_dict(cls, config: dict) -> "Config":
        out = super().from_dict(config)
        if "local_rope_theta" in config and config["local_rope_theta"] is None:
            out.local_rope_theta = out.global_rope_theta  # transformers: no local base means the global one
        return out

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {POOLINGS}, got {self.classifier_pooling!r}")
        if self.global_attn_every_n_layers < 1:
            raise ValueError(f"global_attn_every_n_layers must be at least 1, got {self.global_attn_every_n_layers}")
        kind = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if kind != "default":
            raise ValueError(f"rope_scaling {self.rope_scaling!r} is not supported by lightpipe for ModernBERT "
                             "(only the default rotary embedding)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_global(self, layer: int) -> bool:
        return layer % self.global_attn_every_n_layers == 0


def inv_freq(theta: float, dim: int) -> torch.Tensor:
    """(dim/2,) rotary frequencies, computed in float32 on the CPU as transformers computes them."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def layer_norm(config: Config) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = layer_norm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))  # (B, T, C); positions are rotary


class Layer(nn.Module):
    """Pre-norm block: x += attn(attn_norm(x)); x += mlp(mlp_norm(x))."""

    def __init__(self, config: Config, index: int):
        super().__init__()
        C, inner = config.hidden_size, config.intermediate_size
        self.n_heads = config.num_attention_heads
        self.is_global = config.is_global(index)
        # the first layer's input is the embeddings' output, already normed
        self.attn_norm = layer_norm(config) if index else nn.Identity()
        self.attn = nn.ModuleDict(dict(Wqkv=nn.Linear(C, 3 * C, bias=config.attention_bias),
                                       Wo=nn.Linear(C, C, bias=config.attention_bias)))
        self.mlp_norm = layer_norm(config)
        self.mlp = nn.ModuleDict(dict(Wi=nn.Linear(C, 2 * inner, bias=config.mlp_bias),
                                      Wo=nn.Linear(inner, C, bias=config.mlp_bias)))
        self.act = activation(config.hidden_activation)

    def forward(self, x: torch.Tensor, rotary: tuple, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.attn.Wqkv(self.attn_norm(x)).view(B, T, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
        cos, sin = rotary
        y = attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, mask)  # (B, H, T, D)
        x = x + self.attn.Wo(merge_heads(y))
        inputs, gate = self.mlp.Wi(self.mlp_norm(x)).chunk(2, dim=-1)  # GeGLU: 2 x (B, T, inner)
        return x + self.mlp.Wo(self.act(inputs) * gate)


class ModernBertModel(Model):
    """The encoder. forward → last hidden state (B, T, C), after the final norm."""

    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = layer_norm(config)

    def masks(self, attention_mask, T: int, dtype, device) -> tuple:
        """(global mask, local mask) for attention(): additive, or None where nothing is hidden."""
        padding = padding_mask(attention_mask, dtype)  # (B, 1, 1, T) or None
        half = self.config.local_attention // 2
        if T - 1 <= half:  # the window spans the whole input: local attention is global
            return padding, padding
        positions = torch.arange(T, device=device)
        allowed = (positions[None, :] - positions[:, None]).abs() <= half  # (T, T)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()  # (B, 1, T, T)
        zero = torch.zeros((), dtype=dtype, device=device)
        return padding, torch.where(allowed, zero, torch.finfo(dtype).min)

    def rotary(self, theta: float, T: int, dtype, device) -> tuple:
        positions = torch.arange(T, device=device)[None]  # (1, T): padding is on the right
        return rotary_cos_sin(inv_freq(theta, self.config.head_dim).to(device), positions, dtype)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        T, c = input_ids.shape[1], self.config
        global_mask, local_mask = self.masks(attention_mask, T, x.dtype, x.device)
        global_rotary = self.rotary(c.global_rope_theta, T, x.dtype, x.device)
        local_rotary = self.rotary(c.local_rope_theta, T, x.dtype, x.device)
        for layer in self.layers:
            if layer.is_global:
                x = layer(x, global_rotary, global_mask)
            else:
                x = layer(x, local_rotary, local_mask)
        return self.final_norm(x)  # (B, T, C)


class PredictionHead(nn.Module):
    """dense + act + norm, before every head's last linear layer."""

    def __init__(self, config: Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.norm = layer_norm(config)
        self.act = activation(config.classifier_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class _Head(Model):
    base_model_prefix = "model"

    def __init__(self, config: Config):
        super().__init__()
        self.model = ModernBertModel(config)
        self.head = PredictionHead(config)


class ModernBertForSequenceClassification(_Head):
    """forward → logits (B, num_labels), from the first token or the mean of the real tokens."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.pooling = config.classifier_pooling
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        x = self.model(input_ids, attention_mask)  # (B, T, C)
        if self.pooling == "cls":
            pooled = x[:, 0]
        elif attention_mask is None:
            pooled = x.mean(1)
        else:
            weights = attention_mask[..., None].to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(1) / weights.sum(1)
        return self.classifier(self.head(pooled))


class ModernBertForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        return self.classifier(self.head(self.model(input_ids, attention_mask)))


class ModernBertForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None):
        start, end = self.classifier(self.head(self.model(input_ids, attention_mask))).unbind(-1)  # (B, T) each
        return start.contiguous(), end.contiguous()


class ModernBertForMaskedLM(_Head):
    """forward → logits (B, T, vocab): head, then the decoder tied to the embeddings."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.tied_weights = ["decoder.weight"] if config.tie_word_embeddings else []

    def tie_weights(self):
        if self.tied_weights:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    def forward(self, input_ids, attention_mask=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        x = self.model(input_ids, attention_mask)
        x = x if select is None else x[select]
        return self.decoder(self.head(x))  # (B, T, V)


HEADS = {
    "base": ModernBertModel,
    "sequence-classification": ModernBertForSequenceClassification,
    "token-classification": ModernBertForTokenClassification,
    "question-answering": ModernBertForQuestionAnswering,
    "masked-lm": ModernBertForMaskedLM,
}

FAMILIES = (Family(("modernbert",), Config, HEADS),)
