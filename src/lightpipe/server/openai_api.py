"""OpenAI-compatible routes: /v1/embeddings, /v1/completions, /v1/chat/completions (with
`stream: true` as server-sent events ending `data: [DONE]`) and /v1/models."""

from __future__ import annotations

import base64
import time
import uuid

from starlette.requests import Request

from . import errors
from .common import check_batch, embedding_model, embed, json_response, positive_int, read_json, state
from .generate import (OPENAI_FINISH_REASONS, StopWatcher, cut_at_stop, finish_reason, generate, generation_options,
                       open_stream, sampling, sse, sse_response, stops_of, text_of, until_stop)


async def models(request: Request):
    st = state(request)
    data = [{"id": e.id, "object": "model", "created": int(st.started), "owned_by": "lightpipe",
             "task": e.task, "status": e.status} for e in st.registry.all()]
    return json_response({"object": "list", "data": data})


async def embeddings(request: Request):
    st = state(request)
    body = await read_json(request)
    served = embedding_model(st, body.get("model"))
    value = body.get("input")
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items = value
    elif isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise errors.validation("input as token ids is not supported (they are another tokenizer's ids); send strings")
    else:
        raise errors.validation("input must be a string or a non-empty list of strings")
    check_batch(st, len(items))
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise errors.validation(f"encoding_format must be 'float' or 'base64', got {fmt!r}")
    dimensions = positive_int(body.get("dimensions"), "dimensions")
    vectors, tokens = await embed(served, items, normalize=True, dimensions=dimensions)
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
    if name:
        served = st.registry.get(name)
        if not fits(served):
            kind = "a model that takes chats" if chat else "a generation model"
            raise errors.validation(f"model {served.id} serves {served.task}; {what} needs {kind}")
        return served
    return st.registry.choose(fits, what)


REFUSED = {"logprobs": "logprobs", "top_logprobs": "logprobs", "tools": "tool calling", "functions": "function calling",
           "response_format": "response_format", "logit_bias": "logit_bias", "suffix": "suffix"}


def openai_options(served, body: dict, chat: bool) -> tuple[dict, list[str], int | None, int]:
    for key, what in REFUSED.items():
        value = body.get(key)
        if value not in (None, False, 0, [], {}) and not (key == "response_format" and value == {"type": "text"}):
            raise errors.validation(f"{what} is not supported by lightpipe")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise errors.validation(f"{key} is not supported by lightpipe (use repetition_penalty)")
    limit = body.get("max_completion_tokens") if chat else None
    limit = positive_int(limit if limit is not None else body.get("max_tokens"), "max_tokens", None if chat else 16)
    n = positive_int(body.get("n"), "n", 1)
    temperature = body.get("temperature")
    options = sampling({}, True, 1.0 if temperature is None else temperature)  # OpenAI samples unless temperature is 0
    if body.get("top_p") is not None and options["do_sample"]:
        options["top_p"] = body["top_p"]
    for key in ("top_k", "repetition_penalty", "num_beams"):  # extensions other servers accept too
        if body.get(key) is not None:
            options[key] = body[key]
    if limit is not None:
        options["max_new_tokens"] = limit
    if n > 1:
        options["num_return_sequences"] = n
    options["return_full_text"] = bool(body.get("echo")) and not chat
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise errors.validation(f"seed must be an integer, got {seed!r}")
    return generation_options(served, options), stops_of(body.get("stop")), seed, n


def check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise errors.validation("messages must be a non-empty list of {role, content} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise errors.validation(f"each message needs a role and content, got {m!r:.80}")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise errors.validation("only text message content is supported")
            content = "".join(p.get("text", "") for p in content)
        if content is not None and not isinstance(content, str):
            raise errors.validation(f"message content must be a string, got {content!r:.80}")
        out.append({"role": m["role"], "content": content or ""})
    return out


async def completions(request: Request):
    return await complete(request, chat=False)


async def chat_completions(request: Request):
    return await complete(request, chat=True)


async def complete(request: Request, chat: bool):
    st = state(request)
    body = await read_json(request)
    served = generation_model(st, body.get("model"), chat)
    options, stop, seed, n = openai_options(served, body, chat)
    if chat:
        prompts = [check_messages(body.get("messages"))]
    else:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise errors.validation("prompt must be a string or a non-empty list of strings")
        check_batch(st, len(prompts))
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if body.get("stream"):
        if n > 1 or len(prompts) > 1:
            raise errors.validation("stream=true takes one prompt and n=1")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return stream_response(served, prompts[0], options, stop, seed, chat, rid, include_usage)
    results, prompt_tokens = await generate(served, prompts, options, seed)
    choices, completion_tokens = [], 0
    for result in results:
        sequences = result if isinstance(result, list) else [result]
        for seq in sequences[:n]:
            text, stopped = cut_at_stop(text_of(seq), stop)
            reason, used = finish_reason(served, text, stopped, options)
            reason = OPENAI_FINISH_REASONS[reason]
            completion_tokens += used
            i = len(choices)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                "finish_reason": reason})
            else:
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    return json_response({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": served.id, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def stream_response(served, prompt, options, stop, seed, chat: bool, rid: str, include_usage: bool):
    stream = open_stream(served, prompt, options, seed)
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason=None, first=False) -> str:
        if chat:
            d = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        return sse({"id": rid, "object": kind, "created": created, "model": served.id, "choices": [choice]})

    async def events():
        watcher, text = StopWatcher(stop), ""
        try:
            if chat:
                yield chunk(None, first=True)
            async for out in until_stop(stream, watcher):
                text += out
                yield chunk(out)
            tail = watcher.flush()
            if tail:
                text += tail
                yield chunk(tail)
            reason, used = finish_reason(served, text, watcher.stopped, options)
            yield chunk(None, OPENAI_FINISH_REASONS[reason])
            if include_usage:
                prompt_tokens = _prompt_tokens(served, prompt, options)
                yield sse({"id": rid, "object": kind, "created": created, "model": served.id, "choices": [],
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                     "total_tokens": prompt_tokens + used}})
        except Exception as e:
            err = errors.from_exception(e)
            yield sse({"error": {"message": err.message, "type": err.error_type}, "error_type": err.error_type})
        yield "data: [DONE]\n\n"

    return sse_response(events())


def _prompt_tokens(served, prompt, options: dict) -> int:
    from .batcher import count_tokens

    return count_tokens(served.pipeline, [prompt], options)
