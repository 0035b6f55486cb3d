"""What to generate: `GenerationConfig` (transformers' generation fields, the checkpoint's
defaults, caller overrides, validation) and the defaults chain a pipeline starts from.
How to generate is `generation.py`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .repo_files import read_json

DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig().max_length


@dataclass
class GenerationConfig:
    max_new_tokens: int | None = None
    max_length: int | None = None  # None: transformers' default (20 new tokens, capped by the context)
    min_new_tokens: int | None = None
    min_length: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    bad_words_ids: list[list[int]] | None = None
    seed: int | None = None
    stop: list[str] | None = None
    # set by merge(): the caller gave max_length itself, so a value of 20 is not "the default"
    max_length_from_caller: bool = field(default=False, repr=False)

    ALIASES = {"stop_strings": "stop"}

    @classmethod
    def from_model(cls, model_config: dict, generation_config: dict | None = None) -> "GenerationConfig":
        """The checkpoint's defaults, with transformers' precedence: generation_config.json when the
        checkpoint has one, else the generation fields of config.json."""
        source = generation_config if generation_config is not None else model_config
        names = {f.name for f in fields(cls)} - {"seed", "max_length_from_caller"}
        values = {}
        for key, value in source.items():
            key = cls.ALIASES.get(key, key)
            if key in names and value is not None:
                values[key] = value
        return cls(**values)

    def merge(self, **kwargs) -> "GenerationConfig":
        """A copy with the caller's values on top (the caller wins; None values are ignored).

        A caller's max_length (min_length) without max_new_tokens (min_new_tokens) replaces the
        length the checkpoint or pipeline defaults gave, rather than losing to it.
        """
        names = {f.name for f in fields(self)} - {"max_length_from_caller"}
        given = {}
        unknown = []
        for key, value in kwargs.items():
            key = self.ALIASES.get(key, key)
            if key not in names:
                unknown.append(key)
            elif value is not None:
                given[key] = value
        if unknown:
            raise ValueError(
                f"unknown generation argument(s) {sorted(unknown)}; supported: {sorted(names | set(self.ALIASES))}"
            )
        if "max_length" in given:
            given["max_length_from_caller"] = True
            given.setdefault("max_new_tokens", None)
        if "min_length" in given:
            given.setdefault("min_new_tokens", None)
        return replace(self, **given)

    def validate(self) -> None:
        def positive_int(name, value, allow_zero=False):
            if value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
                kind = "a non-negative" if allow_zero else "a positive"
                raise ValueError(f"`{name}` must be {kind} integer, got {value!r}")

        positive_int("max_new_tokens", self.max_new_tokens)
        positive_int("max_length", self.max_length)
        positive_int("min_new_tokens", self.min_new_tokens, allow_zero=True)
        positive_int("min_length", self.min_length, allow_zero=True)
        positive_int("num_beams", self.num_beams)
        positive_int("num_return_sequences", self.num_return_sequences)
        positive_int("no_repeat_ngram_size", self.no_repeat_ngram_size, allow_zero=True)
        positive_int("top_k", self.top_k, allow_zero=True)
        if self.do_sample:
            if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
                raise ValueError(
                    f"`temperature` must be a strictly positive float when sampling, got {self.temperature!r}; "
                    "for greedy decoding set do_sample=False"
                )
            if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
                raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty > 0:
            raise ValueError(f"`repetition_penalty` must be a strictly positive float, got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"`early_stopping` must be True, False or 'never', got {self.early_stopping!r}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"`num_return_sequences` (={self.num_return_sequences}) > 1 needs beam search (num_beams > 1) "
                "or sampling (do_sample=True); greedy decoding has a single answer"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"`num_return_sequences` (={self.num_return_sequences}) must be <= `num_beams` (={self.num_beams})"
            )
        for name in ("eos_token_id", "forced_eos_token_id"):
            ids = getattr(self, name)
            if ids is not None and not _token_ids(ids):
                raise ValueError(f"`{name}` must be a token id or a non-empty list of token ids "
                                 f"(a negative id: no end-of-sequence token, as transformers), got {ids!r}")
        if self.bad_words_ids is not None and (
            not isinstance(self.bad_words_ids, list)
            or not self.bad_words_ids
            or not all(isinstance(s, list) and s and all(isinstance(t, int) and t >= 0 for t in s) for s in self.bad_words_ids)
        ):
            raise ValueError(f"`bad_words_ids` must be a non-empty list of lists of token ids, got {self.bad_words_ids!r}")
        if self.stop is not None and not (
            isinstance(self.stop, str) or (isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop))
        ):
            raise ValueError(f"`stop` must be a string or a list of non-empty strings, got {self.stop!r}")


def pipeline_generation_config(folder, config: dict, task: str, pipeline_defaults: dict,
                               pad_token_id: int | None) -> tuple[GenerationConfig, str | None]:
    """The generation defaults a pipeline starts from, and the task's input prefix.

    Precedence, lowest first, as transformers documents it: the pipeline's own defaults; the
    checkpoint's generation_config.json (or config.json's generation fields); the checkpoint's
    `task_specific_params[task]`. A length (`max_length`) set by a higher level replaces a
    lower level's `max_new_tokens` rather than losing to it.
    """
    saved = read_json(Path(folder) / "generation_config.json", missing=None) if folder else None
    checkpoint = GenerationConfig.from_model(config, saved)
    base = GenerationConfig()
    defaults = {k: v for k, v in pipeline_defaults.items() if getattr(checkpoint, k) == getattr(base, k)}
    if checkpoint.max_length not in (None, base.max_length) and "max_new_tokens" in defaults:
        del defaults["max_new_tokens"]  # the checkpoint's own length wins over the pipeline's
    generation = checkpoint.merge(**defaults) if defaults else checkpoint
    task_params = dict((config.get("task_specific_params") or {}).get(task) or {})
    prefix = task_params.pop("prefix", None)
    known = {k: v for k, v in task_params.items() if hasattr(generation, k)}
    if known:
        generation = generation.merge(**known)
    if generation.pad_token_id is None and pad_token_id is not None:
        generation = generation.merge(pad_token_id=pad_token_id)
    return generation, prefix


def _token_ids(value) -> bool:
    """An integer (a python int, numpy's or a one-element tensor's) or a non-empty list of them."""
    if hasattr(value, "tolist"):  # a tensor or array: its python values
        value = value.tolist()
    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(t, int) and not isinstance(t, bool) for t in items)
