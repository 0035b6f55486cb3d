"""text2text-generation, summarization and translation (translation_xx_to_yy): an encoder-decoder
model (BART, mBART, T5, Marian) generates a text for each input text.

Inputs, keywords and outputs follow transformers 4.57.6: a string gives
[{"summary_text": ...}] (one record per returned sequence, `generated_text` /
`translation_text` for the other tasks); a list of strings gives one record per input when
each has one sequence, else a list of records per input. `return_tensors=True` gives
`*_token_ids` (the decoder sequence from its start token, as transformers returns it) instead
of text. Every other keyword is a generation argument.

Generation settings come, lowest first, from the pipeline's defaults (max_new_tokens=256,
num_beams=4), the checkpoint's generation_config.json (or config.json), its
`task_specific_params[task]` (which also gives T5's input prefix, "summarize: ") and the
caller — with one deviation from 4.57.6: a `max_length` (the caller's, or the checkpoint's)
is honoured rather than overridden by the injected max_new_tokens=256.

Speed: all inputs of a call are tokenized at once, sorted by length and generated in
right-padded batches (the encoder mask keeps padding out), so short and long documents don't
share a batch; results come back in input order. transformers generates one input at a time.
"""

from __future__ import annotations

import warnings

import torch

from ..generation import generate
from ..generation_config import GenerationConfig, pipeline_generation_config
from .base import Pipeline, check_positive_int

DEFAULT_BATCH = 16  # inputs generated together
BEAM_ROW_TOKENS = 16384  # encoder tokens x beams per batch: bounds the cached cross-attention keys/values
TRUNCATION = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")

