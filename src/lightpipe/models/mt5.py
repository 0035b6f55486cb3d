"""mT5 (google/mt5-*, and its fine-tunes): T5 v1.1's architecture — gated-gelu feed-forward, an
lm_head untied from the embeddings — under model_type "mt5". The network is t5.py's; only the
config defaults differ (MT5Config's), which matter for configs that leave keys out.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import t5
from .base import Family


@dataclass
class Config(t5.Config):
    vocab_size: int = 250112
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False


FAMILIES = (Family(("mt5",), Config, t5.HEADS, t5.sanitize),)
