"""The ASGI app: routes, limits (body size → 413, requests in flight → 429), JSON errors,
metrics, the playground's static files, and helpers to run it with uvicorn."""

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
from .openapi import openapi_spec
from .registry import Registry

log = logging.getLogger("lightpipe.server")
STATIC = Path(__file__).parent / "static"

ROUTES = {"/", "/health", "/info", "/metrics", "/openapi.json", "/docs", "/v1/embeddings", "/v1/completions",
          "/v1/chat/completions", "/v1/models", "/embed", "/predict", "/rerank", "/api/models", "/api/load"}
UNLIMITED = {"/api/load"}  # POSTs that don't run a model: not counted against --max-concurrent-requests


def route_label(path: str) -> str:
    """Bounded route names for metrics labels (model ids in paths would grow without bound)."""
    if path in ROUTES:
        return path
    if path.startswith("/models/"):
        return "/models/{model_id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


# -- middleware (plain ASGI, so streamed responses are measured to their end) -------------

class BodyTooLarge(errors.ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (--max-body-bytes)", "payload_too_large")


class LimitsMiddleware:
    def __init__(self, app, server: ServerState):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in UNLIMITED:
            return await self.app(scope, receive, send)
        st = self.server
        limit = st.config.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await send_error(scope, send, BodyTooLarge(limit), st)
        if st.in_flight >= st.config.max_concurrent_requests:
            err = errors.overloaded(f"{st.in_flight} requests in flight, the maximum (--max-concurrent-requests); retry later")
            return await send_error(scope, send, err, st)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        st.in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            st.in_flight -= 1


class MetricsMiddleware:
    def __init__(self, app, server: ServerState):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        label = route_label(scope["path"])

        async def measured_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            m = self.server.metrics
            m.requests.inc(label, str(status))
            m.latency.observe(time.perf_counter() - start, label)


async def send_error(scope, send, err: errors.ApiError, st: ServerState) -> None:
    st.metrics.errors.inc(route_label(scope["path"]), err.error_type)
    headers = [(b"content-type", b"application/json")] + [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    body = err.body()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- exception handlers: everything becomes {"error", "error_type"} ------------------------

def api_error(request: Request, exc: errors.ApiError) -> Response:
    state(request).metrics.errors.inc(route_label(request.url.path), exc.error_type)
    return Response(exc.body(), status_code=exc.status, headers=exc.headers, media_type="application/json")


def http_error(request: Request, exc: HTTPException) -> Response:
    kinds = {404: "not_found", 405: "method_not_allowed"}
    err = errors.ApiError(exc.status_code, exc.detail or "error", kinds.get(exc.status_code, "http_error"), dict(exc.headers or {}))
    return api_error(request, err)


def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return api_error(request, errors.ApiError(500, f"{type(exc).__name__}: {exc}", "server_error"))


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
        "allow_load": c.allow_load,
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
    st = state(request)
    if not st.config.allow_load:
        raise errors.ApiError(403, "loading models is disabled; start the server with --allow-load", "forbidden")
    body = await read_json(request)
    model, task = body.get("model"), body.get("task") or None
    if not isinstance(model, str) or not model.strip():
        raise errors.validation('send {"model": "org/name", "task": optional task}')
    if task is not None:
        from ..tasks import normalize_task

        try:
            normalize_task(task)
        except (ValueError, TypeError) as e:
            raise errors.validation(str(e)) from None
    entry = st.registry.load(model.strip(), task=task, startup=False)
    return json_response(entry.info(), status=202 if entry.status == "loading" else 200)


# -- the app ------------------------------------------------------------------------------

def create_app(models=(), *, pipelines: dict | None = None, config: ServerConfig | None = None, **settings) -> Starlette:
    """An app serving `models` (each "[TASK=]MODEL", loaded in the background at start-up) and
    already built `pipelines` ({name: pipeline}). `settings` override ServerConfig fields."""
    config = config or ServerConfig()
    for key, value in settings.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown server setting {key!r}")
        setattr(config, key, value)
    metrics_ = Metrics()
    registry = Registry(max_batch_tokens=config.max_batch_tokens, device=config.device, metrics=metrics_)
    server = ServerState(config, registry, metrics_)
    metrics_.queue_depth.source = lambda: {(e.id,): e.batcher.depth for e in registry.all() if e.batcher}
    metrics_.in_flight.source = lambda: {(): server.in_flight}
    metrics_.models.source = lambda: {(e.id, e.task or ""): int(e.status == "ready") for e in registry.all()}
    for name, pipe in (pipelines or {}).items():
        registry.add_pipeline(pipe, name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for spec in models:
            registry.load(spec)
        yield
        registry.close()

    routes = [
        Route("/", root, methods=["GET", "POST"]),
        Route("/models/{model_id:path}", hf_api.inference, methods=["POST"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
        Route("/embed", tei_api.embed_route, methods=["POST"]),
        Route("/predict", tei_api.predict, methods=["POST"]),
        Route("/rerank", tei_api.rerank, methods=["POST"]),
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
    app.add_middleware(LimitsMiddleware, server=server)
    app.add_middleware(MetricsMiddleware, server=server)  # added last = outermost: sees 413/429 too
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

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, name="lightpipe-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return Running(server, thread)


def serve(models, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **settings) -> None:
    """Run the server in the foreground (what `lightpipe serve` does)."""
    import uvicorn

    app = create_app(models, **settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
