"""HTTP/1.1 bytes on the wire: response heads, and the OpenAI-format bodies for requests
refused before any handler ran (malformed HTTP)."""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from typing import Any

import httptools

# The Server header of every response (no framework name or version to match against).
SERVER = "warden"
_SERVER_LINE = f"Server: {SERVER}\r\n"

# Fault kind -> (what the message says, error code).
_FAULTS: dict[str, tuple[str, str]] = {
    "too_long": ("a request line or header is too long", "request_header_too_large"),
    "method": ("the HTTP method is not valid", "bad_http_method"),
    "url": ("the request target is not a valid URL", "bad_request_target"),
    "http": ("the request is not valid HTTP/1.1", "bad_http"),
}
# Set by the server itself; a handler's value for these is ignored.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                      "server", "date"})


def describe(status: int, kind: str | None) -> dict[str, Any]:
    """The OpenAI-format body for a request refused before any handler ran."""
    if status >= 500:
        return {"error": {"message": "internal error in Warden's HTTP server; see its log",
                          "type": "server_error", "param": None, "code": "internal_error"}}
    text, code = _FAULTS.get(kind or "", (None, "bad_http"))
    message = f"malformed HTTP request: {text}" if text else "malformed HTTP request"
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}


def fault_kind(error: httptools.HttpParserError) -> str:
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return "method"
    if isinstance(error, httptools.HttpParserInvalidURLError):
        return "url"
    return "http"


_status_lines: dict[int, str] = {}


def _status_line(status: int) -> str:
    line = _status_lines.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _status_lines[status] = f"HTTP/1.1 {status} {phrase}\r\n"
    return line


class _Date:
    """The Date header line, formatted at most once a second."""

    second = -1
    line = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.line = f"Date: {email.utils.formatdate(second, usegmt=True)}\r\n"
        return cls.line


def encode_head(status: int, headers: dict[str, str], framing: str, close: bool) -> bytes:
    """Status line and headers; ValueError if a name or value holds a line break."""
    parts = [_status_line(status), _SERVER_LINE, _Date.now()]
    for name, value in headers.items():
        if name.lower() not in _FRAMING:
            parts.append(f"{name}: {value}\r\n")
    if framing:
        parts.append(framing)
    if close:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    # Every part ends in exactly one CRLF: any other CR or LF came from a header.
    if text.count("\n") != len(parts) or text.count("\r") != len(parts):
        raise ValueError("a response header contains a line break")
    return text.encode("utf-8")
