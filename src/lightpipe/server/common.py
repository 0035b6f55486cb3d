"""What the route modules share: the server's settings and state, reading a JSON body,
checking inputs, and running a job on a pipeline's batcher."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse

from . import errors
from .metrics import Metrics
from .middleware import current_request
from .registry import Registry, Served

log = logging.getLogger("lightpipe.server")


@dataclass
class ServerConfig:
    max_batch_tokens: int = 16384  # input tokens coalesced into one pipeline call (the batcher's budget)
    max_concurrent_requests: int = 512  # inference requests in flight (bodies complete); beyond: 429
    max_client_batch_size: int = 2048  # inputs in one request (OpenAI's embeddings batches are up to 2048); beyond: 413
    max_body_bytes: int = 8 * 1024 * 1024  # request body; beyond: 413
    max_input_tokens: int | None = None  # generation: prompt tokens; None: the model's context (less one for decoders)
    max_total_tokens: int | None = None  # generation: prompt + new tokens (decoder-only), new tokens (encoder-decoder); None: the model's context
    max_sequences: int = 8  # n / num_return_sequences / num_beams / best_of per prompt
    header_timeout: float = 10.0  # seconds for a request's headers to arrive; then the connection is closed
    body_timeout: float = 30.0  # seconds for a request's body to arrive; then 408
    shutdown_timeout: float = 30.0  # seconds open requests get after SIGTERM before they are cancelled
    api_keys: list[str] = field(default_factory=list)  # Bearer keys; empty: no authentication
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed to call the API
    allow_load: bool = False  # /api/load may load Hub models by id
    allow_load_local: bool = False  # ... and folders on the server (needs allow_load)
    max_models: int = 16  # models held at once (loaded, loading, and failed ones not yet cleared)
    failed_load_ttl: float = 600.0  # seconds a failed /api/load stays listed (or until retried)
    device: str | None = None
    dtype: str | None = None  # float32, bfloat16, float16, auto
    quantize: str | None = None  # int8 (weight-only)
    revision: str | None = None  # the Hub revision of models given without @REVISION
    hub_endpoint: str | None = None  # model search: None = HF_ENDPOINT / huggingface.co


@dataclass
class ServerState:
    config: ServerConfig
    registry: Registry
    metrics: Metrics
    in_flight: int = 0
    started: float = field(default_factory=time.time)


def state(request: Request) -> ServerState:
    return request.app.state.lightpipe


class _JSONResponse(JSONResponse):
    """Tensors and numpy values in a result (`return_tensors=True` token ids, say) as JSON lists
    and numbers; `default` is only called for them, so plain results cost nothing extra."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=_plain).encode("utf-8")


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_response(content, status: int = 200) -> JSONResponse:
    return _JSONResponse(content, status_code=status)


MAX_DEPTH = 32  # JSON nesting a request may have (the deepest real request, chat parts, is 5)
MAX_INT = 2**64  # integers beyond 64 bits mean nothing to a model: refused before they reach torch


