"""DeBERTa-v2 and DeBERTa-v3 (mDeBERTa too): BERT's post-LayerNorm encoder with disentangled
attention. A token's attention score to another adds, to content·content, content·position
("c2p") and position·content ("p2c") terms read from a table of relative-distance embeddings
(log-bucketed past `position_buckets / 2`), so v3 has no absolute positions at all
(`position_biased_input` false) and no hard length limit.

Padding is handled as transformers does it (embeddings zeroed at padding, a query×key mask that
fully masks padding rows), so every position's output matches, padding included. The scores are
computed explicitly rather than with SDPA: the relative terms are a full (B, H, T, T) bias anyway.
Parameter names are the Hub's, so checkpoints load one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, merge_heads, split_heads


@dataclass
class Config(ModelConfig):
    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    position_biased_input: bool = True
    pos_att_type: list | str | None = None  # ["p2c", "c2p"] or "p2c|c2p"
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    attention_head_size: int | None = None
    embedding_size: int | None = None
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pooler_hidden_size: int | None = None
    pooler_hidden_act: str = "gelu"
    legacy: bool = True  # the masked-LM head's layout (see DebertaV2ForMaskedLM)
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    num_labels: int = 2

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        self.attention_head_size = self.attention_head_size or self.hidden_size // self.num_attention_heads
        if self.attention_head_size * self.num_attention_heads != self.hidden_size:
            raise ValueError(f"attention_head_size {self.attention_head_size} x {self.num_attention_heads} heads must "
                             f"equal hidden_size {self.hidden_size}")
        types = self.pos_att_type
        if isinstance(types, str):
            types = types.lower().split("|")
        self.pos_att_type = [t.strip() for t in types or []]
        if self.max_relative_positions < 1:
            self.max_relative_positions = self.max_position_embeddings
        self.embedding_size = self.embedding_size or self.hidden_size
        self.pooler_hidden_size = self.pooler_hidden_size or self.hidden_size

    @property
    def attention_span(self) -> int:
        """Relative distances the position table covers each way (its rows are 2x this)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @property
    def uses(self) -> tuple[bool, bool]:
        """(c2p, p2c): which relative terms the attention adds."""
        return "c2p" in self.pos_att_type, "p2c" in self.pos_att_type


def log_bucket_position(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Distances within ±bucket_size/2 kept exact, farther ones on a log scale up to
    max_position (transformers' make_log_bucket_position, op for op so buckets round alike)."""
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.tensor(mid - 1, device=relative.device),
                          torch.abs(relative))
    log_max = torch.log(torch.tensor((max_position - 1) / mid, device=relative.device))  # float32, as transformers
    log_pos = torch.ceil(torch.log(abs_pos / mid) / log_max * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.type_as(log_pos), log_pos * sign)


def relative_positions(length: int, config: Config, device) -> torch.Tensor:
    """(T, T) relative position of key j seen from query i: i - j, bucketed when configured."""
    ids = torch.arange(length, dtype=torch.long, device=device)
    relative = ids[:, None] - ids[None, :]
    if config.position_buckets > 0 and config.max_relative_positions > 0:
        relative = log_bucket_position(relative, config.position_buckets, config.max_relative_positions)
    return relative.long()


class Embeddings(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        E, C = config.embedding_size, config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        # v3: no absolute positions (relative attention only), no token types
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E) if config.position_biased_input else None
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size > 0 else None
        self.embed_proj = nn.Linear(E, C, bias=False) if E != C else None
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids=None, mask=None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, T, E)
        if self.position_embeddings is not None:
            limit = self.position_embeddings.num_embeddings
            if T > limit:
                raise ValueError(f"input of {T} tokens is longer than the model's {limit} positions; truncate it")
            x = x + self.position_embeddings.weight[:T]
        if self.token_type_embeddings is not None:
            x = x + (self.token_type_embeddings.weight[0] if token_type_ids is None
                     else self.token_type_embeddings(token_type_ids))
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, T, C)
        x = self.LayerNorm(x)
        if mask is not None:
            x = x * mask[:, :, None].to(x.dtype)  # padding starts as zeros (the ConvLayer reads it)
        return x


