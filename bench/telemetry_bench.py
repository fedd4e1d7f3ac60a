"""What metrics + the access log cost per request: the same traffic, with and without.

    PYTHONPATH=. python bench/telemetry_bench.py [--n 3000] [--rounds 5]

Two measurements, both in one process on one event loop:

1. ``record()`` alone: ``Metrics.record(ctx)`` on realistic finished contexts (a plain
   reply, a 40-chunk stream, a refusal), timed call by call, the access log written to
   /dev/null the way ``warden serve`` writes it to stdout. This is the whole per-request
   cost of telemetry that runs after the reply (metrics, cost, log line).
2. End to end: one proxy on the mock provider whose metrics and access log (lines to
   /dev/null) a bench-only route switches on and off (what ``WARDEN_METRICS_ENABLED=false``
   and ``WARDEN_ACCESS_LOG=false`` do) between blocks of 20 requests; a client in a
   separate process sends them sequentially, so both states see the same machine noise,
   port and connection pools. p50 latency of each and the difference.

The per-chunk work on streams (one ``perf_counter`` delta appended per chunk, the raw
event kept by reference) runs in both configurations and is not part of the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml
from aiohttp import web

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from proxy.app import create_app
from proxy.appkeys import SERVICES
from proxy.context import Attempt, Decision, RequestContext, Usage
from proxy.metrics import Metrics
from proxy.mock_upstream import create_mock_app
from proxy.settings import Settings
from proxy.tenants import Tenant, TenantConfig

KEY = "vk-bench-key-0001"


def _tenant() -> Tenant:
    cfg = TenantConfig.model_validate({"tenant": "bench", "keys": [KEY], "models": {
        "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini",
                         "api_base": "http://127.0.0.1:1/v1"}]}})
    return Tenant(config=cfg, policies=(), source=Path("bench.yaml"))


def contexts(tenant: Tenant) -> list[RequestContext]:
    d = tenant.config.models["gpt-4o-mini"].deployments[0]
    plain = RequestContext(request_id="0" * 32, operation="chat", tenant=tenant,
                           model="gpt-4o-mini", deployments=(d,), deployment=d, status=200,
                           usage=Usage(812, 64), response_model="gpt-4o-mini-2024-07-18")
    plain.attempts = [Attempt(d.label, 200, "ok", 0.2)]
    plain.client_headers = {"x-warden-agent": "planner", "x-warden-conversation": "c-1"}
    plain.decisions = [Decision("pii", "redact", "EMAIL_ADDRESS")]
    stream = RequestContext(request_id="1" * 32, operation="chat", tenant=tenant,
                            model="gpt-4o-mini", deployments=(d,), deployment=d, status=200,
                            stream=True, usage=Usage(812, 40), first_token_s=0.05,
                            response_model="gpt-4o-mini-2024-07-18", chunks=42)
    stream.attempts = [Attempt(d.label, 200, "ok", 0.6)]
    stream.chunk_gaps = [0.012] * 40
    refused = RequestContext(request_id="2" * 32, operation="chat", tenant=tenant,
                             model="gpt-4o-mini", deployments=(d,), status=429,
                             error_type="rate_limit_exceeded")
    refused.decisions = [Decision("limits", "refuse", "rpm")]
    return [plain, stream, refused]


def bench_record(n: int, devnull: TextIO) -> dict[str, float]:
    """p50 / p90 microseconds of one record() call, per kind of request."""
    metrics = Metrics(access_log_enabled=True)
    metrics.log_to(devnull)
    out: dict[str, float] = {}
    for ctx in contexts(_tenant()):
        ctx.cost_usd = None
        metrics.record(ctx)  # first call creates the label children
        times = []
        for _ in range(n):
            ctx.cost_usd = None
            t = time.perf_counter_ns()
            metrics.record(ctx)
            times.append(time.perf_counter_ns() - t)
        times.sort()
        kind = "stream" if ctx.stream else ("refused" if ctx.status == 429 else "plain")
        out[f"{kind} p50"] = times[len(times) // 2] / 1000
        out[f"{kind} p90"] = times[int(len(times) * 0.9)] / 1000
    return out


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


BLOCK = 20  # requests per on/off block


def _client(url: str, n: int, rounds: int, stream: bool, out: Any) -> None:
    """The load generator, in its own process: blocks of requests with telemetry on,
    then off, alternating, against one proxy."""
    async def run() -> dict[str, list[float]]:
        body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": stream,
                                "messages": [{"role": "user", "content": "hello " * 50}]}
        headers = {"Authorization": f"Bearer {KEY}", "X-Warden-Agent": "planner"}
        lat: dict[str, list[float]] = {"on": [], "off": []}
        async with aiohttp.ClientSession() as session:
            async def one() -> float:
                t = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", json=body,
                                        headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                return time.perf_counter() - t

            async def switch(state: str) -> None:
                async with session.post(f"{url}/_bench/telemetry?on={int(state == 'on')}"):
                    pass

            for _ in range(200):  # warm-up: pools, label children
                await one()
            for _ in range(rounds):
                for block in range(n // BLOCK):
                    for state in (("on", "off") if block % 2 else ("off", "on")):
                        await switch(state)
                        for _ in range(BLOCK):
                            lat[state].append(await one())
        return lat

    out.put(asyncio.run(run()))


async def bench_end_to_end(n: int, rounds: int, stream: bool, devnull: TextIO,
                           control: bool = False) -> dict[str, float]:
    """One proxy whose telemetry a bench-only route switches on and off between blocks
    of requests (same process, port and pools for both); the mock on the same loop; the
    client in another process, so work done after the last byte left (a stream's
    record()) is not counted as latency, as it is not for a real agent."""
    mock_runner, mock = await _serve(create_mock_app())
    tmp = Path(tempfile.mkdtemp(prefix="warden-telemetry-bench-"))
    (tmp / "bench.yaml").write_text(yaml.safe_dump({"tenant": "bench", "keys": [KEY], "models": {
        "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini",
                         "api_base": f"{mock}/v1"}]}}))
    app = create_app(Settings(policies_dir=tmp, access_log=True))
    metrics = app[SERVICES].metrics
    metrics.log_to(devnull)  # as `warden serve` does with stdout
    access = metrics.access

    async def toggle(request: web.Request) -> web.Response:
        on = request.query["on"] == "1" or control  # control: "off" is on too
        metrics.enabled = on  # what WARDEN_METRICS_ENABLED=false does
        metrics.access = access if on else None  # what WARDEN_ACCESS_LOG=false does
        return web.Response(text="ok")

    app.router.add_post("/_bench/telemetry", toggle)
    runner, url = await _serve(app)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    client = ctx.Process(target=_client, args=(url, n, rounds, stream, queue))
    client.start()
    loop = asyncio.get_running_loop()
    lat: dict[str, list[float]] = await loop.run_in_executor(None, queue.get)
    await loop.run_in_executor(None, client.join)
    for r in (runner, mock_runner):
        await r.cleanup()
    p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    return {"on p50 ms": p50["on"], "off p50 ms": p50["off"],
            "added p50 ms": p50["on"] - p50["off"], "requests each": len(lat["on"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000, help="requests per round and config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--control", action="store_true",
                        help="leave telemetry on in both states: the noise floor")
    args = parser.parse_args()
    devnull = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    print("record() per request, µs (metrics + cost + JSON log line to /dev/null):")
    for k, v in bench_record(args.n, devnull).items():
        print(f"  {k:12s} {v:8.2f}")
    for stream in (False, True):
        label = "stream (mock's word chunks)" if stream else "plain"
        res = asyncio.run(bench_end_to_end(args.n, args.rounds, stream, devnull,
                                           args.control))
        print(f"end to end, {label}, {res['requests each']:.0f} requests each, alternating:")
        print(f"  with telemetry p50 {res['on p50 ms']:.3f} ms, without "
              f"{res['off p50 ms']:.3f} ms, added {res['added p50 ms'] * 1000:+.1f} µs")


if __name__ == "__main__":
    main()
