"""The ASGI app: routes, middleware (middleware.py: request ids, metrics, CORS, API keys, body
limits and in-flight slots), JSON errors in each client family's shape (errors.py), the
playground's static files, and running it with uvicorn (protocol.py: timeouts)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from . import errors, hf_api, openai_api, tei_api
from .common import ServerConfig, ServerState, json_response, read_json, state
from .metrics import Metrics
from .middleware import Auth, Bodies, Measured, RequestIds, current_request, route_label
from .openapi import openapi_spec
from .registry import ModelSpec, Registry, default_name, parse_model_spec

log = logging.getLogger("lightpipe.server")
STATIC = Path(__file__).parent / "static"


# -- exception handlers: every error in its route family's JSON shape -----------------------

def api_error(request: Request, exc: errors.ApiError) -> Response:
    state(request).metrics.errors.inc(route_label(request.url.path), exc.error_type)
    return Response(exc.body(request.url.path), status_code=exc.status, headers=exc.headers,
                    media_type="application/json")


def http_error(request: Request, exc: HTTPException) -> Response:
    kinds = {404: "not_found", 405: "method_not_allowed"}
    err = errors.ApiError(exc.status_code, exc.detail or "error", kinds.get(exc.status_code, "http_error"),
                          dict(exc.headers or {}))
    return api_error(request, err)


def server_error(request: Request, exc: Exception) -> Response:
    context = current_request()
    log.error("unhandled error on %s (request %s)", request.url.path, context.id if context else "-", exc_info=exc)
    return api_error(request, errors.internal())


# -- small routes -------------------------------------------------------------------------

async def root(request: Request):
    if request.method == "GET":
        return FileResponse(STATIC / "index.html")
    return await hf_api.inference(request)


async def docs(request: Request):
    return FileResponse(STATIC / "docs.html")


async def health(request: Request):
    ok, message = state(request).registry.health()
    if ok:
        return json_response({"status": "ok"})
    return JSONResponse({"error": message, "error_type": "loading" if message.startswith("loading") else "unavailable",
                         "status": "loading" if message.startswith("loading") else "error"}, status_code=503)


async def info(request: Request):
    st = state(request)
    c = st.config
    return json_response({
        "name": "lightpipe", "version": __version__,
        "models": [e.info() for e in st.registry.all()],
        "max_batch_tokens": c.max_batch_tokens, "max_concurrent_requests": c.max_concurrent_requests,
        "max_client_batch_size": c.max_client_batch_size, "max_body_bytes": c.max_body_bytes,
        "max_input_tokens": c.max_input_tokens, "max_total_tokens": c.max_total_tokens,
        "max_sequences": c.max_sequences, "allow_load": c.allow_load, "allow_load_local": c.allow_load_local,
        "auth": bool(c.api_keys),
    })


async def metrics(request: Request):
    return PlainTextResponse(state(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def openapi(request: Request):
    return json_response(openapi_spec(__version__))


async def search_models(request: Request):
    """The Hub's models for a task and language (the course's "refine by task and language"),
    each marked `loads` with a `reason`; `all=true` includes those lightpipe can't load."""
    from .. import hub_search

    st = state(request)
    q = request.query_params
    try:
        limit = int(q.get("limit") or 20)
    except ValueError:
        raise errors.validation(f"limit must be an integer, got {q.get('limit')!r}") from None
    limit = max(1, min(limit, 100))
    include_unloadable = (q.get("all") or "").lower() in {"1", "true", "yes", "on"}
    try:
        found = await run_in_threadpool(hub_search.list_models, task=q.get("task") or None,
                                        language=q.get("language") or None, search=q.get("search") or None,
                                        limit=limit, include_unloadable=include_unloadable,
                                        endpoint=st.config.hub_endpoint)
    except (ValueError, TypeError) as e:  # an unknown task
        raise errors.validation(str(e)) from None
    except Exception as e:  # offline, unreachable, or the Hub's error: say so, don't crash
        raise errors.ApiError(503, f"could not list Hub models: {e}", "unavailable") from None
    return json_response(found)


async def load(request: Request):
    """Load a model by its Hub id (a server folder only with --allow-load-local): 202 for a
    load this request started (even one that has already failed: the entry says so) or one still
    loading; the same model asked for again (however spelled) is the same entry."""
    st = state(request)
    if not st.config.allow_load:
        raise errors.ApiError(403, "loading models is disabled; start the server with --allow-load", "forbidden")
    body = await read_json(request)
    fields = {k: body.get(k) for k in ("model", "task", "name", "revision")}
    model = fields["model"]
    if not isinstance(model, str) or not model.strip():
        raise errors.validation('send {"model": "org/name", "task": optional task, "name": optional name, '
                                '"revision": optional revision}', param="model")
    for key in ("task", "name", "revision"):
        if fields[key] is not None and not (isinstance(fields[key], str) and fields[key].strip()):
            raise errors.validation(f"{key} must be a non-empty string", param=key)
    if fields["task"] is not None:
        from ..tasks import normalize_task

        try:
            normalize_task(fields["task"])
        except (ValueError, TypeError) as e:
            raise errors.validation(str(e), param="task") from None
    spec = ModelSpec(model.strip(), fields["task"], fields["name"], fields["revision"] or st.config.revision)
    entry, started = st.registry.load(spec, startup=False, local=st.config.allow_load_local)
    return json_response(entry.info(), status=202 if started or entry.status == "loading" else 200)


