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
from dataclasses import dataclass

import numpy as np
import torch

from .base import check_known, check_positive_int, check_text
from .encoder import EncodedRow, EncoderPipeline

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


@dataclass
class Pair(EncodedRow):
    """One (sequence, hypothesis) row of NLI mode, with the sequence the answer names."""

    sequence: str


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ZeroShotClassificationPipeline(EncoderPipeline):
    """classifier(sequences, candidate_labels, hypothesis_template="This example is {}.",
    multi_label=False, mode="auto", temperature=0.05) → {"sequence", "labels", "scores"},
    labels sorted by score (a list of those for a list of sequences).

    Each sequence is an item: in NLI mode its rows are its (sequence, hypothesis) pairs, all
    pairs of the window in one length-sorted pass; in embedding mode its row is the sequence,
    embedded with the call's hypotheses (once per call) by the checkpoint's sentence encoder."""

    task = "zero-shot-classification"
    head = "sequence-classification"
    input_name = "sequences"
    hf_parameters = frozenset({"candidate_labels", "multi_label", "hypothesis_template"})
    OPTIONS = {"candidate_labels", "hypothesis_template", "multi_label", "multi_class", "mode", "temperature",
               "batch_size"}

    @classmethod
    def head_for(cls, config: dict) -> str:
        from ..loading import checkpoint_head

        # an NLI classifier, or else the bare encoder for embedding mode
        return "sequence-classification" if checkpoint_head(config) == "sequence-classification" else "base"

    def setup(self):
        self.has_classifier = self.head_for(self.config) == "sequence-classification"
        self._embedder = None
        self._embedder_lock = threading.Lock()  # concurrent first calls load the encoder once

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

    def parse_call(self, args, kwargs):
        if len(args) == 2 and "candidate_labels" not in kwargs:  # classifier(sequences, labels)
            kwargs["candidate_labels"] = args[1]
            args = args[:1]
        elif len(args) > 1:
            raise TypeError(f"unexpected extra positional arguments {args[1:]!r:.80}; pass candidate_labels=[...]")
        sequences, kwargs = super().parse_call(args, kwargs)
        if sequences is None:
            raise ValueError("no sequence to classify: pass a string or a list of strings")
        return sequences, kwargs

    def prepare(self, options):
        if options.get("candidate_labels") is None:
            raise ValueError("candidate_labels is required: the labels to choose from, "
                             "e.g. candidate_labels=['education', 'politics', 'business']")
        template = options.get("hypothesis_template", DEFAULT_TEMPLATE)
        mode = self.resolve_mode(options.get("mode", "auto"))
        if options.get("temperature") is not None and mode != "embedding":
            raise ValueError("temperature only applies to mode='embedding'; NLI scores are softmaxed logits")
        return {**options, "mode": mode, "multi_label": bool(options.get("multi_label", False)),
                "hypotheses": [template.format(label) for label in options["candidate_labels"]]}

    def preprocess_batch(self, items, mode, hypotheses, **options):
        sequences = []
        for item in items:
            check_text(item, "sequences")
            if not item:
                raise ValueError("sequences contains an empty string; give at least one sequence to classify")
            sequences.append(item)
        if mode == "embedding":
            return [[s] for s in sequences]  # embedded in forward_items, with the hypotheses
        firsts = [s for s in sequences for _ in hypotheses]
        pairs = self.encode_pairs(firsts, hypotheses * len(sequences))
        rows = [Pair(enc, sequence) for enc, sequence in zip(pairs, firsts)]
        n = len(hypotheses)
        return [rows[i * n:(i + 1) * n] for i in range(len(sequences))]

    def forward_items(self, rows_per_item, mode, hypotheses, batch_size=None, **options):
        if mode == "nli":
            return super().forward_items(rows_per_item, batch_size, **options)
        sequences = [rows[0] for rows in rows_per_item]
        vectors = self.embedder().embed(sequences + hypotheses, pooling="auto", normalize=True, truncation=True,
                                        batch_size=check_positive_int(batch_size, "batch_size"))
        cos = (vectors[:len(sequences)] @ vectors[len(sequences):].T).double().numpy()  # (N, L)
        return [[row] for row in cos]

    def postprocess(self, rows, outputs, mode, multi_label, candidate_labels, temperature=None, **options):
        if mode == "nli":
            sequence, scores = rows[0].sequence, self.nli_scores(outputs, multi_label)
        else:
            sequence, scores = rows[0], self.embedding_scores(outputs[0], multi_label, temperature or DEFAULT_TEMPERATURE)
        order = list(reversed(scores.argsort()))  # transformers' order, ties included
        return {"sequence": sequence, "labels": [candidate_labels[i] for i in order],
                "scores": [float(scores[i]) for i in order]}

    @classmethod
    def columns(cls, result):
        if isinstance(result, dict):
            return {k: v for k, v in result.items() if k != "sequence"}  # the sequence is the input
        return super().columns(result)

    @classmethod
    def arrow_types(cls, pa, options):
        return {"labels": pa.list_(pa.string()), "scores": pa.list_(pa.float64())}

    # -- NLI mode ------------------------------------------------------------------------

    def nli_scores(self, outputs: list, multi_label: bool) -> np.ndarray:
        """(L labels,) scores from a sequence's L (sequence, hypothesis) rows' logits."""
        logits = torch.stack(outputs).numpy().astype(np.float32)  # (L, num_labels)
        entail = self.entailment_id
        if multi_label or len(outputs) == 1:
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

    @staticmethod
    def embedding_scores(cos: np.ndarray, multi_label: bool, temperature: float) -> np.ndarray:
        """(L labels,) scores from a sequence's cosine similarity with each hypothesis."""
        if multi_label or len(cos) == 1:
            return (cos + 1) / 2
        return softmax(cos / temperature)
