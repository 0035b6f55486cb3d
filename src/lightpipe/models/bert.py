"""BERT and the RoBERTa family (roberta, xlm-roberta, camembert): one post-LayerNorm encoder.

The RoBERTa models are BERT with three differences, all handled here rather than in a copy:
positions count from `pad_token_id + 1` and skip padding, the checkpoints nest the encoder
under "roberta." instead of "bert.", and the classification / masked-LM heads are shaped
differently. Parameter names are the Hub's, so checkpoints load one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, attention, fuse_qkv, merge_heads, padding_mask, qkv_heads


@dataclass
class Config(ModelConfig):
    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
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
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads"
            )

    @property
    def roberta_positions(self) -> bool:
        return self.model_type != "bert"


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, C)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.padding_idx = config.pad_token_id
        self.roberta_positions = config.roberta_positions
        # RoBERTa's first real position is padding_idx + 1, so fewer positions are usable
        self.max_len = config.max_position_embeddings - (self.padding_idx + 1 if self.roberta_positions else 0)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ValueError(f"input of {T} tokens is longer than the model's {self.max_len} positions; truncate it")
        x = self.word_embeddings(input_ids)  # (B, T, C)
        # Without token types every token is type 0: add that one row instead of gathering B*T copies.
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.roberta_positions:
            # fairseq's numbering: real tokens get padding_idx+1, +2, ...; pads keep padding_idx,
            # so a sequence's positions don't depend on the padding around it.
            not_pad = input_ids.ne(self.padding_idx)
            x = x + self.position_embeddings(torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx)
        else:
            x = x + self.position_embeddings.weight[:T]  # (T, C), broadcast over the batch
        return self.LayerNorm(x)


class Layer(nn.Module):
    """Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: Config):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.n_heads = config.num_attention_heads
        # ModuleDicts only to reproduce the Hub's nesting (attention.self.query, output.LayerNorm, ...)
        self.attention = nn.ModuleDict(dict(
            self=nn.ModuleDict(dict(query=nn.Linear(C, C), key=nn.Linear(C, C), value=nn.Linear(C, C))),
            output=nn.ModuleDict(dict(dense=nn.Linear(C, C), LayerNorm=nn.LayerNorm(C, eps=eps))),
        ))
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(C, config.intermediate_size)))
        self.output = nn.ModuleDict(dict(
            dense=nn.Linear(config.intermediate_size, C), LayerNorm=nn.LayerNorm(C, eps=eps),
        ))
        self.act = activation(config.hidden_act)

    def fuse_qkv(self):
        s = self.attention.self
        fuse_qkv(self, (s.query, s.key, s.value))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        s, out = self.attention.self, self.attention.output
        q, k, v = qkv_heads(self, (s.query, s.key, s.value), x, self.n_heads)  # 3 x (B, H, T, D)
        y = merge_heads(attention(q, k, v, mask))  # (B, T, C)
        x = out.LayerNorm(out.dense(y) + x)
        h = self.act(self.intermediate.dense(x))  # (B, T, intermediate)
        return self.output.LayerNorm(self.output.dense(h) + x)


# Weights checkpoints carry that a head may not use: BERT's pooler (every BertModel save has it,
# and pre-4.0 token-classification saves too) and the next-sentence head of pretraining saves.
IGNORE_UNEXPECTED = ("pooler.", "cls.seq_relationship.")


class BertModel(Model):
    """The encoder. forward → last hidden state (B, T, C)."""

    base_model_prefix = "bert"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config, pooler: bool = False):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = nn.ModuleDict(dict(layer=nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))))
        if pooler:  # only BERT's sequence classifier reads it; elsewhere its weights are skipped
            C = config.hidden_size
            self.pooler = nn.ModuleDict(dict(dense=nn.Linear(C, C)))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        mask = padding_mask(attention_mask, x.dtype)  # None when nothing is padded: SDPA's fast path
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x  # (B, T, C)

    def post_load(self):
        for layer in self.encoder.layer:
            layer.fuse_qkv()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler.dense(hidden[:, 0]))  # (B, C), from the [CLS] token


class RobertaModel(BertModel):
    base_model_prefix = "roberta"  # also xlm-roberta's and camembert's


class _Head(Model):
    """A task head over the encoder, kept under the Hub's prefix ("bert." or "roberta.")."""

    base_model_prefix = "bert"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config, pooler: bool = False):
        super().__init__()
        self.add_module(self.base_model_prefix, BertModel(config, pooler=pooler))

    @property
    def encoder_model(self) -> BertModel:
        return getattr(self, self.base_model_prefix)

    def post_load(self):
        self.encoder_model.post_load()


