"""A sentencepiece model file → a `tokenizers.Tokenizer`, converted exactly as transformers'
slow-to-fast converters do when `AutoTokenizer` loads a folder that has no tokenizer.json:

  t5          T5's spiece.model (older fine-tunes saved with the slow tokenizer): SpmConverter +
              T5Converter, `$A </s>`, the <extra_id_N> sentinels
  albert      ALBERT's spiece.model: AlbertConverter (quotes, accents and case normalized as the
              tokenizer_config says), `[CLS] $A [SEP]`
  deberta-v2  DeBERTa-v2/v3's and mDeBERTa's spm.model: DebertaV2Converter (strip, optional
              punctuation split), `[CLS] $A [SEP]`

Every one is a Unigram model with the proto's scores, the proto's precompiled normalizer and
Metaspace ("▁") pre-tokenization. It needs neither sentencepiece nor protobuf: the model file is
read by the small protobuf reader below. `with_class_defaults` gives a tokenizer_config the
special tokens and options transformers' class for it sets when the file doesn't.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .base import SPECIAL_NAMES, token_text

SPIECE_UNDERLINE = "▁"

# the tokenizer classes converted here, by tokenizer_config's tokenizer_class (without "Fast"),
# and the model types that get them when it names none
CLASSES = {"T5Tokenizer": "t5", "AlbertTokenizer": "albert", "DebertaV2Tokenizer": "deberta-v2"}
MODEL_TYPES = {"t5": "t5", "mt5": "t5", "umt5": "t5", "albert": "albert", "deberta-v2": "deberta-v2"}

# what those classes' __init__ defaults set when tokenizer_config.json doesn't (real repos such as
# albert-base-v2 and microsoft/deberta-v3-base ship none or a two-key one), special tokens with
# the flags the class gives them
CLASS_DEFAULTS = {
    "albert": {"do_lower_case": True, "keep_accents": False,
               "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]",
               "pad_token": "<pad>", "cls_token": "[CLS]",
               "mask_token": {"content": "[MASK]", "lstrip": True, "rstrip": False, "normalized": False,
                              "single_word": False}},
    "deberta-v2": {"do_lower_case": False, "split_by_punct": False,
                   "bos_token": "[CLS]", "eos_token": "[SEP]",
                   "unk_token": {"content": "[UNK]", "lstrip": False, "rstrip": False, "normalized": True,
                                 "single_word": False},
                   "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"},
}


def tokenizer_kind(config: dict, model_type: str | None) -> str | None:
    """Which of the converters above applies: tokenizer_config's class first, as AutoTokenizer."""
    name = config.get("tokenizer_class")
    if name:
        return CLASSES.get(name.removesuffix("Fast"))
    return MODEL_TYPES.get(model_type)


def with_class_defaults(config: dict, model_type: str | None) -> dict:
    """`config` completed with the defaults of the tokenizer class it belongs to (itself if none)."""
    defaults = CLASS_DEFAULTS.get(tokenizer_kind(config, model_type))
    return {**defaults, **config} if defaults else config


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


def _number_comma(piece: str) -> bool:
    """ALBERT's converter demotes pieces like "3," (a digit then a comma) by 100."""
    return len(piece) >= 2 and piece[-1] == "," and piece[-2].isdigit()


def _normalizers(kind: str, config: dict, charsmap: bytes) -> list:
    from tokenizers import Regex, normalizers

    precompiled = [normalizers.Precompiled(charsmap)] if charsmap else []
    if kind == "albert":
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if not config["keep_accents"]:
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if config["do_lower_case"]:
            steps.append(normalizers.Lowercase())
        return steps + precompiled + [normalizers.Replace(Regex(" {2,}"), " ")]
    if kind == "deberta-v2":
        steps = [normalizers.Lowercase()] if config["do_lower_case"] else []
        return steps + [normalizers.Strip()] + precompiled + [normalizers.Replace(Regex(" {2,}"), " ")]
    return precompiled + [normalizers.Strip(left=False, right=True),
                          normalizers.Replace(Regex(" {2,}"), SPIECE_UNDERLINE)]


