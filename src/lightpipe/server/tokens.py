"""Per-token data in the APIs' shapes, from the generated ids and the engine's log-probabilities:
a token's text and UTF-8 bytes, OpenAI's `logprobs` objects (chat and completions) and TGI's
token objects.

The log-probabilities are those of the distribution the token was drawn from (see
generation.processors.choose): after the logits processors (repetition penalty, ...) and, when
sampling, after temperature, top-k and top-p. A token that distribution can't give (outside
top-k or the nucleus) has log-probability -inf, sent as -9999.0 as vLLM does: JSON has no
infinity.
"""

from __future__ import annotations

import math
import re
import weakref

LOGPROB_FLOOR = -9999.0
MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask (OpenAI's top_logprobs bound)


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def _gpt2_byte_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's bytes_to_unicode) → the byte each character stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    codes = list(printable)
    for b in range(256):
        if b not in printable:
            codes.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(codes, chars)}


BYTE_DECODER = _gpt2_byte_decoder()
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Vocabulary:
    """A tokenizer's tokens one at a time: text (decoded alone, special tokens included) and the
    UTF-8 bytes it stands for — a token holding part of a character decodes to U+FFFD, so its
    bytes come from the token itself (sentencepiece's <0xE2>, byte-level BPE's alphabet)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False,
                                                                 clean_up_tokenization_spaces=False)
        return text

    def bytes(self, token_id: int) -> list[int]:
        text = self.text(token_id)
        if "\ufffd" in text:
            raw = self.tokenizer.id_to_token(token_id) or ""
            if m := BYTE_FALLBACK.fullmatch(raw):
                return [int(m.group(1), 16)]
            if raw and all(c in BYTE_DECODER for c in raw):
                return [BYTE_DECODER[c] for c in raw]
        return list(text.encode("utf-8"))


_vocabularies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(pipe) -> Vocabulary:
    vocab = _vocabularies.get(pipe)
    if vocab is None:
        vocab = _vocabularies[pipe] = Vocabulary(pipe.tokenizer)
    return vocab


# -- OpenAI ---------------------------------------------------------------------------------

def chat_logprobs(vocab: Vocabulary, tokens: list[tuple]) -> dict:
    """choices[i].logprobs of a chat completion (or a chunk): `tokens` are (id, logprob, top)."""
    content = []
    for token_id, logprob, top in tokens:
        content.append({"token": vocab.text(token_id), "logprob": finite(logprob), "bytes": vocab.bytes(token_id),
                        "top_logprobs": [{"token": vocab.text(i), "logprob": finite(lp), "bytes": vocab.bytes(i)}
                                         for i, lp in (top or [])]})
    return {"content": content, "refusal": None}


def completion_logprobs(vocab: Vocabulary, tokens: list[tuple], offset: int = 0) -> dict:
    """choices[i].logprobs of a (legacy) completion: token texts, their log-probabilities, a
    {text: logprob} dict of the best alternatives per token, and each token's character offset
    in the text (from `offset`)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, logprob, top in tokens:
        text = vocab.text(token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(finite(logprob))
        alternatives: dict[str, float] = {}
        for i, lp in top or []:
            alternatives.setdefault(vocab.text(i), finite(lp))  # best first: a repeated text keeps its best
        out["top_logprobs"].append(alternatives)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


# -- TGI ------------------------------------------------------------------------------------

def tgi_token(vocab: Vocabulary, token_id: int, logprob: float | None, text: str | None = None) -> dict:
    """TGI's {id, text, logprob, special}; `text`: what the token added to the generated text
    (a stream's), else the token decoded alone."""
    return {"id": token_id, "text": vocab.text(token_id) if text is None else text,
            "logprob": finite(logprob) if logprob is not None else None, "special": token_id in vocab.special}


def tgi_top_tokens(vocab: Vocabulary, top) -> list[dict]:
    return [tgi_token(vocab, i, lp) for i, lp in (top or [])]
