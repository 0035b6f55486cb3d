"""M2M100 and NLLB-200 (model_type m2m_100): mBART's pre-norm encoder and decoder (bart.py's
layers and stacks) with embeddings scaled by sqrt(d_model), no layernorm_embedding, and fairseq's
sinusoidal positions, which skip padding.

Positions are fairseq's `make_positions`: the real tokens of a row count from `pad_token_id + 1`
and padding tokens take row `pad_token_id` of the table, which is zeros. The table is computed,
not stored (checkpoints carry no position weights; older ones' are dropped by `sanitize`), and it
grows past max_position_embeddings as transformers' does, so there is no hard length limit.

NLLB-200 and M2M100 differ only in their tokenizers (tokenization/spiece.py and m2m100.py) and
the translation pipeline's language codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import bart
from .bart import BartForConditionalGeneration, BartModel
from .base import Family


@dataclass
class Config(bart.Config):
    """BART's fields with M2M100Config's defaults; pre-norm, as mBART."""

    null_means_default = True  # every field here has a meaningful default

    model_type: str = "m2m_100"
    vocab_size: int = 128112
    activation_function: str = "relu"
    scale_embedding: bool = True
    pad_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 2

    @property
    def prenorm(self) -> bool:
        return True


def sinusoidal_table(n_positions: int, dim: int, padding_idx: int, device=None) -> torch.Tensor:
    """transformers' M2M100SinusoidalPositionalEmbedding.get_embedding (tensor2tensor's layout:
    sin in the first half, cos in the second), computed the same way in float32 so the values are
    bit-identical; the padding row is zeros."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64, device=device).float() * -step)
    angles = torch.arange(n_positions, dtype=torch.int64, device=device).float()[:, None] * freqs[None]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(n_positions, 1, device=device)], dim=1)
    table[padding_idx] = 0
    return table


class PaddedSinusoidalPositions(nn.Module):
    """Table rows → position vectors; the table grows when a longer sequence asks for it."""

    OFFSET = 2  # fairseq's: rows 0..padding_idx are never real positions

    def __init__(self, n_positions: int, dim: int, padding_idx: int):
        super().__init__()
        self.dim, self.padding_idx = dim, padding_idx
        # on the CPU even when the model is built on the meta device: not a checkpoint weight, and
        # the loader's .to() could not move a meta buffer
        self.register_buffer("weights", sinusoidal_table(n_positions + self.OFFSET, dim, padding_idx, "cpu"),
                             persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        need = int(rows.max()) + 1
        if need > self.weights.shape[0]:  # as transformers' make_weights: a longer table, same values
            w = self.weights
            self.weights = sinusoidal_table(need + self.OFFSET, self.dim, self.padding_idx, w.device).to(w.dtype)
        return self.weights[rows]  # (B, T, D)


def position_rows(input_ids: torch.Tensor, padding_idx: int, positions: torch.Tensor | None) -> torch.Tensor:
    """(B, T) table rows of the tokens. Without a cache, fairseq's make_positions: real tokens
    count from padding_idx + 1, padding takes padding_idx. With one, each token's position in its
    row (`positions`, from the cache) + padding_idx + 1: transformers decodes one token per step,
    where its formula gives exactly that (a generated pad token still takes the zero row)."""
    real = input_ids.ne(padding_idx)
    if positions is None:
        return (torch.cumsum(real.int(), dim=1) * real).long() + padding_idx
    return torch.where(real, positions + padding_idx + 1, padding_idx)


def _embed(stack, input_ids, positions=None):
    rows = position_rows(input_ids, stack.embed_positions.padding_idx, positions)
    return stack.embed_tokens(input_ids) * stack.embed_scale + stack.embed_positions(rows)


class Encoder(bart.Encoder):
    embed = _embed


class Decoder(bart.Decoder):
    embed = _embed


class M2M100Model(BartModel):
    """BART's encoder-decoder with fairseq's padded sinusoidal positions and no layernorm_embedding."""

    encoder_class, decoder_class = Encoder, Decoder
    has_layernorm_embedding = False

    def positions(self, cfg: Config) -> nn.Module:
        return PaddedSinusoidalPositions(cfg.max_position_embeddings, cfg.d_model, cfg.pad_token_id)

    def default_decoder_inputs(self, input_ids):
        raise ValueError("M2M100Model needs decoder_input_ids (start them with decoder_start_token_id)")


class M2M100ForConditionalGeneration(BartForConditionalGeneration):
    """BART's head (its final_logits_bias stays zeros: M2M100 has none) on M2M100Model."""

    model_class = M2M100Model

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.max_positions = None  # the position table grows: no hard limit (context_length stays)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:  # transformers shifts labels only; without them it needs decoder ids too
            raise ValueError("M2M100ForConditionalGeneration needs decoder_input_ids "
                             "(start them with decoder_start_token_id)")
        return super().forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)


HEADS = {"base": M2M100Model, "seq2seq-lm": M2M100ForConditionalGeneration}


def sanitize(state: dict) -> dict:
    # fairseq conversions carry version markers, older saves the position tables: both are unused
    return {k: v for k, v in state.items() if not (k.endswith(".version") or k.endswith("embed_positions.weights"))}


FAMILIES = (Family(("m2m_100",), Config, HEADS, sanitize),)
