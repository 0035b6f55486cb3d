"""SentencePiece tokenizers for checkpoints that ship no tokenizer.json.

Marian (Helsinki-NLP/opus-mt-*): `source.spm` and `target.spm` (two sentencepiece models) with
`vocab.json` (and `target_vocab.json` when `separate_vocabs`). Token ids are identical to
transformers' `MarianTokenizer`: the input is split on the special tokens, a leading language
code (`>>fr<<`) is kept whole, the rest is cut into pieces by the *source* model, pieces are
mapped through vocab.json (unknown → `<unk>`), and `</s>` is appended. Decoding maps ids back
through the target vocabulary and joins pieces with the *target* model. This needs the
`sentencepiece` package (`pip install 'lightpipe[marian]'`): the pieces must be exactly
sentencepiece's, and vocab.json ids are not the models' own.

T5 with only `spiece.model` (older fine-tunes saved with the slow tokenizer): converted into a
`tokenizers.Tokenizer` exactly as transformers' T5Converter does when `AutoTokenizer` loads such
a folder (Unigram model with the proto's scores, the proto's precompiled normalizer, Metaspace,
`$A </s>`), so it needs neither sentencepiece nor protobuf: the model file is read with the
small protobuf reader below.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from .repo_files import read_json

SPIECE_UNDERLINE = "▁"
SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value


def _clean_up_tokenization(text: str) -> str:
    from .tokenizer import clean_up_tokenization

    return clean_up_tokenization(text)


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

    def __repr__(self) -> str:
        return f"SpmEncoding(ids={self.ids})"


def _load_spm(path: Path):
    try:
        import sentencepiece
    except ImportError:
        raise ImportError(
            f"{path.parent} is a Marian checkpoint (source.spm/target.spm): its tokenizer needs sentencepiece; "
            "pip install 'lightpipe[marian]'"
        ) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (RuntimeError, OSError) as e:  # sentencepiece's message on a corrupt model names no file
        raise ValueError(f"{path} is not a readable sentencepiece model ({e})") from None
    return sp


class MarianTokenizer:
    """transformers' MarianTokenizer, ids and text identical, with lightpipe's Tokenizer interface."""

    def __init__(self, folder, config: dict | None = None, model_type: str | None = "marian"):
        folder = Path(folder)
        if config is None:
            config = read_json(folder / "tokenizer_config.json", missing={})
            for key, value in read_json(folder / "special_tokens_map.json", missing={}).items():
                config.setdefault(key, value)
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
            token = _token_text(config.get(f"{name}_token", defaults.get(f"{name}_token")))
            setattr(self, f"{name}_token", token)
        if self.unk_token not in self.encoder:
            raise ValueError(f"{folder}/vocab.json has no {self.unk_token!r} token")
        # added tokens (matched whole in the input, decoded as themselves): the saved table, then the specials
        self.added: dict[str, int] = {}
        for index, token in sorted(((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items())):
            self.added.setdefault(_token_text(token), index)
        extra = [_token_text(t) for t in config.get("additional_special_tokens") or []]
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
        self.chat_template = None

    @classmethod
    def from_folder(cls, folder, config: dict | None = None, model_type: str | None = "marian") -> "MarianTokenizer":
        return cls(folder, config, model_type)

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
        if truncation not in (False, True, "longest_first", "only_first", "only_second", "do_not_truncate"):
            raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first' or 'only_second', got {truncation!r}")
        if truncation == "do_not_truncate":
            truncation = False
        limit = (max_length or self.model_max_length) - (1 if add_special_tokens else 0)
        out = []
        for k, text in enumerate(texts):
            first = [self._token_id(t) for t in self.tokenize(text)]
            second = [self._token_id(t) for t in self.tokenize(pairs[k])] if pairs is not None else []
            if truncation:
                first, second = _truncate(first, second, limit, "longest_first" if truncation is True else truncation)
            ids = first + second + ([self.eos_token_id] if add_special_tokens else [])
            special = [1 if i in self.all_special_ids and i != self.unk_token_id else 0 for i in ids]
            tokens = [self.added_decoder.get(i) or self._source_pieces.get(i, self.unk_token) for i in ids]
            out.append(SpmEncoding(ids, tokens, special))
        return out

    def encode(self, text: str, pair: str | None = None, **kwargs) -> SpmEncoding:
        return self.encode_batch([text], None if pair is None else [pair], **kwargs)[0]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 1

    # -- decoding (target side) -------------------------------------------------------------

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False) -> list[str]:
        tokens = []
        for index in ids:
            index = int(index)
            if skip_special_tokens and index in self.all_special_ids:
                continue
            tokens.append(self.added_decoder[index] if index in self.added_decoder
                          else self.decoder.get(index, self.unk_token))
        return tokens

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
        for token in self.convert_ids_to_tokens(ids, skip_special_tokens):
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
        text = " ".join(texts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return _clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in sequences]

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        return self.encoder.get(token)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def apply_chat_template(self, *args, **kwargs):
        raise ValueError("this model's tokenizer has no chat_template, so chat messages can't be rendered; "
                         "pass a plain string instead")


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


# ---------------------------------------------------------------------------------------------
# T5 spiece.model → tokenizers.Tokenizer (transformers' SpmConverter + T5Converter)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """(field number, value) of one protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_spm_model(path) -> dict:
    """The parts of a sentencepiece ModelProto a converter needs: pieces (piece, score, type),
    model_type (1 unigram, 2 BPE), unk_id, byte_fallback, precompiled_charsmap."""
    pieces, trainer, normalizer = [], {}, {}
    for number, value in _proto_fields(Path(path).read_bytes()):
        if number == 1:  # SentencePiece {piece = 1; score = 2; type = 3}
            piece, score, kind = "", 0.0, 1
            for n, v in _proto_fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            pieces.append((piece, score, kind))
        elif number == 2:  # TrainerSpec
            trainer = dict(_proto_fields(value))
        elif number == 3:  # NormalizerSpec
            normalizer = dict(_proto_fields(value))
    return {"pieces": pieces, "model_type": trainer.get(3, 1), "unk_id": trainer.get(40, 0),
            "byte_fallback": bool(trainer.get(35, 0)), "precompiled_charsmap": normalizer.get(2, b"")}


