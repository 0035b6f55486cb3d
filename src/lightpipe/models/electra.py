"""ELECTRA (google/electra-*-discriminator and -generator, and their fine-tunes).

BERT's post-LayerNorm encoder (its layers are bert.Layer, names included) under embeddings of
their own width: `embedding_size` may be smaller than `hidden_size`, and then a linear
`embeddings_project` maps the embeddings up. The heads differ from BERT's: the sequence
classifier is dense + exact gelu + out_proj on the first token (no pooler), and the masked-LM
head is the generator's (dense down to embedding_size, gelu, LayerNorm, decoder tied to the
embeddings). Discriminator checkpoints (ElectraForPreTraining) load as the base model, their
replaced-token head skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, Model, ModelConfig
from .bert import Layer, sanitize
from .common import padding_mask


@dataclass
class Config(ModelConfig):
    model_type: str = "electra"
    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    num_labels: int = 2

    def __post_init__(self):
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported by lightpipe "
                "(only 'absolute'); this checkpoint needs transformers"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")


class Embeddings(nn.Module):
    """BERT's embeddings, `embedding_size` wide."""

    def __init__(self, config: Config):
        super().__init__()
        E = config.embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        n_positions = self.position_embeddings.num_embeddings
        if T > n_positions:
            raise ValueError(f"input of {T} tokens is longer than the model's {n_positions} positions; truncate it")
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T]  # (B, T, E); positions broadcast
        if token_type_ids is None:  # every token is type 0: one row, not B*T copies
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


# ElectraForPreTraining's replaced-token detector, in every discriminator checkpoint
IGNORE_UNEXPECTED = ("discriminator_predictions.",)


class ElectraModel(Model):
    """The encoder. forward → last hidden state (B, T, hidden_size)."""

    base_model_prefix = "electra"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config):
        super().__init__()
        self.embeddings = Embeddings(config)
        # only when the widths differ (electra-small: 128 → 256; base and large have equal widths)
        self.embeddings_project = (nn.Linear(config.embedding_size, config.hidden_size)
                                   if config.embedding_size != config.hidden_size else None)
        self.encoder = nn.ModuleDict(dict(layer=nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, E)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)  # (B, T, C)
        mask = padding_mask(attention_mask, x.dtype)  # None when nothing is padded: SDPA's fast path
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def post_load(self):
        for layer in self.encoder.layer:
            layer.fuse_qkv()


class _Head(Model):
    base_model_prefix = "electra"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config):
        super().__init__()
        self.electra = ElectraModel(config)

    def post_load(self):
        self.electra.post_load()


class ElectraForSequenceClassification(_Head):
    """forward → logits (B, num_labels): dense + exact gelu + out_proj on [CLS] (not BERT's tanh pooler)."""

    def __init__(self, config: Config):
        super().__init__(config)
        C = config.hidden_size
        self.classifier = nn.ModuleDict(dict(dense=nn.Linear(C, C), out_proj=nn.Linear(C, config.num_labels)))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.electra(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, C)
        return self.classifier.out_proj(F.gelu(self.classifier.dense(x)))


class ElectraForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.electra(input_ids, attention_mask, token_type_ids))


class ElectraForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        start, end = self.qa_outputs(self.electra(input_ids, attention_mask, token_type_ids)).unbind(-1)
        return start.contiguous(), end.contiguous()


class ElectraForMaskedLM(_Head):
    """The generator. forward → logits (B, T, vocab): generator_predictions (dense to
    embedding_size, exact gelu, LayerNorm), then generator_lm_head tied to the embeddings."""

    def __init__(self, config: Config):
        super().__init__(config)
        C, E = config.hidden_size, config.embedding_size
        self.generator_predictions = nn.ModuleDict(dict(
            dense=nn.Linear(C, E), LayerNorm=nn.LayerNorm(E, eps=config.layer_norm_eps),
        ))
        self.generator_lm_head = nn.Linear(E, config.vocab_size)
        self.tied_weights = ["generator_lm_head.weight"] if config.tie_word_embeddings else []

    def tie_weights(self):
        if self.tied_weights:
            self.generator_lm_head.weight = self.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        x = self.electra(input_ids, attention_mask, token_type_ids)
        x = x if select is None else x[select]
        head = self.generator_predictions
        return self.generator_lm_head(head.LayerNorm(F.gelu(head.dense(x))))  # (B, T, V)


HEADS = {
    "base": ElectraModel,
    "sequence-classification": ElectraForSequenceClassification,
    "token-classification": ElectraForTokenClassification,
    "question-answering": ElectraForQuestionAnswering,
    "masked-lm": ElectraForMaskedLM,
}

# BERT's: TF-era LayerNorm gamma/beta and the position_ids buffer of older saves
FAMILIES = (Family(("electra",), Config, HEADS, sanitize),)
