"""The contract between a model family and the rest of lightpipe.

A family module (`models/<family>.py`) builds on three things from here:

  ModelConfig  the dataclass base of its `Config`: `from_dict(config.json)` keeps the keys the
               subclass declares; derived values and checks go in `__post_init__`
  Model        the base of every model class it offers (every head): the hooks loading.py,
               the generation engine and quantize.py call, each with a default that does nothing
  Family       its registration record, listed in the module's `FAMILIES`: which Hub
               model_types it builds, its Config, its heads and its checkpoint `sanitize`

Callers read these attributes directly; nothing is probed with hasattr/getattr, so a family
that leaves a hook out gets the documented default, never an AttributeError halfway through
loading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar, Self

from torch import nn

if TYPE_CHECKING:
    from .kv_cache import KVCache


@dataclass
class ModelConfig:
    """The config.json keys a family reads, as dataclass fields with the Hub's defaults.

    `from_dict` ignores every key the subclass doesn't declare. A derived value (a head size
    computed from two others, a default that depends on another field) or a check of the
    values belongs in the subclass's `__post_init__`, so a Config built by hand gets it too.
    """

    # A null in config.json means the field's default (True), or is kept as None (False: for a
    # field whose None means something, e.g. mBART's decoder_start_token_id).
    null_means_default: ClassVar[bool] = True

    @classmethod
    def from_dict(cls, config: dict) -> Self:
        names = {f.name for f in fields(cls) if f.init}
        kept = {k: v for k, v in config.items() if k in names and (v is not None or not cls.null_means_default)}
        if "num_labels" in names and config.get("id2label"):
            kept["num_labels"] = len(config["id2label"])  # as transformers: the label map wins over num_labels
        return cls(**kept)


class Model(nn.Module):
    """Base of every model class a family offers. Loading and generation rely on these names.

    Loading (loading.py):
      base_model_prefix  the Hub's attribute name for the base model inside a head ("bert",
                         "transformer", "model"; "" when the head has none): checkpoint keys are
                         prefixed or stripped to match, and only weights outside it may be fresh
      ignore_unexpected  substrings of checkpoint keys this class never uses (BERT's pooler):
                         skipped silently instead of being an error
      tied_weights       parameter names filled by `tie_weights()` rather than by the checkpoint
      tie_weights()      share tensors (an LM head with the embeddings) after the weights are in
      post_load()        on the final device and dtype: rebuild non-persistent buffers, fuse
                         projections

    Generation (lightpipe.generation; only causal-LM and seq2seq-LM heads implement it):
      is_encoder_decoder  False: `forward` with a cache; True: `encode` then `decode`
      max_positions       the hard context limit (a learned position table), None if there's none
      context_length      the trained context (config.json's max_position_embeddings), which
                          caps the default generation length; None if the checkpoint has none
      new_cache(budget_tokens=None, dtype=None, device=None) -> KVCache
                          an empty cache (models/kv_cache.py) shaped for the decoder's layers;
                          the engine adds rows (sequences) to it within the budget
      decoder-only:  forward(input_ids (B, T), attention_mask=None | (B, T) 1/0,
                     position_ids=None | (B, T), cache=None | KVCache, logits_to_keep=0)
                     -> logits (B, T', V)
                     Without a cache: one pass over (left-padded) rows; with attention_mask and
                     no position_ids, positions count the mask's ones. With a cache: the rows
                     the engine began (`cache.begin`), each at its own length — positions come
                     from `cache.positions`, the self-attention mask from `cache.mask(dtype,
                     window)`, and each layer writes and reads its keys through
                     `cache.update(layer, k, v)` (the cache moves its lengths on itself).
                     logits_to_keep=n > 0 returns only the last n positions' logits (prefill
                     needs 1).
      encoder-decoder: encode(...) and decode(...) below.
    """

    base_model_prefix: ClassVar[str] = ""
    ignore_unexpected: ClassVar[tuple[str, ...]] = ()
    is_encoder_decoder: ClassVar[bool] = False
    tied_weights: Sequence[str] = ()
    max_positions: int | None = None
    context_length: int | None = None

    def tie_weights(self) -> None:
        """Nothing is tied by default."""

    def post_load(self) -> None:
        """Nothing to rebuild by default."""

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        """An empty KV cache for the decoder (no rows yet) holding at most `budget_tokens`
        positions in all, on the model's dtype and device unless given."""
        raise self._not_generative()

    def encode(self, input_ids, attention_mask=None):
        """Encoder-decoder: input_ids (B, S), attention_mask (B, S) -> encoder hidden states (B, S, D)."""
        raise self._not_generative()

    def decode(self, decoder_input_ids, encoder_hidden=None, encoder_mask=None, cache=None,
               decoder_attention_mask=None):
        """Encoder-decoder: decoder_input_ids (B, T) -> logits (B, T, V).

        Without a cache: one pass over `encoder_hidden` (B, S, D) with its `encoder_mask`. With a
        cache, as the decoder-only forward (positions, masks and self-attention keys from the
        cache), and for cross-attention each layer asks `cache.cross(layer)`: None on the pass
        the engine began with a cross_mask (the rows' first), where the layer projects
        `encoder_hidden` and stores the result with `cache.store_cross(layer, k, v)`; the stored
        keys/values on every later pass. The source mask is `cache.cross_mask(dtype)`.
        """
        raise self._not_generative()

    def _not_generative(self) -> TypeError:
        return TypeError(f"{type(self).__name__} can't generate text: generation needs a model loaded with a "
                         "'causal-lm' or 'seq2seq-lm' head")


# the head names a family may offer (loading.ARCHITECTURE_HEADS maps checkpoints to them)
HEAD_NAMES = ("base", "sequence-classification", "token-classification", "question-answering", "masked-lm",
              "causal-lm", "seq2seq-lm")


def keep_state(state: dict) -> dict:
    """The default `sanitize`: the checkpoint's names are the model's."""
    return state


@dataclass(frozen=True)
class Family:
    """A family's registration: loading.py builds `heads[head](config.from_dict(config.json))`
    for a checkpoint whose model_type is one of `model_types`, after `sanitize` has renamed,
    transposed or dropped what the checkpoint stores differently."""

    model_types: tuple[str, ...]
    config: type[ModelConfig]
    heads: Mapping[str, type[Model]]  # "base", "sequence-classification", ..., "causal-lm", "seq2seq-lm"
    sanitize: Callable[[dict], dict] = field(default=keep_state)

    def __post_init__(self):
        # checked when the family module is imported, so a wrong record fails at once and says why
        if not (isinstance(self.model_types, tuple) and self.model_types
                and all(isinstance(t, str) and t for t in self.model_types)):
            raise TypeError(f"Family.model_types must be a non-empty tuple of model_type names, "
                            f"got {self.model_types!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, ModelConfig)):
            raise TypeError(f"Family.config must be a ModelConfig subclass, got {self.config!r}")
        if not self.heads:
            raise TypeError(f"Family {self.model_types} has no heads")
        for name, cls in self.heads.items():
            if name not in HEAD_NAMES:
                raise TypeError(f"Family {self.model_types}: unknown head name {name!r}; head names: {HEAD_NAMES}")
            if not (isinstance(cls, type) and issubclass(cls, Model)):
                raise TypeError(f"Family {self.model_types}: head {name!r} must be a lightpipe.models.base.Model "
                                f"subclass, got {cls!r}")
        if not callable(self.sanitize):
            raise TypeError(f"Family.sanitize must be a function (state dict -> state dict), got {self.sanitize!r}")
