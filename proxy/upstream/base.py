"""The seam between Warden and providers: what a transport returns, what it raises.

A transport (``openai.py`` fast path, ``translated.py`` via litellm) sends one attempt
to one deployment and returns either a complete ``UpstreamReply`` (any status; error
statuses included, so failover can classify them) or, for a 200 streamed reply, an
``UpstreamStream`` of OpenAI-format SSE events. Network-level failures (connect,
timeout, reset, unparseable reply) raise ``UpstreamError``. ``failover.py`` is the only
caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy import jsonbody
from proxy.context import Operation
from proxy.tenants import Deployment


class UpstreamError(Exception):
    """One attempt failed below HTTP semantics (or the reply was garbage)."""

    def __init__(self, reason: str, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        # Bounded: connect_error, connect_timeout, first_byte_timeout, idle_timeout,
        # total_timeout, reset, bad_reply, empty_stream, truncated, provider_error, ...
        self.reason = reason
        self.timeout = timeout


@dataclass(slots=True)
class UpstreamReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    _parsed: Any = None

    def json(self) -> Any:
        """Parsed body; raises UpstreamError when the provider sent garbage."""
        if self._parsed is None:
            try:
                self._parsed = jsonbody.loads_reply(self.body)
            except ValueError:
                raise UpstreamError("bad_reply", "provider sent a body that is not JSON") from None
        return self._parsed


class PhaseClock:
    """An attempt's total deadline, and which limit ends a phase first: the phase's own
    (connect, first byte, idle) or what is left of ``total``."""

    __slots__ = ("_loop", "total_at")

    def __init__(self, total_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.total_at = self._loop.time() + total_s

    def limit(self, phase_s: float, phase: str) -> tuple[float, str]:
        """(seconds to wait, the timeout reason if that runs out)."""
        left = max(0.0, self.total_at - self._loop.time())
        return (phase_s, phase) if phase_s < left else (left, "total_timeout")


class UpstreamStream(Protocol):
    """A 200 streamed reply: complete SSE events as raw bytes (``data: ...\\n\\n``)."""

    status: int
    headers: dict[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None:
        """Release the connection; safe to call twice."""


class Transport(Protocol):
    async def send(
        self, deployment: Deployment, operation: Operation, body: dict[str, Any], stream: bool
    ) -> UpstreamReply | UpstreamStream: ...

    async def close(self) -> None: ...


def parse_chunk(data: bytes) -> dict[str, Any]:
    """One stream event's data as a chunk; garbage or a provider error event raises."""
    try:
        chunk = jsonbody.loads_reply(data)
    except ValueError:
        raise UpstreamError("bad_reply", "provider sent a stream event that is not JSON") \
            from None
    if not isinstance(chunk, dict):
        raise UpstreamError("bad_reply", "provider sent a stream event that is not an object")
    if "error" in chunk and "choices" not in chunk:
        raise UpstreamError("provider_error", "provider reported an error in its stream")
    return chunk
