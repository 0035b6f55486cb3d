"""transformers' MarianTokenizer (Helsinki-NLP/opus-mt-*), for checkpoints with `source.spm` and
`target.spm` (two sentencepiece models) and `vocab.json` (and `target_vocab.json` when
`separate_vocabs`).

Token ids are identical to transformers': the input is split on the added tokens, a leading
language code (`>>fr<<`) is kept whole, the rest is cut into pieces by the *source* model, pieces
are mapped through vocab.json (unknown → `<unk>`), and `</s>` is appended. Decoding maps ids back
through the target vocabulary and joins pieces with the *target* model. This needs the
`sentencepiece` package (`pip install 'lightpipe[marian]'`): the pieces must be exactly
sentencepiece's, and vocab.json ids are not the models' own.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..repo_files import read_json
from .base import SPECIAL_NAMES, Tokenizer, read_config, token_text, truncation_strategy

SPIECE_UNDERLINE = "▁"


class SpmEncoding:
    """The parts of `tokenizers.Encoding` that pipelines read."""

    __slots__ = ("ids", "tokens", "type_ids", "attention_mask", "special_tokens_mask", "overflowing")

    def __init__(self, ids: list[int], tokens: list[str], special: list[int]):
        self.ids = ids
        self.tokens = tokens
        self.type_ids = [0] * len(ids)
        self.attention_mask = [1] * len(ids)
        self.special_tokens_mask = special
        self.overflowing = []

    def __len__(self) -> int:
        return len(self.ids)

    def __getattr__(self, name: str):
        # only reached for what the slots don't hold: tokenizers.Encoding's offsets, sequence_ids, ...
        raise AttributeError(f"MarianTokenizer's encodings have no {name!r}: sentencepiece pieces carry no "
                             "character offsets or word/sequence maps (tasks that need them need a tokenizer.json)")

    def __repr__(self) -> str:
        return f"SpmEncoding(ids={self.ids})"


def _load_spm(path: Path):
    try:
        import sentencepiece
    except ImportError:
        raise ImportError(
            f"{path.parent}'s tokenizer is read with sentencepiece ({path.name}: a Marian or M2M100 checkpoint); "
            "pip install 'lightpipe[marian]'"
        ) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (RuntimeError, OSError) as e:  # sentencepiece's message on a corrupt model names no file
        raise ValueError(f"{path} is not a readable sentencepiece model ({e})") from None
    return sp


class MarianTokenizer(Tokenizer):
    """transformers' MarianTokenizer, ids and text identical, with lightpipe's Tokenizer interface."""

    def __init__(self, folder, config: dict | None = None, model_type: str | None = "marian"):
        folder = Path(folder)
        if config is None:
            config = read_config(folder)
        self.folder = folder
        self.config = config
        self.model_type = model_type
        self.source_lang = config.get("source_lang")
        self.target_lang = config.get("target_lang")
        self.separate_vocabs = bool(config.get("separate_vocabs", False))
        self.encoder: dict[str, int] = read_json(folder / "vocab.json")
        if self.separate_vocabs:
            target_file = folder / "target_vocab.json"
            if not target_file.is_file():
                raise FileNotFoundError(f"{folder}: separate_vocabs is set but target_vocab.json is missing")
            target = read_json(target_file)
        else:
            target = self.encoder
        self.decoder = {v: k for k, v in target.items()}
        self._source_pieces = {v: k for k, v in self.encoder.items()}
        self.spm_source = _load_spm(folder / "source.spm")
        self.spm_target = _load_spm(folder / "target.spm") if (folder / "target.spm").is_file() else self.spm_source

        defaults = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
        for name in SPECIAL_NAMES:
            token = token_text(config.get(f"{name}_token", defaults.get(f"{name}_token")))
            setattr(self, f"{name}_token", token)
        if self.unk_token not in self.encoder:
            raise ValueError(f"{folder}/vocab.json has no {self.unk_token!r} token")
        # added tokens (matched whole in the input, decoded as themselves): the saved table, then the specials
        self.added: dict[str, int] = {}
        for index, token in sorted(((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items())):
            self.added.setdefault(token_text(token), index)
        extra = [token_text(t) for t in config.get("additional_special_tokens") or []]
        self.special_tokens = list(dict.fromkeys(
            [t for n in SPECIAL_NAMES if (t := getattr(self, f"{n}_token")) is not None] + extra))
        for token in self.special_tokens:
            if token not in self.added:
                self.added[token] = self.encoder.get(token, len(self.encoder) + len(self.added))
        self.added_decoder = {v: k for k, v in self.added.items()}
        for name in SPECIAL_NAMES:
            token = getattr(self, f"{name}_token")
            setattr(self, f"{name}_token_id", None if token is None else self._token_id(token))
        self.all_special_ids = {self._token_id(t) for t in self.special_tokens}
        # transformers decodes added tokens that aren't specials (and late additional specials) on their own
        self._standalone = (set(self.added) - set(self.special_tokens)) | {
            t for t in extra if self._token_id(t) >= len(self.encoder)}
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True) if t)
        self._split = re.compile(f"({pattern})") if pattern else None
        self.model_max_length = int(config.get("model_max_length") or 512)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_side = config.get("padding_side", "right")
        self.chat_template = config.get("chat_template")

    # -- encoding -------------------------------------------------------------------------

    def _token_id(self, token: str) -> int:
        if token in self.added:
            return self.added[token]
        return self.encoder.get(token, self.encoder[self.unk_token])

    def tokenize(self, text: str) -> list[str]:
        """Source-side pieces, as MarianTokenizer.tokenize gives them."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        chunks = self._split.split(text) if self._split else [text]
        tokens: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.added:
                tokens.append(chunk)
                continue
            if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:  # a target-language code
                tokens.append(chunk[: end + 2])
                chunk = chunk[end + 2 :]
            tokens += self.spm_source.encode(chunk, out_type=str)
        return tokens

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, *, add_special_tokens: bool = True,
                     truncation: bool | str = False, max_length: int | None = None, stride: int = 0) -> list[SpmEncoding]:
        """Encode texts (or pairs, joined `A B </s>` as Marian does). `truncation` cuts from the end
        (longest first for pairs); there are no overflow windows."""
        strategy = truncation_strategy(truncation)
        limit = (max_length or self.model_max_length) - (1 if add_special_tokens else 0)
        out = []
        for k, text in enumerate(texts):
            first = [self._token_id(t) for t in self.tokenize(text)]
            second = [self._token_id(t) for t in self.tokenize(pairs[k])] if pairs is not None else []
            if strategy is not None:
                first, second = _truncate(first, second, limit, strategy)
            ids = first + second + ([self.eos_token_id] if add_special_tokens else [])
            special = [1 if i in self.all_special_ids and i != self.unk_token_id else 0 for i in ids]
            tokens = [self.added_decoder.get(i) or self._source_pieces.get(i, self.unk_token) for i in ids]
            out.append(SpmEncoding(ids, tokens, special))
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 1

    # -- vocabulary and words: source side in, target side out, as transformers' ------------

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        return self.encoder.get(token)

    def id_to_token(self, index: int) -> str | None:
        index = int(index)
        return self.added_decoder[index] if index in self.added_decoder else self.decoder.get(index)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self.added}

    @property
    def subword_prefix(self) -> str | None:
        return None  # sentencepiece marks a word's start (▁), not its continuations

    def tokens_to_string(self, tokens: list[str]) -> str:
        return self._pieces_to_text(tokens, self.spm_target)

    def lowercased(self):
        raise NotImplementedError("MarianTokenizer has no lowercased(): lowercasing before tokenization "
                                  "(do_lower_case) needs a tokenizers-based tokenizer (tokenizer.json)")

    # -- decoding (target side) -------------------------------------------------------------

    def _target_tokens(self, ids, skip_special_tokens: bool) -> list[str]:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in self.all_special_ids)]
        return [self.unk_token if (token := self.id_to_token(i)) is None else token for i in ids]

    def _pieces_to_text(self, pieces: list[str], sp) -> str:
        out, current = "", []
        for token in pieces:
            if token in self.special_tokens:  # never through sentencepiece
                out += sp.decode_pieces(current) + token + " "
                current = []
            else:
                current.append(token)
        out += sp.decode_pieces(current)
        return out.replace(SPIECE_UNDERLINE, " ").strip()

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               use_source_tokenizer: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        sp = self.spm_source if use_source_tokenizer else self.spm_target
        texts, current = [], []
        for token in self._target_tokens(ids, skip_special_tokens):
            if skip_special_tokens and token in self.special_tokens:
                continue
            if token in self._standalone:
                if current and (text := self._pieces_to_text(current, sp)):
                    texts.append(text)
                current = []
                texts.append(token)
            else:
                current.append(token)
        if current:
            texts.append(self._pieces_to_text(current, sp))
        return self._cleaned(" ".join(texts), clean_up_tokenization_spaces)


def _truncate(first: list, second: list, limit: int, strategy: str) -> tuple[list, list]:
    limit = max(limit, 0)
    if strategy == "only_first":
        return first[: max(limit - len(second), 0)], second
    if strategy == "only_second":
        return first, second[: max(limit - len(first), 0)]
    first, second = list(first), list(second)
    while len(first) + len(second) > limit:
        (first if len(first) > len(second) else second).pop()
    return first, second
