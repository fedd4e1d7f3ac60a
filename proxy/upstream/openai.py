"""The fast path: OpenAI-compatible deployments called directly, no translation.

The body is the client's (after policies edited it, with the deployment's model name);
the reply is relayed as received, a stream event by event. Transport is the lean
pooled HTTP/1.1 client in ``http1.py``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from proxy import jsonbody
from proxy.context import Operation
from proxy.sse import EventSplitter
from proxy.tenants import Deployment
from proxy.upstream.base import UpstreamError, UpstreamReply
from proxy.upstream.http1 import Client, Exchange

_PATHS: dict[Operation, str] = {"chat": "/chat/completions", "embeddings": "/embeddings"}
# Upstream response headers worth passing on; hop-by-hop and length headers never are.
_PASS_HEADERS = ("retry-after", "retry-after-ms", "openai-processing-ms")


def endpoint(deployment: Deployment, operation: Operation) -> str:
    base = deployment.api_base or "https://api.openai.com/v1"
    if deployment.provider == "azure":
        version = deployment.api_version or "2024-10-21"
        return (f"{base}/openai/deployments/{deployment.model}{_PATHS[operation]}"
                f"?api-version={version}")
    return base + _PATHS[operation]


def auth_headers(deployment: Deployment, stream: bool = False) -> dict[str, str]:
    headers = {"Content-Type": "application/json",
               "Accept": "text/event-stream" if stream else "application/json",
               **deployment.headers}
    key = deployment.credential()
    if key:
        if deployment.provider == "azure":
            headers["api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def _passed(headers: dict[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in _PASS_HEADERS if k in headers}


class OpenAIStream:
    """A 200 SSE reply relayed event by event, with an idle timeout between reads."""

    def __init__(self, exchange: Exchange, idle_s: float) -> None:
        # idle_s bounds each wait for the next chunk; the exchange's total deadline
        # (set when it was sent) bounds the whole stream.
        self.status = exchange.status
        self.headers = _passed(exchange.headers)
        self._exchange = exchange
        self._idle_s = idle_s

        self._splitter = EventSplitter()
        self._events: deque[bytes] = deque()
        self._ended = False

    # A class iterator, not an async generator: a consumer that stops at [DONE] leaves
    # nothing for the event loop to finalise, and the connection goes back to the pool.
    def __aiter__(self) -> OpenAIStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._events:
            if self._ended:
                raise StopAsyncIteration
            exchange = self._exchange
            try:
                data = await exchange.next_chunk(self._idle_s)
            except BaseException:
                exchange.abort()
                raise
            if data is None:
                self._ended = True
                exchange.release()
                if self._splitter.pending.strip():
                    raise UpstreamError("truncated", "provider stream ended mid-event")
                raise StopAsyncIteration
            self._events.extend(self._splitter.feed(data))
        return self._events.popleft()

    async def aclose(self) -> None:
        # After [DONE] the rest of the message (the chunked terminator) has usually
        # arrived already: then the connection is reused, else it is closed.
        self._exchange.finish()


class OpenAITransport:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def send(
        self, deployment: Deployment, operation: Operation, body: dict[str, Any], stream: bool
    ) -> UpstreamReply | OpenAIStream:
        payload = jsonbody.dumps(body)
        t = deployment.timeouts
        exchange = await self._client.post(
            endpoint(deployment, operation), auth_headers(deployment, stream), payload,
            connect_s=t.connect, first_byte_s=t.first_byte, total_s=t.total)
        content_type = exchange.headers.get("content-type", "")
        if stream and exchange.status == 200 and content_type.startswith("text/event-stream"):
            return OpenAIStream(exchange, t.idle)
        raw = await exchange.read()  # bounded by the exchange's total deadline
        return UpstreamReply(exchange.status, raw, _passed(exchange.headers))

    async def close(self) -> None:
        self._client.close()
