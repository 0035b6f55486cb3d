"""feature-extraction (per-token hidden states, or pooled sentence embeddings) and
sentence-similarity (cosine scores of sentences against a source sentence)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .base import Pipeline, check_known, check_positive_int, check_text

POOLING_MODES = ("mean", "cls", "max")  # over all of an input's real tokens (beyond transformers)
# sentence-transformers' encode() options: they need pooling="auto"
SENTENCE_OPTIONS = ("prompt", "prompt_name", "truncate_dim")


def pool(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """(T, D) hidden states of one text's real tokens → (D,) embedding."""
    if mode == "mean":
        return hidden.mean(0)
    if mode == "cls":
        return hidden[0]
    return hidden.max(0).values


class FeatureExtractionPipeline(Pipeline):
    """Per-token hidden states as nested lists, shaped (1, T, D) per input like transformers'
    batch_size=1 output. Beyond transformers: `pooling` gives one vector per input.

    pooling="auto" is `SentenceTransformer(folder).encode(texts)`: the checkpoint's modules.json
    chain (lightpipe.sentence_embedding) with its max_seq_length (inputs are cut there unless
    truncation=False, which refuses them), `prompt=` / `prompt_name=` (else its default prompt)
    and `truncate_dim=`. "mean" | "cls" | "max" pool the model's tokens directly. Either way
    `normalize=True` scales the result to unit length, last (encode's normalize_embeddings)."""

    task = "feature-extraction"
    token_outputs = True
    OPTIONS = {"pooling", "normalize", "truncation", "tokenize_kwargs", "return_tensors", "batch_size", *SENTENCE_OPTIONS}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        if "tokenize_kwargs" in options:
            tk = dict(options.pop("tokenize_kwargs") or {})
            check_known(tk, {"truncation"}, "tokenize_kwargs")
            if "truncation" in tk and "truncation" in options:
                raise ValueError("truncation parameter defined twice (given as keyword argument as well as in tokenize_kwargs)")
            options.update(tk)
        pooling = options.get("pooling")
        if pooling is not None and pooling != "auto" and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be None, 'auto' or one of {POOLING_MODES}, got {pooling!r}")
        if options.get("normalize") and options.get("pooling") is None:
            raise ValueError("normalize=True needs pooling (e.g. pooling='mean'): per-token outputs aren't normalized")
        for name in ("prompt", "prompt_name"):
            if options.get(name) is not None:
                check_text(options[name], name)
        check_positive_int(options.get("truncate_dim"), "truncate_dim")
        return options

    @property
    def sentence_model(self):
        """The checkpoint's sentence-transformers chain, read on first use of pooling="auto"
        (so per-token use never depends on modules lightpipe can't run)."""
        if getattr(self, "_sentence_model", None) is None:
            from ..sentence_embedding import SentenceModel

            self._sentence_model = SentenceModel.load(self.folder or "", self.tokenizer, self.config,
                                                      max_positions=self.max_positions, name=self.model_id,
                                                      allow_pickle=self.allow_pickle)
        return self._sentence_model

    def run(self, items, options, batch_size=None):
        # the call's options resolved once against the checkpoint: the prompt, its length, truncate_dim
        given = [k for k in SENTENCE_OPTIONS if options.get(k) is not None]
        if options.get("pooling") == "auto":
            options = self.sentence_options(options)
        elif given:
            raise ValueError(f"{', '.join(given)} need pooling='auto' (the checkpoint's sentence-transformers chain)")
        return super().run(items, options, batch_size)

    def sentence_options(self, options: dict) -> dict:
        chain = self.sentence_model
        options = dict(options)
        prompt = chain.resolve_prompt(options.pop("prompt", None), options.pop("prompt_name", None))
        options["prompt"] = prompt
        options["prompt_length"] = chain.prompt_length(prompt) if prompt and not chain.pooling.include_prompt else None
        truncate_dim = options.get("truncate_dim") or chain.truncate_dim
        if truncate_dim is not None and chain.dimension and truncate_dim > chain.dimension:
            raise ValueError(f"truncate_dim={truncate_dim} but {self.model_id or 'the model'} makes "
                             f"{chain.dimension}-dimensional embeddings")
        options["truncate_dim"] = truncate_dim
        if options.get("truncation") is None:
            options["truncation"] = True  # sentence-transformers cuts at max_seq_length
        return options

    def preprocess(self, item, **options):
        return self.preprocess_batch([item], **options)[0]

    def preprocess_batch(self, items, truncation=False, pooling=None, prompt="", **options):
        texts = [check_text(i) for i in items]
        if pooling == "auto":
            return [[row] for row in self.sentence_model.encode(texts, prompt, truncation=truncation)]
        return [[row] for row in self.encode(texts, truncation=truncation)]

    def postprocess(self, rows, outputs, pooling=None, normalize=False, return_tensors=False, prompt_length=None,
                    truncate_dim=None, **options):
        hidden = outputs[0]  # (T, D) real tokens only
        if pooling is None:
            hidden = hidden[None]  # (1, T, D), transformers' per-input shape
        else:
            if pooling == "auto":
                hidden = self.sentence_model.embed(hidden, prompt_length)[:truncate_dim]
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
    PUBLIC_OPTIONS = {"pooling", "truncation", "batch_size", *SENTENCE_OPTIONS}

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
