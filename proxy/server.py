"""The HTTP server around the app: aiohttp's, with malformed HTTP answered as OpenAI errors.

aiohttp's parser rejects a request that is not valid HTTP/1.1 (bare CR or LF in a header,
a header line over 8190 bytes, conflicting ``Content-Length`` / ``Transfer-Encoding``,
an unknown method) before any application code runs, and its ``handle_error`` answers
with a plain-text page. An agent's SDK expects ``{"error": {...}}`` on every 4xx, so
this runner's connections answer those with an OpenAI-format body instead.

The message names the kind of fault only: the parser's own text can quote the offending
bytes (a header value, part of a body), and an error body is often logged and shown.
The connection is still closed afterwards, as aiohttp does: after a framing error the
byte stream cannot be trusted to be in step.
"""

from __future__ import annotations

from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

# The Server header of every response (aiohttp's default names itself and its version).
SERVER = "warden"

# Most specific first: several are subclasses of BadHttpMessage.
_FAULTS: tuple[tuple[type[Exception], str, str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long",
     "request_header_too_large"),
    (http_exceptions.BadHttpMethod, "the HTTP method is not valid", "bad_http_method"),
    (http_exceptions.InvalidURLError, "the request target is not a valid URL",
     "bad_request_target"),
    (http_exceptions.BadStatusLine, "the request line is malformed", "bad_request_line"),
    (http_exceptions.InvalidHeader, "a header is malformed", "bad_header"),
    (http_exceptions.TransferEncodingError, "the chunked body framing is malformed",
     "bad_framing"),
    (http_exceptions.ContentLengthError, "the body does not match its Content-Length",
     "bad_framing"),
    (http_exceptions.BadHttpMessage, "the request is not valid HTTP/1.1", "bad_http"),
)


def describe(status: int, exc: BaseException | None) -> dict[str, Any]:
    """The OpenAI-format body for a request aiohttp refused before the app ran."""
    if status >= 500:
        return {"error": {"message": "internal error in Warden's HTTP server; see its log",
                          "type": "server_error", "param": None, "code": "internal_error"}}
    message, code = "malformed HTTP request", "bad_http"
    for kind, text, kind_code in _FAULTS:
        if isinstance(exc, kind):
            message, code = f"malformed HTTP request: {text}", kind_code
            break
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}


class _Connection(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        # aiohttp's version logs the fault and refuses when a response already started;
        # its plain-text page is replaced.
        super().handle_error(request, status, exc, message)
        response = web.json_response(describe(status, exc), status=status,
                                     headers={"Server": SERVER})
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed HTTP in OpenAI's shape."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(plain.request_handler, request_factory=plain.request_factory,
                       handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                       **plain._kwargs)
