"""feature-extraction (per-token hidden states, or pooled sentence embeddings) and
sentence-similarity (cosine scores of sentences against a source sentence)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from .base import Pipeline, check_known, check_text

POOLING_MODES = ("mean", "cls", "max")
# sentence-transformers' 1_Pooling/config.json flags → our pooling names
POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def pool(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """(T, D) hidden states of one text's real tokens → (D,) embedding."""
    if mode == "mean":
        return hidden.mean(0)
    if mode == "cls":
        return hidden[0]
    return hidden.max(0).values


class FeatureExtractionPipeline(Pipeline):
    """Per-token hidden states as nested lists, shaped (1, T, D) per input like transformers'
    batch_size=1 output. Beyond transformers: `pooling` ("mean" | "cls" | "max" | "auto": the
    checkpoint's 1_Pooling/config.json) gives one (D,) vector per input, and `normalize=True`
    scales it to unit length, as sentence-transformers does."""

    task = "feature-extraction"
    token_outputs = True
    OPTIONS = {"pooling", "normalize", "truncation", "tokenize_kwargs", "return_tensors", "batch_size"}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        if "tokenize_kwargs" in options:
            tk = dict(options.pop("tokenize_kwargs") or {})
            check_known(tk, {"truncation"}, "tokenize_kwargs")
            if "truncation" in tk and "truncation" in options:
                raise ValueError("truncation parameter defined twice (given as keyword argument as well as in tokenize_kwargs)")
            options.update(tk)
        pooling = options.get("pooling")
        if pooling == "auto":
            options["pooling"] = self.checkpoint_pooling()
        elif pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be None, 'auto' or one of {POOLING_MODES}, got {pooling!r}")
        if options.get("normalize") and options.get("pooling") is None:
            raise ValueError("normalize=True needs pooling (e.g. pooling='mean'): per-token outputs aren't normalized")
        return options

    def checkpoint_pooling(self) -> str:
        """The pooling a sentence-transformers checkpoint was trained with (mean if it doesn't say)."""
        path = Path(self.folder or "") / "1_Pooling" / "config.json"
        if self.folder and path.is_file():
            flags = json.loads(path.read_text())
            for flag, mode in POOLING_FLAGS.items():
                if flags.get(flag):
                    return mode
        return "mean"

    def preprocess(self, item, truncation=False, **options):
        return self.encode([check_text(item)], truncation=truncation)

    def preprocess_batch(self, items, truncation=False, **options):
        return [[row] for row in self.encode([check_text(i) for i in items], truncation=truncation)]


    def postprocess(self, rows, outputs, pooling=None, normalize=False, return_tensors=False, **options):
        hidden = outputs[0]  # (T, D) real tokens only
        if pooling is None:
            hidden = hidden[None]  # (1, T, D), transformers' per-input shape
        else:
            hidden = pool(hidden, pooling)
            if normalize:
                hidden = torch.nn.functional.normalize(hidden, dim=-1)
        return hidden if return_tensors else hidden.tolist()

    def embed(self, texts: list[str], pooling: str = "auto", normalize: bool = True, **options) -> torch.Tensor:
        """(N, D) sentence embeddings: the batch API the server and similarity use."""
        options = self.check_options({"pooling": pooling, "normalize": normalize, "return_tensors": True, **options})
        return torch.stack(self.run(list(texts), options, options.pop("batch_size", self.batch_size)))


class SentenceSimilarityPipeline(FeatureExtractionPipeline):
    """{"source_sentence": str, "sentences": [str, ...]} → cosine similarity per sentence,
    like the HF Inference API and sentence-transformers (pooling from the checkpoint)."""

    task = "sentence-similarity"
    PUBLIC_OPTIONS = {"pooling", "truncation", "batch_size"}

    def __call__(self, inputs=None, sentences=None, **kwargs):
        if isinstance(inputs, str) and sentences is not None:
            inputs = {"source_sentence": inputs, "sentences": sentences}
        if isinstance(inputs, list) and inputs and all(isinstance(i, dict) for i in inputs):
            return [self(i, **kwargs) for i in inputs]
        if isinstance(inputs, Iterator):  # a stream of {"source_sentence", "sentences"} items
            return (self(i, **kwargs) for i in inputs)
        if not isinstance(inputs, dict) or "source_sentence" not in inputs or "sentences" not in inputs:
            raise ValueError('inputs must be {"source_sentence": str, "sentences": [str, ...]}')
        source = check_text(inputs["source_sentence"], "source_sentence")
        others = inputs["sentences"]
        if isinstance(others, str) or not isinstance(others, (list, tuple)) or not others:
            raise ValueError("sentences must be a non-empty list of strings")
        for s in others:
            check_text(s, "sentences[]")
        check_known(kwargs, self.PUBLIC_OPTIONS, self.task)
        options = {"pooling": "auto", **kwargs}
        vectors = self.embed([source, *others], **options)
        return (vectors[1:] @ vectors[0]).tolist()
