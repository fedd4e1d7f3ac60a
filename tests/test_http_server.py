"""Warden's HTTP/1.1 server (proxy/server.py) over real sockets on loopback, with small
handlers that make each protocol path observable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from proxy.appkeys import ROUTES
from proxy.errors import BadRequest
from proxy.request import Request
from proxy.response import Response, StreamResponse, json_response
from proxy.router import Routes
from proxy.server import HttpServer, Runner


@dataclass
class Seen:
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    written: int = 0


@dataclass
class Served:
    url: str
    host: str
    port: int
    runner: Runner
    seen: Seen


def make_app(seen: Seen, max_body: int = 1000) -> web.Application:
    async def echo(request: Request) -> Response:
        return json_response({"method": request.method, "path": request.path,
                              "query": request.query_string, "body": request.body.decode(),
                              "x": request.headers.get("X-Thing"),
                              "ctype": request.content_type})

    async def slow(request: Request) -> Response:
        try:
            await seen.release.wait()
        except asyncio.CancelledError:
            seen.cancelled.append(request.path)
            raise
        seen.finished.append(request.path)
        return Response(b"late", content_type="text/plain")

    async def stream(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\n\n" % i)
        await response.write_eof()
        return response

    async def firehose(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * 65536
        try:
            for _ in range(1000):  # 64 MB, far more than any socket buffer holds
                await response.write(block)
                seen.written += len(block)
        except (ConnectionResetError, asyncio.CancelledError):
            seen.cancelled.append("/firehose")  # the client left: cancelled, or write failed
            raise
        await response.write_eof()
        return response

    async def after_reply(request: Request) -> Response:
        # Sends first, then keeps working: a client leaving now must not cancel this.
        response = Response(b"sent", content_type="text/plain")
        await response.prepare(request)
        await seen.release.wait()
        seen.finished.append(request.path)
        return response

    async def boom(request: Request) -> Response:
        raise RuntimeError("secret detail")

    async def refuse(request: Request) -> Response:
        raise BadRequest("no thanks", param="x")

    async def bad_header(request: Request) -> Response:
        return Response(b"x", headers={"X-Evil": "a\r\nSet-Cookie: s=1"})

    routes = Routes(max_body_bytes=max_body)
    routes.post("/echo", echo)
    routes.get("/echo", echo)
    routes.get("/items/{name}", echo)
    routes.post("/slow", slow)
    routes.post("/stream", stream)
    routes.post("/after", after_reply)
    routes.post("/firehose", firehose)
    routes.post("/boom", boom)
    routes.post("/refuse", refuse)
    routes.get("/bad-header", bad_header)
    app = web.Application()
    app[ROUTES] = routes
    return app


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    seen = Seen()
    runner = Runner(make_app(seen), shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield Served(f"http://127.0.0.1:{port}", "127.0.0.1", port, runner, seen)
    seen.release.set()
    await runner.cleanup()


async def exchange(s: Served, raw: bytes, wait_s: float = 5.0) -> bytes:
    """Send bytes as they are; read until the server closes."""
    reader, writer = await asyncio.open_connection(s.host, s.port)
    writer.write(raw)
    try:
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


def split_replies(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each Content-Length framed reply in ``raw``."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        out.append((head, rest[:length]))
        raw = rest[length:]
    return out


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"POST " + path + b" HTTP/1.1", b"Host: x",
                         b"Content-Length: %d" % len(body), *extra]) + b"\r\n\r\n" + body


async def test_routes_headers_query_and_body_reach_the_handler(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        r = await client.post("/echo?a=1&b=2", content=b"hello",
                              headers={"x-thing": "v", "Content-Type": "Text/Plain; x=y"})
        assert r.status_code == 200
        assert r.json() == {"method": "POST", "path": "/echo", "query": "a=1&b=2",
                            "body": "hello", "x": "v", "ctype": "text/plain"}
        assert r.headers["server"] == "warden" and "date" in r.headers
        r = await client.get("/items/a%20b")
        assert r.json()["path"] == "/items/a%20b"


async def test_unknown_path_404_and_wrong_method_405_with_allow(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        r = await client.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await client.delete("/echo")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert r.headers["allow"] == "GET,HEAD,POST"


async def test_head_gets_the_get_headers_and_no_body(served: Served) -> None:
    raw = await exchange(served, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: " in head
    assert body == b""


async def test_handler_errors_are_openai_errors_and_never_tracebacks(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        r = await client.post("/boom")
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error" and "secret" not in r.text
        r = await client.post("/refuse")
        assert r.status_code == 400
        assert r.json()["error"] == {"message": "no thanks", "type": "invalid_request_error",
                                     "param": "x", "code": "invalid_request"}
        r = await client.get("/bad-header")  # a header value with CRLF is never sent
        assert r.status_code == 500 and "set-cookie" not in r.headers


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(served: Served) -> None:
    raw = b"".join(post(b"/echo", b"%d" % i) for i in range(5))
    raw += post(b"/echo", b"last", b"Connection: close")
    replies = split_replies(await exchange(served, raw))
    assert [json.loads(body)["body"] for _, body in replies] == ["0", "1", "2", "3", "4",
                                                                "last"]
    assert b"Connection: close" in replies[-1][0]
    assert all(b"Connection: close" not in head for head, _ in replies[:-1])


async def test_requests_before_a_malformed_one_are_still_answered(served: Served) -> None:
    raw = post(b"/echo", b"first") + post(b"/echo", b"second") + b"P@ST / HTTP/1.1\r\n\r\n"
    reply = await exchange(served, raw)
    first, second, refusal = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and b'"first"' in first
    assert second.startswith(b"200 ") and b'"second"' in second
    assert refusal.startswith(b"400 ") and b"bad_http_method" in refusal


async def test_body_arriving_in_pieces_and_chunked_bodies(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    whole = post(b"/echo", b"0123456789", b"Connection: close")
    for i in range(0, len(whole), 7):
        writer.write(whole[i:i + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    reply = await reader.read()
    writer.close()
    assert json.loads(split_replies(reply)[0][1])["body"] == "0123456789"
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert json.loads(split_replies(await exchange(served, chunked))[0][1])["body"] == "abcde"


async def test_oversized_bodies_are_413_before_or_while_reading(served: Served) -> None:
    # Declared too large: refused from the head alone, without waiting for the body.
    head_only = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    reply = await exchange(served, head_only, wait_s=3)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"
    chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunk + chunk + b"0\r\n\r\n")
    assert (await exchange(served, chunked)).startswith(b"HTTP/1.1 413 ")


async def test_expect_100_continue_is_answered_before_the_body(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    reply = await reader.read()
    writer.close()
    assert json.loads(split_replies(reply)[0][1])["body"] == "ok"


async def test_streams_are_chunked_on_http11_and_close_delimited_on_http10(
        served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        r = await client.post("/stream")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    raw = await exchange(served, b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and b"Connection: close" in head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_a_slow_reader_slows_the_writer_down(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(post(b"/firehose", b""))
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.3)  # not reading: the handler must wait, not buffer 64 MB
    assert served.seen.written < 16 * 1024 * 1024, served.seen.written
    got = 0
    while got < 8 * 1024 * 1024:  # reading lets it go on
        got += len(await reader.read(1 << 20))
    assert served.seen.written > 4 * 1024 * 1024
    writer.close()  # leaving mid-stream: the handler's next write fails
    for _ in range(100):
        if served.seen.cancelled:
            break
        await asyncio.sleep(0.02)
    assert served.seen.cancelled == ["/firehose"]
    assert served.seen.written < 64 * 1024 * 1024


async def test_a_client_leaving_before_its_reply_cancels_the_handler(served: Served) -> None:
    _, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(post(b"/slow", b""))
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    for _ in range(100):
        if served.seen.cancelled:
            break
        await asyncio.sleep(0.02)
    assert served.seen.cancelled == ["/slow"]


async def test_work_after_the_reply_survives_the_client_leaving(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(post(b"/after", b""))
    head = await asyncio.wait_for(reader.readuntil(b"sent"), 3)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()
    await asyncio.sleep(0.1)
    served.seen.release.set()
    for _ in range(100):
        if served.seen.finished:
            break
        await asyncio.sleep(0.02)
    assert served.seen.finished == ["/after"] and served.seen.cancelled == []


async def test_upgrade_requests_are_answered_in_http11_and_closed(served: Served) -> None:
    raw = (b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    reply = await exchange(served, raw)
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in reply


async def test_shutdown_lets_a_request_in_progress_finish(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        pending = asyncio.create_task(client.post("/slow", content=b""))
        await asyncio.sleep(0.1)
        cleanup = asyncio.create_task(served.runner.cleanup())
        await asyncio.sleep(0.1)
        served.seen.release.set()
        r = await pending
        await cleanup
        assert r.status_code == 200 and r.text == "late"
        assert served.seen.finished == ["/slow"]


async def test_shutdown_cancels_what_outlives_the_grace(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        pending = asyncio.create_task(client.post("/slow", content=b""))
        await asyncio.sleep(0.1)
        await served.runner.cleanup()  # grace 2 s; the handler never finishes by itself
        with pytest.raises(httpx.HTTPError):
            await pending
    assert served.seen.cancelled == ["/slow"]


async def test_idle_keep_alive_connections_are_closed() -> None:
    seen = Seen()
    app = make_app(seen)
    runner = Runner(app)
    await runner.setup()
    server = runner.server
    assert isinstance(server, HttpServer)
    server.keepalive_s = 0.2
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(post(b"/echo", b"x"))
        await reader.readuntil(b'"ctype"')
        # No Connection: close, so only the keep-alive sweep ends this connection.
        assert await asyncio.wait_for(reader.read(), 3) is not None
        assert reader.at_eof()
        writer.close()
    finally:
        await runner.cleanup()
