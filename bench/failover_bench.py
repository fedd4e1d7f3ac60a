"""Failover under a flaky primary: what the client sees, and what it costs.

    PYTHONPATH=. python bench/failover_bench.py [--requests 600] [--append]

One ``warden mock-upstream`` and one ``warden serve`` per breaker setting (defaults,
and breakers off), each with two models over the same mock:

- ``healthy``: primary (no fault) -> secondary
- ``flaky``:   primary answering 500 on 30 % of requests at random -> secondary
- ``down``:    primary answering 500 always -> secondary: with breakers off, every
  request pays one failover; with breakers on, the breaker opens at once and every
  request pays the skip instead (the breaker-open path end to end)

For each, N requests (plain and streamed alternating, one at a time so latencies are
not queueing) report the client-visible success rate (a 200 whose body parses, or a
stream that ends in ``[DONE]`` without an error event) and the added p50 / p99 latency
of ``flaky`` over ``healthy`` (interleaved, so both see the same machine load).

The breaker-open path is measured in process: ``Upstream.call`` over [a deployment
whose breaker is open, a healthy one] against [the healthy one] alone, with a
transport that answers at once, so the difference is the skip (breaker check plus
the attempt record) and nothing else.

Run it on a quiet machine for numbers to quote; ``--append`` adds a dated section to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import Server, Servers, free_port  # noqa: E402
from proxy.context import Operation, RequestContext  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from proxy.tenants import Deployment  # noqa: E402
from proxy.upstream.base import UpstreamReply  # noqa: E402
from proxy.upstream.failover import Upstream  # noqa: E402

KEY = "vk-bench-failover"
FAIL_RATE = 0.3


def policy(mock: str) -> dict[str, Any]:
    def dep(name: str, spec: str = "") -> dict[str, Any]:
        base = f"{mock}/f/{spec}" if spec else mock
        return {"provider": "openai", "model": f"{name}-model", "name": name,
                "api_base": f"{base}/v1"}

    return {"tenant": "bench", "keys": [KEY], "models": {
        "healthy": [dep("primary"), dep("secondary")],
        "flaky": [dep("flaky-primary", f"status=500,fail_rate={FAIL_RATE}"), dep("secondary")],
        "down": [dep("down-primary", "status=500"), dep("secondary")],
    }}


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    return {**base, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}


async def one(session: aiohttp.ClientSession, url: str, model: str, stream: bool
              ) -> tuple[bool, float]:
    body = {"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "ping the flaky provider"}]}
    started = time.perf_counter()
    async with session.post(url, json=body,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:
        raw = await r.read()
    elapsed = time.perf_counter() - started
    if r.status != 200:
        return False, elapsed
    if not stream:
        try:
            return "choices" in json.loads(raw), elapsed
        except ValueError:
            return False, elapsed
    return raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw, elapsed


async def measure(proxy: str, n: int) -> dict[str, dict[str, float]]:
    url = f"{proxy}/v1/chat/completions"
    models = ("healthy", "flaky", "down")
    samples: dict[str, list[float]] = {m: [] for m in models}
    ok = dict.fromkeys(models, 0)
    async with aiohttp.ClientSession() as session:
        for i in range(20):  # warm-up: connections, first-call paths
            await one(session, url, "healthy", i % 2 == 1)
        for i in range(n):
            for model in (models if i % 2 else models[::-1]):
                good, elapsed = await one(session, url, model, stream=(i // 2) % 2 == 1)
                ok[model] += good
                samples[model].append(elapsed)
    out: dict[str, dict[str, float]] = {}
    for model, values in samples.items():
        values.sort()
        def pct(q: float, v: list[float] = values) -> float:
            return v[min(len(v) - 1, int(len(v) * q))] * 1000

        out[model] = {"success": ok[model] / n, "p50_ms": statistics.median(values) * 1000,
                      "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                      "mean_ms": statistics.fmean(values) * 1000}
    return out


class _Instant:
    """A transport that answers at once: only Warden's own work is timed."""

    reply = UpstreamReply(200, b'{"choices": []}')

    async def send(self, deployment: Deployment, operation: Operation, body: dict[str, Any],
                   stream: bool) -> UpstreamReply:
        return self.reply

    async def close(self) -> None:
        return None


