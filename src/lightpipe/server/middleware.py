"""What every request goes through before a route sees it (plain ASGI, so streamed responses are
followed to their end), outermost first:

1. `RequestIds`: an `X-Request-Id` on every response (the client's when it is sane, else a new
   one), the request's context (its id, whether its client is gone), and one access-log line.
2. `Measured`: request counts and latencies per route for /metrics.
3. CORS (Starlette's, only with --cors-origin), so a browser may read even a 401.
4. `Auth`: `Authorization: Bearer KEY` on everything but /health and the static pages.
5. `Bodies`: a POST's body is read whole, under --max-body-bytes and within --body-timeout, and
   only then does an inference request take one of the --max-concurrent-requests slots: a slow
   client holds a connection, never a slot. While the route runs, the connection is watched,
   so a route can drop the work of a client that has gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from . import errors

log = logging.getLogger("lightpipe.server")
access_log = logging.getLogger("lightpipe.access")

ROUTES = {"/", "/health", "/info", "/metrics", "/openapi.json", "/docs", "/v1/embeddings", "/v1/completions",
          "/v1/chat/completions", "/v1/models", "/embed", "/embed_all", "/predict", "/rerank", "/tokenize", "/decode",
          "/api/models", "/api/load"}
UNCOUNTED = {"/api/load", "/tokenize", "/decode"}  # POSTs that run no model: they take no in-flight slot
OPEN = {"/health", "/", "/docs"}  # GETs that need no API key (the pages themselves; their API calls do)
SANE_ID = re.compile(r"[A-Za-z0-9._:+=\-]{1,128}")


def route_label(path: str) -> str:
    """Bounded route names for metrics labels (model ids in paths would grow without bound)."""
    if path in ROUTES:
        return path
    if path.startswith("/models/"):
        return "/models/{model_id}/v1" if "/v1/" in path else "/models/{model_id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


@dataclass
class RequestContext:
    id: str
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the client disconnects


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("lightpipe_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


async def send_error(scope, send, err: errors.ApiError, server, close: bool = False) -> None:
    server.metrics.errors.inc(route_label(scope["path"]), err.error_type)
    body = err.body(scope["path"])
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIds:
    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = _current.set(RequestContext(rid))
        start, status = time.perf_counter(), 0

        async def with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            _current.reset(token)
            client = (scope.get("client") or ("-",))[0]
            access_log.info('%s "%s %s" %s %.1fms id=%s', client, scope["method"], scope["path"], status or 499,
                            (time.perf_counter() - start) * 1000, rid)


class Measured:
    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 499  # no response started: the client left first
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


class Auth:
    """Bearer keys, compared in constant time (hmac.compare_digest) against every configured key."""

    def __init__(self, app, server, keys: list[str]):
        self.app, self.server = app, server
        self.keys = [k.encode() for k in keys]

    def allowed(self, scope) -> bool:
        if scope["method"] == "OPTIONS":
            return True  # CORS preflight (answered by the CORS middleware when it is on; 405 otherwise)
        if scope["method"] in ("GET", "HEAD") and (scope["path"] in OPEN or scope["path"].startswith("/static/")):
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        key = key.strip()
        ok = False
        for known in self.keys:  # no early exit: the time taken doesn't tell which key came close
            ok |= hmac.compare_digest(key, known)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed(scope):
            return await self.app(scope, receive, send)
        err = errors.ApiError(401, "a valid API key is required: send the header `Authorization: Bearer KEY`",
                              "unauthorized", {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")
        await send_error(scope, send, err, self.server)


class ClientLeft(Exception):
    """The client disconnected while sending its body."""


async def read_body(receive, limit: int, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks, size = [], 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _body_timeout(timeout)
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            raise _body_timeout(timeout) from None
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large_body(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large_body(limit: int) -> errors.ApiError:
    return errors.too_large(f"request body larger than {limit} bytes (--max-body-bytes)")


def _body_timeout(timeout: float) -> errors.ApiError:
    return errors.ApiError(408, f"the request body did not arrive within {timeout:g} s (--body-timeout)", "timeout")


class Bodies:
    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        st, config = self.server, self.server.config
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            return await send_error(scope, send, too_large_body(config.max_body_bytes), st, close=True)
        try:
            body = await read_body(receive, config.max_body_bytes, config.body_timeout)
        except errors.ApiError as err:
            return await send_error(scope, send, err, st, close=True)
        except ClientLeft:
            return
        counted = scope["path"] not in UNCOUNTED
        if counted and st.in_flight >= config.max_concurrent_requests:
            err = errors.overloaded(f"{st.in_flight} requests in flight, the maximum (--max-concurrent-requests); "
                                    "retry later")
            return await send_error(scope, send, err, st)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left to come

        context = current_request()
        watcher = asyncio.ensure_future(_watch(receive, context)) if context is not None else None
        st.in_flight += counted
        try:
            await self.app(scope, replay, send)
        finally:
            st.in_flight -= counted
            if watcher is not None:
                watcher.cancel()


async def _watch(receive, context: RequestContext) -> None:
    """Set `context.gone` when the client disconnects (uvicorn answers http.disconnect to every
    receive() once the connection is lost, so this may wait alongside a streaming response's own)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            context.gone.set()
            return
