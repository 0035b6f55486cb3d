"""zero-shot-classification, two ways.

NLI mode (transformers 4.57.6's): each (sequence, hypothesis_template.format(label)) pair goes
through an NLI classifier; single-label scores are a softmax of the entailment logits over the
labels, multi-label scores a softmax of entailment vs. contradiction per label. Every pair of
every sequence of a call is one row of the length-sorted batcher — not a forward pass per pair.

Embedding mode (lightpipe's): with a sentence-embedding checkpoint (no classification head,
e.g. sentence-transformers/all-MiniLM-L6-v2), the sequence and each filled hypothesis are
embedded once per call (pooling from the checkpoint, unit length) and compared by cosine:
  single label:  softmax(cos / temperature) over the labels, temperature 0.05 by default
                 (the scale of 20 that sentence-transformers' MultipleNegativesRankingLoss —
                 MiniLM's training loss — puts on cosines), so the scores sum to 1;
  multi_label (or a single candidate label): (cos + 1) / 2 per label, independent, in [0, 1].
`mode="auto"` (default) picks NLI when the checkpoint has a sequence-classification head,
embeddings otherwise; `mode="nli"` / `mode="embedding"` force one.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

from .base import Pipeline, check_known, check_positive_int, check_text

DEFAULT_TEMPLATE = "This example is {}."
DEFAULT_TEMPERATURE = 0.05
MODES = ("auto", "nli", "embedding")


def parse_labels(labels) -> list[str]:
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise TypeError(f"candidate_labels must be a list of strings or a comma-separated string, got {labels!r:.80}")
    if not labels:
        raise ValueError("candidate_labels is empty: give at least one label, "
                         "e.g. candidate_labels=['sports', 'politics']")
    return list(labels)


def check_template(template) -> str:
    if not isinstance(template, str):
        raise TypeError(f"hypothesis_template must be a string with {{}} where the label goes, got {template!r}")
    try:
        filled = template.format("label")
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"hypothesis_template {template!r} can't be filled with a label ({e}); "
                         "use a plain {} where the label goes, e.g. 'This example is {}.'") from None
    if filled == template:
        raise ValueError(f"hypothesis_template {template!r} has no {{}} where the label goes, "
                         "e.g. 'This example is {}.'")
    return template


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ZeroShotClassificationPipeline(Pipeline):
    """classifier(sequences, candidate_labels, hypothesis_template="This example is {}.",
    multi_label=False, mode="auto", temperature=0.05) → {"sequence", "labels", "scores"},
    labels sorted by score (a list of those for a list of sequences)."""

    task = "zero-shot-classification"
    head = "sequence-classification"
    OPTIONS = {"candidate_labels", "hypothesis_template", "multi_label", "multi_class", "mode", "temperature",
               "batch_size"}

    @classmethod
    def head_for(cls, config: dict) -> str:
        from ..loading import checkpoint_head

        # an NLI classifier, or else the bare encoder for embedding mode
        return "sequence-classification" if checkpoint_head(config) == "sequence-classification" else "base"

    def __init__(self, model, tokenizer, config, **kwargs):
        self.has_classifier = self.head_for(config) == "sequence-classification"
        self._embedder = None
        self._embedder_lock = threading.Lock()  # concurrent first calls load the encoder once
        # check_options (run by the base on the pipeline's defaults) needs the labels already
        self.id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        self.label2id = {v: k for k, v in self.id2label.items()}
        super().__init__(model, tokenizer, config, **kwargs)

    # -- options -------------------------------------------------------------------------

    @property
    def entailment_id(self) -> int:
        for label, i in self.label2id.items():
            if label.lower().startswith("entail"):
                return i
        return -1

    @property
    def contradiction_id(self) -> int:
        """The "contra…" label. transformers takes index 0 (the last one when entailment is 0)
        whatever it is called; its docs say the contradiction score, and where the two differ
        lightpipe follows the docs. For every usual NLI label order they agree."""
        for label, i in self.label2id.items():
            if label.lower().startswith("contra"):
                return i
        return -1 if self.entailment_id == 0 else 0

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        options = dict(options)
        if options.get("multi_class") is not None:
            warnings.warn("`multi_class` is deprecated, use `multi_label`", FutureWarning, stacklevel=4)
            options["multi_label"] = options["multi_class"]
        options.pop("multi_class", None)
        if options.get("candidate_labels") is not None:
            options["candidate_labels"] = parse_labels(options["candidate_labels"])
        if "hypothesis_template" in options:
            check_template(options["hypothesis_template"])
        if "multi_label" in options and not isinstance(options["multi_label"], (bool, np.bool_)):
            raise TypeError(f"multi_label must be True or False, got {options['multi_label']!r}")
        mode = options.get("mode")
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            if mode == "nli":
                self.check_nli()
        temperature = options.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
                raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        return options

    def check_nli(self) -> None:
        if not self.has_classifier:
            raise ValueError(
                "mode='nli' needs an NLI checkpoint with a sequence-classification head; "
                f"{self.model_id or 'this model'} has none. Use mode='embedding' (cosine similarity of sentence embeddings) or an NLI model such "
                "as facebook/bart-large-mnli"
            )
        if self.entailment_id == -1:
            raise ValueError(
                f"{self.model_id or 'the model'}'s config has no entailment label (id2label is {self.id2label}); "
                "zero-shot NLI needs a label whose name starts with 'entail'. Fix label2id/id2label in its "
                "config.json, or use mode='embedding'"
            )

    def resolve_mode(self, mode: str) -> str:
        if mode == "auto":
            mode = "nli" if self.has_classifier else "embedding"
        if mode == "nli":
            self.check_nli()
        return mode

    # -- the call ------------------------------------------------------------------------

    def __call__(self, sequences=None, *args, **kwargs):
        if len(args) == 1 and "candidate_labels" not in kwargs:
            kwargs["candidate_labels"] = args[0]
        elif args:
            raise TypeError(f"unexpected extra positional arguments {args!r:.80}; pass candidate_labels=[...]")
        if sequences is None:
            raise ValueError("no sequence to classify: pass a string or a list of strings")
        return super().__call__(sequences, **kwargs)

    def run(self, items: list, options: dict, batch_size=None) -> list:
        if options.get("candidate_labels") is None:
            raise ValueError("candidate_labels is required: the labels to choose from, "
                             "e.g. candidate_labels=['education', 'politics', 'business']")
        labels = options["candidate_labels"]
        template = options.get("hypothesis_template", DEFAULT_TEMPLATE)
        multi_label = bool(options.get("multi_label", False))
        mode = self.resolve_mode(options.get("mode", "auto"))
        if options.get("temperature") is not None and mode != "embedding":
            raise ValueError("temperature only applies to mode='embedding'; NLI scores are softmaxed logits")
        sequences = []
        for item in items:
            check_text(item, "sequences")
            if not item:
                raise ValueError("sequences contains an empty string; give at least one sequence to classify")
            sequences.append(item)
        hypotheses = [template.format(label) for label in labels]
        if mode == "embedding":
            scores = self.embedding_scores(sequences, hypotheses, multi_label,
                                           options.get("temperature") or DEFAULT_TEMPERATURE, batch_size)
        else:
            scores = self.nli_scores(sequences, hypotheses, multi_label, batch_size)
        results = []
        for sequence, row in zip(sequences, scores):
            order = list(reversed(row.argsort()))  # transformers' order, ties included
            results.append({"sequence": sequence, "labels": [labels[i] for i in order],
                            "scores": [float(row[i]) for i in order]})
        return results

    def nli_scores(self, sequences: list[str], hypotheses: list[str], multi_label: bool, batch_size) -> np.ndarray:
        """(N sequences, L labels) scores from one batched pass over all N*L pairs."""
        firsts = [s for s in sequences for _ in hypotheses]
        seconds = hypotheses * len(sequences)
        rows = self.encode_pairs(firsts, seconds)
        logits = torch.stack(self.forward_rows(rows, batch_size)).numpy().astype(np.float32)
        logits = logits.reshape(len(sequences), len(hypotheses), -1)  # (N, L, num_labels)
        entail = self.entailment_id
        if multi_label or len(hypotheses) == 1:
            pair = logits[..., [self.contradiction_id, entail]]
            return softmax(pair)[..., 1]
        return softmax(logits[..., entail])

    def encode_pairs(self, firsts: list[str], seconds: list[str]):
        """Pairs cut on the sequence side only (the hypothesis stays whole), as transformers does."""
        limit = self.max_input_tokens
        try:
            return self.tokenizer.encode_batch(firsts, seconds, truncation="only_first", max_length=limit)
        except Exception as e:
            if "too short" not in str(e):
                raise
        encodings = self.tokenizer.encode_batch(firsts, seconds)
        for enc, hypothesis in zip(encodings, seconds):
            if len(enc.ids) > limit:
                raise ValueError(f"the hypothesis {hypothesis!r:.80} alone is too long for the model's {limit} "
                                 "tokens; shorten hypothesis_template or the label")
        return encodings


    # -- embedding mode ------------------------------------------------------------------

    def embedder(self):
        """A feature-extraction pipeline over this checkpoint's encoder (loaded without the
        classification head if this pipeline holds an NLI classifier)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = self._load_embedder()
        return self._embedder

    def _load_embedder(self):
        from .feature_extraction import FeatureExtractionPipeline

        model = self.model
        if self.has_classifier:
            from ..loading import load_model

            dtype = next(self.model.parameters()).dtype
            model, _ = load_model(self.folder, "base", dtype=dtype, device=self.device)
        return FeatureExtractionPipeline(model, self.tokenizer, self.config, model_id=self.model_id,
                                         folder=self.folder, batch_size=self.batch_size,
                                         max_batch_tokens=self.max_batch_tokens, allow_pickle=self.allow_pickle)

    def embedding_scores(self, sequences, hypotheses, multi_label, temperature, batch_size) -> np.ndarray:
        vectors = self.embedder().embed(sequences + hypotheses, pooling="auto", normalize=True, truncation=True,
                                        batch_size=check_positive_int(batch_size, "batch_size"))
        cos = (vectors[:len(sequences)] @ vectors[len(sequences):].T).double().numpy()  # (N, L)
        if multi_label or len(hypotheses) == 1:
            return (cos + 1) / 2
        return softmax(cos / temperature)