async def breaker_open_cost(n: int) -> dict[str, float]:
    settings = Settings(breaker_failures=1, breaker_open_s=3600)
    upstream = Upstream(_Instant(), _Instant(), settings)
    down = Deployment(provider="openai", model="down", name="down")
    up = Deployment(provider="openai", model="up", name="up")
    breaker = upstream.breakers.get(down)
    breaker.record(breaker.allow(), False)  # open, for the rest of the run
    body = {"messages": [{"role": "user", "content": "x"}]}

    async def run(deployments: tuple[Deployment, ...]) -> float:
        started = time.perf_counter()
        for _ in range(n):
            ctx = RequestContext(request_id="b", operation="chat", model="m")
            ctx.deployments = deployments
            await upstream.call(ctx, body)
        return (time.perf_counter() - started) / n

    with_open, alone = [], []
    for _ in range(5):  # interleaved rounds, medians
        with_open.append(await run((down, up)))
        alone.append(await run((up,)))
    allow = time.perf_counter()
    for _ in range(n):
        upstream.breakers.get(down).allow()
    allow_s = (time.perf_counter() - allow) / n
    return {"call_with_open_us": statistics.median(with_open) * 1e6,
            "call_alone_us": statistics.median(alone) * 1e6,
            "added_us": (statistics.median(with_open) - statistics.median(alone)) * 1e6,
            "allow_us": allow_s * 1e6}


def run_proxies(n: int, tmp: Path) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with Servers() as servers:
        mock_port = free_port()
        mock = servers.start(Server(
            "mock", [sys.executable, "-m", "proxy", "mock-upstream", "--port", str(mock_port)],
            mock_port, "/_mock/stats", tmp / "mock.log", env()), timeout=30)
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(yaml.safe_dump(policy(mock.base)))
        for name, extra in (("breakers on (defaults)", {}),
                            ("breakers off", {"WARDEN_BREAKER_FAILURES": "0"})):
            port = free_port()
            proxy = servers.start(Server(
                "warden", [sys.executable, "-m", "proxy", "serve", "--port", str(port),
                           "--policies", str(policies)],
                port, "/healthz", tmp / f"warden-{port}.log",
                env(WARDEN_ACCESS_LOG="false", WARDEN_LOG_LEVEL="error", **extra)), timeout=60)
            results[name] = asyncio.run(measure(proxy.base, n))
            servers.stop(proxy)
    return results


def report(results: dict[str, dict[str, dict[str, float]]], cost: dict[str, float], n: int,
           seconds: float, note: str) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — failover "
        f"(bench/failover_bench.py){' — ' + note if note else ''}",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load:.2f}; Python {platform.python_version()}. Mock at zero latency; primary "
        f"answering 500 on {FAIL_RATE:.0%} of requests at random, secondary healthy; "
        f"{n} requests per model, plain and streamed alternating, one at a time, "
        f"models interleaved; whole run {seconds:.0f} s.",
        "",
        "| Warden | model | client-visible success | p50 / p90 / p99 (ms) | mean (ms) | "
        "added p50 / p90 / mean vs healthy (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, by_model in results.items():
        h = by_model["healthy"]
        for model, r in by_model.items():
            added = (" / ".join(f"{r[k] - h[k]:.3f}" for k in ("p50_ms", "p90_ms", "mean_ms"))
                     if model != "healthy" else "—")
            lines.append(f"| {name} | {model} | {r['success']:.1%} | {r['p50_ms']:.3f} / "
                         f"{r['p90_ms']:.3f} / {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | "
                         f"{added} |")
    lines += [
        "",
        f"`flaky`: with {FAIL_RATE:.0%} failing, p50 is a request that did not fail over; "
        "a failover's cost shows in p90 and the mean. `down` (primary always 500): with "
        "breakers off every request fails over once (the cost of one failover); with "
        "breakers on the primary is skipped (the breaker-open path end to end).",
        "",
        "Breaker-open path, in process (an instant transport, so only Warden's work): "
        f"`Upstream.call` over [open, healthy] {cost['call_with_open_us']:.1f} µs vs "
        f"[healthy] {cost['call_alone_us']:.1f} µs: **{cost['added_us']:.1f} µs added** "
        f"(bound 100 µs); the check alone (`registry.get(d).allow()`) "
        f"{cost['allow_us']:.2f} µs.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="per model and setting")
    parser.add_argument("--calls", type=int, default=20000, help="in-process calls per round")
    parser.add_argument("--append", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--note", default="", help="added to the section title")
    args = parser.parse_args()
    started = time.perf_counter()
    logging.getLogger("warden.breaker").setLevel(logging.ERROR)  # the one it opens on purpose
    cost = asyncio.run(breaker_open_cost(args.calls))
    with tempfile.TemporaryDirectory(prefix="warden-failover-bench-") as tmp:
        results = run_proxies(args.requests, Path(tmp))
    text = report(results, cost, args.requests, time.perf_counter() - started, args.note)
    print(text)
    if args.append:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
