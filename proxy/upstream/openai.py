"""The fast path: OpenAI-compatible deployments called directly over pooled aiohttp.

No translation: the body is the client's (after policies edited it, with the
deployment's model name), the reply is relayed as received, a stream event by event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from proxy import jsonbody
from proxy.context import Operation
from proxy.sse import EventSplitter
from proxy.tenants import Deployment
from proxy.upstream.base import UpstreamError, UpstreamReply

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


def auth_headers(deployment: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **deployment.headers}
    key = deployment.credential()
    if key:
        if deployment.provider == "azure":
            headers["api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def _classify(exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", "provider did not answer in time", timeout=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect_error", f"cannot connect to provider: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamError("reset", "provider closed the connection mid-reply")
    return UpstreamError("connection_error", f"provider connection failed: {type(exc).__name__}")


class OpenAIStream:
    """A 200 SSE reply relayed event by event, with an idle timeout between reads."""

    def __init__(self, resp: aiohttp.ClientResponse, idle_s: float) -> None:
        self.status = resp.status
        self.headers = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        self._resp = resp
        self._idle_s = idle_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        content = self._resp.content
        try:
            while True:
                async with asyncio.timeout(self._idle_s):
                    data = await content.readany()
                if not data:
                    break
                for event in splitter.feed(data):
                    yield event
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _classify(e) from None
        finally:
            self._resp.release()
        if splitter.pending.strip():
            raise UpstreamError("truncated", "provider stream ended mid-event")

    async def aclose(self) -> None:
        self._resp.close()


class OpenAITransport:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self, deployment: Deployment, operation: Operation, body: dict[str, Any], stream: bool
    ) -> UpstreamReply | OpenAIStream:
        payload = jsonbody.dumps(body)
        t = deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=None)
        try:
            async with asyncio.timeout(t.first_byte):
                resp = await self._session.post(
                    endpoint(deployment, operation), data=payload,
                    headers=auth_headers(deployment), timeout=timeout,
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _classify(e) from None
        if stream and resp.status == 200:
            return OpenAIStream(resp, t.idle)
        try:
            async with asyncio.timeout(t.total):
                raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _classify(e) from None
        finally:
            resp.release()
        headers = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        return UpstreamReply(resp.status, raw, headers)

    async def close(self) -> None:
        await self._session.close()


def create_session(pool_size: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    # No cookies, no auto-decompression surprises: a proxy relays what it gets.
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
