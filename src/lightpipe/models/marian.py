"""Marian (Helsinki-NLP opus-mt): BART's post-norm layers with fixed sinusoidal positions,
no layernorm_embedding, and optionally separate encoder/decoder vocabularies.

The position table is not a weight: `save_pretrained` leaves it out (older Hub checkpoints
carry it; `sanitize` drops it) and the model computes it exactly as transformers does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from .bart import DecoderLayer, EncoderLayer, Seq2SeqLM, cross_mask, decoder_self_mask
from .common import padding_mask


@dataclass
class Config:
    vocab_size: int = 58101
    decoder_vocab_size: int | None = None
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
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int = 58100
    eos_token_id: int = 0
    decoder_start_token_id: int = 58100

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names and v is not None})
        cfg.decoder_vocab_size = cfg.decoder_vocab_size or cfg.vocab_size
        return cfg

    @property
    def target_vocab_size(self) -> int:
        return self.vocab_size if self.share_encoder_decoder_embeddings else self.decoder_vocab_size


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """transformers' MarianSinusoidalPositionalEmbedding table: sin in the first half, cos in
    the second (not interleaved). Computed in float64 and rounded once, as numpy does there —
    a float32 computation drifts by ~1e-5 at position 500."""
    pos = torch.arange(n_positions, dtype=torch.float64, device="cpu")[:, None]
    j = torch.arange(dim, dtype=torch.float64, device="cpu")
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, dim)
    sentinel = dim // 2 + dim % 2
    table = torch.empty(n_positions, dim, dtype=torch.float64, device="cpu")
    table[:, :sentinel] = torch.sin(angles[:, 0::2])
    table[:, sentinel:] = torch.cos(angles[:, 1::2])
    return table.float()


class Encoder(nn.Module):
    def __init__(self, cfg: Config, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        # built on the CPU even when the model is built on the meta device: it is not in the
        # checkpoint, and a meta buffer could not be moved by the loader's .to()
        table = sinusoidal_positions(cfg.max_position_embeddings, cfg.d_model)
        self.register_buffer("embed_positions", table, persistent=False)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.activation_function, False)
            for _ in range(cfg.encoder_layers)
        )

    def forward(self, input_ids, attention_mask=None):
        S = input_ids.shape[1]
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions[:S]
        mask = padding_mask(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: Config, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        table = sinusoidal_positions(cfg.max_position_embeddings, cfg.d_model)
        self.register_buffer("embed_positions", table, persistent=False)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.decoder_attention_heads, cfg.decoder_ffn_dim, cfg.activation_function, False)
            for _ in range(cfg.decoder_layers)
        )

    def forward(self, input_ids, encoder_hidden, encoder_mask=None, cache=None, attention_mask=None):
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions[past : past + T]
        self_mask, causal = decoder_self_mask(T, past, attention_mask, x.dtype, x.device)
        enc_mask = cross_mask(encoder_mask, x.dtype)  # (B, 1, 1, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, self_mask, causal, encoder_hidden, enc_mask, cache)
        return x


class MarianModel(nn.Module):
    base_model_prefix = "model"

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        if cfg.share_encoder_decoder_embeddings:
            # one module under three names, as in transformers; the checkpoint needs one of them
            self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
            enc_embed = dec_embed = self.shared
            self.tied_weights = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
        else:
            self.shared = None
            # transformers deep-copies a vocab_size table for both sides, so the decoder input
            # embedding has vocab_size rows too; decoder_vocab_size only sizes the output layer
            enc_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
            dec_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
            self.tied_weights = []
        self.encoder = Encoder(cfg, enc_embed)
        self.decoder = Decoder(cfg, dec_embed)

    def tie_weights(self):
        if self.encoder.embed_tokens.weight.is_meta or self.decoder.embed_tokens.weight.is_meta:
            raise ValueError("checkpoint has no token embeddings (model.shared / encoder|decoder.embed_tokens)")

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("MarianModel needs decoder_input_ids (start them with decoder_start_token_id)")
        enc = self.encoder(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, enc, attention_mask, attention_mask=decoder_attention_mask)


class MarianMTModel(Seq2SeqLM, nn.Module):
    base_model_prefix = "model"

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = MarianModel(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.target_vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.target_vocab_size))
        self.max_positions = cfg.max_position_embeddings  # decoder positions are a fixed table
        self.tied_weights = [f"model.{n}" for n in self.model.tied_weights] + ["final_logits_bias"]
        if cfg.tie_word_embeddings:
            self.tied_weights.append("lm_head.weight")

    def tie_weights(self):
        self.model.tie_weights()
        if self.config.tie_word_embeddings:  # to the decoder's vocabulary, which is `shared` when shared
            self.lm_head.weight = self.model.decoder.embed_tokens.weight
        if self.final_logits_bias.is_meta:
            self.final_logits_bias = torch.zeros(1, self.config.target_vocab_size, device=self.lm_head.weight.device)

    def post_load(self):
        self.tie_weights()

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask=decoder_attention_mask)


HEADS = {"base": MarianModel, "seq2seq-lm": MarianMTModel}


def sanitize(state: dict) -> dict:
    # older checkpoints saved the sinusoidal tables as weights; they are computed here instead
    return {k: v for k, v in state.items() if not k.endswith("embed_positions.weight")}
