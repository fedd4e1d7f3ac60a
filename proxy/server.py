"""Warden's HTTP/1.1 server: an ``asyncio.Protocol`` on llhttp (httptools).

Why not aiohttp's server: at concurrency 1 a proxy's added latency is its CPU time per
request, and aiohttp's server side (request and response objects, router, middleware,
payload writer, one more loop iteration per request) costs more than everything Warden
itself does with policies off. Measured on this machine's 2 cores: a 40-line aiohttp
pass-through added 0.6-1.1 ms at p50, the same pass-through on this protocol 0.05-0.2 ms
(bench/RESULTS.md). aiohttp still provides the application object (typed state, startup
and cleanup contexts, proxy/app.py) and the runner/site plumbing.

What the protocol does, and what it refuses:
- Request heads are bounded: a request line or header over 8190 bytes, more than 128
  headers, or a head over 64 KiB is refused (400 ``request_header_too_large``).
- Bodies are read whole before the handler runs, ``Content-Length`` or chunked; one over
  the port's limit is refused with 413 as soon as that is known (from the declared length,
  before reading it) and the connection closed. ``Expect: 100-continue`` is answered.
- Malformed HTTP gets an OpenAI-format 400 naming the kind of fault (never the bytes),
  then the connection is closed: after a framing error the stream cannot be trusted.
- Keep-alive and pipelining: requests on one connection are answered in order; reading
  pauses while 16 are queued. Idle connections close after ``keepalive_s``.
- A client that leaves (or half-closes) before its reply is complete cancels the handler
  (its ``finally`` blocks run: budgets settle, telemetry is written). After the reply,
  the handler's remaining bookkeeping is left to finish.
- ``Upgrade`` (WebSocket, h2c) is not offered: the request is answered in HTTP/1.1 and
  the connection closed.
- Shutdown: stop listening (the site), close idle connections, let in-flight requests
  finish up to the grace period, then cancel what is left.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from proxy.appkeys import ROUTES
from proxy.connection import Connection
from proxy.router import Routes

KEEPALIVE_S = 75.0


class HttpServer:
    """The protocol factory for one listening port: tracks connections, closes idle
    ones, drains on shutdown (the interface aiohttp's runner and sites expect)."""

    def __init__(self, app: web.Application, routes: Routes,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.app = app
        self.routes = routes
        self.loop = asyncio.get_running_loop()
        self.keepalive_s = keepalive_s
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # requests in progress, clients gone or not
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None  # set by request_done() once shutting down

    def __call__(self) -> Connection:
        return Connection(self)

    def track(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_s / 4, self._sweep)

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def _sweep(self) -> None:
        cutoff = time.monotonic() - self.keepalive_s
        for conn in list(self.connections):
            # A request still arriving counts as idle too: a client that stops sending
            # mid-request for the whole keep-alive period is let go.
            if conn.task is None and conn.last_active < cutoff and conn.transport:
                conn.transport.close()
        self._sweeper = (self.loop.call_later(self.keepalive_s / 4, self._sweep)
                         if self.connections else None)

    def pre_shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.close()

    def request_done(self) -> None:
        """A connection finished its requests: wake ``shutdown`` if it was the last."""
        if self._drained is not None and not self.tasks:
            self._drained.set()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Wait up to ``grace_s`` for requests in progress, then cancel them."""
        self._drained = asyncio.Event()
        self.request_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace_s)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class Runner(web.AppRunner):
    """aiohttp's ``AppRunner`` (app startup and cleanup, sites) serving the app's
    ``ROUTES`` with ``HttpServer`` instead of aiohttp's own server."""

    async def _make_server(self) -> web.Server:
        await super()._make_server()  # starts the app: cleanup contexts, freeze
        return HttpServer(self.app, self.app[ROUTES])  # type: ignore[return-value]
