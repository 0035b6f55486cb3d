"""Generation requests, shared by the HF Inference API (TGI-style parameters) and the OpenAI
routes: their knobs → the pipeline's transformers-style keywords, stop strings (cut on the
server), the request run on the pipeline's generation engine (streamed or not: the worker
encodes and submits it; see batcher.py), why a generation finished and how many tokens it made
(from the generated ids), and the token stream as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import StreamingResponse

from ..generation.request import as_ids
from . import errors, limits
from .common import generate_on_engine
from .registry import Served, has_token_stream

log = logging.getLogger("lightpipe.server")

# transformers generate() keywords passed through as they are
PASS_THROUGH = ("max_new_tokens", "max_length", "min_new_tokens", "num_beams", "num_return_sequences",
                "repetition_penalty", "no_repeat_ngram_size", "length_penalty", "early_stopping", "top_k", "top_p")
# TGI parameters lightpipe does not implement. Sent with a value, they are refused with the
# message transformers/TGI use, which makes huggingface_hub retry without them (and warn).
UNSUPPORTED = ("watermark", "grammar", "adapter_id", "best_of", "decoder_input_details", "frequency_penalty",
               "typical_p", "truncate")


def unsupported_error(names: list[str]) -> errors.ApiError:
    return errors.ApiError(400, f"The following `model_kwargs` are not used by the model: {names} "
                                "(lightpipe does not implement them)", "validation", param=names[0])


def sampling(options: dict, do_sample, temperature) -> dict:
    """do_sample/temperature as generate() wants them: temperature 0 means greedy."""
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0):
        raise errors.validation(f"temperature must be a number >= 0, got {temperature!r}", param="temperature")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise errors.validation(f"do_sample must be true or false, got {do_sample!r}", param="do_sample")
    if temperature == 0:
        do_sample, temperature = False, None
    if do_sample is not None:
        options["do_sample"] = bool(do_sample)
    if temperature is not None and options.get("do_sample"):
        options["temperature"] = float(temperature)
    return options


def generation_options(served: Served, options: dict) -> dict:
    """Keep return_full_text only where the pipeline has it (decoder-only text generation)."""
    if "return_full_text" not in served.pipeline.PIPELINE_OPTIONS:
        options.pop("return_full_text", None)
    return options


MAX_STOPS = 16  # stop strings a request may give (OpenAI allows 4)


def stops_of(value, name: str = "stop") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOPS:
            raise errors.validation(f"{name} has {len(value)} strings; at most {MAX_STOPS} are accepted", param=name)
        return [s for s in value if s]
    raise errors.validation(f"{name} must be a string or a list of strings, got {value!r:.80}", param=name)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class StopWatcher:
    """Streams text but holds back a tail that might be the start of a stop string, so a stop
    string is never sent, not even in part."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.buffer += piece
        text, self.stopped = cut_at_stop(self.buffer, self.stops)
        if self.stopped:
            self.buffer = ""
            return text
        keep = len(self.buffer) - self.hold if self.hold else len(self.buffer)
        out, self.buffer = self.buffer[:max(keep, 0)], self.buffer[max(keep, 0):]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


# the engine's reasons (generation.Event.finish_reason) in TGI's words; OpenAI's say "stop" for a
# stop string and for the end-of-sequence token alike
TGI_FINISH_REASONS = {"stop": "eos_token", "stop_string": "stop_sequence", "length": "length"}
OPENAI_FINISH_REASONS = {"stop_sequence": "stop", "eos_token": "stop", "length": "length"}


async def sendable(stream, watcher: StopWatcher):
    """(text that may be sent, its Token, TGI's finish reason on the last) per streamed token:
    text is held back while it could be the start of a stop string; the stream ends at one
    ("stop_sequence": the token that completed it is the last) or with the sequence, whose last
    token carries the text still held."""
    async for token in stream:
        out = watcher.feed(token.text)
        if watcher.stopped:
            yield out, token, "stop_sequence"
            return
        if token.finish_reason is not None:
            yield out + watcher.flush(), token, TGI_FINISH_REASONS[token.finish_reason]
            return
        yield out, token, None


