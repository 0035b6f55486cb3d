"""What the route modules share: the server's settings and state, reading a JSON body,
checking inputs, and running a job on a pipeline's batcher."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse

from . import errors
from .metrics import Metrics
from .registry import Registry, Served


@dataclass
class ServerConfig:
    max_batch_tokens: int = 16384  # input tokens coalesced into one pipeline call
    max_concurrent_requests: int = 512  # inference requests in flight; beyond: 429
    max_client_batch_size: int = 32  # inputs in one request; beyond: 413
    max_body_bytes: int = 2 * 1024 * 1024  # request body; beyond: 413
    allow_load: bool = False  # the playground may load Hub models by id
    device: str | None = None
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


async def read_json(request: Request) -> dict:
    """The request's JSON object (the size limit is enforced while reading, by the middleware)."""
    body = await request.body()
    if not body.strip():
        raise errors.validation("the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise errors.validation(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise errors.validation(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def check_batch(st: ServerState, n: int) -> None:
    limit = st.config.max_client_batch_size
    if n > limit:
        raise errors.too_large(f"batch size {n} > maximum allowed batch size {limit} (--max-client-batch-size)")


def texts(value, name: str = "inputs") -> tuple[list[str], bool]:
    """A string or a non-empty list of strings → (list, whether it was a single string)."""
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value), False
    if isinstance(value, list) and not value:
        raise errors.validation(f"{name} is an empty list; send at least one string")
    raise errors.validation(f"{name} must be a string or a list of strings, got {_describe(value)}")


def _describe(value) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def options_of(value, name: str = "parameters") -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.validation(f"{name} must be a JSON object, got {_describe(value)}")
    return {k: v for k, v in value.items() if v is not None}


def boolean(value, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.validation(f"{name} must be true or false, got {value!r}")
    return value


def positive_int(value, name: str, default=None):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.validation(f"{name} must be a positive integer, got {value!r}")
    return value


async def run(served: Served, fn: str, items: list, options: dict | None = None, seed: int | None = None):
    """Queue `items` on the pipeline's batcher; pipeline errors become 422 (bad input) or 500."""
    if fn == "run":  # reject bad options now, before they join (and fail) someone's batch
        try:
            served.pipeline.check_options(dict(options or {}))
        except Exception as e:
            raise errors.from_exception(e) from None
    try:
        return await served.batcher(fn, items, options, seed)
    except errors.ApiError:
        raise
    except Exception as e:
        raise errors.from_exception(e) from None


async def embed(served: Served, items: list[str], *, normalize: bool = True, truncation: bool = False,
                dimensions: int | None = None, prompt_name: str | None = None):
    """(N, D) float32 sentence embeddings, plus the input token count: the pipeline's
    pooling="auto" (the checkpoint's sentence-transformers chain), `dimensions` as its truncate_dim
    (cut, then normalized if asked), `prompt_name` one of the checkpoint's prompts."""
    import torch

    options = {"normalize": normalize, "truncation": truncation}
    if dimensions is not None:
        options["truncate_dim"] = dimensions
    if prompt_name is not None:
        options["prompt_name"] = prompt_name
    done = await run(served, "embed", items, options)
    return torch.stack(done.results).float(), done.tokens


def embedding_model(st: ServerState, name: str | None) -> Served:
    if name:
        served = st.registry.get(name)
        if not served.can_embed:
            raise errors.validation(f"model {served.id} serves {served.task}, not embeddings; "
                                    "serve a feature-extraction / sentence-similarity model")
        return served
    return st.registry.choose(lambda e: e.can_embed, "embedding")
