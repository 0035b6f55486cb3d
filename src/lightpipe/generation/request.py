"""What the engine is asked and what it answers: a request's `Handle` (its settings, resolved
lengths, and the sequences as they grow) and the `Event`s a step produces."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field, replace

import torch

from ..generation_config import DEFAULT_MAX_LENGTH, GenerationConfig
from .processors import Settings, stop_window

_ids = itertools.count()


def as_ids(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    ids = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return [t for t in ids if t >= 0]  # a negative id (transformers' "never stop", with a warning) matches no token


@dataclass
class Event:
    """One sequence's progress in a step: its new token (greedy/sampling), or — for beam search,
    whose tokens are only known at the end — token None and the final sequence in
    `handle.tokens[index]`. `finish_reason` is set on a sequence's last event: "stop" (an eos
    token), "stop_string" (a `stop` string completed) or "length" (max_new_tokens reached)."""

    handle: Handle
    index: int  # which of the request's sequences (num_return_sequences)
    token: int | None
    logprob: float | None = None  # of `token`, under the distribution it was drawn from
    top_logprobs: list[tuple[int, float]] | None = None  # the best alternatives (token id, logprob)
    finish_reason: str | None = None


@dataclass(eq=False)
class Handle:
    """A submitted request and its results so far. Read by the caller; written by the engine's
    step() only."""

    prompt: list[int]  # what the model reads: a decoder-only prompt, or an encoder-decoder's source
    config: GenerationConfig
    settings: Settings
    n_rows: int  # rows in the KV cache: num_beams, or num_return_sequences when sampling
    n_out: int  # sequences returned
    beams: bool
    max_new: int
    min_new: int
    start: list[int]  # what the processors see before the first new token (prefix + prompt, or the decoder start)
    source_mask: list[int] | None = None  # encoder-decoder: 1/0 per source token
    decode: object = None  # token ids -> text, for stop strings
    logprobs: bool = False
    top_logprobs: int = 0
    generator: torch.Generator | None = None
    priority: int = 0  # prefill order among admitted requests, lowest first (Engine.submit)
    id: int = field(default_factory=lambda: next(_ids))
    # results
    tokens: list[list[int]] = field(default_factory=list)  # each sequence's new tokens
    finish_reasons: list[str | None] = field(default_factory=list)
    token_logprobs: list[list[float]] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    error: BaseException | None = None

    def __post_init__(self):
        self.tokens = [[] for _ in range(self.n_out)]
        self.finish_reasons = [None] * self.n_out
        self.token_logprobs = [[] for _ in range(self.n_out)]

    @property
    def encoder_decoder(self) -> bool:
        return self.source_mask is not None

    @property
    def reserve(self) -> int:
        """KV positions each of its rows may fill: the prompt (or the decoder start) and every
        new token but the last, which is never fed back."""
        return (1 if self.encoder_decoder else len(self.prompt)) + self.max_new - 1

    @property
    def cross(self) -> int:
        """Encoder positions each of its rows holds."""
        return len(self.prompt) if self.encoder_decoder else 0

    @property
    def stop_tail(self) -> list[int]:
        stops = self.config.stop
        return self.start[-stop_window(stops):] if stops else []

    def counts(self) -> list[int]:
        """Tokens generated per sequence (for usage)."""
        return [len(t) for t in self.tokens]


def resolve_lengths(cfg: GenerationConfig, prompt_len: int, model, is_enc_dec: bool) -> tuple[int, int]:
    """(max_new, min_new) for a prompt of `prompt_len` tokens (the processors' view: a padded
    batch's width), as transformers' _prepare_generated_length decides them."""
    context = model.context_length
    P = prompt_len
    if cfg.max_new_tokens is not None:
        max_length = P + cfg.max_new_tokens
    elif cfg.max_length is None or (cfg.max_length == DEFAULT_MAX_LENGTH and not cfg.max_length_from_caller):
        max_length = P + DEFAULT_MAX_LENGTH
        if context is not None:
            max_length = min(max_length, context)
    else:
        max_length = cfg.max_length
    hard = model.max_positions  # learned position tables can't go further
    if hard is not None:
        if P >= hard:
            raise ValueError(
                f"`input_ids` has {P} tokens but the model's context is {hard} positions: "
                "no room to generate; shorten (truncate) the prompt"
            )
        # the last token is never fed back, so a sequence may be one longer than the table
        if max_length > hard + 1:
            warnings.warn(
                f"the model's context ends at {hard} positions: generation stops there, "
                f"{max_length - hard - 1} tokens short of the requested length",
                stacklevel=4,
            )
            max_length = hard + 1
    if P >= max_length:
        name = "decoder_input_ids" if is_enc_dec else "input_ids"
        raise ValueError(
            f"{name} has {P} tokens but `max_length` is {max_length}: nothing left to generate; "
            "raise `max_length` or, better, set `max_new_tokens`"
        )
    min_length = cfg.min_length
    if cfg.min_new_tokens is not None:
        min_length = P + cfg.min_new_tokens
    if min_length > max_length:
        warnings.warn(
            f"min_length ({min_length}) is larger than max_length ({max_length}); generation stops at max_length",
            stacklevel=4,
        )
    min_new = max(min_length - P, cfg.min_new_tokens or 0) if as_ids(cfg.eos_token_id) else 0
    return max_length - P, min_new


def build_handle(model, prompt, config: GenerationConfig | None, *, decode=None, logprobs=False, top_logprobs=0,
                 source_mask=None, history_prefix=None, device=None, **overrides) -> Handle:
    """Check a request and resolve what it asks (engine.submit's work before queueing)."""
    cfg = (config or GenerationConfig()).merge(**overrides)
    cfg.validate()
    if isinstance(cfg.stop, str):
        cfg = replace(cfg, stop=[cfg.stop])
    if cfg.stop and decode is None:
        raise ValueError("`stop` strings need `decode` (token ids -> text) to be passed to generate()")
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise TypeError(f"`prompt` must be a list of token ids, got {prompt!r:.80}")
    if not isinstance(top_logprobs, int) or isinstance(top_logprobs, bool) or top_logprobs < 0:
        raise ValueError(f"`top_logprobs` must be a non-negative integer, got {top_logprobs!r}")
    prompt = list(prompt)
    is_enc_dec = model.is_encoder_decoder
    eos = as_ids(cfg.eos_token_id)
    if is_enc_dec:
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.bos_token_id
        if start is None:
            raise ValueError("`decoder_start_token_id` or `bos_token_id` must be set for encoder-decoder generation")
        if source_mask is not None and len(source_mask) != len(prompt):
            raise ValueError(f"`source_mask` has {len(source_mask)} entries for {len(prompt)} source tokens")
        source_mask = list(source_mask) if source_mask is not None else [1] * len(prompt)
        if history_prefix:
            raise ValueError("`history_prefix` is for decoder-only prompts")
        seen = [int(start)]
    else:
        if not prompt:
            raise ValueError("`input_ids` is empty: a decoder-only model needs at least one prompt token")
        if source_mask is not None:
            raise ValueError("`source_mask` is for encoder-decoder sources")
        seen = list(history_prefix or ()) + prompt
    max_new, min_new = resolve_lengths(cfg, len(seen), model, is_enc_dec)
    beams = cfg.num_beams > 1
    n_out = cfg.num_return_sequences if (beams or cfg.do_sample) else 1
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    return Handle(prompt=prompt, config=cfg, settings=Settings.of(cfg, eos), n_rows=cfg.num_beams if beams else n_out,
                  n_out=n_out, beams=beams, max_new=max_new, min_new=min_new, start=seen, source_mask=source_mask,
                  decode=decode, logprobs=bool(logprobs or top_logprobs), top_logprobs=top_logprobs,
                  generator=generator)