# -- the app ------------------------------------------------------------------------------

def create_app(models=(), *, pipelines: dict | None = None, config: ServerConfig | None = None, **settings) -> Starlette:
    """An app serving `models` (each "[NAME=][TASK=]MODEL[@REVISION]" or a ModelSpec, loaded in
    the background at start-up) and already built `pipelines` ({name: pipeline}). `settings`
    override ServerConfig fields."""
    config = config or ServerConfig()
    for key, value in settings.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown server setting {key!r}")
        setattr(config, key, value)
    specs = [parse_model_spec(m) if isinstance(m, str) else m for m in models]
    names = []
    for spec in specs:
        spec.revision = spec.revision or config.revision
        names.append(spec.name or default_name(spec.model, Path(spec.model).expanduser().is_dir()))
    twice = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(pipelines or {})))
    if twice:
        raise ValueError(f"two models would be served as {twice[0]!r}; name them: --model NAME=[TASK=]MODEL")
    metrics_ = Metrics()
    pipeline_kwargs = {k: v for k, v in (("dtype", config.dtype), ("quantize", config.quantize)) if v is not None}
    registry = Registry(max_batch_tokens=config.max_batch_tokens, device=config.device, metrics=metrics_,
                        pipeline_kwargs=pipeline_kwargs, max_models=config.max_models,
                        failed_ttl=config.failed_load_ttl)
    server = ServerState(config, registry, metrics_)
    metrics_.queue_depth.source = lambda: {(e.id,): e.batcher.depth for e in registry.all() if e.batcher}
    metrics_.in_flight.source = lambda: {(): server.in_flight}
    metrics_.models.source = lambda: {(e.id, e.task or ""): int(e.status == "ready") for e in registry.all()}
    for name, pipe in (pipelines or {}).items():
        registry.add_pipeline(pipe, name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for spec in specs:
            registry.load(spec)
        yield
        registry.close()

    v1 = "/models/{model_id:path}/v1"
    routes = [
        Route("/", root, methods=["GET", "POST"]),
        Route(v1 + "/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route(v1 + "/completions", openai_api.completions, methods=["POST"]),
        Route(v1 + "/embeddings", openai_api.embeddings, methods=["POST"]),
        Route(v1 + "/models", openai_api.models, methods=["GET"]),
        Route("/models/{model_id:path}", hf_api.inference, methods=["POST"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
        Route("/embed", tei_api.embed_route, methods=["POST"]),
        Route("/embed_all", tei_api.embed_all, methods=["POST"]),
        Route("/predict", tei_api.predict, methods=["POST"]),
        Route("/rerank", tei_api.rerank, methods=["POST"]),
        Route("/tokenize", tei_api.tokenize, methods=["POST"]),
        Route("/decode", tei_api.decode, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/api/models", search_models, methods=["GET"]),
        Route("/api/load", load, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={errors.ApiError: api_error, HTTPException: http_error, Exception: server_error})
    # added last = outermost: request ids, then metrics, CORS, keys, bodies (see middleware.py)
    app.add_middleware(Bodies, server=server)
    if config.api_keys:
        app.add_middleware(Auth, server=server, keys=list(config.api_keys))
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id"], max_age=600)
    app.add_middleware(Measured, server=server)
    app.add_middleware(RequestIds, server=server)
    app.state.lightpipe = server
    return app


# -- running it ---------------------------------------------------------------------------

class Running:
    """A uvicorn server on a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, server, thread):
        self.server, self.thread = server, thread

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Running:
    import uvicorn

    from .protocol import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, host, port, log_level))
    thread = threading.Thread(target=server.run, name="lightpipe-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return Running(server, thread)


def serve(models, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", threads: int | None = None,
          pipelines: dict | None = None, **settings) -> None:
    """Run the server in the foreground (what `lightpipe serve` does). `threads`: torch's
    intra-op threads (default: threads.default_threads())."""
    import uvicorn

    from .protocol import uvicorn_config
    from .threads import set_threads

    _log_to_stderr(log_level)
    used = set_threads(threads)
    app = create_app(models, pipelines=pipelines, **settings)
    log.info("torch uses %d intra-op thread(s) per batch (--threads)", used)
    uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


def _log_to_stderr(level: str) -> None:
    """lightpipe's own log lines (access lines with request ids, loads, errors) on stderr, the
    way uvicorn writes its own."""
    root = logging.getLogger("lightpipe")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
