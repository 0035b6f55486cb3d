"""transformers' M2M100Tokenizer (facebook/m2m100_*), for checkpoints with `vocab.json` and
`sentencepiece.bpe.model`: transformers has no fast M2M100 tokenizer, so its ids are the slow
one's, and this reads them the same way (it needs `sentencepiece`, as Marian's tokenizer does).

Encoding: the text is split on the added tokens (the special tokens, and the language tokens
when the repository lists them as special, as facebook/m2m100_418M's special_tokens_map does),
the rest cut into pieces by the sentencepiece model and mapped through vocab.json (unknown →
<unk>), between `__src__` and `</s>`. Language tokens `__en__`, `__fr__`, ... have the ids after
vocab.json's, in languages.M2M100_CODES order. Decoding joins pieces with the sentencepiece
model, special tokens written as they are, as PreTrainedTokenizer._decode does.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..repo_files import read_json
from .base import SPECIAL_NAMES, VERY_LARGE, Tokenizer, read_config, token_text, truncation_strategy
from .languages import M2M100_CODES
from .marian import SpmEncoding, _load_spm, _truncate

FILES = ("vocab.json", "sentencepiece.bpe.model")
DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


class M2M100Tokenizer(Tokenizer):
    """transformers' M2M100Tokenizer, ids and text identical, with lightpipe's Tokenizer interface."""

    def __init__(self, folder, config: dict | None = None, model_type: str | None = "m2m_100"):
        folder = Path(folder)
        config = read_config(folder) if config is None else config
        self.config, self.model_type = config, model_type
        self.encoder: dict[str, int] = read_json(folder / "vocab.json")
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.sp = _load_spm(folder / "sentencepiece.bpe.model")
        codes = config.get("language_codes") or "m2m100"
        if codes not in M2M100_CODES:
            raise ValueError(f"{folder}/tokenizer_config.json: language_codes must be one of {sorted(M2M100_CODES)}, "
                             f"got {codes!r}")
        self.language_codes: list[str] = list(M2M100_CODES[codes])
        self.lang_token_to_id = {f"__{c}__": len(self.encoder) + i for i, c in enumerate(self.language_codes)}
        self.id_to_lang_token = {v: k for k, v in self.lang_token_to_id.items()}

        for name in SPECIAL_NAMES:
            setattr(self, f"{name}_token", token_text(config.get(f"{name}_token", DEFAULTS.get(f"{name}_token"))))
        if self.unk_token not in self.encoder:
            raise ValueError(f"{folder}/vocab.json has no {self.unk_token!r} token")
        # added tokens (matched whole in the input): the saved table, then the special tokens not in
        # it, each at its vocabulary id or, if it has none, the next id after the vocabulary
        self.added: dict[str, int] = {}
        for index, token in sorted(((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items())):
            self.added.setdefault(token_text(token), index)
        extra = [token_text(t) for t in config.get("additional_special_tokens") or []]
        self.special_tokens = list(dict.fromkeys(
            [t for n in SPECIAL_NAMES if (t := getattr(self, f"{n}_token")) is not None] + extra))
        next_id = len(self.encoder.keys() | self.added.keys())
        for token in self.special_tokens:
            if token not in self.added:
                if token in self.encoder:
                    self.added[token] = self.encoder[token]
                else:
                    self.added[token], next_id = next_id, next_id + 1
        self.added_decoder = {v: k for k, v in self.added.items()}
        for name in SPECIAL_NAMES:
            token = getattr(self, f"{name}_token")
            setattr(self, f"{name}_token_id", None if token is None else self._token_id(token))
        self.all_special_ids = {self._token_id(t) for t in self.special_tokens}
        # decoded on their own: added tokens that aren't special, and specials past the vocabulary
        self._standalone = (set(self.added) - set(self.special_tokens)) | {
            t for t in extra if self._token_id(t) >= len(self.encoder)}
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True) if t)
        self._split = re.compile(f"({pattern})") if pattern else None

        self.src_lang = config.get("src_lang") or "en"
        self.model_max_length = int(config.get("model_max_length") or VERY_LARGE)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_side = config.get("padding_side", "right")
        self.chat_template = config.get("chat_template")

    def language_id(self, code: str) -> int | None:
        """The id of language `code` ("fr" → `__fr__`), None if the tokenizer has no such code."""
        return self.lang_token_to_id.get(f"__{code}__")

    # -- encoding -------------------------------------------------------------------------

    def _token_id(self, token: str) -> int:
        if token in self.added:
            return self.added[token]
        if token in self.lang_token_to_id:
            return self.lang_token_to_id[token]
        return self.encoder.get(token, self.encoder[self.unk_token])

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        tokens: list[str] = []
        for chunk in self._split.split(text) if self._split else [text]:
            if chunk in self.added:
                tokens.append(chunk)
            elif chunk:
                tokens += self.sp.encode(chunk, out_type=str)
        return tokens

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, *, add_special_tokens: bool = True,
                     truncation: bool | str = False, max_length: int | None = None, stride: int = 0) -> list[SpmEncoding]:
        """Encode texts (or pairs, joined with no separator, as M2M100Tokenizer does). `truncation`
        cuts from the end (longest first for pairs); there are no overflow windows."""
        strategy = truncation_strategy(truncation)
        src = self.language_id(self.src_lang)
        if add_special_tokens and src is None:
            raise ValueError(f"src_lang {self.src_lang!r} is not a language code of this tokenizer; it knows "
                             f"{', '.join(self.language_codes[:8])}, ...")
        prefix = [src] if add_special_tokens else []
        suffix = [self.eos_token_id] if add_special_tokens else []
        limit = (max_length or self.model_max_length) - len(prefix) - len(suffix)
        out = []
        for k, text in enumerate(texts):
            first = [self._token_id(t) for t in self.tokenize(text)]
            second = [self._token_id(t) for t in self.tokenize(pairs[k])] if pairs is not None else []
            if strategy is not None:
                first, second = _truncate(first, second, limit, strategy)
            ids = prefix + first + second + suffix
            special = [1] * len(prefix) + [0] * (len(first) + len(second)) + [1] * len(suffix)
            out.append(SpmEncoding(ids, [self.id_to_token(i) for i in ids], special))
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 2

    # -- vocabulary and words ----------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        if token in self.added or token in self.lang_token_to_id or token in self.encoder:
            return self._token_id(token)
        return None

    def id_to_token(self, index: int) -> str | None:
        index = int(index)
        if index in self.added_decoder:
            return self.added_decoder[index]
        return self.id_to_lang_token.get(index) or self.decoder.get(index, self.unk_token)

    def get_vocab(self) -> dict[str, int]:
        """As transformers': vocab.json's ids, then the added tokens (the language tokens when listed)."""
        vocab = {self.id_to_token(i): i for i in range(len(self.encoder))}
        return {**vocab, **self.added}

    @property
    def subword_prefix(self) -> str | None:
        return None  # sentencepiece marks a word's start (▁), not its continuations

    def tokens_to_string(self, tokens: list[str]) -> str:
        """M2M100Tokenizer.convert_tokens_to_string: special tokens never go through sentencepiece."""
        out, current = "", []
        for token in tokens:
            if token in self.special_tokens:
                out += self.sp.decode(current) + token
                current = []
            else:
                current.append(token)
        return (out + self.sp.decode(current)).strip()

    def lowercased(self):
        raise NotImplementedError("M2M100Tokenizer has no lowercased(): lowercasing before tokenization "
                                  "(do_lower_case) needs a tokenizers-based tokenizer (tokenizer.json)")

    # -- decoding ----------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        texts, current = [], []
        for index in ids:
            if skip_special_tokens and int(index) in self.all_special_ids:
                continue
            token = self.id_to_token(index)
            if token in self._standalone:
                if current and (text := self.tokens_to_string(current)):
                    texts.append(text)
                current = []
                texts.append(token)
            else:
                current.append(token)
        if current:
            texts.append(self.tokens_to_string(current))
        return self._cleaned(" ".join(texts), clean_up_tokenization_spaces)


def is_m2m100(folder: Path, config: dict, model_type: str | None) -> bool:
    """Whether AutoTokenizer would build an M2M100Tokenizer for `folder`: its class says so (or, naming
    none, the model type does) and its files are there. transformers has no fast M2M100 tokenizer,
    so a tokenizer.json beside them is not used."""
    name = (config.get("tokenizer_class") or "").removesuffix("Fast")
    wanted = name == "M2M100Tokenizer" or (not name and model_type == "m2m_100")
    return wanted and all((folder / f).is_file() for f in FILES)
