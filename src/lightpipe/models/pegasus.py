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
from .bart import BartForConditionalGeneration, Decoder, Encoder
from .base import Family, Model
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


class PegasusModel(Model):
    """Encoder + decoder over one shared token embedding; returns the decoder's last hidden state."""

    base_model_prefix = "model"

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        # one module under three names, as in transformers: the checkpoint needs only one of them
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_token_id)
        positions = cfg.max_position_embeddings, cfg.d_model
        self.encoder = Encoder(cfg, self.shared, SinusoidalPositions(*positions), layernorm_embedding=False)
        self.decoder = Decoder(cfg, self.shared, SinusoidalPositions(*positions), layernorm_embedding=False)
        self.tied_weights = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def tie_weights(self):
        if self.shared.weight.is_meta:
            raise ValueError("checkpoint has no token embeddings (model.shared / encoder|decoder.embed_tokens)")

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("PegasusModel needs decoder_input_ids (start them with decoder_start_token_id)")
        enc = self.encoder(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, enc, attention_mask, attention_mask=decoder_attention_mask)


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