async def read_json(request: Request) -> dict:
    """The request's JSON object. The body is already whole (middleware.Bodies read it under the
    size limit and deadline); here it must be plain JSON: no NaN/Infinity, integers within 64
    bits, nesting within MAX_DEPTH — refused with 422 rather than failing somewhere deeper."""
    body = await request.body()
    if not body.strip():
        raise errors.validation("the request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise errors.validation(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise errors.validation(f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise errors.validation(f"the request body must be a JSON object, got {type(data).__name__}")
    check_plain(data)
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


def check_plain(data) -> None:
    """Nesting depth and integer size, walked without recursion."""
    stack = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT < value < MAX_INT:
                raise errors.validation(f"{where.lstrip('.') or 'a number'} is beyond 64-bit integers",
                                        param=where.lstrip(".") or None)
            continue
        if depth > MAX_DEPTH:
            raise errors.validation(f"the request body is nested deeper than {MAX_DEPTH} levels")
        for key, item in items:
            stack.append((item, depth + 1, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"))


def check_batch(st: ServerState, n: int, param: str = "inputs") -> None:
    limit = st.config.max_client_batch_size
    if n > limit:
        raise errors.too_large(f"batch size {n} > maximum allowed batch size {limit} (--max-client-batch-size)",
                               param=param)


def texts(value, name: str = "inputs") -> tuple[list[str], bool]:
    """A string or a non-empty list of strings → (list, whether it was a single string)."""
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value), False
    if isinstance(value, list) and not value:
        raise errors.validation(f"{name} is an empty list; send at least one string", param=name)
    raise errors.validation(f"{name} must be a string or a list of strings, got {_describe(value)}", param=name)


def _describe(value) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def options_of(value, name: str = "parameters") -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.validation(f"{name} must be a JSON object, got {_describe(value)}", param=name)
    return {k: v for k, v in value.items() if v is not None}


def boolean(value, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.validation(f"{name} must be true or false, got {_describe(value)}", param=name)
    return value


def positive_int(value, name: str, default=None):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.validation(f"{name} must be a positive integer, got {_describe(value)}", param=name)
    return value


async def run(served: Served, fn: str, items: list, options: dict | None = None, seed: int | None = None,
              tokens: int | None = None):
    """Queue `items` on the pipeline's batcher and wait for them; pipeline errors become 422 (bad
    input) or 500. If the client disconnects first, its job is dropped when it hasn't started
    (and flagged cancelled when it has: see batcher.Job.cancelled) and the request ends as 499."""
    if fn == "run":  # reject bad options now, before they join (and fail) someone's batch
        try:
            served.pipeline.check_options(dict(options or {}))
        except Exception as e:
            raise errors.from_exception(e) from None
    try:
        job = served.batcher.submit(fn, items, options, seed, tokens=tokens)
    except RuntimeError as e:  # shutting down
        raise errors.ApiError(503, str(e), "unavailable") from None
    return await answer_of(served, job)


async def generate_on_engine(served: Served, start, tokens: int):
    """Queue a non-streamed generation on the pipeline's engine (batcher.Job "generate") and wait
    for its results; a client that disconnects has its sequences cancelled in the engine."""
    try:
        job = served.batcher.generate(start, tokens)
    except RuntimeError as e:  # shutting down
        raise errors.ApiError(503, str(e), "unavailable") from None
    return await answer_of(served, job)


async def answer_of(served: Served, job):
    """The job's Done; if the client disconnects first, the job is cancelled (dropped when it
    hasn't started, flagged when it has: see batcher.Job.cancelled) and the request ends as 499."""
    answer = asyncio.wrap_future(job.future)
    context = current_request()
    if context is not None:
        gone = asyncio.ensure_future(context.gone.wait())
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            served.batcher.cancel(job)
            answer.cancel()
            raise errors.client_gone()
        gone.cancel()
    try:
        return await answer
    except errors.ApiError:
        raise
    except Exception as e:
        if not isinstance(e, (ValueError, TypeError)):
            log.error("%s on %s failed (request %s): %s: %s", job.fn, served.id, context.id if context else "-",
                      type(e).__name__, e)
        raise errors.from_exception(e) from None


async def embed(served: Served, items: list, *, normalize: bool = True, truncation: bool = False,
                dimensions: int | None = None, prompt_name: str | None = None, tokens: int | None = None):
    """(N, D) float32 sentence embeddings, plus the input token count: the pipeline's
    pooling="auto" (the checkpoint's sentence-transformers chain), `dimensions` as its truncate_dim
    (cut, then normalized if asked), `prompt_name` one of the checkpoint's prompts. Items are
    texts, or lists of token ids (used as given; `tokens` is then their count)."""
    import torch

    options = {"normalize": normalize, "truncation": truncation}
    if dimensions is not None:
        options["truncate_dim"] = dimensions
    if prompt_name is not None:
        options["prompt_name"] = prompt_name
    done = await run(served, "embed", items, options, tokens=tokens)
    return torch.stack(done.results).float(), done.tokens


def embedding_model(st: ServerState, name) -> Served:
    served = st.registry.pick(name if isinstance(name, str) else None, lambda e: e.can_embed, "embedding")
    if not served.can_embed:
        raise errors.validation(f"model {served.id} serves {served.task}, not embeddings; "
                                "serve a feature-extraction / sentence-similarity model", param="model")
    return served
