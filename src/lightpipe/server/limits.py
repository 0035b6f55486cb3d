"""What a generation request may ask, checked when its options are built and before any work,
as text-generation-inference and vLLM bound it:

- prompt tokens ≤ --max-input-tokens (default: the model's context, less one token to generate,
  for a decoder-only model; the encoder's limit for an encoder-decoder);
- prompt + new tokens ≤ --max-total-tokens for a decoder-only model (new tokens alone for an
  encoder-decoder), never past the model's context. A length the client gave that doesn't fit
  is a 422; the route's or the checkpoint's default length is cut to fit instead;
- sequences per prompt (n, num_return_sequences, num_beams, best_of) ≤ --max-sequences.

Every generation route (HF Inference API, OpenAI, streamed or not) goes through `check`, so
no request makes the engine allocate for a length it would then refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import errors

DEFAULT_CONTEXT = 4096  # a model whose config names no context: --max-total-tokens applies, else this


@dataclass
class Bounds:
    input: int  # prompt tokens
    total: int  # prompt + new tokens (decoder-only); new tokens (encoder-decoder)
    sequences: int  # per prompt
    decoder_only: bool


def model_context(pipe) -> int | None:
    """Positions the model was built for: its whole sequence (decoder-only) or its decoder's."""
    config = getattr(pipe, "config", None) or {}
    return config.get("max_position_embeddings") or config.get("n_positions") or None


def bounds(pipe, config) -> Bounds:
    decoder_only = not getattr(pipe, "encoder_decoder", False)
    context = model_context(pipe)
    total = min(n for n in (config.max_total_tokens, context or DEFAULT_CONTEXT) if n)
    if decoder_only:
        inputs = min(config.max_input_tokens or total - 1, total - 1)
    else:
        encoder = getattr(pipe, "encoder_limit", None) or getattr(pipe.tokenizer, "model_max_length", None)
        inputs = min(n for n in (config.max_input_tokens, encoder, 10**9) if n)
    return Bounds(max(inputs, 1), total, config.max_sequences, decoder_only)


def check(pipe, config, items: list, options: dict, defaults=(), names: dict | None = None) -> list[int]:
    """Check a generation request against the bounds; cut a default length to fit (in `options`).
    Returns each prompt's token count. `defaults`: the options the route filled in (not the
    client); `names`: the client's names for pipeline options (OpenAI's max_tokens, n)."""
    names = names or {}

    def named(option: str) -> str:
        return names.get(option, option)

    b = bounds(pipe, config)
    try:
        task_options, generation = pipe.split_options(pipe.call_options(dict(options)))
        prompts = pipe.encode_items(items, task_options)
    except (ValueError, TypeError) as e:
        raise errors.validation(str(e)) from None
    for option in ("num_beams", "num_return_sequences"):
        value = getattr(generation, option)
        if value > b.sequences:
            raise errors.validation(f"{named(option)}={value} is more than the {b.sequences} sequences a prompt may "
                                    f"ask for (--max-sequences)", param=named(option))
    lengths = [len(p) for p in prompts]
    longest = max(lengths, default=0)
    if longest > b.input:
        raise errors.validation(f"the prompt has {longest} tokens, more than the {b.input} this model accepts "
                                f"(--max-input-tokens)", param=named("inputs"), code="context_length_exceeded")
    room = b.total - longest if b.decoder_only else b.total
    if generation.max_new_tokens is not None:
        option, new = "max_new_tokens", generation.max_new_tokens
    elif generation.max_length is not None:
        option = "max_length"
        new = generation.max_length - longest if b.decoder_only else generation.max_length
    else:
        option, new = None, 20  # transformers' default length
    if new > room:
        if option is not None and option in options and option not in defaults:
            whole = f"the prompt's {longest} tokens + {new} new tokens" if b.decoder_only else f"{new} new tokens"
            limit = "tokens in all" if b.decoder_only else "new tokens"
            raise errors.validation(f"{named(option)}={options[option]}: {whole} is more than the {b.total} {limit} "
                                    f"this model allows (--max-total-tokens)", param=named(option),
                                    code="context_length_exceeded")
        options.pop("max_length", None)
        options["max_new_tokens"] = room  # a default length: cut to fit
    return lengths