# ISO 639-2/3 codes some Marian (Tatoeba) checkpoints use, to compare with a task's two-letter codes
ISO3 = {"eng": "en", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "ita": "it", "por": "pt",
        "nld": "nl", "dut": "nl", "ron": "ro", "rum": "ro", "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja",
        "kor": "ko", "ara": "ar", "tur": "tr", "pol": "pl", "swe": "sv", "fin": "fi", "dan": "da", "ces": "cs",
        "cze": "cs", "ell": "el", "gre": "el", "hun": "hu", "ukr": "uk", "hin": "hi", "heb": "he", "vie": "vi"}


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Text2TextGenerationPipeline(Pipeline):
    task = "text2text-generation"
    head = "seq2seq-lm"
    return_name = "generated"
    DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}  # transformers' _default_generation_config
    PIPELINE_OPTIONS = {"return_tensors", "return_text", "clean_up_tokenization_spaces", "truncation",
                        "stop_sequence", "batch_size"}

    def __init__(self, model, tokenizer, config: dict, *, task_name: str | None = None, **kwargs):
        # the name task_specific_params is looked up by ("translation_en_to_fr", "summarization", ...)
        self.task_name = task_name or self.task
        self._task_name_from_caller = task_name is not None
        super().__init__(model, tokenizer, config, **kwargs)
        self.generation, task_prefix = pipeline_generation_config(
            self.folder, config, self.task_name, self.DEFAULTS, tokenizer.pad_token_id)
        self.prefix = task_prefix if task_prefix is not None else config.get("prefix")

    # -- options ---------------------------------------------------------------------------

    def check_options(self, options: dict) -> dict:
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        if generation:
            (getattr(self, "generation", None) or GenerationConfig()).merge(**generation)  # unknown names raise
        truncation = options.get("truncation")
        if truncation is not None and truncation not in TRUNCATION:
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', "
                             f"got {truncation!r}")
        stop = options.get("stop_sequence")
        if stop is not None and (not isinstance(stop, str) or not stop):
            raise ValueError(f"stop_sequence must be a non-empty string, got {stop!r}")
        check_positive_int(options.get("batch_size"), "batch_size")
        return options

    def split_options(self, options: dict) -> tuple[dict, dict]:
        pipeline_opts = {k: v for k, v in options.items() if k in self.PIPELINE_OPTIONS}
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        stop = pipeline_opts.get("stop_sequence")
        if stop is not None:
            # transformers: the stop sequence's first token replaces eos
            ids = self.tokenizer.encode(stop, add_special_tokens=False).ids
            if not ids:
                raise ValueError(f"stop_sequence {stop!r} encodes to no token")
            if len(ids) > 1:
                warnings.warn("Stopping on a multiple token sequence is not yet supported on transformers. The first "
                              "token of the stop sequence will be used as the stop sequence string in the interim.",
                              stacklevel=5)
            generation["eos_token_id"] = ids[0]
        return pipeline_opts, generation

    # -- the call --------------------------------------------------------------------------

    def __call__(self, inputs=None, **kwargs):
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, (list, tuple)) and all(isinstance(r, list) and len(r) == 1 for r in result):
            return [r[0] for r in result]  # transformers unwraps one record per input
        return result

    def run(self, items: list, options: dict, batch_size=None) -> list:
        pipeline_opts, generation = self.split_options(options)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"{self.task} inputs must be strings (or a list of strings); "
                                f"input {i} is {type(item).__name__}: {item!r:.60}")
        extra = self.input_options(options)
        config = self.generation.merge(**{**extra.pop("generation", {}), **generation})
        config.validate()
        prompts = self.encode_inputs(items, pipeline_opts.get("truncation") or False, **extra)
        self.check_lengths([len(p) for p in prompts], config)

        size = check_positive_int(batch_size, "batch_size") or DEFAULT_BATCH
        beams = max(config.num_beams, config.num_return_sequences if config.do_sample else 1)
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]), reverse=True)
        outputs: list = [None] * len(items)
        start = 0
        while start < len(order):
            longest = len(prompts[order[start]])
            take = max(1, min(size, BEAM_ROW_TOKENS // max(longest * beams, 1)))
            batch = order[start:start + take]
            start += take
            for i, rows in zip(batch, self.generate([prompts[i] for i in batch], config)):
                outputs[i] = self.records(rows, **pipeline_opts)
        return outputs

    def input_options(self, options: dict) -> dict:
        """Per-task extras for encoding (translation: language codes)."""
        return {}

    # -- encoding --------------------------------------------------------------------------

    @property
    def encoder_limit(self) -> int | None:
        """The longest input the encoder can take: learned or sinusoidal position tables are a hard
        limit (BART, Marian); T5's relative positions have none."""
        if self.config.get("model_type") == "t5":
            return None
        return self.config.get("max_position_embeddings")

    def encode_inputs(self, texts: list[str], truncation=False, prefix_ids=(), suffix_ids=None) -> list[list[int]]:
        """Token ids of each input (with the task prefix), checked against the encoder's limit."""
        prefix = self.prefix or ""
        texts = [prefix + t for t in texts]
        hard = self.encoder_limit
        tokenizer_limit = self.tokenizer.model_max_length
        if truncation == "do_not_truncate":
            truncation = False
        limit = min(tokenizer_limit, hard) if hard else tokenizer_limit
        specials = suffix_ids is None  # the tokenizer adds its own special tokens
        if truncation and not specials:
            limit -= len(prefix_ids) + len(suffix_ids)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=specials, truncation=truncation,
                                                max_length=limit if truncation else None)
        prompts = [list(prefix_ids) + e.ids + ([] if specials else list(suffix_ids)) for e in encodings]
        over_soft = []
        for i, ids in enumerate(prompts):
            if hard and len(ids) > hard:
                raise ValueError(
                    f"input {i} has {len(ids)} tokens but {self.model_id or 'the model'}'s encoder accepts at most "
                    f"{hard}; pass truncation=True to cut it (input starts {texts[i][:40]!r})")
            if len(ids) > tokenizer_limit:
                over_soft.append(len(ids))
        if over_soft:  # T5: runs, as in transformers, with the tokenizer's warning
            warnings.warn(f"Token indices sequence length is longer than the specified maximum sequence length for "
                          f"this model ({max(over_soft)} > {tokenizer_limit}); pass truncation=True to cut inputs",
                          stacklevel=5)
        return prompts

    def check_lengths(self, lengths: list[int], config: GenerationConfig) -> None:
        """transformers' check_inputs warnings (summarization, translation)."""

    # -- generation ------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[list[int]]]:
        """Right-pad prompts into one batch, generate, and return each prompt's decoder rows, each
        cut as transformers returns them for that prompt alone."""
        longest = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (config.pad_token_id or 0)
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for j, p in enumerate(prompts):
            ids[j, :len(p)] = torch.tensor(p, dtype=torch.long)
            mask[j, :len(p)] = 1
        with torch.inference_mode():
            out = generate(self.model, ids.to(self.device), mask.to(self.device), config)
        per_prompt = out.shape[0] // len(prompts)
        eos = set(_as_list(config.eos_token_id))
        rows = out.tolist()
        results = []
        for j in range(len(prompts)):
            mine = rows[j * per_prompt:(j + 1) * per_prompt]
            # alone, a prompt's rows are as long as its longest: up to its eos, or all of it
            width = max(_length(r, eos) for r in mine)
            results.append([r[:width] for r in mine])
        return results

    # -- output ----------------------------------------------------------------------------

    def records(self, rows: list[list[int]], return_tensors=None, return_text=None,
                clean_up_tokenization_spaces=None, **_) -> list[dict]:
        # as in transformers: return_tensors gives token ids instead of text; return_text is accepted
        if return_tensors:  # a 1-D tensor per sequence, as transformers returns (and documents) them
            return [{f"{self.return_name}_token_ids": torch.tensor(row)} for row in rows]
        clean = bool(clean_up_tokenization_spaces)  # the pipeline's default is False, whatever the tokenizer says
        return [{f"{self.return_name}_text": self.tokenizer.decode(row, skip_special_tokens=True,
                                                                   clean_up_tokenization_spaces=clean)}
                for row in rows]


def _length(row: list[int], eos: set) -> int:
    """Up to and including the first eos after the start token, else the whole row."""
    for k in range(1, len(row)):
        if row[k] in eos:
            return k + 1
    return len(row)


class SummarizationPipeline(Text2TextGenerationPipeline):
    task = "summarization"
    return_name = "summary"

    def check_lengths(self, lengths, config):
        if config.max_new_tokens is not None:
            return  # the length is counted in new tokens, not against the input
        max_length = config.max_length if config.max_length is not None else 20
        if max_length < config.min_length:
            warnings.warn(f"Your min_length={config.min_length} must be inferior than your max_length={max_length}.",
                          stacklevel=5)
        short = [n for n in lengths if n < max_length]
        if short:
            n = min(short)
            warnings.warn(
                f"Your max_length is set to {max_length}, but your input_length is only {n}"
                f"{f' ({len(short)} of {len(lengths)} inputs are shorter)' if len(lengths) > 1 else ''}. Since this "
                "is a summarization task, where outputs shorter than the input are typically wanted, you might "
                f"consider decreasing max_length manually, e.g. summarizer('...', max_length={n // 2})",
                stacklevel=5)


class TranslationPipeline(Text2TextGenerationPipeline):
    task = "translation"
    return_name = "translation"
    PIPELINE_OPTIONS = Text2TextGenerationPipeline.PIPELINE_OPTIONS | {"src_lang", "tgt_lang"}

    def __init__(self, model, tokenizer, config: dict, *, task_name: str | None = None, **kwargs):
        if task_name is None:
            # transformers: plain "translation" on a checkpoint with translation_* parameters uses the first
            for key in config.get("task_specific_params") or {}:
                if key.startswith("translation"):
                    task_name = key
                    warnings.warn(f'"translation" task was used, instead of "translation_XX_to_YY", defaulting to '
                                  f'"{task_name}"', UserWarning, stacklevel=4)
                    break
        super().__init__(model, tokenizer, config, task_name=task_name, **kwargs)
        if task_name is not None and not self._task_name_from_caller:
            parts = task_name.split("_")
            if len(parts) == 4:  # the languages transformers derives from the task name
                self.defaults.setdefault("src_lang", parts[1])
                self.defaults.setdefault("tgt_lang", parts[3])
        self.check_pair(self.defaults.get("src_lang"), self.defaults.get("tgt_lang"),
                        self.task_name if self._task_name_from_caller else None)
        pairs = [k for k in config.get("task_specific_params") or {} if k.startswith("translation_")]
        if pairs and self.task_name not in pairs:
            # transformers runs it without a prefix, silently: the output is rarely a translation
            warnings.warn(f"{self.model_id or 'this model'} has task parameters (and input prefixes) for "
                          f"{', '.join(pairs)} but not {self.task_name}: inputs are given to the model as they are",
                          UserWarning, stacklevel=4)

    def check_options(self, options):
        options = super().check_options(options)
        for name in ("src_lang", "tgt_lang"):
            if options.get(name) is not None and not isinstance(options[name], str):
                raise TypeError(f"{name} must be a language code string, got {type(options[name]).__name__}")
        if getattr(self, "generation", None) is not None and ("src_lang" in options or "tgt_lang" in options):
            self.check_pair(options.get("src_lang"), options.get("tgt_lang"))
        return options

    def check_pair(self, src: str | None, tgt: str | None, task_name: str | None = None) -> None:
        """A Marian checkpoint translates one pair (or into a group): asking it for another pair is
        an error here (transformers silently translates its own pair)."""
        known_src = getattr(self.tokenizer, "source_lang", None)
        known_tgt = getattr(self.tokenizer, "target_lang", None)
        if not (known_src or known_tgt):
            return

        def differs(asked, known):
            if not asked or not known or not (2 <= len(known) <= 3 and known.isalpha() and known.islower()):
                return False  # unknown, or a language group such as ROMANCE / mul
            asked, known = asked.lower(), known.lower()
            return ISO3.get(asked, asked) != ISO3.get(known, known)

        if differs(src, known_src) or differs(tgt, known_tgt):
            asked = task_name or f"src_lang={src!r}, tgt_lang={tgt!r}"
            raise ValueError(
                f"{self.model_id or 'this model'} translates {known_src} to {known_tgt}, but {asked} asks for "
                f"{src or '?'} to {tgt or '?'}; use the task 'translation' (or 'translation_{known_src}_to_{known_tgt}'"
                f") or a model for {src or '?'}→{tgt or '?'} (e.g. Helsinki-NLP/opus-mt-{src}-{tgt})")

    @property
    def multilingual(self) -> str | None:
        """"mbart50" / "mbart" when the tokenizer marks the source language with a language code
        (transformers' `_build_translation_inputs`); None for single-pair tokenizers (Marian, T5)."""
        name = str(getattr(self.tokenizer, "config", {}).get("tokenizer_class") or "").lower()
        if name.startswith("mbart50tokenizer"):
            return "mbart50"
        if name.startswith("mbarttokenizer"):
            return "mbart"
        return None

    def language_id(self, code: str, name: str) -> int:
        extra = self.tokenizer.config.get("additional_special_tokens") or []
        codes = [t.get("content") if isinstance(t, dict) else t for t in extra]  # mBART saves its codes there
        index = self.tokenizer.token_to_id(code) if isinstance(code, str) else None
        if index is None or index == self.tokenizer.unk_token_id or (codes and code not in codes):
            raise ValueError(f"{name}={code!r} is not a language code of this tokenizer; it knows "
                             f"{', '.join(codes[:8])}{', ...' if len(codes) > 8 else ''}")
        return index

    def input_options(self, options):
        """mBART tokenizers mark the source language on the input and the target language is forced
        as the first generated token (src_lang and tgt_lang required); other tokenizers ignore
        the languages, as in transformers."""
        kind = self.multilingual
        if kind is None:
            return {}
        src, tgt = options.get("src_lang"), options.get("tgt_lang")
        if src is None or tgt is None:
            raise ValueError("Translation requires a `src_lang` and a `tgt_lang` for this model "
                             "(language codes such as en_XX, fr_XX)")
        src_id, tgt_id = self.language_id(src, "src_lang"), self.language_id(tgt, "tgt_lang")
        eos = self.tokenizer.eos_token_id
        prefix, suffix = ([src_id], [eos]) if kind == "mbart50" else ([], [eos, src_id])
        return {"prefix_ids": prefix, "suffix_ids": suffix, "generation": {"forced_bos_token_id": tgt_id}}

    def check_lengths(self, lengths, config):
        if config.max_new_tokens is not None:
            return
        max_length = config.max_length if config.max_length is not None else 20
        long = [n for n in lengths if n > 0.9 * max_length]
        if long:
            warnings.warn(f"Your input_length: {max(long)} is bigger than 0.9 * max_length: {max_length}. You might "
                          "consider increasing your max_length manually, e.g. translator('...', max_length=400)",
                          stacklevel=5)
