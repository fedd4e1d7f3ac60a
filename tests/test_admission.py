"""limits and budget share one reservation: one store call before, one after."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from proxy.admission import billed, go_duration
from proxy.context import Attempt, RequestContext, Usage
from proxy.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from proxy.metrics import Metrics
from proxy.pipeline import Chain
from proxy.policies import build_chain
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import Check, MemoryStore, Reservation, create_store
from proxy.tenants import Tenant, TenantConfig
from proxy.tokens import Estimate
from tests.redis_support import dead_url, unique_prefix


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reserves: list[list[str]] = []
        self.settles: list[dict[str, int]] = []

    async def reserve(self, tenant: str, request_id: str, checks: Sequence[Check], *,
                      now: float, ttl_s: float, dry_run: bool = False) -> Reservation:
        self.reserves.append([c.name for c in checks])
        return await super().reserve(tenant, request_id, checks, now=now, ttl_s=ttl_s,
                                     dry_run=dry_run)

    def settle_soon(self, reservation: Reservation, actual: Mapping[str, int], *,
                    now: float) -> None:
        self.settles.append(dict(actual))
        super().settle_soon(reservation, actual, now=now)


def tenant(services: Services, **sections: object) -> Tenant:
    config = TenantConfig.model_validate({
        "tenant": "acme", "keys": ["vk-admission-key"],
        "models": {"m": [{"provider": "openai", "model": "gpt-4o-mini",
                          "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}]},
        **sections})
    return Tenant(config=config, policies=build_chain(config, services), source=Path("x"))


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def services(store: CountingStore) -> Iterator[Services]:
    s = Services(settings=Settings(), store=store, metrics=Metrics())
    yield s
    s.close()


async def run(t: Tenant, rid: str) -> RequestContext:
    deployments = t.routes("m")
    assert deployments is not None
    ctx = RequestContext(request_id=rid, operation="chat", tenant=t, model="m",
                         body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                         deployments=deployments)
    chain = Chain(t.policies)
    try:
        await chain.request(ctx)
        ctx.deployment = deployments[0]
        ctx.attempts.append(Attempt(deployments[0].label, 200, "ok", 0.01))
        ctx.usage = Usage(10, 5)
    finally:
        await chain.done(ctx)
    return ctx


async def test_one_reserve_and_one_settle_for_limits_and_budget(
        services: Services, store: CountingStore) -> None:
    t = tenant(services, limits={"rpm": 5, "tpm": 100_000, "concurrency": 2},
               budget={"usd": 1.0, "tokens": 10_000, "max_tokens": 100})
    ctx = await run(t, "a")
    assert store.reserves == [["rpm", "tpm", "concurrency", "usd", "tokens"]]
    # The TPM check saw the cap the budget wrote into the body.
    assert ctx.body["max_tokens"] == 100
    assert store.settles == [{"tpm": 15, "usd": 20_000, "tokens": 15}]
    assert {"x-ratelimit-limit-requests", "x-warden-budget-remaining"} <= set(
        ctx.response_headers)


async def test_refusals_come_from_the_policy_that_owns_the_check(services: Services) -> None:
    t = tenant(services, limits={"rpm": 1}, budget={"tokens": 1000, "max_tokens": 100})
    await run(t, "a")
    with pytest.raises(RateLimited):
        await run(t, "b")
    t2 = tenant(services, limits={"rpm": 100}, budget={"tokens": 50, "max_tokens": 100})
    with pytest.raises(QuotaExceeded):
        await run(t2, "c")


async def test_a_refused_request_settles_nothing(services: Services,
                                                 store: CountingStore) -> None:
    t = tenant(services, limits={"rpm": 1})
    await run(t, "a")
    with pytest.raises(RateLimited) as caught:
        await run(t, "b")
    assert len(store.settles) == 1
    assert caught.value.headers["Retry-After"] == "60"


async def test_a_closed_store_refuses_with_503_and_records_why() -> None:
    store = create_store(dead_url(), unique_prefix(), failure_mode="closed")
    services = Services(settings=Settings(), store=store, metrics=Metrics())
    t = tenant(services, limits={"rpm": 5})
    ctx = RequestContext(request_id="r", operation="chat", tenant=t, model="m",
                         body={"model": "m", "messages": []}, deployments=t.routes("m") or ())
    with pytest.raises(ServiceUnavailable):
        await Chain(t.policies).request(ctx)
    assert [(d.policy, d.reason) for d in ctx.decisions] == [("limits", "store_unavailable")]
    await store.close()
    services.close()


def test_go_durations_look_like_openais() -> None:
    assert go_duration(0.02) == "20ms"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(60) == "1m0s"
    assert go_duration(3723.25) == "1h2m3.25s"


def worst() -> Estimate:
    return Estimate(prompt=100, max_output=400)


def test_billed_is_what_the_provider_can_have_charged() -> None:
    ctx = RequestContext(request_id="r", operation="chat")
    assert billed(ctx, worst()) == (0, 0)  # never called
    ctx.upstream_s = 0.5
    ctx.attempts.append(Attempt("d", 429, "ok", 0.1))
    ctx.attempts.append(Attempt("d1", None, "breaker_open", 0.0))
    assert billed(ctx, worst()) == (0, 0)  # refused, or never sent
    ctx.attempts.append(Attempt("d2", None, "timeout", 0.1))
    assert billed(ctx, worst()) == (100, 400)  # it may have generated everything
    ctx.usage = Usage(90, 7)
    assert billed(ctx, worst()) == (90, 7)
    left = RequestContext(request_id="l", operation="chat", upstream_s=0.2,
                          client_disconnected=True)
    assert billed(left, worst()) == (100, 400)  # the client left mid-call


class SlowStore(CountingStore):
    """A store whose reserve takes a while, like a Redis round trip under load."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.go_on = asyncio.Event()

    async def reserve(self, tenant: str, request_id: str, checks: Sequence[Check], *,
                      now: float, ttl_s: float, dry_run: bool = False) -> Reservation:
        self.entered.set()
        await self.go_on.wait()
        return await super().reserve(tenant, request_id, checks, now=now, ttl_s=ttl_s,
                                     dry_run=dry_run)


async def test_a_client_leaving_during_the_reserve_leaves_nothing_reserved() -> None:
    store = SlowStore()
    services = Services(settings=Settings(), store=store, metrics=Metrics())
    t = tenant(services, limits={"concurrency": 1}, budget={"tokens": 1000, "max_tokens": 100})
    request = asyncio.ensure_future(run(t, "gone"))
    await store.entered.wait()
    request.cancel()  # the client hung up while the store was deciding
    with pytest.raises(asyncio.CancelledError):
        await request
    store.go_on.set()  # the store's answer arrives after the request is gone
    for _ in range(20):
        await asyncio.sleep(0)
    await store.drain()
    # It reserved, and was settled at once for nothing: no tokens billed...
    assert store.settles == [{"tokens": 0}]
    # ...and the one concurrency slot is free again, long before any lease runs out.
    ctx = await run(t, "next")
    assert ctx.usage is not None and store.settles[-1] == {"tokens": 15}
    services.close()
