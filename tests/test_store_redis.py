"""What only the Redis store has: key layout and expiry, round trips, a fleet of
replicas sharing counters, and what happens when Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.errors import ServiceUnavailable
from proxy.store import Slots, Spend, Window, create_store
from proxy.store.redis_store import RedisStore
from tests.redis_support import (
    SHARED_URL,
    Monitor,
    RedisCluster,
    RedisServer,
    dead_url,
    unique_prefix,
)

TTL = 30.0


def checks() -> list[Window | Slots | Spend]:
    return [Window("rpm", 1000, 60_000, 1), Window("tpm", 10**6, 60_000, 100),
            Slots("concurrency", 1000), Spend("usd", 10**9, 500, "d20261124",
                                              expire_at_ms=int(time.time() * 1000) + 3_600_000)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


async def test_keys_are_prefixed_hash_tagged_and_expiring() -> None:
    prefix = unique_prefix()
    store = create_store(SHARED_URL, prefix)
    res = await store.reserve("acme", "a", checks(), now=time.time(), ttl_s=TTL)
    assert res.verdict.granted
    with redis.Redis.from_url(SHARED_URL) as r:
        keys = sorted(k.decode() for k in r.scan_iter(match=f"{prefix}:*"))
        assert keys and all(k.startswith(f"{prefix}:{{acme}}:") for k in keys)
        for key in keys:
            ttl_ms = r.pttl(key)
            assert 0 < ttl_ms <= 86_400_000 + TTL * 1000 + 1000, key
        # The spend ledger lives until its period ends (plus what the caller chose).
        assert r.pttl(f"{prefix}:{{acme}}:r:usd:z") > TTL * 1000
    await store.close()


async def test_two_round_trips_per_request(server: RedisServer) -> None:
    store = create_store(server.url, unique_prefix())
    warm = await store.reserve("acme", "warm", checks(), now=time.time(), ttl_s=TTL)
    await store.settle(warm, {"tpm": 1, "usd": 1}, now=time.time())
    before = server.command_calls()
    monitor = Monitor(server.port)
    for i in range(20):
        res = await store.reserve("acme", f"r{i}", checks(), now=time.time(), ttl_s=TTL)
        assert res.verdict.granted
        await store.settle(res, {"tpm": 50, "usd": 200}, now=time.time())
    sent = await asyncio.to_thread(monitor.client_commands)
    after = server.command_calls()
    assert sent == ["evalsha"] * 40  # what clients sent; scripts' own commands excluded
    scripts = sum(after.get(c, 0) - before.get(c, 0) for c in ("evalsha", "eval"))
    assert scripts == 40
    await store.close()


async def test_script_is_resent_once_when_redis_forgot_it(server: RedisServer) -> None:
    store = create_store(server.url, unique_prefix())
    assert (await store.reserve("acme", "a", checks(), now=time.time(), ttl_s=TTL)
            ).verdict.granted
    with server.client() as c:
        c.script_flush()
    before = server.command_calls()
    for rid in ("b", "c"):
        assert (await store.reserve("acme", rid, checks(), now=time.time(), ttl_s=TTL)
                ).verdict.granted
    after = server.command_calls()
    assert after["eval"] - before.get("eval", 0) == 1
    assert after["evalsha"] - before["evalsha"] == 2  # one NOSCRIPT, then cached
    assert not store.describe()["degraded"]
    await store.close()


async def test_replicas_sharing_redis_admit_exactly_the_limit() -> None:
    prefix = unique_prefix()
    replicas = [create_store(SHARED_URL, prefix) for _ in range(3)]
    now = time.time()
    results = await asyncio.gather(*(
        replicas[i % 3].reserve("acme", f"r{i}", [Window("rpm", 40, 60_000, 1),
                                                  Slots("concurrency", 1000)],
                                now=now, ttl_s=TTL)
        for i in range(150)
    ))
    assert sum(r.verdict.granted for r in results) == 40
    for s in replicas:
        await s.close()


async def test_unreachable_redis_fails_open_to_local_limits() -> None:
    store = create_store(dead_url(), unique_prefix(), failure_mode="open")
    events: list[tuple[str, dict[str, Any]]] = []
    store.add_listener(lambda event, detail: events.append((event, detail)))
    assert await store.ping() is False
    verdicts = [(await store.reserve("acme", f"r{i}", [Window("rpm", 2, 60_000, 1)],
                                     now=time.time(), ttl_s=TTL)).verdict for i in range(3)]
    # Local limits still hold, per replica.
    assert [v.granted for v in verdicts] == [True, True, False]
    assert all(v.local for v in verdicts)
    described = store.describe()
    assert described["degraded"] is True and described["fallback_requests"] == 3
    assert "Connection" in described["last_error"]  # refused
    assert [e for e, _ in events].count("degraded") == 1
    assert [e for e, _ in events].count("fallback") == 3
    await store.close()


async def test_unreachable_redis_fails_closed_with_503() -> None:
    store = create_store(dead_url(), unique_prefix(), failure_mode="closed")
    with pytest.raises(ServiceUnavailable) as caught:
        await store.reserve("acme", "a", checks(), now=time.time(), ttl_s=TTL)
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "1"
    assert store.describe()["degraded"] is True
    await store.close()


async def test_a_hanging_redis_costs_one_timeout_not_one_per_request() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        store = RedisStore(url, unique_prefix(), timeout_s=0.3, retry_interval_s=60)
        started = time.perf_counter()
        results = [await store.reserve("acme", f"r{i}", checks(), now=time.time(), ttl_s=TTL)
                   for i in range(20)]
        elapsed = time.perf_counter() - started
        assert all(r.verdict.granted and r.verdict.local for r in results)
        assert 0.3 <= elapsed < 1.0
        await store.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_stopped_and_restarted_under_load(server: RedisServer, mode: str) -> None:
    store = RedisStore(server.url, unique_prefix(), failure_mode=mode,  # type: ignore[arg-type]
                       timeout_s=0.5, retry_interval_s=0.2)
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                res = await store.reserve("acme", f"c{n}-{i}", checks(), now=time.time(),
                                          ttl_s=TTL)
            except ServiceUnavailable:
                outcomes.append("503")
            else:
                outcomes.append("local" if res.verdict.local else "redis")
                await store.settle(res, {"tpm": 10, "usd": 10}, now=time.time())
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(client(n)) for n in range(8)]
    await asyncio.sleep(0.4)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(0.6)
    assert store.describe()["degraded"] is True
    await asyncio.to_thread(server.start)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)  # no client saw anything but a verdict or a 503
    assert not store.describe()["degraded"], "the store did not recover by itself"
    assert outcomes[:5] == ["redis"] * 5 and outcomes[-5:] == ["redis"] * 5
    during = "local" if mode == "open" else "503"
    assert during in outcomes
    assert ("503" if mode == "open" else "local") not in outcomes
    await store.close()


async def test_a_burst_larger_than_the_pool_queues_instead_of_failing_open() -> None:
    store = RedisStore(SHARED_URL, unique_prefix(), max_connections=4)
    now = time.time()
    results = await asyncio.gather(*(
        store.reserve("acme", f"r{i}", [Window("rpm", 100, 60_000, 1)], now=now, ttl_s=TTL)
        for i in range(300)))
    assert sum(r.verdict.granted for r in results) == 100
    assert not any(r.verdict.local for r in results)
    assert store.describe()["fallback_requests"] == 0
    await store.close()


@pytest.mark.slow
async def test_the_same_script_runs_on_a_redis_cluster(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path).start()
    try:
        store = create_store(cluster.url, unique_prefix())
        assert store.describe()["cluster"] is True
        tenants = [f"tenant{i}" for i in range(8)]  # spread over the three masters
        for tenant in tenants:
            limited = [Window("rpm", 3, 60_000, 1), *checks()[1:]]
            results = [await store.reserve(tenant, f"r{i}", limited, now=time.time(),
                                           ttl_s=TTL) for i in range(5)]
            assert [r.verdict.granted for r in results] == [True, True, True, False, False]
            await store.settle(results[0], {"tpm": 1, "usd": 7}, now=time.time())
            peek = await store.reserve(tenant, "p", limited, now=time.time(), ttl_s=TTL,
                                       dry_run=True)
            assert peek.verdict.states["usd"].used == 7
            assert peek.verdict.states["usd"].reserved == 2 * 500
        assert not store.describe()["degraded"]
        sizes = []
        for node in cluster.nodes:
            with node.client() as c:
                sizes.append(c.dbsize())
        assert sum(1 for size in sizes if size) >= 2, sizes  # tenants live on several nodes
        await store.close()
    finally:
        cluster.stop()
