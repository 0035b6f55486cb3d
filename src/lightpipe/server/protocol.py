"""Running the app with uvicorn: its settings from the server's config, and uvicorn's h11
protocol with a deadline for a request's headers.

uvicorn closes an idle kept-alive connection after `timeout_keep_alive`, but a client that
opens a connection (or starts a next request) and sends its headers a byte at a time holds the
connection for as long as it likes. `HeaderDeadline` closes it when the headers are not
complete within --header-timeout. The body's deadline is the app's (middleware.Bodies), and
header size is bounded by h11 (`h11_max_incomplete_event_size`, 16 KiB here as in uvicorn).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

# How long an idle kept-alive connection stays open: longer than the clients keep theirs (httpx
# and the openai client drop an idle connection after 5 s, aiohttp after 15 s), so the client
# always closes first. With uvicorn's 5 s, a client that reuses a connection just as the server
# closes it gets a ReadError for a request the server never saw: under load that happened to
# a few requests in every run of benchmarks/serve.py's 64 clients.
KEEP_ALIVE_S = 30
MAX_HEADER_BYTES = 16 * 1024


class HeaderDeadline(H11Protocol):
    header_timeout: float = 10.0  # set per server by `uvicorn_config`

    def connection_made(self, transport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_headers():
            if self._deadline is None:
                self._arm()  # the first bytes of a next request on a kept-alive connection
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # uvicorn's keep-alive timer runs until the next request's bytes

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app, host: str, port: int, log_level: str, **extra):
    """uvicorn's Config for `app`, with the timeouts of the app's ServerConfig."""
    import uvicorn

    config = app.state.lightpipe.config
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": float(config.header_timeout)})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http=protocol,
                          access_log=False,  # the app writes its own access lines, with the request id
                          timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=config.shutdown_timeout,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **extra)
