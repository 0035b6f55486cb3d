"""OpenAI-compatible routes: /v1/embeddings, /v1/completions, /v1/chat/completions (with
`stream: true` as server-sent events ending `data: [DONE]`) and /v1/models — also under
`/models/{name}/v1/...`, the URL huggingface_hub's InferenceClient(".../models/NAME") posts
chats to, where the path names the model. Errors are OpenAI's `{"error": {"message", "type",
"param", "code"}}` (errors.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass

from starlette.requests import Request

from . import errors
from .common import check_batch, embed, json_response, positive_int, read_json, state
from .generate import (OPENAI_FINISH_REASONS, StopWatcher, generate_sequences, generation_options, open_stream,
                       sampling, sendable, sse, sse_response, stops_of, stream_error)
from .tokens import MAX_TOP_LOGPROBS, chat_logprobs, completion_logprobs, vocabulary

# OpenAI's names for the pipeline options a generation request sets (for messages and `param`)
NAMES = {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "inputs": "prompt"}
CHAT_NAMES = {**NAMES, "inputs": "messages"}


def model_in_path(request: Request) -> str | None:
    """The model a `/models/{name}/v1/...` URL names (it wins over the body's `model`)."""
    return request.path_params.get("model_id")


async def models(request: Request):
    st = state(request)
    entries = st.registry.all()
    if (name := model_in_path(request)) is not None:
        entries = [st.registry.get(name)]
    data = [{"id": e.id, "object": "model", "created": int(st.started), "owned_by": "lightpipe",
             "task": e.task, "status": e.status} for e in entries]
    return json_response({"object": "list", "data": data})


def embedding_input(value) -> tuple[list, int | None]:
    """OpenAI's `input`: a string, strings, token ids or lists of token ids (the model's own
    vocabulary, used as given) → (items, their token count when they are ids)."""
    def ids(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        return [value], None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value, None
    if ids(value):
        return [value], len(value)
    if isinstance(value, list) and value and all(ids(v) for v in value):
        return value, sum(len(v) for v in value)
    raise errors.validation("input must be a string, a non-empty list of strings, a list of token ids or a list of "
                            "lists of token ids", param="input")


async def embeddings(request: Request):
    st = state(request)
    body = await read_json(request)
    name = model_in_path(request) or body.get("model")
    served = st.registry.pick(name if isinstance(name, str) else None, lambda e: e.can_embed, "embedding")
    if not served.can_embed:
        raise errors.validation(f"model {served.id} serves {served.task}, not embeddings; serve a feature-extraction "
                                "or sentence-similarity model", param="model")
    items, id_tokens = embedding_input(body.get("input"))
    check_batch(st, len(items), "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise errors.validation(f"encoding_format must be 'float' or 'base64', got {fmt!r:.40}", param="encoding_format")
    dimensions = positive_int(body.get("dimensions"), "dimensions")
    vectors, tokens = await embed(served, items, normalize=True, dimensions=dimensions, tokens=id_tokens)
    if fmt == "base64":  # little-endian float32, as the openai client decodes it
        encoded = [base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() for v in vectors]
    else:
        encoded = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    return json_response({"object": "list", "data": data, "model": served.id,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def generation_model(st, name, chat: bool):
    what = "chat" if chat else "text generation"
    fits = (lambda e: e.pipeline.takes_chat) if chat else (lambda e: e.pipeline.generates)  # noqa: E731
    served = st.registry.pick(name if isinstance(name, str) else None, fits, what)
    if not fits(served):
        kind = "a model that takes chats" if chat else "a generation model"
        raise errors.validation(f"model {served.id} serves {served.task}; {what} needs {kind}", param="model")
    return served


REFUSED = {"tools": "tool calling", "functions": "function calling", "tool_choice": "tool calling",
           "response_format": "response_format", "logit_bias": "logit_bias", "suffix": "suffix"}
MAX_TEMPLATE_KWARGS_CHARS = 4096  # chat_template_kwargs as JSON


@dataclass
class Asked:
    """What an OpenAI generation request asks beyond the pipeline's options."""
    stop: list[str]
    seed: int | None
    n: int
    best_of: int
    logprobs: bool  # per-token log-probabilities in the answer
    top_logprobs: int  # alternatives per token
    defaults: set  # the options the route filled in (not the client)


def openai_options(st, served, body: dict, chat: bool) -> tuple[dict, Asked]:
    """The request's pipeline options, and what else it asks."""
    for key, what in REFUSED.items():
        value = body.get(key)
        if value not in (None, False, 0, [], {}, "none") and not (key == "response_format" and value == {"type": "text"}):
            raise errors.validation(f"{what} is not supported by lightpipe", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise errors.validation(f"{key} is not supported by lightpipe (use repetition_penalty)", param=key)
    given = body.get("max_completion_tokens") if chat else None
    key = "max_completion_tokens" if given is not None else "max_tokens"
    limit = positive_int(given if given is not None else body.get("max_tokens"), key)
    n = positive_int(body.get("n"), "n", 1)
    best_of = positive_int(body.get("best_of"), "best_of", n)
    if best_of < n:
        raise errors.validation(f"best_of must be at least n ({n}), got {best_of}", param="best_of")
    if body.get("best_of") is not None and best_of > st.config.max_sequences:
        raise errors.validation(f"best_of={best_of} is more than the {st.config.max_sequences} sequences a prompt "
                                "may ask for (--max-sequences)", param="best_of")
    logprobs, top_logprobs = logprobs_of(body, chat)
    temperature = body.get("temperature")
    options = sampling({}, True, 1.0 if temperature is None else temperature)  # OpenAI samples unless temperature is 0
    if body.get("top_p") is not None and options["do_sample"]:
        options["top_p"] = body["top_p"]
    for extra in ("top_k", "repetition_penalty", "num_beams"):  # extensions other servers accept too
        if body.get(extra) is not None:
            options[extra] = body[extra]
    if logprobs and options.get("num_beams") not in (None, 1):
        raise errors.bad_request("logprobs need num_beams=1: beam search scores whole sequences, not the tokens "
                                 "of one distribution", param="logprobs")
    defaults = set()
    if limit is not None:
        options["max_new_tokens"] = limit
    elif not chat:
        options["max_new_tokens"] = 16  # OpenAI's default for completions
        defaults.add("max_new_tokens")
    if best_of > 1 and options["do_sample"]:
        options["num_return_sequences"] = best_of  # greedy: one answer, repeated n times
    echo = boolean_echo(body)
    if echo and logprobs and not chat:
        raise errors.bad_request("echo with logprobs would need the prompt's log-probabilities, which lightpipe does "
                                 "not compute; send one of them", param="echo")
    options["return_full_text"] = echo and not chat
    kwargs = template_kwargs(body.get("chat_template_kwargs"), chat)
    if kwargs:
        options["tokenizer_encode_kwargs"] = kwargs
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise errors.validation(f"seed must be an integer, got {seed!r:.40}", param="seed")
    asked = Asked(stops_of(body.get("stop")), seed, n, best_of, logprobs, top_logprobs, defaults)
    return generation_options(served, options), asked


def logprobs_of(body: dict, chat: bool) -> tuple[bool, int]:
    """(log-probabilities wanted, alternatives per token): chat's `logprobs: true` with
    `top_logprobs: k`, or completions' `logprobs: k` — k within 0..MAX_TOP_LOGPROBS."""
    def alternatives(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
            raise errors.validation(f"{name} must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {value!r:.40}",
                                    param=name)
        return value

    value, top = body.get("logprobs"), body.get("top_logprobs")
    if not chat:
        if top is not None:
            raise errors.validation("top_logprobs is a chat parameter; completions take logprobs: <int>",
                                    param="top_logprobs")
        return (False, 0) if value is None else (True, alternatives(value, "logprobs"))
    if value is not None and not isinstance(value, bool):
        raise errors.validation(f"logprobs must be true or false, got {value!r:.40}", param="logprobs")
    if top is not None:
        if not value:
            raise errors.bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        return True, alternatives(top, "top_logprobs")
    return bool(value), 0


def template_kwargs(value, chat: bool) -> dict | None:
    """chat_template_kwargs (vLLM's): variables for the chat template (Qwen3's enable_thinking),
    a JSON object of bounded size."""
    if value is None:
        return None
    if not chat:
        raise errors.validation("chat_template_kwargs applies to chat completions (a prompt string is not "
                                "rendered by a template)", param="chat_template_kwargs")
    if not isinstance(value, dict):
        raise errors.validation(f"chat_template_kwargs must be an object, got {value!r:.40}",
                                param="chat_template_kwargs")
    if len(json.dumps(value)) > MAX_TEMPLATE_KWARGS_CHARS:
        raise errors.validation(f"chat_template_kwargs is longer than {MAX_TEMPLATE_KWARGS_CHARS} characters of "
                                "JSON", param="chat_template_kwargs")
    if "add_special_tokens" in value:
        raise errors.validation("add_special_tokens is not a chat template variable (a template writes its own "
                                "special tokens)", param="chat_template_kwargs")
    return dict(value)


def boolean_echo(body: dict) -> bool:
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise errors.validation(f"echo must be true or false, got {echo!r:.40}", param="echo")
    return bool(echo)


def check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise errors.validation("messages must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise errors.validation(f"each message needs a role and content, got {m!r:.80}", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text", ""), str)
                       for p in content):
                raise errors.validation("only text message content is supported", param="messages")
            content = "".join(p.get("text", "") for p in content)
        if content is not None and not isinstance(content, str):
            raise errors.validation(f"message content must be a string, got {content!r:.80}", param="messages")
        out.append({"role": m["role"], "content": content or ""})
    return out


def include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise errors.validation(f"stream_options must be an object, got {options!r:.40}", param="stream_options")
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise errors.validation(f"stream_options.include_usage must be true or false, got {usage!r:.40}",
                                param="stream_options")
    return bool(usage)


async def completions(request: Request):
    return await complete(request, chat=False)


async def chat_completions(request: Request):
    return await complete(request, chat=True)


async def complete(request: Request, chat: bool):
    st = state(request)
    body = await read_json(request)
    served = generation_model(st, model_in_path(request) or body.get("model"), chat)
    options, asked = openai_options(st, served, body, chat)
    names = CHAT_NAMES if chat else NAMES
    if chat:
        prompts = [check_messages(body.get("messages"))]
    else:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise errors.validation("prompt must be a string or a non-empty list of strings", param="prompt")
        check_batch(st, len(prompts), "prompt")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.validation(f"stream must be true or false, got {stream!r:.40}", param="stream")
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if stream:
        if asked.n > 1 or len(prompts) > 1:
            raise errors.validation("stream=true takes one prompt and n=1", param="n")
        if asked.best_of > 1:
            raise errors.validation("stream=true can't choose the best of several sequences; send best_of 1",
                                    param="best_of")
        usage = include_usage(body)
        return stream_response(st, served, prompts[0], options, asked, chat, rid, usage, names)
    # best_of > n chooses by the sequences' log-probabilities, which the engine then returns
    want = asked.logprobs or asked.best_of > asked.n
    results, prompt_tokens = await generate_sequences(st, served, prompts, options, asked.seed, asked.defaults, names,
                                                      logprobs=want, top_logprobs=asked.top_logprobs)
    vocab = vocabulary(served.pipeline) if asked.logprobs else None
    choices, completion_tokens = [], 0
    for sequences in results:
        finished = [(seq, *seq.finish(asked.stop)) for seq in sequences]
        if len(finished) == 1:  # greedy: the one answer, n times
            completion_tokens += finished[0][3] * asked.n
            finished = finished * asked.n
        else:  # sampled: every candidate counts; the n best by mean log-probability per token are returned
            completion_tokens += sum(used for *_, used in finished)
            if asked.best_of > asked.n:
                finished = sorted(finished, key=lambda f: -mean_logprob(f[0].token_data(f[3])))[:asked.n]
        for seq, text, reason, used in finished:
            i = len(choices)
            logprobs = None
            if vocab is not None:
                tokens = seq.token_data(used)
                logprobs = chat_logprobs(vocab, tokens) if chat else completion_logprobs(vocab, tokens)
            reason = OPENAI_FINISH_REASONS[reason]
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                                "finish_reason": reason})
            else:
                choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason})
    return json_response({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": served.id, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def mean_logprob(tokens: list[tuple]) -> float:
    """OpenAI's best_of rule: the highest log-probability per token."""
    return sum(lp for _, lp, _ in tokens) / len(tokens) if tokens else 0.0


def stream_response(st, served, prompt, options, asked: Asked, chat: bool, rid: str, include_usage: bool, names):
    stream, prompt_tokens = open_stream(st, served, prompt, options, asked.seed, asked.defaults, names,
                                        logprobs=asked.logprobs, top_logprobs=asked.top_logprobs)
    vocab = vocabulary(served.pipeline) if asked.logprobs else None
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason=None, first=False, logprobs=None) -> str:
        if chat:
            d = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": logprobs, "finish_reason": reason}
        return sse({"id": rid, "object": kind, "created": created, "model": served.id, "choices": [choice]})

    async def events():
        used, offset, reason = 0, 0, "length"
        try:
            if chat:
                yield chunk(None, first=True)
            async for out, token, end in sendable(stream, StopWatcher(asked.stop)):
                used += 1
                if vocab is not None:  # a chunk per token, with its log-probabilities
                    data = [(token.id, token.logprob, token.top)]
                    logprobs = chat_logprobs(vocab, data) if chat else completion_logprobs(vocab, data, offset)
                    offset += len(vocab.text(token.id))
                    yield chunk(out, logprobs=logprobs)
                elif out:
                    yield chunk(out)
                if end is not None:
                    reason = end
            yield chunk(None, OPENAI_FINISH_REASONS[reason])
            if include_usage:
                yield sse({"id": rid, "object": kind, "created": created, "model": served.id, "choices": [],
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                     "total_tokens": prompt_tokens + used}})
        except Exception as e:
            err = stream_error(e, served)
            yield sse({"error": {"message": errors.scrub(err.message), "type": errors.openai_type(err.status),
                                 "param": err.param, "code": err.code or err.error_type}})
        yield "data: [DONE]\n\n"

    return sse_response(events())
