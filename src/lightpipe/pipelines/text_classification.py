"""text-classification / sentiment-analysis, with transformers' `top_k` semantics: the legacy
default returns the best label as a dict; an explicit `top_k` (an int, or None for all labels)
returns a sorted list of dicts."""

from __future__ import annotations

import torch

from .base import check_known, check_text
from .encoder import EncoderPipeline

FUNCTIONS = ("sigmoid", "softmax", "none")
LEGACY = object()  # top_k not given: transformers' legacy single-label output


class TextClassificationPipeline(EncoderPipeline):
    task = "text-classification"
    head = "sequence-classification"
    hf_request = "texts-or-pairs"
    hf_parameters = frozenset({"top_k", "function_to_apply"})
    hf_defaults = {"top_k": None}  # the API returns every label
    OPTIONS = {"top_k", "function_to_apply", "return_all_scores", "truncation", "batch_size"}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        top_k = options.get("top_k", LEGACY)
        if top_k is not LEGACY and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None (all labels), got {top_k!r}")
        fn = options.get("function_to_apply")
        if fn is not None:
            if not isinstance(fn, str) or fn.lower() not in FUNCTIONS:
                raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {fn!r}")
            options["function_to_apply"] = fn.lower()
        if "return_all_scores" in options and "top_k" not in options:  # deprecated spelling
            options["top_k"] = None if options.pop("return_all_scores") else 1
            options["_legacy_all_scores"] = True
        return options

    def shape(self, results, single, inputs, kwargs):
        result = super().shape(results, single, inputs, kwargs)
        explicit_top_k = "top_k" in kwargs or "top_k" in self.defaults
        if isinstance(inputs, str) and not explicit_top_k:
            return [result]  # transformers wraps a single string's legacy dict in a list
        return result

    @classmethod
    def columns(cls, result) -> dict:
        if isinstance(result, list) and all(isinstance(r, dict) for r in result):  # top_k: best first
            return {"labels": [r["label"] for r in result], "scores": [r["score"] for r in result]}
        return super().columns(result)

    @classmethod
    def arrow_types(cls, pa, options):
        return {"label": pa.string(), "score": pa.float64(), "labels": pa.list_(pa.string()),
                "scores": pa.list_(pa.float64())}

    def server_info(self):
        return {"labels": [self.id2label[i] for i in sorted(self.id2label)]} if self.id2label else {}

    def preprocess(self, item, truncation=False, **options):
        if isinstance(item, dict):
            if set(item) - {"text", "text_pair"} or "text" not in item:
                raise ValueError('a text pair must be {"text": str, "text_pair": str}')
            pair = item.get("text_pair")
            return self.encode([check_text(item["text"], "text")],
                               None if pair is None else [check_text(pair, "text_pair")], truncation=truncation)
        if isinstance(item, (list, tuple)):
            raise ValueError('to classify a text pair, pass {"text": "My text", "text_pair": "My pair"}')
        return self.encode([check_text(item)], truncation=truncation)

    def preprocess_batch(self, items, truncation=False, **options):
        if all(isinstance(i, str) for i in items):  # the common case: one encode_batch for the window
            return [[row] for row in self.encode(items, truncation=truncation)]
        return [self.preprocess(i, truncation=truncation) for i in items]

    def default_function(self) -> str:
        problem = self.config.get("problem_type")
        num_labels = len(self.id2label) or 2
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or num_labels == 1:
            return "sigmoid"
        return "softmax"

    def postprocess(self, rows, outputs, top_k=LEGACY, function_to_apply=None, _legacy_all_scores=False, **options):
        logits = outputs[0].double()
        fn = function_to_apply or self.default_function()
        scores = torch.sigmoid(logits) if fn == "sigmoid" else torch.softmax(logits, -1) if fn == "softmax" else logits
        label = lambda i: self.id2label.get(i, f"LABEL_{i}")
        if top_k is LEGACY or (_legacy_all_scores and top_k == 1):
            best = int(scores.argmax())
            return {"label": label(best), "score": float(scores[best])}
        results = [{"label": label(i), "score": float(s)} for i, s in enumerate(scores)]
        if _legacy_all_scores:
            return results  # return_all_scores=True kept label order in transformers
        results.sort(key=lambda r: r["score"], reverse=True)
        return results if top_k is None else results[:top_k]