class BertForSequenceClassification(_Head):
    """forward → logits (B, num_labels), from the pooled [CLS] token."""

    def __init__(self, config: Config):
        super().__init__(config, pooler=True)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        model = self.encoder_model
        return self.classifier(model.pool(model(input_ids, attention_mask, token_type_ids)))


class RobertaForSequenceClassification(_Head):
    """forward → logits (B, num_labels): dense + tanh + out_proj on <s>, no pooler."""

    base_model_prefix = "roberta"

    def __init__(self, config: Config):
        super().__init__(config)
        C = config.hidden_size
        self.classifier = nn.ModuleDict(dict(dense=nn.Linear(C, C), out_proj=nn.Linear(C, config.num_labels)))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.encoder_model(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, C)
        return self.classifier.out_proj(torch.tanh(self.classifier.dense(x)))


class BertForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.encoder_model(input_ids, attention_mask, token_type_ids))


class RobertaForTokenClassification(BertForTokenClassification):
    base_model_prefix = "roberta"


class BertForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.qa_outputs(self.encoder_model(input_ids, attention_mask, token_type_ids))  # (B, T, 2)
        start, end = logits.unbind(-1)
        return start.contiguous(), end.contiguous()


class RobertaForQuestionAnswering(BertForQuestionAnswering):
    base_model_prefix = "roberta"


class BertForMaskedLM(_Head):
    """forward → logits (B, T, vocab). cls.predictions: dense, act, LayerNorm, decoder tied to the embeddings."""

    def __init__(self, config: Config):
        super().__init__(config)
        C, V = config.hidden_size, config.vocab_size
        predictions = nn.Module()
        predictions.transform = nn.ModuleDict(dict(
            dense=nn.Linear(C, C), LayerNorm=nn.LayerNorm(C, eps=config.layer_norm_eps),
        ))
        predictions.decoder = nn.Linear(C, V)
        predictions.bias = nn.Parameter(torch.empty(V))
        self.cls = nn.ModuleDict(dict(predictions=predictions))
        self.act = activation(config.hidden_act)
        # The decoder's bias is always the head's `bias`; its weight is the word embeddings unless untied.
        self.tied_weights = ["cls.predictions.decoder.bias"]
        if config.tie_word_embeddings:
            self.tied_weights.append("cls.predictions.decoder.weight")

    def tie_weights(self):
        head = self.cls.predictions
        head.decoder.bias = head.bias
        if "cls.predictions.decoder.weight" in self.tied_weights:
            head.decoder.weight = self.encoder_model.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        head = self.cls.predictions
        x = self.encoder_model(input_ids, attention_mask, token_type_ids)
        x = x if select is None else x[select]
        x = head.transform.LayerNorm(self.act(head.transform.dense(x)))
        return head.decoder(x)  # (B, T, V)


class RobertaForMaskedLM(_Head):
    """forward → logits (B, T, vocab). lm_head: dense, exact gelu, layer_norm, decoder tied to the embeddings."""

    base_model_prefix = "roberta"

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
            self.lm_head.decoder.weight = self.encoder_model.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V)."""
        head = self.lm_head
        x = self.encoder_model(input_ids, attention_mask, token_type_ids)
        x = x if select is None else x[select]
        return head.decoder(head.layer_norm(F.gelu(head.dense(x))))  # (B, T, V)


HEADS = {
    "base": BertModel,
    "sequence-classification": BertForSequenceClassification,
    "token-classification": BertForTokenClassification,
    "question-answering": BertForQuestionAnswering,
    "masked-lm": BertForMaskedLM,
}
ROBERTA_HEADS = {
    "base": RobertaModel,
    "sequence-classification": RobertaForSequenceClassification,
    "token-classification": RobertaForTokenClassification,
    "question-answering": RobertaForQuestionAnswering,
    "masked-lm": RobertaForMaskedLM,
}


def sanitize(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k.endswith("embeddings.position_ids"):  # a buffer older transformers saved; rebuilt on the fly
            continue
        # TF-era LayerNorm names
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    # Some saves keep only the decoder's copy of the (tied) output bias.
    for head in ("cls.predictions.", "lm_head."):
        if head + "decoder.bias" in out and head + "bias" not in out:
            out[head + "bias"] = out[head + "decoder.bias"]
    return out


FAMILIES = (
    Family(("bert",), Config, HEADS, sanitize),
    # the RoBERTa models nest the encoder under "roberta." and shape two heads differently
    Family(("roberta", "xlm-roberta", "camembert"), Config, ROBERTA_HEADS, sanitize),
)
