"""The seam between Warden and providers: what a transport returns, what it raises.

A transport (``openai.py`` fast path, ``translated.py`` via litellm) sends one attempt
to one deployment and returns either a complete ``UpstreamReply`` (any status; error
statuses included, so failover can classify them) or, for a 200 streamed reply, an
``UpstreamStream`` of OpenAI-format SSE events. Network-level failures (connect,
timeout, reset, unparseable reply) raise ``UpstreamError``. ``failover.py`` is the only
caller.
"""

from __future__ import annotations

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
        self.reason = reason  # bounded: connect_error, timeout, reset, bad_reply, ...
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