def text_of(result) -> str:
    """The generated text of one transformers-shaped output ({generated_text | summary_text |
    translation_text}); for chat input, the assistant's reply."""
    if isinstance(result, list):
        result = result[0]
    if isinstance(result, dict):
        for key in ("generated_text", "summary_text", "translation_text"):
            if key in result:
                value = result[key]
                if isinstance(value, list):  # chat: the conversation with the reply appended
                    value = value[-1].get("content", "") if value and isinstance(value[-1], dict) else ""
                return value
    if isinstance(result, str):
        return result
    raise errors.ApiError(500, f"unexpected generation output {result!r:.100}", "server_error")


@dataclass
class Sequence:
    """One generated sequence, from the token ids the engine made: `text` is the pipeline's own
    decoding of them (what a plain call returns), `ids` the new tokens (an end-of-sequence
    token included; an empty decoder-only prompt's start token first, as transformers returns
    it), `eos` whether it ended with one; `generated`: the tokens the engine chose, with their
    log-probabilities and best alternatives when asked."""
    text: str
    ids: list[int]
    eos: bool
    decode: Callable[[list[int]], str]  # the text of the first tokens of `ids`
    generated: list[int]
    logprobs: list[float] | None = None
    tops: list[list[tuple[int, float]]] | None = None

    def finish(self, stops: list[str]) -> tuple[str, str, int]:
        """(text cut at the first stop string, TGI's finish reason, new tokens): a stop string
        counts the tokens up to the one that completed it, not those generated past it."""
        text, stopped = cut_at_stop(self.text, stops)
        if not stopped:
            return text, ("eos_token" if self.eos else "length"), len(self.ids)
        low, high = 1, len(self.ids)  # the fewest tokens whose text holds a stop string
        while low < high:
            mid = (low + high) // 2
            if cut_at_stop(self.decode(self.ids[:mid]), stops)[1]:
                high = mid
            else:
                low = mid + 1
        return text, "stop_sequence", high

    def token_data(self, used: int) -> list[tuple[int, float, list]]:
        """(id, logprob, alternatives) of the chosen tokens among the first `used` of `ids`."""
        n = max(used - (len(self.ids) - len(self.generated)), 0)
        tops = self.tops or [[]] * len(self.generated)
        return list(zip(self.generated[:n], self.logprobs[:n], tops[:n]))


async def generate(st, served: Served, prompts: list, options: dict, seed=None, defaults=(),
                   names: dict | None = None) -> tuple[list, int]:
    """Each prompt's transformers-shaped output (the pipeline's records, as a plain call gives
    them), generated on the pipeline's engine, and the prompt tokens. The request is bounded
    first (limits.check)."""
    lengths = bounded(st, served, prompts, options, defaults, names)
    pipe = served.pipeline
    options = with_seed(options, seed)

    def start(engine):
        runs = submit_prompts(pipe, engine, prompts, options)

        def collect(tops):
            return [pipe.records(item, prompt_ids, pipe.output_rows(handle, prompt_ids, config), **task_options)
                    for item, prompt_ids, handle, config, task_options in runs]
        return [r[2] for r in runs], collect

    done = await generate_on_engine(served, start, sum(lengths))
    return done.results, sum(lengths)


async def generate_sequences(st, served: Served, prompts: list, options: dict, seed=None, defaults=(),
                             names: dict | None = None, logprobs: bool = False,
                             top_logprobs: int = 0) -> tuple[list[list[Sequence]], int]:
    """Each prompt's sequences with their token ids (see Sequence), and the prompt tokens: the
    prompts run on the pipeline's engine, and its own `records` turn the ids into the text a
    plain call gives, so counts and finish reasons come from the generated ids, not
    re-tokenized text. With `logprobs`, each sequence has its tokens' log-probabilities (and
    `top_logprobs` alternatives per token)."""
    if options.get("return_tensors"):
        raise errors.validation("return_tensors is not a parameter of this route (it answers text)",
                                param="return_tensors")
    lengths = bounded(st, served, prompts, options, defaults, names)
    pipe = served.pipeline
    options = with_seed(options, seed)

    def start(engine):
        runs = submit_prompts(pipe, engine, prompts, options, logprobs=logprobs, top_logprobs=top_logprobs)

        def collect(tops):
            return [sequences_of(pipe, item, prompt_ids, handle, config, task_options, tops.get(handle))
                    for item, prompt_ids, handle, config, task_options in runs]
        return [r[2] for r in runs], collect

    done = await generate_on_engine(served, start, sum(lengths))
    return done.results, sum(lengths)


