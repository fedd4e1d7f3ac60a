"""Server-sent events: an incremental, boundary-safe splitter and the encoder.

Upstream bytes arrive cut anywhere (mid-line, mid-UTF-8 sequence, mid-"\\n\\n"). The
splitter returns only complete events, as the exact bytes received, so a stream no
policy touches is relayed byte for byte.
"""

from __future__ import annotations

from typing import Any

from proxy import jsonbody

DONE = b"[DONE]"


class EventSplitter:
    """Feed raw bytes, get complete events (each ending with its blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        if b"\r" in data or b"\r" in self._buf:
            # CRLF framing is legal SSE; normalise so one separator rule applies.
            data = (self._buf + data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._buf = b""
        buf = self._buf + data if self._buf else data
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            events.append(buf[start : end + 2])
            start = end + 2
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated (non-empty at EOF = truncated)."""
        return self._buf


def event_data(event: bytes) -> bytes | None:
    """The event's data payload (``data:`` lines joined), or None for comment/empty
    events such as ``: keep-alive``."""
    if event.startswith(b"data: ") and event.count(b"\n") == 2:
        return event[6:-2]  # the common case: one data line
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[6:] if line[5:6] == b" " else line[5:])
    return b"\n".join(parts) if parts else None


def encode(payload: dict[str, Any]) -> bytes:
    return b"data: " + jsonbody.dumps(payload) + b"\n\n"


def encode_done() -> bytes:
    return b"data: [DONE]\n\n"