def spiece_backend(path, config: dict, model_type: str | None = None):
    """A `tokenizers.Tokenizer` for a T5 `spiece.model`, as transformers converts it."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import Unigram

    path = Path(path)
    if model_type not in (None, "t5", "mt5", "umt5") and config.get("tokenizer_class", "").lower() not in (
            "t5tokenizer", "t5tokenizerfast"):
        raise FileNotFoundError(
            f"{path.parent} has only a sentencepiece model (spiece.model) and no tokenizer.json; lightpipe converts "
            f"T5's, not {model_type!r}'s: save the tokenizer with a recent transformers to get tokenizer.json"
        )
    proto = read_spm_model(path)
    if proto["model_type"] != 1:
        raise ValueError(f"{path}: only unigram sentencepiece models are supported here (got model_type {proto['model_type']})")
    extra_ids = int(config.get("extra_ids", 100) or 0)
    vocab = [(piece, score) for piece, score, _ in proto["pieces"]]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    backend = Backend(Unigram(vocab, unk_id=proto["unk_id"], byte_fallback=False))
    backend.add_tokens([AddedToken(piece, normalized=False, special=kind == 3)
                        for piece, _, kind in proto["pieces"] if kind in (3, 4)])

    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), SPIECE_UNDERLINE)]
    if proto["precompiled_charsmap"]:
        steps.insert(0, normalizers.Precompiled(proto["precompiled_charsmap"]))
    backend.normalizer = normalizers.Sequence(steps)
    add_prefix_space = config["add_prefix_space"] if "add_prefix_space" in config else True
    legacy = config.get("legacy")
    scheme = ("always" if legacy is None or legacy else "first") if add_prefix_space else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=scheme)
    backend.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=scheme)
    eos = _token_text(config.get("eos_token")) or "</s>"
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, backend.token_to_id(eos))])

    # the tokenizer's own added tokens (with their strip flags), then any special token not yet added
    saved = config.get("added_tokens_decoder") or {}
    for _, token in sorted((int(i), t) for i, t in saved.items()):
        backend.add_tokens([AddedToken(token["content"], single_word=token.get("single_word", False),
                                       lstrip=token.get("lstrip", False), rstrip=token.get("rstrip", False),
                                       normalized=token.get("normalized", False), special=token.get("special", False))])
    specials = [t for n in SPECIAL_NAMES if (t := _token_text(config.get(f"{n}_token")))]
    specials += [_token_text(t) for t in config.get("additional_special_tokens") or []]
    if not saved and not config.get("additional_special_tokens"):
        specials += [f"<extra_id_{i}>" for i in range(extra_ids)]
    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in dict.fromkeys(specials) if t not in present])
    return backend
