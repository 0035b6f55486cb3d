"""What pipelines may call on any tokenizer, and the pieces every tokenizer shares.

A tokenizer (fast.FastTokenizer, marian.MarianTokenizer) has these attributes:

- `config` (tokenizer_config.json with special_tokens_map.json), `model_type`;
- `{bos,eos,unk,sep,pad,cls,mask}_token` and `..._token_id` (None when unset), `all_special_ids`;
- `model_max_length`, `clean_up_tokenization_spaces`, `padding_side`, `chat_template`;

and the methods of `Tokenizer` below. An encoding (what `encode` returns) has `ids`, `tokens`,
`type_ids`, `attention_mask`, `special_tokens_mask` and `overflowing` (the stride windows);
`tokenizers.Encoding` also has `offsets` and `sequence_ids`, which token classification and
question answering need.
"""

from __future__ import annotations

from pathlib import Path

from ..repo_files import read_json

VERY_LARGE = int(1e30)  # transformers' "no limit" model_max_length
SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
# the spaces transformers' clean_up_tokenization removes: before punctuation and in English contractions
CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def token_text(value) -> str | None:
    """Special tokens are saved either as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def clean_up_tokenization(text: str) -> str:
    for before, after in CLEANUPS:
        text = text.replace(before, after)
    return text


def truncation_strategy(truncation) -> str | None:
    """`truncation` (False, True or a strategy name) → the strategy, or None for no truncation."""
    if truncation is False or truncation == "do_not_truncate":
        return None
    strategy = "longest_first" if truncation is True else truncation
    if strategy not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first' or 'only_second', got {truncation!r}")
    return strategy


def read_config(folder: Path) -> dict:
    """tokenizer_config.json, completed by special_tokens_map.json and chat_template.jinja."""
    config = read_json(folder / "tokenizer_config.json", missing={})
    for key, value in read_json(folder / "special_tokens_map.json", missing={}).items():
        config.setdefault(key, value)
    if (folder / "chat_template.jinja").is_file():
        config.setdefault("chat_template", (folder / "chat_template.jinja").read_text(encoding="utf-8"))
    return config


class Tokenizer:
    """The interface. Subclasses set the attributes listed in the module docstring and implement
    the methods that raise NotImplementedError here."""

    config: dict
    model_type: str | None
    chat_template: str | list | None
    clean_up_tokenization_spaces: bool

    # -- encoding -------------------------------------------------------------------------

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, *, add_special_tokens: bool = True,
                     truncation: bool | str = False, max_length: int | None = None, stride: int = 0) -> list:
        """Encode texts (or text pairs). `truncation`: False, True/"longest_first", "only_first"
        or "only_second", to `max_length` (default model_max_length); with a `stride`, the
        overflowing windows are in `encoding.overflowing`."""
        raise self._missing("encode_batch")

    def encode(self, text: str, pair: str | None = None, **kwargs):
        return self.encode_batch([text], None if pair is None else [pair], **kwargs)[0]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        raise self._missing("num_special_tokens_to_add")

    # -- vocabulary -----------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        raise self._missing("token_to_id")

    def id_to_token(self, index: int) -> str | None:
        raise self._missing("id_to_token")

    def get_vocab(self) -> dict[str, int]:
        """Every token (added tokens included) → its id."""
        raise self._missing("get_vocab")

    # -- words (token classification) -----------------------------------------------------

    @property
    def subword_prefix(self) -> str | None:
        """The prefix that marks a token continuing a word ("##" for WordPiece), or None when
        tokens don't mark it (byte-level BPE, sentencepiece): then words are told by spaces."""
        raise self._missing("subword_prefix")

    def tokens_to_string(self, tokens: list[str]) -> str:
        """The text of a run of tokens, as the tokenizer's decoder joins them."""
        raise self._missing("tokens_to_string")

    def lowercased(self) -> "Tokenizer":
        """A copy that lowercases the text before its own normalization (sentence-transformers'
        do_lower_case)."""
        raise self._missing("lowercased")

    # -- decoding -------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        raise self._missing("decode")

    def _cleaned(self, text: str, clean_up_tokenization_spaces: bool | None) -> str:
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        """Render messages with the checkpoint's jinja chat template, as transformers does."""
        template = self.chat_template
        if isinstance(template, list):  # named templates: use "default"
            template = {t["name"]: t["template"] for t in template}.get("default")
        if not template:
            raise ValueError(
                "this model's tokenizer has no chat_template, so chat messages can't be rendered; "
                "pass a plain string prompt instead"
            )
        from .chat import render_chat

        # only the tokens this tokenizer has, as transformers' special_tokens_map: an unset one is
        # undefined in the template (renders ""), not None (renders "None")
        specials = {f"{n}_token": t for n in SPECIAL_NAMES if (t := getattr(self, f"{n}_token")) is not None}
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt, **specials, **extra)

    def _missing(self, method: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} has no {method}()")
