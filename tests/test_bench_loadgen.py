"""bench/loadgen.py against real aiohttp servers: counts, SSE events, framing, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import loadgen

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _url(server: TestServer, path: str) -> str:
    return f"http://{server.host}:{server.port}{path}"


async def _plain(request: web.Request) -> web.Response:
    body = await request.json()
    assert request.headers["Authorization"] == "Bearer k-123"
    return web.json_response({"echo": body["messages"][0]["content"]})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _sse_handler(events: int, split: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(events):
            event = f'data: {{"i": {i}}}\n\n'.encode()
            if split:
                # The blank line that ends an event arrives in the next read and chunk.
                await resp.write(event[:-1])
                await asyncio.sleep(0.002)
                await resp.write(event[-1:])
            else:
                await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return handler


async def test_plain_requests_are_counted_and_timed(aiohttp_server: ServerFactory) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _plain)
    server = await aiohttp_server(app)
    r = await loadgen.run(_url(server, "/v1/chat/completions"), BODY, "k-123",
                          concurrency=4, duration=0.3, warmup=0.05)
    assert r["errors"] == 0
    assert r["statuses"] == {"200": r["requests"]}
    assert r["requests"] > 20
    assert r["completed"] >= r["requests"]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert r["rps"] == pytest.approx(r["requests"] / r["elapsed_s"])
    assert "ttft_ms" not in r


@pytest.mark.parametrize("split", [False, True])
async def test_sse_events_are_timestamped(aiohttp_server: ServerFactory, split: bool) -> None:
    app = web.Application()
    app.router.add_post("/s", _sse_handler(events=7, split=split))
    server = await aiohttp_server(app)
    r = await loadgen.run(_url(server, "/s"), BODY, None, concurrency=1, duration=0.3,
                          warmup=0.0)
    assert r["errors"] == 0 and r["requests"] > 0
    # Seven data events and [DONE]; an event split across reads still counts once.
    assert r["events_per_reply"] == 8
    assert 0 < r["ttft_ms"]["p50"] <= r["latency_ms"]["p50"]
    if split:
        # Events 2 ms apart: the measured time per chunk must show it.
        assert r["per_chunk_us"]["mean"] > 1000


async def test_non_200_is_an_error_not_a_sample(aiohttp_server: ServerFactory) -> None:
    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"code": "x"}}, status=429)

    app = web.Application()
    app.router.add_post("/r", refuse)
    server = await aiohttp_server(app)
    r = await loadgen.run(_url(server, "/r"), BODY, None, concurrency=2, duration=0.2,
                          warmup=0.0)
    assert r["requests"] == 0
    assert r["errors"] > 0
    assert r["statuses"] == {"429": r["errors"]}


async def test_connection_close_reconnects(aiohttp_server: ServerFactory) -> None:
    async def closing(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/c", closing)
    server = await aiohttp_server(app)
    r = await loadgen.run(_url(server, "/c"), BODY, None, concurrency=2, duration=0.2,
                          warmup=0.0)
    assert r["errors"] == 0
    assert r["requests"] > 5


def test_request_bytes() -> None:
    host, port, raw = loadgen.build_request("http://127.0.0.1:9/v1/x", b"{}", "key-1")
    assert (host, port) == ("127.0.0.1", 9)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"{}"
    assert head.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"Content-Length: 2" in head and b"Authorization: Bearer key-1" in head


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 100) == 100.0
    assert loadgen.percentile([3.0], 99) == 3.0


def test_main_reports_a_dead_server_as_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.procs import free_port

    port = free_port()  # nothing listens there
    assert loadgen.main(["--url", f"http://127.0.0.1:{port}/x", "--body", "{}", "-d", "0.1",
                         "--warmup", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["requests"] == 0
    assert r["errors"] > 0
