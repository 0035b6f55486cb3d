"""Marian (Helsinki-NLP opus-mt): BART's post-norm encoder and decoder (bart.py's stacks) with
fixed sinusoidal positions, no layernorm_embedding, and optionally separate encoder/decoder
vocabularies.

The position table is not a weight: `save_pretrained` leaves it out (older Hub checkpoints
carry it; `sanitize` drops it) and the model computes it exactly as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bart import Config as BartConfig
from .bart import BartForConditionalGeneration, Decoder, Encoder
from .base import Family, Model


@dataclass
class Config(BartConfig):
    """BART's, with Marian's defaults and its own target vocabulary size."""

    model_type: str = "marian"  # post-norm, as BART (BartConfig.prenorm)
    vocab_size: int = 58101
    decoder_vocab_size: int | None = None
    share_encoder_decoder_embeddings: bool = True
    pad_token_id: int = 58100
    eos_token_id: int = 0
    decoder_start_token_id: int = 58100

    null_means_default = True  # a null keeps Marian's default

    def __post_init__(self):
        self.decoder_vocab_size = self.decoder_vocab_size or self.vocab_size

    @property
    def target_vocab_size(self) -> int:
        """The output vocabulary: decoder_vocab_size when the vocabularies are separate."""
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


class SinusoidalPositions(nn.Module):
    def __init__(self, n_positions: int, dim: int):
        super().__init__()
        # built on the CPU even when the model is built on the meta device: it is not in the
        # checkpoint, and a meta buffer could not be moved by the loader's .to()
        self.register_buffer("table", sinusoidal_positions(n_positions, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]  # (..., T, D)


class MarianModel(Model):
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
        positions = cfg.max_position_embeddings, cfg.d_model
        self.encoder = Encoder(cfg, enc_embed, SinusoidalPositions(*positions), layernorm_embedding=False)
        self.decoder = Decoder(cfg, dec_embed, SinusoidalPositions(*positions), layernorm_embedding=False)

    def tie_weights(self):
        if self.encoder.embed_tokens.weight.is_meta or self.decoder.embed_tokens.weight.is_meta:
            raise ValueError("checkpoint has no token embeddings (model.shared / encoder|decoder.embed_tokens)")

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("MarianModel needs decoder_input_ids (start them with decoder_start_token_id)")
        enc = self.encoder(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, enc, attention_mask, attention_mask=decoder_attention_mask)


class MarianMTModel(BartForConditionalGeneration):
    model_class = MarianModel

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:  # Marian has no denoising objective to shift the input for
            raise ValueError("MarianMTModel needs decoder_input_ids (start them with decoder_start_token_id)")
        return super().forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)


HEADS = {"base": MarianModel, "seq2seq-lm": MarianMTModel}


def sanitize(state: dict) -> dict:
    # older checkpoints saved the sinusoidal tables as weights; they are computed here instead
    return {k: v for k, v in state.items() if not k.endswith("embed_positions.weight")}


FAMILIES = (Family(("marian",), Config, HEADS, sanitize),)
