"""One client connection of Warden's HTTP/1.1 server (proxy/server.py says what it does
and refuses): parses requests with llhttp, runs their handlers in order, frames their
responses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict

from proxy.errors import PayloadTooLarge, WardenError
from proxy.request import Request
from proxy.response import Response, StreamResponse, internal_error, json_response
from proxy.router import RouteError
from proxy.wire import describe, encode_head, fault_kind

if TYPE_CHECKING:
    from proxy.server import HttpServer

log = logging.getLogger("warden.server")

MAX_LINE = 8190  # request line / one header, as aiohttp and nginx's default buffers
MAX_HEADERS = 128
MAX_HEAD = 64 * 1024
PIPELINE_DEPTH = 16


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing: the request is refused."""


class _Pending:
    """A parsed request waiting its turn, with how its connection must be answered."""

    __slots__ = ("head_only", "http11", "keep_alive", "request")

    def __init__(self, request: Request, keep_alive: bool, http11: bool) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.http11 = http11
        self.head_only = request.method == "HEAD"


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs their handlers in order, frames
    their responses (it is the ``Sink`` responses write to)."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._max_body = server.routes.max_body_bytes
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Pending] = deque()
        self.task: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self._closing = False  # close once the current reply is sent
        self._lost = False
        self._refusal: tuple[int, str] | None = None
        self._last_message = False  # a request that ends the connection was parsed
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The reply in progress.
        self._current: _Pending | None = None
        self._started = False
        self._done = True
        self._chunked = False
        self._out: list[bytes] = []  # stream bytes written this turn, not yet sent
        self._out_bytes = 0
        self._sent_first = False  # the stream's first event has been written
        # The message being parsed.
        self._in_head = False
        self._in_message = False
        self._head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._fields: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._body_len = 0

    # -- state the server reads ------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No request in hand: nothing lost if the connection is closed now."""
        return self.task is None and not self._in_message and not self._queue

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck-typed on purpose.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP (a Unix socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.track(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._refusal is not None or self._closing:
            return  # answering a refusal, or closing after the current reply
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch is offered: the request (if complete) is answered in
            # HTTP/1.1 and the connection closed; any bytes after it are not read.
            self._closing = True
            if self._in_message:
                self._refuse(400, "http")
            return
        except httptools.HttpParserError as e:
            if self._last_message:
                # Bytes after a request that said "Connection: close" (or HTTP/1.0
                # without keep-alive): no request follows it, so they are not answered.
                return
            # A callback that refused set the status; otherwise llhttp found the fault.
            status, kind = self._refusal or (400, fault_kind(e))
            self._refuse(status, kind)
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse(400, "too_long")

    def eof_received(self) -> bool:
        # A FIN from the client reads as "gone" (as in aiohttp): a client that closes its
        # socket mid-request must cancel the upstream call, and a half-close looks the
        # same from here until a write fails.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server.forget(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client disconnected"))
        if self.task is not None and not self._done:
            self.task.cancel()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- llhttp callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._body = []
        self._body_len = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            self._refusal = (400, "too_long")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE or len(self._headers) >= MAX_HEADERS:
            self._refusal = (400, "too_long")
            raise _Refused
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        fields: CIMultiDict[str] = CIMultiDict(
            (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._headers)
        self._fields = fields
        declared = fields.get("Content-Length")
        if declared is not None and int(declared) > self._max_body:
            self._refusal = (413, "")
            raise _Refused
        expect = fields.get("Expect")
        if expect is not None and expect.lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._refusal = (413, "")
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        url = self._url
        if url[:1] == b"/":
            target, _, query = url.partition(b"?")
            query = query.partition(b"#")[0]
        else:  # absolute form (or "*"): take the path
            parsed = httptools.parse_url(url)
            target, query = parsed.path or b"/", parsed.query or b""
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        parser = self._parser
        request = Request(self._server.app, parser.get_method().decode("ascii"),
                          target.decode("latin-1"), query.decode("latin-1"), self._fields,
                          body, self)
        http11 = parser.get_http_version() == "1.1"
        pending = _Pending(request, parser.should_keep_alive() and http11, http11)
        self._last_message = not pending.keep_alive
        if self.task is None:
            self.task = self._loop.create_task(self._serve(pending))
            self._server.tasks.add(self.task)
        else:
            self._queue.append(pending)
            if len(self._queue) >= PIPELINE_DEPTH and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    # -- running handlers -------------------------------------------------------------
    async def _serve(self, pending: _Pending) -> None:
        try:
            while True:
                await self._handle(pending)
                if self._closing or self._lost or not self._queue:
                    break
                pending = self._queue.popleft()
                if self._reading_paused and len(self._queue) < PIPELINE_DEPTH // 2:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
        finally:
            if self.task is not None:
                self._server.tasks.discard(self.task)
            self.task = None
            self._current = None
            self.last_active = time.monotonic()
            self._server.request_done()
            if not self._lost:
                if self._refusal is not None:
                    self._send_refusal()
                elif self._closing and self.transport is not None:
                    self.transport.close()

    async def _handle(self, pending: _Pending) -> None:
        self._current = pending
        self._started = self._done = False
        if not pending.keep_alive or self._server.closing:
            self._closing = True
        request = pending.request
        response: Response | StreamResponse
        try:
            handler, request.match_info = self._server.routes.resolve(request.method,
                                                                      request.path)
        except RouteError as e:
            response = e.response(request.method, request.path)
        else:
            try:
                response = await handler(request)
            except WardenError as e:
                response = json_response(e.body(), e.status, dict(e.headers))
            except Exception:  # the one deliberate catch-all: a bug is a logged 500
                log.exception("unhandled error on %s %s", request.method, request.path)
                if self._started:  # a reply is under way: too late for an error reply
                    self._closing = True  # the client sees the stream end early
                    return
                response = internal_error()
        try:
            if not response.prepared:
                await response.prepare(request)
        except ValueError:  # a header a handler set cannot be sent (a line break)
            log.exception("unsendable reply on %s %s", request.method, request.path)
            response = internal_error()
            await response.prepare(request)
        if isinstance(response, StreamResponse) and not response.ended:
            await response.write_eof()

    # -- Sink: what responses call ----------------------------------------------------
    def _reply_target(self) -> tuple[asyncio.Transport, _Pending]:
        """Where the reply in progress goes; ConnectionResetError once the client is
        gone. A transport that is closing mid-reply means the client is gone too: a
        failed write closes it at once, while connection_lost only runs on the loop's
        next turn, and a writer that never has to wait would not yield until then."""
        transport, pending = self.transport, self._current
        if self._lost or transport is None or pending is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        return transport, pending

    def send_whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        transport, pending = self._reply_target()
        head = encode_head(status, headers, f"Content-Length: {len(body)}\r\n",
                           self._closing)
        self._started = self._done = True
        if pending.head_only or not body:
            transport.write(head)
        elif len(body) < 16384:
            transport.write(head + body)
        else:
            transport.writelines((head, body))

    def start_stream(self, status: int, headers: dict[str, str]) -> None:
        _, pending = self._reply_target()
        self._chunked = pending.http11 and not pending.head_only
        if not self._chunked:
            self._closing = True  # HTTP/1.0: the body ends where the connection does
        framing = "Transfer-Encoding: chunked\r\n" if self._chunked else ""
        self._queue_out(encode_head(status, headers, framing, self._closing))
        self._started = True
        self._sent_first = False

    def _queue_out(self, frame: bytes) -> None:
        """Stream bytes leave together: the head with the first event (at once), then
        every event written in the same turn of the loop (a fast provider's burst that
        arrived in one read) in one write at the turn's end. One syscall and one wake-up
        of the client instead of one per event; nothing waits longer than the turn it
        was written in, and more than 64 KiB is written at once."""
        if self._out:
            self._out.append(frame)
            self._out_bytes += len(frame)
            if self._out_bytes > 65536:
                self._flush_out()
        else:
            self._out = [frame]
            self._out_bytes = len(frame)
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        out, self._out = self._out, []
        if out and not self._lost and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def write_chunk(self, data: bytes) -> None:
        _, pending = self._reply_target()
        if pending.head_only:
            return
        self._queue_out(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        if not self._sent_first:  # time to first token: the head and first event go now
            self._sent_first = True
            self._flush_out()
        if self._writing_paused:
            if self._drain is None:
                self._drain = self._loop.create_future()
            await self._drain

    def end_stream(self) -> None:
        self._reply_target()
        if self._chunked:
            self._queue_out(b"0\r\n\r\n")
        self._flush_out()  # the reply is complete: no reason to wait for the turn's end
        self._done = True

    # -- refusals and closing ---------------------------------------------------------
    def _refuse(self, status: int, kind: str) -> None:
        """Stop reading; answer ``status`` once the requests parsed before this one are
        answered, then close."""
        self._refusal = (status, kind)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        # The parser's own message can quote the offending bytes (a key, a prompt):
        # only the kind of fault and the client's address are logged.
        log.warning("refused a request from %s: %s; request bytes not logged", peer,
                    "body over the size limit (413)" if status == 413
                    else describe(status, kind)["error"]["message"])
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.task is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None and self.transport is not None
        status, kind = self._refusal
        if status == 413:
            err = PayloadTooLarge(
                f"request body exceeds the limit of {self._max_body} bytes")
            body = err.body()
        else:
            body = describe(status, kind)
        payload = json_response(body, status).body
        head = encode_head(status, {"Content-Type": "application/json; charset=utf-8"},
                           f"Content-Length: {len(payload)}\r\n", True)
        self.transport.write(head + payload)
        self.transport.close()

    def close(self) -> None:
        """Close now if idle, else after the reply in progress."""
        self._closing = True
        if self.idle and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

