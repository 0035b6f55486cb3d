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
right-padded batches (the encoder mask keeps padding out; the generation base,
`generative.GenerationPipeline`), so short and long documents don't share a batch; results come
back in input order. transformers generates one input at a time.
"""

from __future__ import annotations

import warnings

import torch

from .generative import GenerationPipeline

TRUNCATION = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")

# ISO 639-2/3 codes some Marian (Tatoeba) checkpoints use, to compare with a task's two-letter codes
ISO3 = {"eng": "en", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "ita": "it", "por": "pt",
        "nld": "nl", "dut": "nl", "ron": "ro", "rum": "ro", "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja",
        "kor": "ko", "ara": "ar", "tur": "tr", "pol": "pl", "swe": "sv", "fin": "fi", "dan": "da", "ces": "cs",
        "cze": "cs", "ell": "el", "gre": "el", "hun": "hu", "ukr": "uk", "hin": "hi", "heb": "he", "vie": "vi"}


class Text2TextGenerationPipeline(GenerationPipeline):
    task = "text2text-generation"
    head = "seq2seq-lm"
    encoder_decoder = True
    hf_request = "text2text"
    hf_parameters = frozenset({"clean_up_tokenization_spaces", "generate_parameters", "truncation"})
    DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}  # transformers' _default_generation_config
    PIPELINE_OPTIONS = {"return_tensors", "return_text", "clean_up_tokenization_spaces", "truncation",
                        "stop_sequence", "batch_size"}

    # -- options ---------------------------------------------------------------------------

    def check_options(self, options: dict) -> dict:
        options = super().check_options(options)
        truncation = options.get("truncation")
        if truncation is not None and truncation not in TRUNCATION:
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', "
                             f"got {truncation!r}")
        stop = options.get("stop_sequence")
        if stop is not None and (not isinstance(stop, str) or not stop):
            raise ValueError(f"stop_sequence must be a non-empty string, got {stop!r}")
        return options

    def stop_eos(self, stop_sequence):
        # transformers: the stop sequence's first token replaces eos
        ids = self.tokenizer.encode(stop_sequence, add_special_tokens=False).ids
        if not ids:
            raise ValueError(f"stop_sequence {stop_sequence!r} encodes to no token")
        if len(ids) > 1:
            warnings.warn("Stopping on a multiple token sequence is not yet supported on transformers. The first "
                          "token of the stop sequence will be used as the stop sequence string in the interim.",
                          stacklevel=6)
        return ids[0]

    # -- the call --------------------------------------------------------------------------

    def in_list(self, result):
        # transformers unwraps the record of an input of a list when each input has one (each has
        # num_return_sequences, so one is the case for all inputs or for none)
        return result[0] if len(result) == 1 else result

    # -- encoding --------------------------------------------------------------------------

    @property
    def encoder_limit(self) -> int | None:
        """The longest input the encoder can take: learned or sinusoidal position tables are a hard
        limit (BART, Marian); T5's relative positions have none."""
        if self.config.get("model_type") == "t5":
            return None
        return self.config.get("max_position_embeddings")

    def encode_items(self, items, task_options):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"{self.task} inputs must be strings (or a list of strings); "
                                f"input {i} is {type(item).__name__}: {item!r:.60}")
        return self.encode_inputs(items, task_options.get("truncation") or False, **self.language_tokens(task_options))

    def language_tokens(self, task_options: dict) -> dict:
        """Token ids around each input that name its language (prefix_ids, suffix_ids: translation
        with mBART); none by default."""
        return {}

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
                          stacklevel=6)
        return prompts

    # -- output ----------------------------------------------------------------------------

    def records(self, item, prompt_ids, rows, return_tensors=None, return_text=None,
                clean_up_tokenization_spaces=None, **_) -> list[dict]:
        # as in transformers: return_tensors gives token ids instead of text; return_text is accepted
        if return_tensors:  # a 1-D tensor per sequence, as transformers returns (and documents) them
            return [{f"{self.return_name}_token_ids": torch.tensor(row)} for row in rows]
        clean = bool(clean_up_tokenization_spaces)  # the pipeline's default is False, whatever the tokenizer says
        return [{f"{self.return_name}_text": self.tokenizer.decode(row, skip_special_tokens=True,
                                                                   clean_up_tokenization_spaces=clean)}
                for row in rows]


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
    hf_parameters = Text2TextGenerationPipeline.hf_parameters | {"src_lang", "tgt_lang"}

    def setup(self):
        self.named = self.task_name != self.task  # asked for as "translation_xx_to_yy"
        if not self.named:
            # transformers: plain "translation" on a checkpoint with translation_* parameters uses the first
            for key in self.config.get("task_specific_params") or {}:
                if key.startswith("translation"):
                    self.task_name = key
                    warnings.warn(f'"translation" task was used, instead of "translation_XX_to_YY", defaulting to '
                                  f'"{key}"', UserWarning, stacklevel=5)
                    break
        super().setup()
        pairs = [k for k in self.config.get("task_specific_params") or {} if k.startswith("translation_")]
        if pairs and self.task_name not in pairs:
            # transformers runs it without a prefix, silently: the output is rarely a translation
            warnings.warn(f"{self.model_id or 'this model'} has task parameters (and input prefixes) for "
                          f"{', '.join(pairs)} but not {self.task_name}: inputs are given to the model as they are",
                          UserWarning, stacklevel=5)

    def check_defaults(self, defaults):
        defaults = dict(defaults)
        if self.named:
            self.check_pair(defaults.get("src_lang"), defaults.get("tgt_lang"), self.task_name)
        else:
            parts = self.task_name.split("_")
            if len(parts) == 4:  # the languages transformers derives from the checkpoint's task name
                defaults.setdefault("src_lang", parts[1])
                defaults.setdefault("tgt_lang", parts[3])
        return super().check_defaults(defaults)

    def check_options(self, options):
        options = super().check_options(options)
        for name in ("src_lang", "tgt_lang"):
            if options.get(name) is not None and not isinstance(options[name], str):
                raise TypeError(f"{name} must be a language code string, got {type(options[name]).__name__}")
        if "src_lang" in options or "tgt_lang" in options:
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

    @property
    def language_list(self) -> list[str]:
        """The tokenizer's language codes (mBART saves them as its additional special tokens)."""
        extra = self.tokenizer.config.get("additional_special_tokens") or []
        return [t.get("content") if isinstance(t, dict) else t for t in extra]

    def server_info(self):
        """For the playground's language fields: whether src_lang / tgt_lang are required, the
        codes to choose from, and the pair the tokenizer was saved with (a default to offer)."""
        if self.multilingual is None:
            return {}
        config = self.tokenizer.config
        defaults = {k: config[k] for k in ("src_lang", "tgt_lang") if isinstance(config.get(k), str)}
        return {"needs_languages": True, "languages": self.language_list, "language_defaults": defaults}

    def language_id(self, code: str, name: str) -> int:
        codes = self.language_list
        index = self.tokenizer.token_to_id(code) if isinstance(code, str) else None
        if index is None or index == self.tokenizer.unk_token_id or (codes and code not in codes):
            raise ValueError(f"{name}={code!r} is not a language code of this tokenizer; it knows "
                             f"{', '.join(codes[:8])}{', ...' if len(codes) > 8 else ''}")
        return index

    def language_codes(self, task_options: dict) -> tuple[int, int] | None:
        """mBART tokenizers mark the source language on the input and the target language is forced
        as the first generated token (src_lang and tgt_lang required): their ids. None for other
        tokenizers, which ignore the languages, as in transformers."""
        if self.multilingual is None:
            return None
        src, tgt = task_options.get("src_lang"), task_options.get("tgt_lang")
        if src is None or tgt is None:
            raise ValueError("Translation requires a `src_lang` and a `tgt_lang` for this model "
                             "(language codes such as en_XX, fr_XX)")
        return self.language_id(src, "src_lang"), self.language_id(tgt, "tgt_lang")

    def language_tokens(self, task_options):
        codes = self.language_codes(task_options)
        if codes is None:
            return {}
        eos = self.tokenizer.eos_token_id
        prefix, suffix = ([codes[0]], [eos]) if self.multilingual == "mbart50" else ([], [eos, codes[0]])
        return {"prefix_ids": prefix, "suffix_ids": suffix}

    def generation_overrides(self, task_options, generation):
        codes = self.language_codes(task_options)
        return generation if codes is None else {"forced_bos_token_id": codes[1], **generation}

    def check_lengths(self, lengths, config):
        if config.max_new_tokens is not None:
            return
        max_length = config.max_length if config.max_length is not None else 20
        long = [n for n in lengths if n > 0.9 * max_length]
        if long:
            warnings.warn(f"Your input_length: {max(long)} is bigger than 0.9 * max_length: {max_length}. You might "
                          "consider increasing your max_length manually, e.g. translator('...', max_length=400)",
                          stacklevel=5)
