"""Pegasus (google/pegasus-*): mBART's pre-norm encoder and decoder (bart.py's layers and stacks)
with Marian's fixed sinusoidal positions (marian.py), no layernorm_embedding, and a final layer
norm on each stack.

The position table is computed, as in transformers; checkpoints that carry it as a weight
(`embed_positions.weight`) have it dropped by `sanitize`. It is a hard length limit
(max_position_embeddings), as transformers' table is.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import bart
from .bart import BartForConditionalGeneration, BartModel
from .base import Family
from .marian import SinusoidalPositions


@dataclass
class Config(bart.Config):
    """BART's fields with PegasusConfig's defaults; pre-norm, as mBART."""

    null_means_default = True  # every field here has a meaningful default

    model_type: str = "pegasus"
    activation_function: str = "gelu"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    @property
    def prenorm(self) -> bool:
        return True


class PegasusModel(BartModel):
    """BART's encoder-decoder with sinusoidal positions and no layernorm_embedding."""

    has_layernorm_embedding = False

    def positions(self, cfg: Config) -> nn.Module:
        return SinusoidalPositions(cfg.max_position_embeddings, cfg.d_model)

    def default_decoder_inputs(self, input_ids):
        raise ValueError("PegasusModel needs decoder_input_ids (start them with decoder_start_token_id)")


class PegasusForConditionalGeneration(BartForConditionalGeneration):
    """BART's head (lm_head + final_logits_bias) on PegasusModel."""

    model_class = PegasusModel

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:  # transformers shifts labels only; without them it needs decoder ids too
            raise ValueError("PegasusForConditionalGeneration needs decoder_input_ids "
                             "(start them with decoder_start_token_id)")
        return super().forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)


HEADS = {"base": PegasusModel, "seq2seq-lm": PegasusForConditionalGeneration}


def sanitize(state: dict) -> dict:
    # the sinusoidal tables are computed here; fairseq-style version markers are unused
    return {k: v for k, v in state.items() if not (k.endswith("embed_positions.weight") or k.endswith(".version"))}


FAMILIES = (Family(("pegasus",), Config, HEADS, sanitize),)
