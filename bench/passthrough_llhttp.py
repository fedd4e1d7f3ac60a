"""The floor for a Python proxy here: a pass-through on llhttp both ways, as a reference column.

Server side an ``asyncio.Protocol`` feeding ``httptools`` (what proxy/server.py builds
on), client side Warden's own HTTP/1.1 client (proxy/upstream/http1.py); no keys, no
routing, no JSON, no policies, no telemetry. What it adds over direct-to-mock is what
being a server and a client per request costs on this machine before any proxy logic:
Warden's distance to it is what Warden itself does.

    python bench/passthrough_llhttp.py --upstream http://127.0.0.1:P --port Q
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import httptools

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.upstream.http1 import Client

TIMEOUTS = {"connect_s": 10.0, "first_byte_s": 60.0, "total_s": 600.0}


class Relay(asyncio.Protocol):
    def __init__(self, upstream: str, client: Client) -> None:
        self.upstream, self.client = upstream, client
        self.parser = httptools.HttpRequestParser(self)
        self.url, self.body = b"", b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self.relay(self.url.decode(), self.body))

    async def relay(self, path: str, body: bytes) -> None:
        assert self.transport is not None
        if path == "/ready":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        ex = await self.client.post(self.upstream + path, {"Content-Type": "application/json"},
                                    body, **TIMEOUTS)
        ctype = ex.headers.get("content-type", "application/json")
        if not ctype.startswith("text/event-stream"):
            data = await ex.read()
            self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d"
                                 b"\r\n\r\n%s" % (ex.status, ctype.encode(), len(data), data))
            return
        self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" % (ex.status, ctype.encode()))
        while (chunk := await ex.next_chunk(60.0)) is not None:
            self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        ex.finish()
        self.transport.write(b"0\r\n\r\n")


async def serve(upstream: str, host: str, port: int) -> None:
    client = Client(256)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Relay(upstream.rstrip("/"), client), host, port,
                                      backlog=1024)
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    try:
        import uvloop
        uvloop.run(serve(a.upstream, a.host, a.port))
    except ImportError:  # pragma: no cover - uvloop is a Warden dependency on Linux
        asyncio.run(serve(a.upstream, a.host, a.port))


if __name__ == "__main__":
    main()
