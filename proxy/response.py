"""What a handler answers with: a whole reply, or a stream written as it is produced.

The server (proxy/connection.py, proxy/wire.py) frames them: status line,
``Server``/``Date``, then either ``Content-Length`` and the body in one write, or
chunked transfer encoding for streams.
Handlers set everything else in ``headers``; the framing headers they might set
(length, transfer encoding, connection) are the server's and are ignored.

A response is sent when the handler calls ``prepare()``, or by the server once the
handler returns. Handlers call it themselves when work remains after the reply (budgets
settle, telemetry is written) that must not delay the client.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from proxy.errors import WardenError

if TYPE_CHECKING:
    from proxy.request import Request


class Sink(Protocol):
    """The connection a response is written to (proxy/connection.py's ``Connection``)."""

    def send_whole(self, status: int, headers: dict[str, str], body: bytes) -> None: ...

    def start_stream(self, status: int, headers: dict[str, str]) -> None: ...

    async def write_chunk(self, data: bytes) -> None: ...

    def end_stream(self) -> None: ...


class Response:
    """A whole reply: status, headers and body sent in one write."""

    __slots__ = ("body", "headers", "prepared", "status")

    def __init__(self, body: bytes = b"", status: int = 200,
                 headers: dict[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = {} if headers is None else dict(headers)
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.prepared = False

    async def prepare(self, request: Request) -> None:
        if not self.prepared:
            self.prepared = True
            request.sink.send_whole(self.status, self.headers, self.body)

    async def write_eof(self) -> None:
        """Nothing left to send: the body went with ``prepare()``."""


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(data).encode(), status, headers)
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


def internal_error() -> Response:
    """A bug's reply: a 500 in OpenAI's error shape; the details are in Warden's log."""
    err = WardenError("internal error in Warden; see its log", code="internal_error")
    return json_response(err.body(), err.status)


class StreamResponse:
    """A reply whose body is written piece by piece (SSE), in chunked encoding."""

    __slots__ = ("_sink", "ended", "headers", "prepared", "status")

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = {} if headers is None else dict(headers)
        self.prepared = False
        self.ended = False
        self._sink: Sink | None = None

    async def prepare(self, request: Request) -> None:
        if not self.prepared:
            self.prepared = True
            self._sink = request.sink
            self._sink.start_stream(self.status, self.headers)

    async def write(self, data: bytes) -> None:
        """Send ``data`` as one chunk; waits while the client reads slower than this
        writes. ConnectionResetError once the client has gone."""
        if self._sink is None:
            raise RuntimeError("write() before prepare()")
        if data:
            await self._sink.write_chunk(data)

    async def write_eof(self) -> None:
        if self._sink is not None and not self.ended:
            self.ended = True
            self._sink.end_stream()
