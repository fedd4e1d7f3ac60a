"""Timeouts per phase, enforced by the transports themselves (fast path and litellm):
connect, first byte, idle between chunks, total. Each test makes exactly one phase
slow and checks that phase's limit, and only that one, ended the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from proxy.mock_upstream import create_mock_app
from proxy.settings import Settings
from proxy.tenants import Deployment, Timeouts
from proxy.upstream.base import UpstreamError, UpstreamReply
from proxy.upstream.failover import PrefetchedStream, Upstream
from proxy.upstream.http1 import Client
from proxy.upstream.openai import OpenAIStream, OpenAITransport
from proxy.upstream.translated import TranslatedStream, TranslatedTransport

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "a b c d e"}]}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def mock() -> AsyncIterator[str]:
    runner, url = await serve(create_mock_app())
    yield url
    await runner.cleanup()


@pytest.fixture
async def fast() -> AsyncIterator[OpenAITransport]:
    transport = OpenAITransport(Client(8))
    yield transport
    await transport.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: a TCP connect to it hangs (the SYN is dropped)
    instead of being refused, like a firewalled provider."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.1)
    yield port
    for s in fillers:
        s.close()
    server.close()


def deployment(base: str, spec: str = "", provider: str = "openai", **timeouts: float
               ) -> Deployment:
    limits = {"connect": 5.0, "first_byte": 5.0, "idle": 5.0, "total": 10.0, **timeouts}
    path = f"/f/{spec}" if spec else ""
    suffix = "/v1" if provider == "openai" else ""
    return Deployment(provider=provider, model="m", api_base=f"{base}{path}{suffix}",
                      timeouts=Timeouts(**limits))


async def fails_with(coro: Any, reason: str, within: float) -> None:
    started = time.perf_counter()
    with pytest.raises(UpstreamError) as info:
        await coro
    elapsed = time.perf_counter() - started
    assert info.value.reason == reason
    assert info.value.timeout
    assert elapsed < within, elapsed


async def drain(stream: Any) -> int:
    n = 0
    async for _ in stream:
        n += 1
    return n


async def test_connect_timeout(fast: OpenAITransport, blackhole: int) -> None:
    d = deployment(f"http://127.0.0.1:{blackhole}", connect=0.3)
    await fails_with(fast.send(d, "chat", BODY, False), "connect_timeout", 1.5)


async def test_first_byte_timeout(fast: OpenAITransport, mock: str) -> None:
    d = deployment(mock, "first_byte_ms=3000", first_byte=0.3)
    await fails_with(fast.send(d, "chat", BODY, False), "first_byte_timeout", 1.5)


async def test_idle_timeout_between_chunks(fast: OpenAITransport, mock: str) -> None:
    d = deployment(mock, "chunk_delay_ms=800", idle=0.3)
    stream = await fast.send(d, "chat", {**BODY, "stream": True}, True)
    assert isinstance(stream, OpenAIStream)
    await fails_with(drain(stream), "idle_timeout", 1.5)


async def test_total_timeout_of_a_stream_with_short_gaps(fast: OpenAITransport,
                                                         mock: str) -> None:
    # Every gap (150 ms) is within idle; the whole stream (~6 x 150 ms) is not.
    d = deployment(mock, "chunk_delay_ms=150", idle=1.0, total=0.5)
    stream = await fast.send(d, "chat", {**BODY, "stream": True}, True)
    assert isinstance(stream, OpenAIStream)
    await fails_with(drain(stream), "total_timeout", 1.5)


async def test_total_bounds_the_head_too(fast: OpenAITransport, mock: str) -> None:
    d = deployment(mock, "latency_ms=3000", first_byte=10.0, total=0.3)
    await fails_with(fast.send(d, "chat", BODY, False), "total_timeout", 1.5)


async def test_generous_limits_do_not_fire(fast: OpenAITransport, mock: str) -> None:
    d = deployment(mock, "chunk_delay_ms=50,first_byte_ms=100", first_byte=1.0, idle=0.5)
    stream = await fast.send(d, "chat", {**BODY, "stream": True}, True)
    assert await drain(stream) >= 5
    reply = await fast.send(deployment(mock, "latency_ms=100", first_byte=1.0), "chat",
                            BODY, False)
    assert isinstance(reply, UpstreamReply) and reply.status == 200


async def test_first_stream_event_counts_as_first_byte() -> None:
    """A head that arrives at once, then silence: failover's prefetch gives up at the
    deployment's first_byte limit (not the longer idle one) and tries the next."""

    async def silent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", silent)
    runner, silent_url = await serve(app)
    mock_runner, mock_url = await serve(create_mock_app())
    settings = Settings(breaker_failures=0, retry_attempts=1)
    upstream = Upstream(OpenAITransport(Client(8)), TranslatedTransport(), settings)
    try:
        from proxy.context import RequestContext

        ctx = RequestContext(request_id="r", operation="chat", stream=True, model="m")
        ctx.deployments = (deployment(silent_url, first_byte=0.3, idle=10.0),
                           deployment(mock_url))
        started = time.perf_counter()
        result = await upstream.call(ctx, {**BODY, "stream": True})
        assert time.perf_counter() - started < 1.5
        assert isinstance(result, PrefetchedStream)
        await result.aclose()
        assert [(a.reason, a.status) for a in ctx.attempts] == [
            ("first_byte_timeout", None), ("ok", 200)]
    finally:
        await upstream.close()
        await runner.cleanup()
        await mock_runner.cleanup()


# The same phases through litellm (Anthropic's API on the mock).


@pytest.fixture
async def translated() -> AsyncIterator[TranslatedTransport]:
    transport = TranslatedTransport()
    await transport.warm()
    yield transport
    await transport.close()


async def test_translated_first_byte_timeout(translated: TranslatedTransport, mock: str) -> None:
    d = deployment(mock, "first_byte_ms=3000", provider="anthropic", first_byte=0.3)
    await fails_with(translated.send(d, "chat", {**BODY, "stream": True}, True),
                     "first_byte_timeout", 1.5)


async def test_translated_idle_timeout(translated: TranslatedTransport, mock: str) -> None:
    d = deployment(mock, "chunk_delay_ms=800", provider="anthropic", idle=0.3)
    stream = await translated.send(d, "chat", {**BODY, "stream": True}, True)
    assert isinstance(stream, TranslatedStream)
    await fails_with(drain(stream), "idle_timeout", 1.5)


async def test_translated_total_timeout(translated: TranslatedTransport, mock: str) -> None:
    d = deployment(mock, "latency_ms=3000", provider="anthropic", first_byte=10.0, total=0.3)
    await fails_with(translated.send(d, "chat", BODY, False), "total_timeout", 1.5)


async def test_translated_plain_reply_within_first_byte(translated: TranslatedTransport,
                                                        mock: str) -> None:
    d = deployment(mock, "latency_ms=3000", provider="anthropic", first_byte=0.3)
    await fails_with(translated.send(d, "chat", BODY, False), "first_byte_timeout", 1.5)


async def test_translated_connect_is_bounded_by_first_byte(translated: TranslatedTransport,
                                                           blackhole: int) -> None:
    """litellm gives Anthropic one timeout number, not a connect phase; a provider that
    never accepts the connection still ends at first_byte, not at total."""
    d = deployment(f"http://127.0.0.1:{blackhole}", provider="anthropic", first_byte=0.3)
    await fails_with(translated.send(d, "chat", BODY, False), "first_byte_timeout", 1.5)