def with_seed(options: dict, seed) -> dict:
    """The seed as the engine takes it: each prompt's own torch.Generator, which no other request
    moves (never torch's global one)."""
    return options if seed is None else {**options, "seed": seed}


# The engine reads a stream's prompt ahead of non-streamed prompts admitted before it: a
# streaming client waits on its first token, a non-streamed one on its whole answer, which a
# stream's short prefill delays by little (a 32-prompt request would otherwise hold every new
# stream's first token for its whole prefill).
STREAM_PRIORITY, BATCH_PRIORITY = 0, 1


def submit_prompts(pipe, engine, prompts: list, options: dict, **extra) -> list[tuple]:
    """On the worker: encode the prompts as the pipeline does and submit each to the engine
    (after streams, see BATCH_PRIORITY); (item, prompt ids, handle, config, task options) per
    prompt. If one can't be submitted, the ones already queued are cancelled."""
    task_options, config = pipe.split_options(pipe.call_options(dict(options)))
    encoded = pipe.encode_items(prompts, task_options)
    pipe.check_lengths([len(p) for p in encoded], config)
    runs = []
    try:
        for item, prompt_ids in zip(prompts, encoded):
            handle = pipe.submit(engine, prompt_ids, config, priority=BATCH_PRIORITY, **extra)
            runs.append((item, prompt_ids, handle, config, task_options))
    except BaseException:
        for run in runs:
            engine.cancel(run[2])
        raise
    return runs


def sequences_of(pipe, item, prompt_ids: list[int], handle, config, task_options: dict, tops) -> list[Sequence]:
    """A finished handle's sequences (see Sequence), in the pipeline's output order."""
    eos = set(as_ids(config.eos_token_id))
    out = []
    for i, row in enumerate(pipe.output_rows(handle, prompt_ids, config)):
        if pipe.encoder_decoder:  # the decoder's row: its start token, new tokens, padding after eos
            start, new = row[:1], row[1:]
            new = new[:next((k + 1 for k, t in enumerate(new) if t in eos), len(new))]
        else:  # the new tokens up to and including eos
            start, new = [], row

        def decode(part, start=start):
            return text_of(pipe.records(item, prompt_ids, [start + part], **task_options)[0])

        logprobs = handle.token_logprobs[i] if handle.logprobs else None
        out.append(Sequence(decode(new), new, bool(new) and new[-1] in eos, decode, list(handle.tokens[i]),
                            logprobs, tops[i] if tops is not None else None))
    return out


def open_stream(st, served: Served, prompt, options: dict, seed: int | None = None, defaults=(),
                names: dict | None = None, logprobs: bool = False, top_logprobs: int = 0):
    """The pipeline's token stream for one prompt, run on the worker thread's engine (`Token`s,
    see batcher.py), and its prompt tokens."""
    if not has_token_stream(served.pipeline):
        raise errors.validation(f"model {served.id} ({served.task}) cannot stream tokens; send stream=false",
                                param="stream")
    lengths = bounded(st, served, [prompt], options, defaults, names)
    pipe = served.pipeline
    options = with_seed(options, seed)

    def make(engine):  # on the worker: encode, submit to the pipeline's shared engine
        prompt_ids, config, pieces = pipe.stream_request(prompt, **options)
        handle = pipe.submit(engine, prompt_ids, config, logprobs=logprobs, top_logprobs=top_logprobs,
                             priority=STREAM_PRIORITY)
        return handle, pieces

    try:
        return served.batcher.stream(make), lengths[0]
    except RuntimeError as e:  # shutting down
        raise errors.ApiError(503, str(e), "unavailable") from None


def bounded(st, served: Served, prompts: list, options: dict, defaults=(), names: dict | None = None) -> list[int]:
    """limits.check on the request's options (which it may change: a default length cut to fit)."""
    try:
        served.pipeline.check_options(dict(options))
    except Exception as e:
        raise errors.from_exception(e) from None
    return limits.check(served.pipeline, st.config, prompts, options, defaults, names)


def sse(obj) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def sse_response(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def stream_error(e: BaseException, served: Served) -> errors.ApiError:
    """A failure during a stream, as the event that ends it (the server's own faults logged)."""
    err = errors.from_exception(e)
    if err.status >= 500:
        log.error("stream on %s failed: %s: %s", served.id, type(e).__name__, e)
    return err
