"""T5's `spiece.model` (older fine-tunes saved with the slow tokenizer) → a `tokenizers.Tokenizer`,
converted exactly as transformers' SpmConverter + T5Converter do when `AutoTokenizer` loads such a
folder: a Unigram model with the proto's scores, the proto's precompiled normalizer, Metaspace,
`$A </s>`. It needs neither sentencepiece nor protobuf: the model file is read by the small
protobuf reader below.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .base import SPECIAL_NAMES, token_text

SPIECE_UNDERLINE = "▁"


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
    eos = token_text(config.get("eos_token")) or "</s>"
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, backend.token_to_id(eos))])

    # the tokenizer's own added tokens (with their strip flags), then any special token not yet added
    saved = config.get("added_tokens_decoder") or {}
    for _, token in sorted((int(i), t) for i, t in saved.items()):
        backend.add_tokens([AddedToken(token["content"], single_word=token.get("single_word", False),
                                       lstrip=token.get("lstrip", False), rstrip=token.get("rstrip", False),
                                       normalized=token.get("normalized", False), special=token.get("special", False))])
    specials = [t for n in SPECIAL_NAMES if (t := token_text(config.get(f"{n}_token")))]
    specials += [token_text(t) for t in config.get("additional_special_tokens") or []]
    if not saved and not config.get("additional_special_tokens"):
        specials += [f"<extra_id_{i}>" for i in range(extra_ids)]
    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in dict.fromkeys(specials) if t not in present])
    return backend
