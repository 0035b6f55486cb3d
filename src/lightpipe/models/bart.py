"""BART and mBART: encoder-decoder with learned positions, post-norm (BART) or pre-norm (mBART).

Parameter names follow the Hub checkpoints (`model.shared`, `model.encoder.layers.0.self_attn.q_proj`,
...). The token embedding is one module registered as `model.shared`, `model.encoder.embed_tokens`
and `model.decoder.embed_tokens`, as in transformers, so any one of those names in a checkpoint
fills all three: `save_pretrained` writes only `model.shared.weight`, some Hub checkpoints
(bart-large-cnn) only `model.decoder.embed_tokens.weight`.

marian.py builds Marian from these layers and stacks, with its own position embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import Family, Model, ModelConfig
from .common import activation, attention, clamp_fp16, decoder_mask, merge_heads, padding_bias, padding_mask, split_heads
from .kv_cache import KVCache


@dataclass
class Config(ModelConfig):
    null_means_default = False  # a null stays None: mBART has no decoder_start_token_id

    model_type: str = "bart"
    vocab_size: int = 50265
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    activation_function: str = "gelu"
    scale_embedding: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int | None = 2
    num_labels: int = 3

    @property
    def prenorm(self) -> bool:
        return self.model_type == "mbart"

    @property
    def target_vocab_size(self) -> int:
        """The output vocabulary (Marian's may be its own)."""
        return self.vocab_size


# ----------------------------------------------------------------------------- building blocks


class Attention(nn.Module):
    """Multi-head attention with biased projections; keys/values are projected separately so the
    decoder can cache them (self-attention per step, cross-attention once)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def project_kv(self, x):
        return split_heads(self.k_proj(x), self.n_heads), split_heads(self.v_proj(x), self.n_heads)  # (B, H, S, D)

    def forward(self, x, k, v, mask=None, causal=False):
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, D); SDPA's default scale is BART's D**-0.5
        return self.out_proj(merge_heads(attention(q, k, v, mask=mask, causal=causal)))


def residual(x, norm, f, prenorm: bool):
    """BART normalises after the residual add; mBART before the sublayer."""
    return x + f(norm(x)) if prenorm else norm(x + f(x))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, ffn_dim, act: str, prenorm: bool):
        super().__init__()
        self.self_attn = Attention(d_model, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.act = activation(act)
        self.prenorm = prenorm

    def forward(self, x, mask):
        def self_attn(h):
            return self.self_attn(h, *self.self_attn.project_kv(h), mask)

        x = residual(x, self.self_attn_layer_norm, self_attn, self.prenorm)
        x = residual(x, self.final_layer_norm, lambda h: self.fc2(self.act(self.fc1(h))), self.prenorm)
        return clamp_fp16(x)


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, ffn_dim, act: str, prenorm: bool):
        super().__init__()
        self.self_attn = Attention(d_model, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = Attention(d_model, n_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.act = activation(act)
        self.prenorm = prenorm

    def forward(self, x, i: int, self_mask, causal: bool, encoder_hidden, cross_mask, cache: KVCache | None):
        def self_attn(h):
            k, v = self.self_attn.project_kv(h)
            if cache is not None:  # write this step's keys at each row's length, attend over the row so far
                k, v = cache.update(i, k, v)
            return self.self_attn(h, k, v, self_mask, causal)

        def cross_attn(h):
            kv = cache.cross(i) if cache is not None else None
            if kv is None:  # the encoder output doesn't change during generation: project it once
                kv = self.encoder_attn.project_kv(encoder_hidden)
                if cache is not None:
                    cache.store_cross(i, *kv)
            return self.encoder_attn(h, *kv, cross_mask)

        x = residual(x, self.self_attn_layer_norm, self_attn, self.prenorm)
        x = residual(x, self.encoder_attn_layer_norm, cross_attn, self.prenorm)
        return residual(x, self.final_layer_norm, lambda h: self.fc2(self.act(self.fc1(h))), self.prenorm)


def shift_tokens_right(input_ids, cfg: Config):
    """Decoder inputs for a denoising pass over `input_ids`, as transformers builds them.

    BART starts with decoder_start_token_id; mBART has none and wraps each row's last
    non-pad token (the language id) to the front instead.
    """
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    if cfg.model_type == "mbart":
        last = input_ids.ne(cfg.pad_token_id).sum(1, keepdim=True) - 1  # (B, 1)
        shifted[:, 0] = input_ids.gather(1, last).squeeze(1)
    else:
        shifted[:, 0] = cfg.decoder_start_token_id
    return shifted


# ----------------------------------------------------------------------------- the stacks


class LearnedPositions(nn.Embedding):
    """BART's position table. fairseq reserved two rows (pad and an unused one), so position p
    lives at row p + 2."""

    def __init__(self, n_positions: int, dim: int):
        super().__init__(n_positions + 2, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # a lookup, not a slice: a position past the table is an IndexError, not a short slice
        return super().forward(positions + 2)  # (..., T, D)


class Stack(nn.Module):
    """What the encoder and the decoder share: token embeddings (times sqrt(d_model) where the
    config says so) plus `embed_positions` (a module: position ids (T,) or (B, T) → (..., T, D) —
    learned here, sinusoidal in Marian), an optional
    layernorm_embedding (BART's, not Marian's), the layers, and a final layer_norm for pre-norm
    models (mBART)."""

    def __init__(self, cfg: Config, embed_tokens: nn.Embedding, embed_positions: nn.Module, layers: list[nn.Module],
                 layernorm_embedding: bool):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.embed_positions = embed_positions
        self.layernorm_embedding = nn.LayerNorm(cfg.d_model) if layernorm_embedding else None
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(cfg.d_model) if cfg.prenorm else None

    def embed(self, input_ids, positions=None):
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(positions)
        return self.layernorm_embedding(x) if self.layernorm_embedding is not None else x

    def final_norm(self, x):
        return self.layer_norm(x) if self.layer_norm is not None else x


class Encoder(Stack):
    def __init__(self, cfg: Config, embed_tokens: nn.Embedding, embed_positions: nn.Module,
                 layernorm_embedding: bool = True):
        layers = [EncoderLayer(cfg.d_model, cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.activation_function,
                               cfg.prenorm) for _ in range(cfg.encoder_layers)]
        super().__init__(cfg, embed_tokens, embed_positions, layers, layernorm_embedding)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        mask = padding_mask(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


class Decoder(Stack):
    def __init__(self, cfg: Config, embed_tokens: nn.Embedding, embed_positions: nn.Module,
                 layernorm_embedding: bool = True):
        layers = [DecoderLayer(cfg.d_model, cfg.decoder_attention_heads, cfg.decoder_ffn_dim, cfg.activation_function,
                               cfg.prenorm) for _ in range(cfg.decoder_layers)]
        super().__init__(cfg, embed_tokens, embed_positions, layers, layernorm_embedding)

    def forward(self, input_ids, encoder_hidden, encoder_mask=None, cache: KVCache | None = None, attention_mask=None):
        T = input_ids.shape[1]
        if cache is not None:  # each row at its own length, its own source
            x = self.embed(input_ids, cache.positions)
            self_mask, causal = cache.mask(x.dtype)
            enc_mask = cache.cross_mask(x.dtype)  # (B, 1, 1, S)
        else:
            x = self.embed(input_ids)
            self_mask, causal = decoder_mask(attention_mask, T, x.dtype, x.device)
            enc_mask = padding_bias(encoder_mask, x.dtype) if encoder_mask is not None else None  # (B, 1, 1, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, self_mask, causal, encoder_hidden, enc_mask, cache)
        return self.final_norm(x)


# ----------------------------------------------------------------------------- models and heads


class BartModel(Model):
    """Encoder + decoder; returns the decoder's last hidden state, like transformers' BartModel.

    The families built on it (Pegasus, M2M100) change only what the hooks below say: their
    stacks' classes, their position tables, no layernorm_embedding, no denoising default."""

    base_model_prefix = "model"
    encoder_class, decoder_class = Encoder, Decoder
    has_layernorm_embedding = True

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
        self.encoder = self.encoder_class(cfg, self.shared, self.positions(cfg),
                                          layernorm_embedding=self.has_layernorm_embedding)
        self.decoder = self.decoder_class(cfg, self.shared, self.positions(cfg),
                                          layernorm_embedding=self.has_layernorm_embedding)
        # aliases of one module: the checkpoint needs only one of these names
        self.tied_weights = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def positions(self, cfg: Config) -> nn.Module:
        return LearnedPositions(cfg.max_position_embeddings, cfg.d_model)

    def default_decoder_inputs(self, input_ids):
        """Denoising: the decoder reads the input shifted right."""
        return shift_tokens_right(input_ids, self.config)

    def tie_weights(self):
        if self.shared.weight.is_meta:
            raise ValueError("checkpoint has no token embeddings (model.shared / encoder|decoder.embed_tokens)")

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            decoder_input_ids = self.default_decoder_inputs(input_ids)
        enc = self.encoder(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, enc, attention_mask, attention_mask=decoder_attention_mask)


def _prefixed(names, prefix):
    return [f"{prefix}.{n}" for n in names]


class BartForConditionalGeneration(Model):
    """BartModel + lm_head + final_logits_bias, with the engine's encoder-decoder protocol (see
    generation.py). Marian's MTModel is this on its own base model (`model_class`)."""

    base_model_prefix = "model"
    is_encoder_decoder = True
    model_class = BartModel

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = self.model_class(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.target_vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.target_vocab_size))
        self.max_positions = self.context_length = cfg.max_position_embeddings  # decoder positions: a fixed table
        # final_logits_bias: transformers tolerates its absence (zeros); never a random init
        self.tied_weights = _prefixed(self.model.tied_weights, "model") + ["final_logits_bias"]
        if cfg.tie_word_embeddings:
            self.tied_weights.append("lm_head.weight")

    def tie_weights(self):
        self.model.tie_weights()
        if self.config.tie_word_embeddings:  # to the decoder's vocabulary: `shared`, unless Marian's are separate
            self.lm_head.weight = self.model.decoder.embed_tokens.weight
        if self.final_logits_bias.is_meta:
            self.final_logits_bias = torch.zeros(1, self.config.target_vocab_size, device=self.lm_head.weight.device)

    def post_load(self):
        self.tie_weights()  # .to() keeps ties today; re-tying is cheap insurance

    def encode(self, input_ids, attention_mask=None):
        return self.model.encoder(input_ids, attention_mask)

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        # the token embedding's dtype: quantize="int8" turns lm_head's weight into int8
        cfg, w = self.config, self.model.decoder.embed_tokens.weight
        heads = cfg.decoder_attention_heads
        head_dim = cfg.d_model // heads
        return KVCache(cfg.decoder_layers, heads, head_dim, dtype or w.dtype, device or w.device, budget_tokens)

    def decode(self, decoder_input_ids, encoder_hidden=None, encoder_mask=None, cache=None, decoder_attention_mask=None):
        h = self.model.decoder(decoder_input_ids, encoder_hidden, encoder_mask, cache, decoder_attention_mask)
        return self.lm_head(h) + self.final_logits_bias  # (B, T, V)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(input_ids, self.config)
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask=decoder_attention_mask)


