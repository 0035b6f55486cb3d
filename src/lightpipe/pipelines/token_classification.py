"""token-classification / ner with transformers 4.57.6's semantics: per-token labels, or
entities grouped by `aggregation_strategy` (simple / first / average / max), offsets into the
original text, and `stride` windows over texts longer than the model, whose entities are
merged without duplicates.

Scores are computed as transformers computes them (numpy float32 softmax) so that argmax ties
and averages agree; they come back as python floats."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .base import check_known, check_text
from .encoder import EncodedRow, EncoderPipeline

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")


@dataclass
class Window(EncodedRow):
    """One tokenized window of a text, with the text postprocess maps tokens back to."""

    text: str


def strategy_name(value) -> str:
    value = getattr(value, "value", value)  # transformers' AggregationStrategy enum works too
    if not isinstance(value, str) or value.lower() not in STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {value!r}")
    return value.lower()


class TokenClassificationPipeline(EncoderPipeline):
    """Named-entity recognition and other token labelling.

    Keywords (all of transformers'): `aggregation_strategy` ("none" default: one dict per
    token with `entity`, `score`, `index`, `word`, `start`, `end`; otherwise grouped entities
    with `entity_group` and no `index`), the deprecated `grouped_entities` / `ignore_subwords`,
    `ignore_labels` (default ["O"]) and `stride` (tag all of a long text in overlapping windows;
    without it, text past the model's maximum length is not tagged, as in transformers)."""

    task = "token-classification"
    head = "token-classification"
    token_outputs = True
    list_column = "entities"
    hf_parameters = frozenset({"aggregation_strategy", "ignore_labels", "stride"})
    hf_defaults = {"aggregation_strategy": "simple"}  # entity groups, as on the API
    OPTIONS = {"aggregation_strategy", "grouped_entities", "ignore_subwords", "ignore_labels", "stride", "truncation",
               "batch_size"}

    @classmethod
    def arrow_types(cls, pa, options):
        f64, i64, s = pa.float64(), pa.int64(), pa.string()
        if options.get("aggregation_strategy") in (None, "none"):
            fields = [("entity", s), ("score", f64), ("index", i64), ("word", s), ("start", i64), ("end", i64)]
        else:
            fields = [("entity_group", s), ("score", f64), ("word", s), ("start", i64), ("end", i64)]
        return {"entities": pa.list_(pa.struct(fields))}

    def server_info(self):
        return {"labels": [self.id2label[i] for i in sorted(self.id2label)]} if self.id2label else {}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        options = dict(options)
        grouped, ignore_subwords = options.pop("grouped_entities", None), options.pop("ignore_subwords", None)
        if grouped is not None or ignore_subwords is not None:
            # the legacy flags win over aggregation_strategy, as in transformers
            strategy = "first" if grouped and ignore_subwords else "simple" if grouped else "none"
            for name, value in (("grouped_entities", grouped), ("ignore_subwords", ignore_subwords)):
                if value is not None:
                    warnings.warn(f"`{name}` is deprecated, use aggregation_strategy={strategy!r} instead",
                                  FutureWarning, stacklevel=4)
            options["aggregation_strategy"] = strategy
        if options.get("aggregation_strategy") is not None:
            options["aggregation_strategy"] = strategy_name(options["aggregation_strategy"])
        else:
            options.pop("aggregation_strategy", None)
        labels = options.get("ignore_labels")
        if labels is not None:
            if not isinstance(labels, (list, tuple, set)) or not all(isinstance(x, str) for x in labels):
                raise TypeError(f"ignore_labels must be a list of label names, got {labels!r}")
            options["ignore_labels"] = list(labels)
        stride = options.get("stride")
        if stride is not None:
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
                raise ValueError(f"stride must be a non-negative integer, got {stride!r}")
            room = self.max_input_tokens - self.tokenizer.num_special_tokens_to_add(False)
            if stride >= room:
                raise ValueError(
                    f"stride ({stride}) must be less than the {room} text tokens a window holds "
                    f"({self.max_input_tokens} minus {self.max_input_tokens - room} special tokens)"
                )
            if options.get("aggregation_strategy") == "none":
                raise ValueError(
                    'stride was given to tag the whole text, but aggregation_strategy="none" can\'t merge the '
                    'overlapping windows; choose "simple", "first", "average" or "max"'
                )
        return options

    # -- rows ----------------------------------------------------------------------------

    def preprocess(self, item, stride=None, truncation=False, **options):
        text = check_text(item)
        # transformers silently truncates to the model's maximum; lightpipe asks the caller to
        # choose: `stride` tags the rest in windows, `truncation=True` tags only the first window
        enc = self.tokenizer.encode_batch([text], truncation=True, max_length=self.max_input_tokens,
                                          stride=stride or 0)[0]
        if enc.overflowing and stride is None and not truncation:
            raise ValueError(
                f"text is longer than the {self.max_input_tokens} tokens the model takes (it starts {text[:40]!r}); "
                "pass stride=N to tag all of it in overlapping windows, or truncation=True to tag only the start"
            )
        encodings = [enc, *enc.overflowing] if stride is not None else [enc]
        return [Window(e, text) for e in encodings]

    # -- entities ------------------------------------------------------------------------

    def postprocess(self, rows, outputs, aggregation_strategy="none", ignore_labels=None, **options):
        ignore = ["O"] if ignore_labels is None else ignore_labels
        entities = []
        for window, logits in zip(rows, outputs):
            logits = logits.numpy().astype(np.float32)
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            scores = shifted / shifted.sum(-1, keepdims=True)
            pre = self.gather_pre_entities(window, scores, aggregation_strategy)
            grouped = self.aggregate(pre, aggregation_strategy)
            entities += [e for e in grouped if e.get("entity", e.get("entity_group")) not in ignore]
        if len(rows) > 1:
            entities = merge_overlapping(entities)
        for e in entities:
            e["score"] = float(e["score"])
        return entities

    def label(self, i: int) -> str:
        return self.id2label.get(int(i), f"LABEL_{int(i)}")

    def gather_pre_entities(self, window: Window, scores: np.ndarray, strategy: str) -> list[dict]:
        """Per real token: its text piece, scores, offsets, and whether it continues a word.

        WordPiece-style tokenizers mark continuations ("##"), so a piece is a subword when the
        token is longer than its text; byte-level BPE doesn't, so (like transformers) a piece
        is a subword unless a space precedes it."""
        enc, text = window.encoding, window.text
        word_aware = self.tokenizer.subword_prefix is not None
        if not word_aware and strategy in WORD_STRATEGIES:
            warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=5)
        unk = self.tokenizer.unk_token_id
        pre = []
        for idx, (token_id, special, (start, end)) in enumerate(zip(enc.ids, enc.special_tokens_mask, enc.offsets)):
            if special:
                continue
            word = self.tokenizer.id_to_token(token_id)
            piece = text[start:end]
            if word_aware:
                is_subword = len(word) != len(piece)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if token_id == unk:
                word, is_subword = piece, False
            pre.append({"word": word, "scores": scores[idx], "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return pre

    def aggregate(self, pre: list[dict], strategy: str) -> list[dict]:
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = p["scores"].argmax()
                entities.append({"entity": self.label(best), "score": p["scores"][best], "index": p["index"],
                                 "word": p["word"], "start": p["start"], "end": p["end"]})
        else:
            entities = self.aggregate_words(pre, strategy)
        return entities if strategy == "none" else self.group_entities(entities)

    def aggregate_words(self, pre: list[dict], strategy: str) -> list[dict]:
        """One entity per word: a word's pieces can't end up with different labels."""
        words, group = [], []
        for p in pre:
            if group and not p["is_subword"]:
                words.append(self.aggregate_word(group, strategy))
                group = []
            group.append(p)
        if group:
            words.append(self.aggregate_word(group, strategy))
        return words

    def aggregate_word(self, pieces: list[dict], strategy: str) -> dict:
        if strategy == "first":
            scores = pieces[0]["scores"]
        elif strategy == "max":
            scores = max(pieces, key=lambda p: p["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([p["scores"] for p in pieces]), axis=0)
        best = scores.argmax()
        return {"entity": self.label(best), "score": scores[best],
                "word": self.tokenizer.tokens_to_string([p["word"] for p in pieces]),
                "start": pieces[0]["start"], "end": pieces[-1]["end"]}

    def group_entities(self, entities: list[dict]) -> list[dict]:
        """Merge adjacent entities with the same tag; a B- tag always starts a new group."""
        groups, current = [], []
        for entity in entities:
            if current:
                bi, tag = split_tag(entity["entity"])
                _, last_tag = split_tag(current[-1]["entity"])
                if not (tag == last_tag and bi != "B"):
                    groups.append(self.group(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self.group(current))
        return groups

    def group(self, entities: list[dict]) -> dict:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": np.nanmean([e["score"] for e in entities]),
                "word": self.tokenizer.tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


def split_tag(name: str) -> tuple[str, str]:
    """("B" | "I", tag): BIO prefixes split off; a plain label continues like I-."""
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities from overlapping stride windows: of those starting inside another, keep the
    longest (then the highest-scoring) — transformers' rule."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
