"""The fast path's HTTP/1.1 client against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from proxy.upstream.base import UpstreamError
from proxy.upstream.http1 import Client, split_url

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = {"connect_s": 5.0, "first_byte_s": 5.0, "total_s": 30.0}


async def serve(handler: Handler, tls: ssl.SSLContext | None = None
                ) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    scheme = "https" if tls else "http"
    return runner, f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.read()
        return web.json_response({"got": body.decode(), "peers": len(set(peers)),
                                  "host": request.headers["Host"],
                                  "auth": request.headers.get("Authorization")})

    runner, url = await serve(handler)
    yield url
    await runner.cleanup()


async def test_post_and_keep_alive_reuse(echo: str) -> None:
    client = Client(4)
    for i in range(5):
        ex = await client.post(f"{echo}/v1/x", {"Authorization": "Bearer k"}, b"hi%d" % i, **T)
        assert ex.status == 200
        data = await ex.read()
        assert b'"got": "hi%d"' % i in data
    # Five exchanges, one TCP connection.
    assert b'"peers": 1' in data and b'"auth": "Bearer k"' in data
    client.close()


async def test_concurrent_requests_open_several_connections(echo: str) -> None:
    client = Client(8)
    exchanges = await asyncio.gather(*[client.post(f"{echo}/x", {}, b"c", **T) for _ in range(6)])
    bodies = await asyncio.gather(*[ex.read() for ex in exchanges])
    assert all(ex.status == 200 for ex in exchanges) and len(bodies) == 6
    client.close()


async def test_chunked_stream_and_flow_control() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(200):
            await resp.write(b"x" * 4096 + str(i).encode())
        await resp.write_eof()
        return resp

    runner, url = await serve(handler)
    client = Client(2)
    ex = await client.post(url, {}, b"", **T)
    await asyncio.sleep(0.2)  # let the provider fill our buffer: reading must pause
    total = 0
    while (chunk := await ex.next_chunk(5.0)) is not None:
        total += len(chunk)
    assert total == sum(4096 + len(str(i)) for i in range(200))
    ex.release()
    client.close()
    await runner.cleanup()


async def test_reset_mid_body_raises_upstream_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.abort()
        return resp

    runner, url = await serve(handler)
    client = Client(2)
    ex = await client.post(url, {}, b"", **T)
    with pytest.raises(UpstreamError) as info:
        await ex.read()
    assert info.value.reason == "reset"
    client.close()
    await runner.cleanup()


async def test_malformed_http_is_bad_reply() -> None:
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(2)
    with pytest.raises(UpstreamError) as info:
        await client.post(f"http://127.0.0.1:{port}/", {}, b"x", **T)
    assert info.value.reason == "bad_reply"
    client.close()
    server.close()


async def test_stale_keep_alive_connection_is_retried_once_fresh() -> None:
    """A provider that closes idle keep-alive connections: the next request must not fail."""
    served = 0

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive was promised, but the server drops the connection right after.
        writer.transport.abort()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(2)
    for _ in range(3):
        ex = await client.post(f"http://127.0.0.1:{port}/", {}, b"", **T)
        assert await ex.read() == b"ok"
    assert served == 3
    client.close()
    server.close()


async def test_connect_refused_and_timeout() -> None:
    client = Client(2)
    with pytest.raises(UpstreamError) as info:
        await client.post("http://127.0.0.1:9/", {}, b"", **T)
    assert info.value.reason == "connect_error"
    client.close()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


async def test_tls(self_signed: tuple[Path, Path]) -> None:
    key, cert = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"secure " + await request.read())

    runner, url = await serve(handler, server_tls)
    assert url.startswith("https://")
    client = Client(2, tls=ssl.create_default_context(cafile=str(cert)))
    ex = await client.post(url, {}, b"hello", **T)
    assert await ex.read() == b"secure hello"
    untrusting = Client(2)  # the system trust store does not know our self-signed cert
    with pytest.raises(UpstreamError, match="cannot connect"):
        await untrusting.post(url, {}, b"", **T)
    client.close()
    untrusting.close()
    await runner.cleanup()


def test_split_url_and_header_injection() -> None:
    origin, target = split_url("https://api.openai.com/v1/chat/completions?x=1")
    assert (origin.host, origin.port) == ("api.openai.com", 443)
    assert target == b"/v1/chat/completions?x=1"
    assert origin.host_header == b"api.openai.com"
    with pytest.raises(ValueError):
        split_url("ftp://x")
    from proxy.upstream.http1 import _encode

    with pytest.raises(ValueError, match="line break"):
        _encode(origin, b"/", {"X-Evil": "a\r\nInjected: 1"}, b"")


async def test_first_byte_idle_and_total_timeouts() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        mode = request.path.strip("/")
        if mode == "slow-head":
            await asyncio.sleep(5)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b"x")
            await asyncio.sleep(0.5 if mode == "stall" else 0.05)
        await resp.write_eof()
        return resp

    runner, url = await serve(handler)
    client = Client(4)
    with pytest.raises(UpstreamError, match="did not answer in time") as info:
        await client.post(f"{url}/slow-head", {}, b"", connect_s=5, first_byte_s=0.2,
                          total_s=30)
    assert info.value.timeout
    ex = await client.post(f"{url}/stall", {}, b"", connect_s=5, first_byte_s=5, total_s=30)
    with pytest.raises(UpstreamError, match="stalled"):
        while await ex.next_chunk(0.2) is not None:
            pass
    ex.abort()
    ex = await client.post(f"{url}/steady", {}, b"", connect_s=5, first_byte_s=5, total_s=0.5)
    with pytest.raises(UpstreamError) as info:
        await ex.read()  # chunks keep coming, but the whole reply takes ~2.5 s
    assert info.value.timeout
    client.close()
    await runner.cleanup()


async def test_finish_keeps_a_completed_stream_and_closes_an_unfinished_one() -> None:
    """A relay stops reading at [DONE]: the connection must still be reused when the
    message is complete, and must not be when the provider is still sending."""
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"n":1}\n\ndata: [DONE]\n\n')
        if request.path == "/slow":
            await asyncio.sleep(0.5)  # the end of the message is late
        await resp.write_eof()
        return resp

    runner, url = await serve(handler)
    client = Client(4)
    for _ in range(4):
        ex = await client.post(f"{url}/fast", {}, b"", **T)
        while b"[DONE]" not in (await ex.next_chunk(5.0) or b"[DONE]"):
            pass
        await asyncio.sleep(0.01)  # the chunked terminator arrives
        ex.finish()
    assert len(set(peers)) == 1  # one connection for four streams

    ex = await client.post(f"{url}/slow", {}, b"", **T)
    assert b"[DONE]" in (await ex.next_chunk(5.0) or b"")
    ex.finish()  # mid-message: closed, not pooled
    ex = await client.post(f"{url}/fast", {}, b"", **T)
    await ex.read()
    assert len(set(peers)) == 2  # the pooled connection was not the unfinished one
    client.close()
    await runner.cleanup()
