"""One parsed HTTP request, as the server hands it to a handler.

The body is read whole before the handler runs (the server enforces the size limit
while it arrives), so handlers never wait on the client for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:
    from proxy.response import Sink


class Request:
    """Method, target, headers (case-insensitive) and body of one request.

    ``app`` is the application's state (typed keys, proxy/appkeys.py); ``match_info``
    holds the values of a route's ``{name}`` segments; ``sink`` is where responses go.
    """

    __slots__ = ("app", "body", "headers", "match_info", "method", "path", "query_string",
                 "sink")

    def __init__(self, app: web.Application, method: str, path: str, query_string: str,
                 headers: CIMultiDict[str], body: bytes, sink: Sink) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.sink = sink
        self.match_info: dict[str, str] = {}

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased; HTTP's default when absent."""
        raw = self.headers.get("Content-Type")
        if not raw:
            return "application/octet-stream"
        return raw.partition(";")[0].strip().lower()
