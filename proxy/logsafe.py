"""Keep request bytes out of aiohttp's own log lines.

When a request is not valid HTTP/1.1 (a NUL or bare LF in a header, a lying
Content-Length), aiohttp's server logs the parser error with a traceback at ERROR, and
the parser's message quotes the offending bytes: an ``Authorization`` line (a virtual
key) or a slice of the body (a prompt, with whatever PII it holds). Warden promises
that neither reaches its logs, so this filter rewrites those records to the error class
and the client address, nothing the client sent.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class ProtocolErrorRedactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed HTTP request from %s: %s (status %s); request bytes not logged"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Idempotent: several apps in one process (tests) add the filter once."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorRedactor) for f in logger.filters):
        logger.addFilter(ProtocolErrorRedactor())