def _prepend_scheme(kind: str, config: dict) -> str:
    if kind != "t5":  # ALBERT's and DeBERTa's slow classes have neither add_prefix_space nor legacy
        return "always"
    add_prefix_space = config["add_prefix_space"] if "add_prefix_space" in config else True
    legacy = config.get("legacy")
    return ("always" if legacy is None or legacy else "first") if add_prefix_space else "never"


def sentencepiece_backend(path, config: dict, model_type: str | None = None):
    """A `tokenizers.Tokenizer` for the sentencepiece model at `path`, as transformers converts it
    for the tokenizer class of `config` (tokenizer_config.json) / `model_type`."""
    from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import Unigram

    path = Path(path)
    kind = tokenizer_kind(config, model_type)
    if kind is None:
        name = config.get("tokenizer_class") or model_type
        raise FileNotFoundError(
            f"{path.parent} has only a sentencepiece model ({path.name}) and no tokenizer.json; lightpipe converts "
            f"those of {sorted(CLASSES)}, not {name!r}'s: save the tokenizer with a recent transformers to get "
            "tokenizer.json")
    config = with_class_defaults(config, model_type)
    proto = read_spm_model(path)
    if proto["model_type"] != 1:
        raise ValueError(f"{path}: only unigram sentencepiece models are supported here (got model_type {proto['model_type']})")
    vocab = [(piece, score - 100 if kind == "albert" and _number_comma(piece) else score)
             for piece, score, _ in proto["pieces"]]
    extra_ids = int(config.get("extra_ids", 100) or 0) if kind == "t5" else 0
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    backend = Backend(Unigram(vocab, unk_id=proto["unk_id"], byte_fallback=False))
    # control (3) and user-defined (4) pieces are added tokens; control ones special
    backend.add_tokens([AddedToken(piece, normalized=False, special=piece_type == 3)
                        for piece, _, piece_type in proto["pieces"] if piece_type in (3, 4)])
    backend.normalizer = normalizers.Sequence(_normalizers(kind, config, proto["precompiled_charsmap"]))
    scheme = _prepend_scheme(kind, config)
    metaspace = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=scheme)
    if kind == "deberta-v2":
        split = [pre_tokenizers.Punctuation(behavior="isolated")] if config["split_by_punct"] else []
        backend.pre_tokenizer = pre_tokenizers.Sequence([*split, metaspace])
    else:
        backend.pre_tokenizer = metaspace
    backend.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=scheme)

    # the tokenizer's own added tokens (with their strip flags), then any special token not yet added
    saved = config.get("added_tokens_decoder") or {}
    for _, token in sorted((int(i), t) for i, t in saved.items()):
        backend.add_tokens([_added_token(token)])
    specials = [config.get(f"{n}_token") for n in SPECIAL_NAMES if config.get(f"{n}_token")]
    specials += list(config.get("additional_special_tokens") or [])
    if kind == "t5" and not saved and not config.get("additional_special_tokens"):
        specials += [f"<extra_id_{i}>" for i in range(extra_ids)]
    present = {t.content for t in backend.get_added_tokens_decoder().values()} if kind == "t5" else {
        token["content"] for token in saved.values()}
    seen = set()
    for special in specials:
        token = {"normalized": False} | (special if isinstance(special, dict) else {"content": special})
        if token["content"] not in present | seen:
            seen.add(token["content"])
            backend.add_special_tokens([_added_token(token | {"special": True})])
    backend.post_processor = _post_processor(kind, config, backend)  # last: its tokens may be added ones
    return backend


def _added_token(token: dict):
    from tokenizers import AddedToken

    return AddedToken(token["content"], single_word=token.get("single_word", False), lstrip=token.get("lstrip", False),
                      rstrip=token.get("rstrip", False), normalized=token.get("normalized", False),
                      special=token.get("special", False))


def _post_processor(kind: str, config: dict, backend):
    from tokenizers import processors

    if kind == "t5":
        eos = token_text(config.get("eos_token")) or "</s>"
        return processors.TemplateProcessing(
            single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, backend.token_to_id(eos))])
    # transformers' converters write [CLS] and [SEP] literally, whatever cls_token/sep_token say
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
