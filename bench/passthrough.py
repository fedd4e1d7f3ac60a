"""The least a Python proxy can do: a minimal aiohttp pass-through, as a reference column.

No keys, no routing, no parsing: the body goes to one fixed upstream over a pooled
session and the reply (or stream, as it arrives) comes back. What it costs is what any
aiohttp proxy pays on this machine for being a server and a client per request, so
Warden's distance to it is what Warden itself adds, whatever the client and the mock cost.

    python bench/passthrough.py --upstream http://127.0.0.1:P --port Q
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import ClientSession, TCPConnector, web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    # Everything after the first path segment is kept, so /f/<spec>/v1/... reaches the mock.
    url = request.app[UPSTREAM] + request.path_qs
    body = await request.read()
    headers = {"Content-Type": "application/json"}
    async with request.app[SESSION].post(url, data=body, headers=headers) as up:
        if up.content_type != "text/event-stream":
            return web.Response(body=await up.read(), status=up.status,
                                content_type=up.content_type)
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.content_type})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = ClientSession(connector=TCPConnector(limit_per_host=256))
    yield
    await app[SESSION].close()


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/ready", ready)
    app.router.add_post("/{tail:.*}", relay)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    web.run_app(make_app(a.upstream), host=a.host, port=a.port, print=None, access_log=None,
                loop=uvloop.new_event_loop() if uvloop is not None else None)


if __name__ == "__main__":
    main()
