"""One suite, two backends: the in-memory store and the Redis store must agree exactly.

Every test drives the store with an explicit ``now`` (the injected clock), so windows,
leases and periods are tested to the millisecond without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.store import MemoryStore, Slots, Spend, Store, Window, create_store
from tests.redis_support import SHARED_URL, unique_prefix

T0 = 1_800_000_000.0  # an arbitrary "now", seconds
TTL = 30.0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = MemoryStore() if request.param == "memory" else create_store(SHARED_URL, unique_prefix())
    yield s
    await s.close()


def rpm(limit: int = 3) -> Window:
    return Window("rpm", limit, 60_000, 1)


def tpm(amount: int, limit: int = 100) -> Window:
    return Window("tpm", limit, 60_000, amount)


def usd(amount: int, limit: int = 100, ledger: str = "d1") -> Spend:
    return Spend("usd", limit, amount, ledger)


async def admit(store: Store, rid: str, *checks: Window | Slots | Spend, at: float = T0,
                ttl: float = TTL) -> bool:
    res = await store.reserve("acme", rid, checks, now=at, ttl_s=ttl)
    return res.verdict.granted


async def test_sliding_window_admits_exactly_the_limit_in_any_window(store: Store) -> None:
    assert await admit(store, "a", rpm(), at=T0)
    assert await admit(store, "b", rpm(), at=T0)
    assert await admit(store, "c", rpm(), at=T0 + 30)
    res = await store.reserve("acme", "d", [rpm()], now=T0 + 59.9, ttl_s=TTL)
    assert not res.verdict.granted
    assert (res.verdict.denied, res.verdict.reason) == ("rpm", "limit")
    # The two from T0 leave at T0+60: that is when the next one fits.
    assert res.verdict.retry_after_s == pytest.approx(0.1, abs=0.002)
    assert res.verdict.states["rpm"].used == 3
    assert await admit(store, "e", rpm(), at=T0 + 60)
    assert await admit(store, "f", rpm(), at=T0 + 60)
    res = await store.reserve("acme", "g", [rpm()], now=T0 + 60, ttl_s=TTL)
    assert not res.verdict.granted
    assert res.verdict.retry_after_s == pytest.approx(30, abs=0.002)  # "c" leaves at T0+90


async def test_no_double_burst_at_a_window_boundary(store: Store) -> None:
    # A fixed window would allow 3 at 59.9 and 3 more at 60.1; a sliding one does not.
    for rid in "abc":
        assert await admit(store, rid, rpm(), at=T0 + 59.9)
    for rid in "def":
        assert not await admit(store, rid, rpm(), at=T0 + 60.1)


async def test_refused_requests_do_not_count(store: Store) -> None:
    for rid in "abc":
        assert await admit(store, rid, rpm(), at=T0)
    for i in range(20):
        assert not await admit(store, f"x{i}", rpm(), at=T0 + 1)
    assert await admit(store, "late", rpm(), at=T0 + 60)


async def test_all_or_nothing(store: Store) -> None:
    assert await admit(store, "a", rpm(), tpm(80), at=T0)
    # rpm has room, tpm has not: nothing is reserved, so rpm's count is unchanged.
    res = await store.reserve("acme", "b", [rpm(), tpm(30)], now=T0, ttl_s=TTL)
    assert (res.verdict.granted, res.verdict.denied) == (False, "tpm")
    assert res.verdict.states["rpm"].used == 1
    assert await admit(store, "c", rpm(), tpm(20), at=T0)
    assert await admit(store, "d", rpm(), at=T0)
    assert not await admit(store, "e", rpm(), at=T0)


async def test_tokens_settle_to_actual(store: Store) -> None:
    res = await store.reserve("acme", "a", [tpm(90)], now=T0, ttl_s=TTL)
    assert res.verdict.granted
    assert not await admit(store, "b", tpm(20), at=T0 + 1)
    await store.settle(res, {"tpm": 15}, now=T0 + 2)
    peek = await store.reserve("acme", "p", [tpm(0)], now=T0 + 2, ttl_s=TTL, dry_run=True)
    assert peek.verdict.states["tpm"].used == 15
    assert await admit(store, "b", tpm(85), at=T0 + 3)
    # Settling again is a no-op; so is settling after the entry left the window.
    await store.settle(res, {"tpm": 15}, now=T0 + 4)
    await store.settle(res, {"tpm": 1}, now=T0 + 61)
    peek = await store.reserve("acme", "p", [tpm(0)], now=T0 + 61, ttl_s=TTL, dry_run=True)
    assert peek.verdict.states["tpm"].used == 85


async def test_a_request_larger_than_the_limit_is_too_large(store: Store) -> None:
    res = await store.reserve("acme", "a", [tpm(101)], now=T0, ttl_s=TTL)
    assert (res.verdict.granted, res.verdict.reason) == (False, "too_large")


async def test_retry_after_for_tokens_waits_for_enough_to_leave(store: Store) -> None:
    assert await admit(store, "a", tpm(30), at=T0)
    assert await admit(store, "b", tpm(30), at=T0 + 10)
    assert await admit(store, "c", tpm(30), at=T0 + 20)
    res = await store.reserve("acme", "d", [tpm(60)], now=T0 + 30, ttl_s=TTL)
    # 90 used, 60 wanted, limit 100: a and b (60) must leave; b leaves at T0+70.
    assert res.verdict.retry_after_s == pytest.approx(40, abs=0.002)
    assert res.verdict.states["tpm"].reset_s == pytest.approx(30, abs=0.002)


async def test_concurrency_slots_release_on_settle_and_on_lease_expiry(store: Store) -> None:
    slots = Slots("concurrency", 2)
    a = await store.reserve("acme", "a", [slots], now=T0, ttl_s=TTL)
    assert await admit(store, "b", slots, at=T0)
    res = await store.reserve("acme", "c", [slots], now=T0, ttl_s=TTL)
    assert (res.verdict.granted, res.verdict.reason) == (False, "limit")
    assert res.verdict.retry_after_s == 1.0
    await store.settle(a, {}, now=T0 + 1)
    assert await admit(store, "c", slots, at=T0 + 1)
    assert not await admit(store, "d", slots, at=T0 + 1)
    # b never settles (its replica died): its lease runs out at T0+TTL.
    assert not await admit(store, "d", slots, at=T0 + TTL - 0.001)
    assert await admit(store, "d", slots, at=T0 + TTL)


async def test_budget_counts_reservations_then_settles(store: Store) -> None:
    a = await store.reserve("acme", "a", [usd(40)], now=T0, ttl_s=TTL)
    assert a.verdict.granted and a.verdict.states["usd"].reserved == 40
    assert await admit(store, "b", usd(40), at=T0)
    held = await store.reserve("acme", "c", [usd(40)], now=T0, ttl_s=TTL)
    # 0 spent + 80 reserved + 40 > 100, but it could fit once others settle: "held".
    assert (held.verdict.granted, held.verdict.reason) == (False, "held")
    await store.settle(a, {"usd": 10}, now=T0 + 1)
    c = await store.reserve("acme", "c", [usd(40)], now=T0 + 1, ttl_s=TTL)
    assert c.verdict.granted
    assert (c.verdict.states["usd"].used, c.verdict.states["usd"].reserved) == (10, 80)
    await store.settle(c, {"usd": 40}, now=T0 + 2)
    spent = await store.reserve("acme", "d", [usd(51)], now=T0 + 2, ttl_s=TTL)
    # 50 spent + 51 > 100 whatever settles: exhausted.
    assert (spent.verdict.granted, spent.verdict.reason) == (False, "exhausted")


async def test_an_unsettled_budget_lease_is_charged_in_full_once(store: Store) -> None:
    lost = await store.reserve("acme", "lost", [usd(40)], now=T0, ttl_s=TTL)
    assert lost.verdict.granted
    peek = await store.reserve("acme", "p", [usd(0)], now=T0 + TTL, ttl_s=TTL, dry_run=True)
    state = peek.verdict.states["usd"]
    assert (state.used, state.reserved) == (40, 0)
    # The replica comes back late and settles: no second charge.
    await store.settle(lost, {"usd": 5}, now=T0 + TTL + 1)
    peek = await store.reserve("acme", "p", [usd(0)], now=T0 + TTL + 1, ttl_s=TTL,
                               dry_run=True)
    assert peek.verdict.states["usd"].used == 40


async def test_settle_without_actual_charges_the_reservation(store: Store) -> None:
    res = await store.reserve("acme", "a", [usd(40)], now=T0, ttl_s=TTL)
    await store.settle(res, {}, now=T0 + 1)
    await store.settle(res, {}, now=T0 + 2)  # idempotent
    peek = await store.reserve("acme", "p", [usd(0)], now=T0 + 2, ttl_s=TTL, dry_run=True)
    assert (peek.verdict.states["usd"].used, peek.verdict.states["usd"].reserved) == (40, 0)


async def test_calendar_periods_are_separate_ledgers(store: Store) -> None:
    res = await store.reserve("acme", "a", [usd(90, ledger="d1")], now=T0, ttl_s=TTL)
    await store.settle(res, {"usd": 90}, now=T0)
    assert not await admit(store, "b", usd(20, ledger="d1"), at=T0)
    assert await admit(store, "b", usd(20, ledger="d2"), at=T0 + 1)


async def test_rolling_budget_forgets_spend_that_left_the_period(store: Store) -> None:
    def rolling(amount: int, now_ms: int) -> Spend:
        bucket = now_ms // 1000
        return Spend("usd", 100, amount, "r10000", entry=str(bucket),
                     entry_score_ms=(bucket + 1) * 1000, cutoff_ms=now_ms - 10_000,
                     expire_at_ms=now_ms + 20_000)

    now_ms = int(T0 * 1000)
    res = await store.reserve("acme", "a", [rolling(70, now_ms)], now=T0, ttl_s=TTL)
    await store.settle(res, {"usd": 70}, now=T0)
    later = now_ms + 5_000
    refused = await store.reserve("acme", "b", [rolling(40, later)], now=later / 1000,
                                  ttl_s=TTL)
    assert (refused.verdict.granted, refused.verdict.reason) == (False, "exhausted")
    # The spend sits in the bucket ending at T0+1 s, so it leaves at T0+11 s.
    assert refused.verdict.retry_after_s == pytest.approx(6.0, abs=0.002)
    gone = now_ms + 11_000
    assert await admit(store, "b", rolling(40, gone), at=gone / 1000)


async def test_reserve_is_idempotent_per_request(store: Store) -> None:
    checks = [rpm(2), tpm(50), Slots("concurrency", 1), usd(60)]
    first = await store.reserve("acme", "a", checks, now=T0, ttl_s=TTL)
    again = await store.reserve("acme", "a", checks, now=T0, ttl_s=TTL)  # a retried call
    assert first.verdict.granted and again.verdict.granted
    assert again.verdict.states["rpm"].used == 1
    assert again.verdict.states["tpm"].used == 50
    assert again.verdict.states["concurrency"].used == 1
    assert again.verdict.states["usd"].reserved == 60


async def test_tenants_are_independent(store: Store) -> None:
    for rid in "abc":
        assert await admit(store, rid, rpm(), at=T0)
    res = await store.reserve("other", "a", [rpm()], now=T0, ttl_s=TTL)
    assert res.verdict.granted


async def test_concurrent_reservations_never_exceed_the_limit(store: Store) -> None:
    slots = Slots("concurrency", 7)
    results = await asyncio.gather(*(
        store.reserve("acme", f"r{i}", [rpm(25), slots, usd(10, limit=1000)], now=T0,
                      ttl_s=TTL)
        for i in range(60)
    ))
    granted = [r for r in results if r.verdict.granted]
    assert len(granted) == 7
    await asyncio.gather(*(store.settle(r, {"usd": 1}, now=T0 + 1) for r in granted))
    results = await asyncio.gather(*(
        store.reserve("acme", f"s{i}", [rpm(25), slots], now=T0 + 2, ttl_s=TTL)
        for i in range(60)
    ))
    assert sum(r.verdict.granted for r in results) == 7



async def test_zero_amounts_reserve_and_settle_cleanly(store: Store) -> None:
    """An unpriced model under a USD budget reserves 0 nano-dollars and settles 0; a
    zero must stay an integer Redis accepts (Lua formats -0 as "-0", which HINCRBY
    refuses), or every such request would mark the store unreachable."""
    res = await store.reserve("acme", "free", [usd(0), tpm(0)], now=T0, ttl_s=TTL)
    assert res.verdict.granted and not res.verdict.local
    await store.settle(res, {"usd": 0, "tpm": 0}, now=T0 + 1)
    after = await store.reserve("acme", "next", [usd(0, limit=100), tpm(0)], now=T0 + 2,
                                ttl_s=TTL)
    assert after.verdict.granted and not after.verdict.local
    assert after.verdict.states["usd"].used == 0
