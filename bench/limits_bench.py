"""What limits + budget cost per request, with Redis on loopback, against policies off.

One run, one proxy process, two tenants: ``plain`` (no policies) and ``limited``
(rpm + tpm + concurrency + a USD and token budget, all with room to spare), both
routed to the same mock provider. Requests alternate between the tenants one at a
time, so both see the same machine at the same moment; the added latency is the
difference of the two p50s (client-measured, and Warden's own ``x-warden-overhead-ms``).

Redis is a private ``redis-server`` on a free port, so ``INFO commandstats`` counts
only this proxy: script calls (``evalsha`` + ``eval``) per limited request must be
exactly 2 (one reserve, one settle); the commands the scripts run inside Redis are
not round trips. tests/test_store_redis.py cross-checks the same with ``MONITOR``.

    python bench/limits_bench.py --requests 2000 [--stream] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"plain": "vk-bench-plain-0001", "limited": "vk-bench-limited-0001"}
MESSAGES = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Give me one sentence about rivers."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(args: list[str], ready: str, env: dict[str, str]) -> Iterator[int]:
    """Run a Warden CLI command until it prints ``<ready> port=N``; yield N."""
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(rf"{ready} port=(\d+)", line)
            if m:
                break
        else:
            raise RuntimeError(f"{args[0]} did not start")
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(15)


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def script_calls(port: int) -> int:
    with redis.Redis(port=port) as c:
        stats = c.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0)) for cmd in ("evalsha", "eval"))


def policies(directory: Path, mock_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model = {"gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini",
                              "api_base": f"{mock_url}/v1"}]}
    tenants = {
        "plain": {"tenant": "plain", "keys": [KEYS["plain"]], "models": model},
        "limited": {"tenant": "limited", "keys": [KEYS["limited"]], "models": model,
                    "limits": {"rpm": 10_000_000, "tpm": 10**12, "concurrency": 1000},
                    "budget": {"usd": 1_000_000.0, "tokens": 10**12, "period": "month",
                               "max_tokens": 256}},
    }
    for name, body in tenants.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(body))
    return directory


async def measure(url: str, requests: int, warmup: int, stream: bool
                  ) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        t: {"latency_ms": [], "overhead_ms": []} for t in KEYS}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + requests):
            tenant = "plain" if i % 2 == 0 else "limited"
            started = time.perf_counter()
            async with session.post(url, json=body, headers={
                    "Authorization": f"Bearer {KEYS[tenant]}"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{tenant}: HTTP {r.status}")
                overhead = float(r.headers.get("x-warden-overhead-ms", "nan"))
            if i >= warmup:
                samples[tenant]["latency_ms"].append((time.perf_counter() - started) * 1000)
                samples[tenant]["overhead_ms"].append(overhead)
    return samples


async def redis_ping_ms(port: int, n: int = 2000) -> list[float]:
    """The floor: bare loopback round trips to the same Redis, same client code."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from proxy.store.resp import RespClient

    client = RespClient(f"redis://127.0.0.1:{port}/0")
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await client.execute("PING")
        out.append((time.perf_counter() - started) * 1000)
    await client.aclose()
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(
        values) > 1 else values[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_port, \
            process(["mock-upstream", "--port", "0"], "MOCK_READY", env) as mock_port:
        pdir = policies(Path(tmp) / "policies", f"http://127.0.0.1:{mock_port}")
        proxy_env = {**env, "WARDEN_ACCESS_LOG": "false", "WARDEN_LOG_LEVEL": "warning"}
        if not args.memory:
            proxy_env["WARDEN_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        with process(["serve", "--port", "0", "--policies", str(pdir)], "WARDEN_READY",
                     proxy_env) as port:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            asyncio.run(measure(url, 0, args.warmup, args.stream))
            time.sleep(0.2)  # deferred settles of the warm-up land
            before = script_calls(redis_port)
            load_before = os.getloadavg()[0]
            samples = asyncio.run(measure(url, args.requests, 0, args.stream))
            time.sleep(0.2)
            calls = script_calls(redis_port) - before
            pings = asyncio.run(redis_ping_ms(redis_port))
    limited = len(samples["limited"]["latency_ms"])
    result: dict[str, Any] = {
        "requests_per_tenant": limited, "stream": args.stream, "store": (
            "memory" if args.memory else "redis"),
        "redis_round_trips_per_request": calls / limited,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "redis_ping_p50_ms": p(pings, 50),
    }
    for metric in ("latency_ms", "overhead_ms"):
        off, on = samples["plain"][metric], samples["limited"][metric]
        result[metric] = {"off_p50": p(off, 50), "on_p50": p(on, 50),
                          "added_p50": p(on, 50) - p(off, 50),
                          "off_p99": p(off, 99), "on_p99": p(on, 99)}
    return result


def markdown(result: dict[str, Any]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lat, ovh = result["latency_ms"], result["overhead_ms"]
    load = result["load_average"]
    shared = " — machine shared with other work" if max(load) > 1.5 else ""
    return "\n".join([
        f"## {when} — limits + budget, {result['store']} store{shared}",
        "",
        f"`python bench/limits_bench.py --requests {result['requests_per_tenant'] * 2}"
        f"{' --stream' if result['stream'] else ''}"
        f"{' --memory' if result['store'] == 'memory' else ''}`: one proxy, tenants with and "
        "without limits+budget interleaved one request at a time"
        f"{', in-memory store' if result['store'] == 'memory' else ', private redis-server'}. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"average {load[0]} before / {load[1]} after.",
        "",
        "| | policies off | limits + budget | added |",
        "|---|---:|---:|---:|",
        f"| client latency p50 (ms) | {lat['off_p50']:.3f} | {lat['on_p50']:.3f} | "
        f"{lat['added_p50']:+.3f} |",
        f"| client latency p99 (ms) | {lat['off_p99']:.3f} | {lat['on_p99']:.3f} | |",
        f"| Warden overhead p50 (ms) | {ovh['off_p50']:.3f} | {ovh['on_p50']:.3f} | "
        f"{ovh['added_p50']:+.3f} |",
        f"| Redis round trips per request (evalsha+eval, INFO commandstats) | 0 | "
        f"{result['redis_round_trips_per_request']:.2f} | |",
        f"| for scale: bare Redis PING round trip p50 (ms) | | | "
        f"{result['redis_ping_p50_ms']:.3f} |",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="total, both tenants")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--memory", action="store_true",
                        help="in-memory store instead: the policies' own cost, no Redis")
    parser.add_argument("--append", type=Path, help="append a dated section to this file")
    args = parser.parse_args()
    args.requests = max(2, args.requests)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.append:
        with args.append.open("a", encoding="utf-8") as f:
            f.write("\n" + markdown(result))
    expected = 0 if args.memory else 2
    return 0 if result["redis_round_trips_per_request"] == expected else 1


if __name__ == "__main__":
    sys.exit(main())