class Layer(nn.Module):
    """Post-LayerNorm block with disentangled self-attention."""

    def __init__(self, config: Config):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.n_heads = config.num_attention_heads
        self.relative = config.relative_attention
        self.share_att_key = config.share_att_key
        self.c2p, self.p2c = config.uses
        self.scale = math.sqrt(config.attention_head_size * (1 + self.c2p + self.p2c))
        attn = dict(query_proj=nn.Linear(C, C), key_proj=nn.Linear(C, C), value_proj=nn.Linear(C, C))
        if self.relative and not self.share_att_key:  # positions get their own projections
            if self.c2p:
                attn["pos_key_proj"] = nn.Linear(C, C)
            if self.p2c:
                attn["pos_query_proj"] = nn.Linear(C, C)
        self.attention = nn.ModuleDict(dict(
            self=nn.ModuleDict(attn),
            output=nn.ModuleDict(dict(dense=nn.Linear(C, C), LayerNorm=nn.LayerNorm(C, eps=eps))),
        ))
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(C, config.intermediate_size)))
        self.output = nn.ModuleDict(dict(
            dense=nn.Linear(config.intermediate_size, C), LayerNorm=nn.LayerNorm(C, eps=eps),
        ))
        self.act = activation(config.hidden_act)

    def relative_scores(self, q, k, rel_embeddings, c2p_index, p2c_index) -> torch.Tensor:
        """The c2p + p2c terms (B, H, T, T), each scaled like the content term."""
        s, H = self.attention.self, self.n_heads
        B, _, T, _ = q.shape
        rows = rel_embeddings.shape[0]
        to_heads = lambda x: x.view(rows, H, -1).transpose(0, 1)  # noqa: E731  (2S, C) → (H, 2S, D)
        score = 0
        if self.c2p:
            pos_key = to_heads((s.key_proj if self.share_att_key else s.pos_key_proj)(rel_embeddings))
            c2p = torch.matmul(q, pos_key.transpose(-1, -2))  # (B, H, T, 2S): each query against every distance
            c2p = torch.gather(c2p, -1, c2p_index.expand(B, H, T, T))
            score = score + c2p / self.scale
        if self.p2c:
            pos_query = to_heads((s.query_proj if self.share_att_key else s.pos_query_proj)(rel_embeddings))
            p2c = torch.matmul(k, pos_query.transpose(-1, -2))  # (B, H, T, 2S): each key against every distance
            p2c = torch.gather(p2c, -1, p2c_index.expand(B, H, T, T)).transpose(-1, -2)
            score = score + p2c / self.scale
        return score

    def forward(self, x, keep, rel_embeddings, c2p_index, p2c_index) -> torch.Tensor:
        s, out = self.attention.self, self.attention.output
        q = split_heads(s.query_proj(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(s.key_proj(x), self.n_heads)
        v = split_heads(s.value_proj(x), self.n_heads)
        scores = torch.matmul(q, k.transpose(-1, -2) / self.scale)  # (B, H, T, T)
        if self.relative:
            scores = scores + self.relative_scores(q, k, rel_embeddings, c2p_index, p2c_index)
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        y = merge_heads(torch.matmul(scores.softmax(-1), v))  # (B, T, C)
        x = out.LayerNorm(out.dense(y) + x)
        h = self.act(self.intermediate.dense(x))  # (B, T, intermediate)
        return self.output.LayerNorm(self.output.dense(h) + x)


class ConvLayer(nn.Module):
    """DeBERTa-v2-xlarge's convolution over the embeddings, added to the first layer's output."""

    def __init__(self, config: Config):
        super().__init__()
        C, k = config.hidden_size, config.conv_kernel_size
        self.conv = nn.Conv1d(C, C, k, padding=(k - 1) // 2, groups=config.conv_groups)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.act = activation(config.conv_act)

    def forward(self, embedded, layer_out, mask) -> torch.Tensor:
        y = self.conv(embedded.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        if mask is not None:
            y = y.masked_fill(~mask.bool()[:, :, None], 0)
        y = self.LayerNorm(layer_out + self.act(y))
        return y if mask is None else y * mask[:, :, None].to(y.dtype)


class Encoder(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        if config.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * config.attention_span, config.hidden_size)
        self.norm_rel = "layer_norm" in [x.strip() for x in config.norm_rel_ebd.lower().split("|")]
        if self.norm_rel:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.conv = ConvLayer(config) if config.conv_kernel_size > 0 else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        config, T = self.config, x.shape[1]
        rel_embeddings = c2p_index = p2c_index = None
        if config.relative_attention:
            rel_embeddings = self.rel_embeddings.weight
            if self.norm_rel:
                rel_embeddings = self.LayerNorm(rel_embeddings)
            span = config.attention_span
            relative = relative_positions(T, config, x.device)  # (T, T), shared by every layer
            c2p_index = torch.clamp(relative + span, 0, 2 * span - 1)
            p2c_index = torch.clamp(-relative + span, 0, 2 * span - 1)
        # a query may see a key when both are real: padding rows are masked whole, as transformers does
        keep = None if mask is None else (mask[:, None, :, None] * mask[:, None, None, :]).bool()  # (B, 1, T, T)
        embedded = x
        for i, layer in enumerate(self.layer):
            x = layer(x, keep, rel_embeddings, c2p_index, p2c_index)
            if i == 0 and self.conv is not None:
                x = self.conv(embedded, x, mask)
        return x  # (B, T, C)


# Weights a checkpoint may carry that a head doesn't use: Microsoft's originals have an absolute
# position table v3 never reads, the replaced-token-detection head (mask_predictions) and the
# masked-LM head (lm_predictions, renamed to cls.predictions by sanitize).
IGNORE_UNEXPECTED = ("position_embeddings", "mask_predictions.", "cls.predictions.")


class DebertaV2Model(Model):
    """The encoder. forward → last hidden state (B, T, C)."""

    base_model_prefix = "deberta"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: skip the masking (one host sync)
        x = self.embeddings(input_ids, token_type_ids, attention_mask)
        return self.encoder(x, attention_mask)


class _Head(Model):
    base_model_prefix = "deberta"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, config: Config):
        super().__init__()
        self.deberta = DebertaV2Model(config)


class DebertaV2ForSequenceClassification(_Head):
    """forward → logits (B, num_labels), from the ContextPooler over the first token."""

    def __init__(self, config: Config):
        super().__init__(config)
        P = config.pooler_hidden_size
        self.pooler = nn.ModuleDict(dict(dense=nn.Linear(P, P)))
        self.pooler_act = activation(config.pooler_hidden_act)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        first = self.deberta(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, C)
        return self.classifier(self.pooler_act(self.pooler.dense(first)))


class DebertaV2ForTokenClassification(_Head):
    """forward → logits (B, T, num_labels)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.deberta(input_ids, attention_mask, token_type_ids))


class DebertaV2ForQuestionAnswering(_Head):
    """forward → (start_logits (B, T), end_logits (B, T))."""

    def __init__(self, config: Config):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"a question-answering head has 2 outputs (start, end); this config has "
                             f"num_labels={config.num_labels}")
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.qa_outputs(self.deberta(input_ids, attention_mask, token_type_ids))  # (B, T, 2)
        start, end = logits.unbind(-1)
        return start.contiguous(), end.contiguous()


class DebertaV2ForMaskedLM(_Head):
    """forward → logits (B, T, vocab): dense, act, LayerNorm, then the word embeddings + bias.

    transformers has two layouts: `legacy` (its default) `cls.predictions.{transform, decoder,
    bias}`, and the original DeBERTa one `lm_predictions.lm_head.{dense, LayerNorm, bias}` that
    always projects onto the word embeddings. They compute the same thing, so checkpoints of the
    second kind are renamed into the first by `sanitize`, and the decoder is tied to the
    embeddings unless a legacy config unties it.
    """

    def __init__(self, config: Config):
        super().__init__(config)
        C, E, V = config.hidden_size, config.embedding_size, config.vocab_size
        predictions = nn.Module()
        predictions.transform = nn.ModuleDict(dict(dense=nn.Linear(C, E), LayerNorm=nn.LayerNorm(E, eps=config.layer_norm_eps)))
        predictions.decoder = nn.Linear(E, V)
        predictions.bias = nn.Parameter(torch.empty(V))
        self.cls = nn.ModuleDict(dict(predictions=predictions))
        self.act = activation(config.hidden_act)
        self.tied_weights = ["cls.predictions.decoder.bias"]
        if config.tie_word_embeddings or not config.legacy:
            self.tied_weights.append("cls.predictions.decoder.weight")

    def tie_weights(self):
        head = self.cls.predictions
        head.decoder.bias = head.bias
        if "cls.predictions.decoder.weight" in self.tied_weights:
            head.decoder.weight = self.deberta.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, select=None) -> torch.Tensor:
        """`select` (B, T) bool: project only those positions → (N, V) (fill-mask needs a few, not T × V)."""
        head = self.cls.predictions
        x = self.deberta(input_ids, attention_mask, token_type_ids)
        x = x if select is None else x[select]
        return head.decoder(head.transform.LayerNorm(self.act(head.transform.dense(x))))


HEADS = {
    "base": DebertaV2Model,
    "sequence-classification": DebertaV2ForSequenceClassification,
    "token-classification": DebertaV2ForTokenClassification,
    "question-answering": DebertaV2ForQuestionAnswering,
    "masked-lm": DebertaV2ForMaskedLM,
}

# the original (non-legacy) masked-LM head's names → the legacy layout's
LM_HEAD_NAMES = {"lm_predictions.lm_head.dense.": "cls.predictions.transform.dense.",
                 "lm_predictions.lm_head.LayerNorm.": "cls.predictions.transform.LayerNorm.",
                 "lm_predictions.lm_head.bias": "cls.predictions.bias"}


def sanitize(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k.endswith("embeddings.position_ids"):  # a buffer older transformers saved
            continue
        for old, new in LM_HEAD_NAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    if "cls.predictions.decoder.bias" in out and "cls.predictions.bias" not in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


FAMILIES = (Family(("deberta-v2",), Config, HEADS, sanitize),)
