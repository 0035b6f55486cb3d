"""feature-extraction (per-token hidden states, or pooled sentence embeddings) and
sentence-similarity (cosine scores of sentences against a source sentence)."""

from __future__ import annotations

import torch

from ..rows import MissingColumn
from .base import check_known, check_positive_int, check_text
from .encoder import EncoderPipeline

POOLING_MODES = ("mean", "cls", "max")  # over all of an input's real tokens (beyond transformers)
# sentence-transformers' encode() options: they need pooling="auto"
SENTENCE_OPTIONS = ("prompt", "prompt_name", "truncate_dim")
EMBED_OPTIONS = {"pooling", "normalize", "truncation", "tokenize_kwargs", "return_tensors", "batch_size",
                 *SENTENCE_OPTIONS}


def pool(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """(T, D) hidden states of one text's real tokens → (D,) embedding."""
    if mode == "mean":
        return hidden.mean(0)
    if mode == "cls":
        return hidden[0]
    return hidden.max(0).values


def check_embedding_options(options: dict) -> dict:
    if "tokenize_kwargs" in options:
        tk = dict(options.pop("tokenize_kwargs") or {})
        check_known(tk, {"truncation"}, "tokenize_kwargs")
        if "truncation" in tk and "truncation" in options:
            raise ValueError("truncation parameter defined twice "
                             "(given as keyword argument as well as in tokenize_kwargs)")
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


class FeatureExtractionPipeline(EncoderPipeline):
    """Per-token hidden states as nested lists, shaped (1, T, D) per input like transformers'
    batch_size=1 output. Beyond transformers: `pooling` gives one vector per input.

    pooling="auto" is `SentenceTransformer(folder).encode(texts)`: the checkpoint's modules.json
    chain (lightpipe.sentence_embedding) with its max_seq_length (inputs are cut there unless
    truncation=False, which refuses them), `prompt=` / `prompt_name=` (else its default prompt)
    and `truncate_dim=`. "mean" | "cls" | "max" pool the model's tokens directly. Either way
    `normalize=True` scales the result to unit length, last (encode's normalize_embeddings)."""

    task = "feature-extraction"
    token_outputs = True
    list_column = "embedding"
    vector_columns = ("embedding",)
    hf_request = "embedding"
    OPTIONS = EMBED_OPTIONS

    @classmethod
    def arrow_types(cls, pa, options):
        return {"embedding": pa.list_(pa.float32())}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        return check_embedding_options(options)

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

    def prepare(self, options):
        # the call's options resolved once against the checkpoint: the prompt, its length, truncate_dim
        given = [k for k in SENTENCE_OPTIONS if options.get(k) is not None]
        if options.get("pooling") == "auto":
            return self.sentence_options(options)
        if given:
            raise ValueError(f"{', '.join(given)} need pooling='auto' (the checkpoint's sentence-transformers chain)")
        return options

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

    # -- texts → rows → vectors: shared by the call, embed() and sentence-similarity ------

    def encode_texts(self, texts: list, truncation=False, pooling=None, prompt="", **options) -> list:
        if texts and all(isinstance(t, list) for t in texts):
            return self.encode_ids(texts, truncation, pooling)
        texts = [check_text(t) for t in texts]
        if pooling == "auto":
            return self.sentence_model.encode(texts, prompt, truncation=truncation)
        return self.encode(texts, truncation=truncation)

    def encode_ids(self, inputs: list[list[int]], truncation=False, pooling=None) -> list:
        """Token ids of the model's own vocabulary, used as given (no special tokens added, no
        prompt): rows for the model, cut at (or refused beyond) the length it embeds."""
        vocab = self.config.get("vocab_size") or len(self.tokenizer.get_vocab())
        limit = self.sentence_model.max_seq_length if pooling == "auto" else self.max_input_tokens
        rows = []
        for i, ids in enumerate(inputs):
            if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
                raise ValueError(f"input {i} must be a non-empty list of token ids in [0, {vocab}), got {ids!r:.80}")
            if len(ids) > limit:
                if not truncation:
                    raise ValueError(f"input {i} has {len(ids)} tokens but {self.model_id or 'the model'} embeds at "
                                     f"most {limit}; pass truncation=True to cut it")
                ids = ids[:limit]
            rows.append(TokenIds(list(ids)))
        return rows

    def vector(self, hidden: torch.Tensor, pooling=None, normalize=False, return_tensors=False, prompt_length=None,
               truncate_dim=None, **options):
        """One text's output from its (T, D) hidden states (real tokens only)."""
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

    def preprocess(self, item, **options):
        return self.preprocess_batch([item], **options)[0]

    def preprocess_batch(self, items, **options):
        return [[row] for row in self.encode_texts(items, **options)]

    def postprocess(self, rows, outputs, **options):
        return self.vector(outputs[0], **options)

    def embed(self, texts: list, pooling: str = "auto", normalize: bool = True, **options) -> torch.Tensor:
        """(N, D) sentence embeddings: the batch API the server and zero-shot use. `texts` may
        instead be lists of token ids (used as given: no prompt, no special tokens added)."""
        given = {"pooling": pooling, "normalize": normalize, "return_tensors": True, **options}
        check_known(given, EMBED_OPTIONS, "embed()")
        ids = bool(texts) and all(isinstance(t, list) for t in texts)
        if ids and (options.get("prompt") or options.get("prompt_name")):
            raise ValueError("prompt and prompt_name need texts; token ids are embedded as given")
        options = self.prepare(self.with_defaults(check_embedding_options(given)))
        if ids:
            options = {**options, "prompt": "", "prompt_length": None}
        rows = self.encode_texts(list(texts), **options)
        return torch.stack([self.vector(out, **options) for out in self.forward_rows(rows, **options)])


class TokenIds:
    """A row of given token ids (what the batcher reads of a tokenizers.Encoding)."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.type_ids = [0] * len(ids)


class SentenceSimilarityPipeline(FeatureExtractionPipeline):
    """{"source_sentence": str, "sentences": [str, ...]} → cosine similarity per sentence,
    like the HF Inference API and sentence-transformers (pooling from the checkpoint)."""

    task = "sentence-similarity"
    list_column = "scores"
    vector_columns = ()
    hf_request = "similarity"
    OPTIONS = {"pooling", "truncation", "batch_size", *SENTENCE_OPTIONS}

    @classmethod
    def arrow_types(cls, pa, options):
        return {"scores": pa.list_(pa.float64())}

    def parse_call(self, args, kwargs):
        sentences = kwargs.pop("sentences", None)
        inputs, kwargs = super().parse_call(args, kwargs)
        if sentences is not None:
            if not isinstance(inputs, str):
                raise ValueError("sentences= goes with a source sentence string: "
                                 "similarity(\"source\", sentences=[...])")
            inputs = {"source_sentence": inputs, "sentences": sentences}
        return inputs, kwargs

    def prepare(self, options):
        options = {**options, "pooling": options.get("pooling") or "auto", "normalize": True, "return_tensors": True}
        return super().prepare(options)

    @staticmethod
    def check_item(item) -> tuple[str, list]:
        if not isinstance(item, dict) or "source_sentence" not in item or "sentences" not in item:
            raise ValueError('inputs must be {"source_sentence": str, "sentences": [str, ...]}')
        source = check_text(item["source_sentence"], "source_sentence")
        others = item["sentences"]
        if isinstance(others, str) or not isinstance(others, (list, tuple)) or not others:
            raise ValueError("sentences must be a non-empty list of strings")
        for s in others:
            check_text(s, "sentences[]")
        return source, list(others)

    def preprocess_batch(self, items, **options):
        pairs = [self.check_item(item) for item in items]
        rows = iter(self.encode_texts([text for source, others in pairs for text in (source, *others)], **options))
        return [[next(rows) for _ in range(1 + len(others))] for _, others in pairs]

    def postprocess(self, rows, outputs, **options):
        vectors = torch.stack([self.vector(out, **options) for out in outputs])  # unit length
        return (vectors[1:] @ vectors[0]).tolist()

    # -- front-end facts ------------------------------------------------------------------

    @classmethod
    def row_input(cls, row, columns):
        if columns.text:
            return super().row_input(row, columns)
        if "source_sentence" in row and "sentences" in row:
            return {"source_sentence": row["source_sentence"], "sentences": row["sentences"]}
        raise MissingColumn(f"sentence-similarity rows need 'source_sentence' and 'sentences' "
                            f"(a JSON lines object), got columns {sorted(row)}")

    @classmethod
    def input_columns(cls, columns):
        return super().input_columns(columns) if columns.text else ["source_sentence", "sentences"]

    @classmethod
    def cli_inputs(cls, texts, *, source=None, question=None, context=None):
        if not source:
            raise ValueError("sentence-similarity needs --source SENTENCE and the sentences to compare")
        if not texts:
            raise ValueError("sentence-similarity needs at least one sentence to compare with --source")
        return super().cli_inputs([{"source_sentence": source, "sentences": list(texts)}], question=question,
                                  context=context)
