"""Closed-loop HTTP/1.1 load generator, run in its own process by ``bench/run.py``.

Why not aiohttp's client or wrk: on this 2-core machine the client shares the CPU with
the proxy and the mock, so every microsecond it spends is taken from what it measures.
A bare ``asyncio.Protocol`` on uvloop with the request pre-encoded and a minimal
response parser costs a fraction of aiohttp's client per request (measured: see
bench/README.md), and unlike wrk it timestamps each SSE event, which streaming TTFT and
per-chunk times need.

Each of ``concurrency`` workers owns one keep-alive connection and sends one request at
a time; after ``warmup`` seconds every completed request is recorded for ``duration``
seconds. The result is one JSON object on stdout (see ``summarize``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a Warden dependency on Linux
    uvloop = None  # type: ignore[assignment]

_CRLF2 = b"\r\n\r\n"


class ResponseError(Exception):
    """The server answered something this client cannot read as HTTP/1.1."""


@dataclass(slots=True)
class Reply:
    """One completed request: status, timings, and SSE event timestamps if streamed."""

    status: int = 0
    sent: float = 0.0
    done: float = 0.0
    events: list[float] = field(default_factory=list)


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight.

    Parses just enough HTTP/1.1: status line, Content-Length or chunked body,
    ``Connection: close``. Body bytes are scanned for blank lines (SSE event ends) and
    each event gets the time of the read that completed it.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._reply: Reply | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._in_body = False
        self._remaining = -1  # Content-Length left; -1 when chunked
        self._chunked = False
        self._chunk_left = 0  # bytes left in the current chunk (+2 for its CRLF)
        self._tail = b""  # last byte of body, to find "\n\n" split across reads
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("server closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._reset()
        self._reply = Reply(sent=time.perf_counter())
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        try:
            self._feed(data, now)
        except ResponseError as e:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(e)
            assert self.transport is not None
            self.transport.close()

    def _feed(self, data: bytes, now: float) -> None:
        if not self._in_body:
            self._buf += data
            end = self._buf.find(_CRLF2)
            if end < 0:
                return
            self._head(self._buf[:end])
            data, self._buf = self._buf[end + 4 :], b""
            self._in_body = True
        if self._chunked:
            self._feed_chunked(data, now)
        else:
            self._body(data[: self._remaining], now)
            self._remaining -= len(data)
            if self._remaining <= 0:
                self._finish(now)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ResponseError(f"bad status line {lines[0][:80]!r}")
        assert self._reply is not None
        self._reply.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                self._remaining = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                self._chunked = True
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        if not self._chunked and self._remaining < 0:
            raise ResponseError("response has neither Content-Length nor chunked body")

    def _feed_chunked(self, data: bytes, now: float) -> None:
        buf = self._buf + data
        self._buf = b""
        pos = 0
        while pos < len(buf):
            if self._chunk_left > 0:
                take = buf[pos : pos + self._chunk_left]
                # The last two bytes of each chunk are its CRLF, not body.
                body_len = max(0, min(len(take), self._chunk_left - 2))
                self._body(take[:body_len], now)
                self._chunk_left -= len(take)
                pos += len(take)
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self._buf = buf[pos:]
                return
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self._finish(now)  # trailers are not used by any server measured here
                return
            self._chunk_left = size + 2

    def _body(self, data: bytes, now: float) -> None:
        if not data:
            return
        assert self._reply is not None
        events = (self._tail + data).count(b"\n\n")
        if events:
            self._reply.events.extend([now] * events)
        self._tail = data[-1:]

    def _finish(self, now: float) -> None:
        assert self._reply is not None and self._waiter is not None
        self._reply.done = now
        if not self._waiter.done():
            self._waiter.set_result(self._reply)


def build_request(url: str, body: bytes, api_key: str | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    return host, port, ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(slots=True)
class Samples:
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    per_chunk: list[float] = field(default_factory=list)
    events: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    completed: int = 0  # every reply, warm-up included: the server's CPU covers them all


async def worker(
    host: str, port: int, request: bytes, start: float, end: float, out: Samples
) -> None:
    loop = asyncio.get_running_loop()
    conn: Connection | None = None
    while time.perf_counter() < end:
        try:
            if conn is None or not conn.keep_alive or conn.closed.done():
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                _, conn = await loop.create_connection(Connection, host, port)
            reply = await conn.send(request)
        except (OSError, ResponseError):  # ConnectionError is an OSError
            out.errors += 1
            conn = None
            await asyncio.sleep(0.005)  # a server that died must not make this spin
            continue
        out.completed += 1
        if reply.sent < start:
            continue  # warm-up
        out.statuses[reply.status] = out.statuses.get(reply.status, 0) + 1
        if reply.status != 200:
            out.errors += 1
            continue
        out.latencies.append(reply.done - reply.sent)
        if reply.events:
            out.events += len(reply.events)
            out.ttft.append(reply.events[0] - reply.sent)
            if len(reply.events) > 1:
                out.per_chunk.append((reply.events[-1] - reply.events[0]) / (len(reply.events) - 1))
    if conn is not None and conn.transport is not None:
        conn.transport.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _dist(values: list[float], scale: float) -> dict[str, float]:
    s = sorted(values)
    return {
        "p50": percentile(s, 50) * scale,
        "p90": percentile(s, 90) * scale,
        "p99": percentile(s, 99) * scale,
        "mean": (sum(s) / len(s) * scale) if s else math.nan,
    }


def summarize(out: Samples, elapsed: float, cpu_s: float) -> dict[str, Any]:
    """Everything run.py needs, in milliseconds (latency, TTFT) and microseconds (chunk)."""
    n = len(out.latencies)
    result: dict[str, Any] = {
        "requests": n,
        "completed": out.completed,
        "errors": out.errors,
        "statuses": {str(k): v for k, v in sorted(out.statuses.items())},
        "elapsed_s": elapsed,
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "latency_ms": _dist(out.latencies, 1e3),
        # Share of one core the client itself used: near 1.0 means it may be the limit.
        "client_cpu": cpu_s / elapsed if elapsed > 0 else 0.0,
    }
    if out.ttft:
        result["ttft_ms"] = _dist(out.ttft, 1e3)
        result["per_chunk_us"] = _dist(out.per_chunk, 1e6)
        result["events_per_reply"] = out.events / len(out.ttft)
    return result


async def run(
    url: str, body: bytes, api_key: str | None, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    host, port, request = build_request(url, body, api_key)
    out = Samples()
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + duration
    cpu_at_start: list[float] = []
    snapshot = lambda: cpu_at_start.append(time.process_time())  # noqa: E731
    asyncio.get_running_loop().call_later(warmup, snapshot)
    workers = [worker(host, port, request, start, end, out) for _ in range(concurrency)]
    await asyncio.gather(*workers)
    # Requests still in flight at `end` finish after it; count the time they took too.
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - (cpu_at_start[0] if cpu_at_start else 0.0)
    return summarize(out, elapsed, cpu)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="full URL to POST to")
    p.add_argument("--body", required=True, help="request body (JSON text) or @file")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--duration", "-d", type=float, default=3.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds first")
    a = p.parse_args(argv)
    body = a.body
    if body.startswith("@"):
        with open(body[1:], "rb") as f:
            raw = f.read()
    else:
        raw = body.encode()
    coro = run(a.url, raw, a.api_key, a.concurrency, a.duration, a.warmup)
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