class ClassificationHead(nn.Module):
    def __init__(self, d_model: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, num_labels)

    def forward(self, x):
        return self.out_proj(torch.tanh(self.dense(x)))


class BartForSequenceClassification(Model):
    """Pools the decoder state at each row's last eos token (what facebook/bart-large-mnli uses).

    transformers demands the same number of eos tokens in every row and then takes the last one;
    taking each row's last eos gives the same result there and also works when counts differ.
    """

    base_model_prefix = "model"

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = BartModel(cfg)
        self.classification_head = ClassificationHead(cfg.d_model, cfg.num_labels)
        self.tied_weights = _prefixed(self.model.tied_weights, "model")

    def tie_weights(self):
        self.model.tie_weights()

    def forward(self, input_ids, attention_mask=None):
        h = self.model(input_ids, attention_mask)  # (B, T, D) decoder states over the shifted input
        is_eos = input_ids.eq(self.config.eos_token_id)
        if not bool(is_eos.any(1).all()):
            raise ValueError(f"every input must contain the eos token (id {self.config.eos_token_id}) to pool on")
        T = input_ids.shape[1]
        last = T - 1 - is_eos.flip(1).int().argmax(1)  # (B,) index of each row's last eos
        pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        return self.classification_head(pooled)  # (B, num_labels)


HEADS = {
    "base": BartModel,
    "seq2seq-lm": BartForConditionalGeneration,
    "sequence-classification": BartForSequenceClassification,
}


def sanitize(state: dict) -> dict:
    # fairseq-converted checkpoints carry `encoder.version` / `decoder.version` markers
    return {k: v for k, v in state.items() if not k.endswith(".version")}


FAMILIES = (Family(("bart", "mbart"), Config, HEADS, sanitize),)
