"""ALBERT: BERT's post-LayerNorm encoder made small two ways. Embeddings are factorized (a
narrow `embedding_size` table projected up to `hidden_size`), and layers share parameters:
`num_hidden_groups` groups of `inner_group_num` layers, the forward pass walking
`num_hidden_layers` steps through the groups in order (albert-base-v2: one layer run 12 times).
Parameter names are the Hub's (albert.encoder.albert_layer_groups.G.albert_layers.L...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, attention, merge_heads, padding_mask, split_heads


@dataclass
class Config(ModelConfig):
    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    num_labels: int = 2

    def __post_init__(self):
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r} is not supported by lightpipe "
                             "(only 'absolute'); this checkpoint needs transformers")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(f"num_hidden_groups must be between 1 and num_hidden_layers ({self.num_hidden_layers}), "
                             f"got {self.num_hidden_groups}")

    def group_of_step(self, step: int) -> int:
        """The layer group the encoder runs at `step` (transformers' arithmetic, uneven splits included)."""
        return int(step / (self.num_hidden_layers / self.num_hidden_groups))


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        E = config.embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        limit = self.position_embeddings.num_embeddings
        if T > limit:
            raise ValueError(f"input of {T} tokens is longer than the model's {limit} positions; truncate it")
        x = self.word_embeddings(input_ids)  # (B, T, E)
        if token_type_ids is None:  # every token type 0: add that one row
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]
        return self.LayerNorm(x)


class Layer(nn.Module):
    """Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: Config):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.n_heads = config.num_attention_heads
        self.attention = nn.ModuleDict(dict(
            query=nn.Linear(C, C), key=nn.Linear(C, C), value=nn.Linear(C, C),
            dense=nn.Linear(C, C), LayerNorm=nn.LayerNorm(C, eps=eps),
        ))
        self.ffn = nn.Linear(C, config.intermediate_size)
        self.ffn_output = nn.Linear(config.intermediate_size, C)
        self.full_layer_layer_norm = nn.LayerNorm(C, eps=eps)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention
        q = split_heads(a.query(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(a.key(x), self.n_heads)
        v = split_heads(a.value(x), self.n_heads)
        x = a.LayerNorm(x + a.dense(merge_heads(attention(q, k, v, mask))))
        return self.full_layer_layer_norm(self.ffn_output(self.act(self.ffn(x))) + x)


class Encoder(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList(
            nn.ModuleDict(dict(albert_layers=nn.ModuleList(Layer(config) for _ in range(config.inner_group_num))))
            for _ in range(config.num_hidden_groups))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding_hidden_mapping_in(x)  # (B, T, E) → (B, T, C)
        for step in range(self.config.num_hidden_layers):
            for layer in self.albert_layer_groups[self.config.group_of_step(step)].albert_layers:
                x = layer(x, mask)
        return x


# Weights checkpoints carry that a head may not use: the pooler (every AlbertModel save) and the
# sentence-order head of pretraining saves.
IGNORE_UNEXPECTED = ("pooler.", "sop_classifier.")


class AlbertModel(Model):
    """The encoder. forward → last hidden state (B, T, C)."""

    base_model_prefix = "albert"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config, pooler: bool = False):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        if pooler:  # only the sequence classifier reads it
            self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, padding_mask(attention_mask, x.dtype))  # (B, T, C)


class _Head(Model):
    base_model_prefix = "albert"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config, pooler: bool = False):
        super().__init__()
        self.albert = AlbertModel(config, pooler=pooler)


class AlbertForSequenceClassification(_Head):
    """forward → logits (B, num_labels), from the pooled first token."""

    def __init__(self, config: Config):
        super().__init__(config, pooler=True)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        first = self.albert(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, C)
        return self.classifier(torch.tanh(self.albert.pooler(first)))


class AlbertForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.albert(input_ids, attention_mask, token_type_ids))


class AlbertForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"a question-answering head has 2 outputs (start, end); this config has "
                             f"num_labels={config.num_labels}")
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.qa_outputs(self.albert(input_ids, attention_mask, token_type_ids))  # (B, T, 2)
        start, end = logits.unbind(-1)
        return start.contiguous(), end.contiguous()


class AlbertForMaskedLM(_Head):
    """forward → logits (B, T, vocab). predictions: dense (C → E), act, LayerNorm, decoder tied to
    the (E-wide) word embeddings."""

    def __init__(self, config: Config):
        super().__init__(config)
        C, E, V = config.hidden_size, config.embedding_size, config.vocab_size
        self.predictions = nn.Module()
        self.predictions.dense = nn.Linear(C, E)
        self.predictions.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.predictions.decoder = nn.Linear(E, V)
        self.predictions.bias = nn.Parameter(torch.empty(V))
        self.act = activation(config.hidden_act)
        self.tied_weights = ["predictions.decoder.bias"]
        if config.tie_word_embeddings:
            self.tied_weights.append("predictions.decoder.weight")

    def tie_weights(self):
        head = self.predictions
        head.decoder.bias = head.bias
        if "predictions.decoder.weight" in self.tied_weights:
            head.decoder.weight = self.albert.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V)."""
        head = self.predictions
        x = self.albert(input_ids, attention_mask, token_type_ids)
        x = x if select is None else x[select]
        return head.decoder(head.LayerNorm(self.act(head.dense(x))))


HEADS = {
    "base": AlbertModel,
    "sequence-classification": AlbertForSequenceClassification,
    "token-classification": AlbertForTokenClassification,
    "question-answering": AlbertForQuestionAnswering,
    "masked-lm": AlbertForMaskedLM,
}


def sanitize(state: dict) -> dict:
    # buffers older transformers saved (position_ids, token_type_ids); rebuilt on the fly
    out = {k: v for k, v in state.items() if not k.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))}
    if "predictions.decoder.bias" in out and "predictions.bias" not in out:  # some saves keep only the decoder's copy
        out["predictions.bias"] = out["predictions.decoder.bias"]
    return out


FAMILIES = (Family(("albert",), Config, HEADS, sanitize),)
