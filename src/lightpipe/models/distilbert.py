"""DistilBERT: BERT's post-LayerNorm encoder with 6 layers, no token types and no pooler.

Parameter names are the Hub's (distilbert.transformer.layer.N.attention.q_lin, ...).
`sinusoidal_pos_embds` needs nothing here: the checkpoint stores the position table either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, attention, fuse_qkv, merge_heads, padding_mask, qkv_heads

EPS = 1e-12  # DistilBERT hard-codes its LayerNorm epsilon; config.json doesn't carry it


@dataclass
class Config(ModelConfig):
    model_type: str = "distilbert"
    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    num_labels: int = 2

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of {self.n_heads} heads")


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        n_positions = self.position_embeddings.num_embeddings
        if T > n_positions:
            raise ValueError(f"input of {T} tokens is longer than the model's {n_positions} positions; truncate it")
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T]  # (B, T, C); positions broadcast
        return self.LayerNorm(x)


class Layer(nn.Module):
    """Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: Config):
        super().__init__()
        C = config.dim
        self.n_heads = config.n_heads
        self.attention = nn.ModuleDict(dict(
            q_lin=nn.Linear(C, C), k_lin=nn.Linear(C, C), v_lin=nn.Linear(C, C), out_lin=nn.Linear(C, C),
        ))
        self.sa_layer_norm = nn.LayerNorm(C, eps=EPS)
        self.ffn = nn.ModuleDict(dict(lin1=nn.Linear(C, config.hidden_dim), lin2=nn.Linear(config.hidden_dim, C)))
        self.output_layer_norm = nn.LayerNorm(C, eps=EPS)
        self.act = activation(config.activation)

    def fuse_qkv(self):
        a = self.attention
        fuse_qkv(self, (a.q_lin, a.k_lin, a.v_lin))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention
        q, k, v = qkv_heads(self, (a.q_lin, a.k_lin, a.v_lin), x, self.n_heads)  # 3 x (B, H, T, D)
        y = merge_heads(attention(q, k, v, mask))  # (B, T, C)
        x = self.sa_layer_norm(a.out_lin(y) + x)
        h = self.act(self.ffn.lin1(x))  # (B, T, hidden_dim)
        return self.output_layer_norm(self.ffn.lin2(h) + x)


class DistilBertModel(Model):
    """The encoder. forward → last hidden state (B, T, C)."""

    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.transformer = nn.ModuleDict(dict(layer=nn.ModuleList(Layer(config) for _ in range(config.n_layers))))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        # token_type_ids is accepted (tokenizers may return it) and ignored: DistilBERT has no token types
        x = self.embeddings(input_ids)
        mask = padding_mask(attention_mask, x.dtype)  # None when nothing is padded: SDPA's fast path
        for layer in self.transformer.layer:
            x = layer(x, mask)
        return x  # (B, T, C)

    def post_load(self):
        for layer in self.transformer.layer:
            layer.fuse_qkv()


class _Head(Model):
    base_model_prefix = "distilbert"

    def __init__(self, config: Config):
        super().__init__()
        self.distilbert = DistilBertModel(config)

    def post_load(self):
        self.distilbert.post_load()


class DistilBertForSequenceClassification(_Head):
    """forward → logits (B, num_labels): pre_classifier + ReLU + classifier on [CLS]."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.distilbert(input_ids, attention_mask)[:, 0]  # (B, C)
        return self.classifier(torch.relu(self.pre_classifier(x)))


class DistilBertForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.distilbert(input_ids, attention_mask))


class DistilBertForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.dim, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.qa_outputs(self.distilbert(input_ids, attention_mask))  # (B, T, 2)
        start, end = logits.unbind(-1)
        return start.contiguous(), end.contiguous()


class DistilBertForMaskedLM(_Head):
    """forward → logits (B, T, vocab): vocab_transform, act, vocab_layer_norm, vocab_projector (tied)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=EPS)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.act = activation(config.activation)
        self.tied_weights = ["vocab_projector.weight"] if config.tie_word_embeddings else []

    def tie_weights(self):
        if self.tied_weights:
            self.vocab_projector.weight = self.distilbert.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        x = self.distilbert(input_ids, attention_mask)
        x = x if select is None else x[select]
        x = self.vocab_layer_norm(self.act(self.vocab_transform(x)))
        return self.vocab_projector(x)  # (B, T, V)


HEADS = {
    "base": DistilBertModel,
    "sequence-classification": DistilBertForSequenceClassification,
    "token-classification": DistilBertForTokenClassification,
    "question-answering": DistilBertForQuestionAnswering,
    "masked-lm": DistilBertForMaskedLM,
}


def sanitize(state: dict) -> dict:
    # embeddings.position_ids: a buffer older transformers saved; positions are rebuilt on the fly
    return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}


FAMILIES = (Family(("distilbert",), Config, HEADS, sanitize),)
