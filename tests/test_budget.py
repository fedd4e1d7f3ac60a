"""Budgets: periods and rollover (injected clock), the output cap, reserve-then-settle
to real usage for plain and streamed replies, and the refusals the SDK sees."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.context import Attempt, RequestContext, Usage
from proxy.errors import QuotaExceeded
from proxy.metrics import Metrics
from proxy.policies.budget import BudgetConfig, BudgetPolicy, cap_field, period_at
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import MemoryStore
from proxy.tenants import Deployment
from tests.support import KEY, Stack, http_json, tenant_policy

HEADERS = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Name three rivers in Europe."}]
IN_USD, OUT_USD = 1e-6, 2e-6  # per token, set on the deployment (overrides litellm)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- periods ---------------------------------------------------------------------------


@pytest.mark.parametrize(("period", "now", "ledger", "resets"), [
    ("day", "2026-11-24T23:59:59", "d2026-11-24", "2026-11-25T00:00:00"),
    ("day", "2026-11-25T00:00:00", "d2026-11-25", "2026-11-26T00:00:00"),
    ("week", "2026-11-29T12:00:00", "w2026-11-23", "2026-11-30T00:00:00"),  # a Sunday
    ("week", "2026-11-30T00:00:01", "w2026-11-30", "2026-12-07T00:00:00"),
    ("month", "2026-12-31T23:59:59", "m2026-12", "2027-01-01T00:00:00"),
    ("month", "2026-02-01T00:00:00", "m2026-02", "2026-03-01T00:00:00"),
])
def test_calendar_periods_are_utc_aligned(period: Any, now: str, ledger: str,
                                          resets: str) -> None:
    p = period_at(ts(now), period, rolling=False)
    assert p.ledger == ledger
    assert p.resets_at is not None and p.resets_at.timestamp() == ts(resets)


def test_rolling_periods_use_buckets_of_a_96th() -> None:
    now = ts("2026-11-24T10:07:00")
    p = period_at(now, "day", rolling=True)
    assert p.ledger == "r86400000" and p.resets_at is None
    assert p.cutoff_ms == int(now * 1000) - 86_400_000
    assert p.entry_score_ms == ts("2026-11-24T10:15:00") * 1000  # the bucket's end


# -- the policy with an injected clock -------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def services() -> Iterator[Services]:
    s = Services(settings=Settings(reservation_ttl_s=60), store=MemoryStore(),
                 metrics=Metrics())
    yield s
    s.close()


DEPLOYMENT = Deployment(provider="openai", model="gpt-4o-mini", input_cost_per_token=IN_USD,
                        output_cost_per_token=OUT_USD)


async def one_call(policy: BudgetPolicy, rid: str, usage: Usage) -> RequestContext:
    ctx = RequestContext(request_id=rid, operation="chat", model="m",
                         body={"model": "m", "messages": MESSAGES, "max_tokens": 100},
                         deployments=(DEPLOYMENT,))
    try:
        await policy.on_request(ctx)
        ctx.deployment = DEPLOYMENT
        ctx.attempts.append(Attempt(DEPLOYMENT.label, 200, "ok", 0.01))
        ctx.usage = usage
    finally:
        await policy.on_done(ctx)
    return ctx


@pytest.mark.parametrize("rolling", [False, True])
async def test_budget_resets_when_the_period_rolls_over(services: Services,
                                                        rolling: bool) -> None:
    clock = Clock(ts("2026-11-24T23:00:00"))
    config = BudgetConfig(tokens=600, period="day", rolling=rolling)
    policy = BudgetPolicy(config, services, clock=clock)
    spent = [await one_call(policy, f"a{i}", Usage(100, 100)) for i in range(3)]
    assert spent[-1].response_headers["x-warden-budget-remaining"].startswith("tokens=")
    with pytest.raises(QuotaExceeded) as caught:
        await one_call(policy, "over", Usage(100, 100))
    assert "600 tokens" in caught.value.message
    if rolling:
        assert "rolling day" in caught.value.message
        clock.now = ts("2026-11-25T23:00:00")  # 24 h later: still in the window
        with pytest.raises(QuotaExceeded):
            await one_call(policy, "still", Usage(100, 100))
        clock.now = ts("2026-11-25T23:15:00")  # the bucket has left the window
    else:
        assert "resets at 2026-11-25T00:00:00Z" in caught.value.message
        assert caught.value.headers["x-should-retry"] == "false"
        clock.now = ts("2026-11-24T23:59:59.999")
        with pytest.raises(QuotaExceeded):
            await one_call(policy, "still", Usage(100, 100))
        clock.now = ts("2026-11-25T00:00:00")
    ctx = await one_call(policy, "next", Usage(100, 100))
    assert "budget_soft_limit" not in ctx.flags


async def test_usd_settles_to_the_answering_deployments_price(services: Services) -> None:
    clock = Clock(ts("2026-11-24T12:00:00"))
    policy = BudgetPolicy(BudgetConfig(usd=1.0, period="month"), services, clock=clock)
    first = await one_call(policy, "a", Usage(1000, 500))
    second = await one_call(policy, "b", Usage(0, 0))
    left = [float(c.response_headers["x-warden-budget-remaining"].removeprefix("usd="))
            for c in (first, second)]
    # The difference is exactly the first call's cost: 1000 * $1e-6 + 500 * $2e-6.
    assert left[0] - left[1] == pytest.approx(0.002, abs=1e-9)


async def test_soft_threshold_flags_the_response(services: Services) -> None:
    policy = BudgetPolicy(BudgetConfig(tokens=1000, soft_threshold=0.4), services,
                          clock=Clock(ts("2026-11-24T12:00:00")))
    assert "budget_soft_limit" not in (await one_call(policy, "a", Usage(200, 100))).flags
    assert "budget_soft_limit" in (await one_call(policy, "b", Usage(200, 100))).flags


def test_cap_field_follows_the_model() -> None:
    def ctx(model: str) -> RequestContext:
        return RequestContext(request_id="r", operation="chat", deployments=(
            Deployment(provider="openai", model=model),))

    assert cap_field(ctx("gpt-4o-mini")) == "max_tokens"
    assert cap_field(ctx("o3-mini")) == "max_completion_tokens"
    assert cap_field(ctx("gpt-5")) == "max_completion_tokens"


def test_budget_needs_an_amount() -> None:
    with pytest.raises(ValueError, match="usd, tokens"):
        BudgetConfig(period="day")


# -- through the proxy -----------------------------------------------------------------


def priced(url: str, spec: str = "", **sections: Any) -> dict[str, Any]:
    policy = tenant_policy(url, spec=spec, **sections)
    deployment = policy["models"]["gpt-4o-mini"][0]
    deployment.update(input_cost_per_token=IN_USD, output_cost_per_token=OUT_USD)
    return policy


def chat(stack: Stack, **extra: Any) -> httpx.Response:
    return httpx.post(f"{stack.proxy_url}/v1/chat/completions", headers=HEADERS, timeout=30,
                      json={"model": "gpt-4o-mini", "messages": MESSAGES, **extra})


def left(r: httpx.Response) -> float:
    return float(r.headers["x-warden-budget-remaining"].removeprefix("usd="))


def cost(usage: dict[str, int]) -> float:
    return usage["prompt_tokens"] * IN_USD + usage["completion_tokens"] * OUT_USD


@pytest.fixture
def budgeted(tmp_path: Path) -> Iterator[Stack]:
    budget = {"usd": 1.0, "period": "day", "max_tokens": 256}
    with Stack(lambda url: [priced(url, budget=budget)], tmp_path) as s:
        yield s


def test_the_cap_is_written_into_the_upstream_request(budgeted: Stack) -> None:
    chat(budgeted)
    chat(budgeted, max_tokens=40)
    sent = budgeted.mock_requests()
    assert sent[0]["max_tokens"] == 256
    assert sent[1]["max_tokens"] == 40


def test_plain_and_streamed_replies_settle_to_reported_usage(budgeted: Stack) -> None:
    first = chat(budgeted)
    usage = first.json()["usage"]
    streamed = chat(budgeted, stream=True)
    assert b'"usage":{' not in streamed.content  # the forced usage chunk was stripped
    third = chat(budgeted)
    # Each header is "budget - spent - this request's worst case"; the worst case is the
    # same each time, so consecutive differences are the settled costs, exactly.
    assert left(first) - left(streamed) == pytest.approx(cost(usage), abs=1e-9)
    assert left(streamed) - left(third) == pytest.approx(cost(usage), abs=1e-9)
    # The worst case reserved was (counted prompt tokens) * input price + 256 * output price.
    prompt_estimate = (1.0 - left(first) - 256 * OUT_USD) / IN_USD
    assert prompt_estimate == pytest.approx(round(prompt_estimate), abs=1e-6)
    assert usage["prompt_tokens"] <= round(prompt_estimate) <= usage["prompt_tokens"] + 20


def test_a_client_that_leaves_mid_stream_is_charged_the_worst_case(tmp_path: Path) -> None:
    budget = {"usd": 1.0, "period": "day", "max_tokens": 256}
    with Stack(lambda url: [priced(url, spec="chunks=30,chunk_delay_ms=50",
                                   budget=budget)], tmp_path) as s:
        before = chat(s)
        worst = 1.0 - left(before)
        spent_before = cost(before.json()["usage"])

        async def leave_early() -> None:
            async with httpx.AsyncClient(timeout=30) as client, client.stream(
                "POST", f"{s.proxy_url}/v1/chat/completions", headers=HEADERS,
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            ) as r:
                async for _ in r.aiter_bytes():
                    break  # hang up after the first bytes

        asyncio.run(leave_early())
        after = chat(s)
        # Spent so far: the first call's real cost, plus the worst case of the one that left.
        assert 1.0 - left(after) - worst == pytest.approx(spent_before + worst, abs=1e-9)


def test_an_upstream_error_costs_nothing(budgeted: Stack) -> None:
    first = chat(budgeted)
    budgeted.mock_faults(status=500)
    assert chat(budgeted).status_code >= 500  # the provider said 500 to every attempt
    budgeted.mock_faults()
    third = chat(budgeted)
    assert left(first) - left(third) == pytest.approx(cost(first.json()["usage"]), abs=1e-9)


def test_exhausted_budget_is_insufficient_quota_and_the_sdk_does_not_retry(
        tmp_path: Path) -> None:
    budget = {"usd": 0.00054, "period": "day", "max_tokens": 256}  # one worst case
    with Stack(lambda url: [priced(url, budget=budget)], tmp_path) as s:
        assert chat(s).status_code == 200
        sent: list[httpx.Request] = []
        client = openai.OpenAI(
            base_url=f"{s.proxy_url}/v1", api_key=KEY, max_retries=2,
            http_client=httpx.Client(event_hooks={"request": [sent.append]}))
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_quota"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "resets at" in caught.value.message and "Z)" in caught.value.message
        assert len(sent) == 1  # no retry storm
        assert len(s.mock_requests()) == 1


def test_a_budget_held_by_requests_in_flight_asks_to_retry_soon(tmp_path: Path) -> None:
    budget = {"usd": 0.001, "period": "day", "max_tokens": 256}  # room for one worst case
    with Stack(lambda url: [priced(url, spec="latency_ms=500", budget=budget)],
               tmp_path) as s:
        async def two() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                def post() -> Awaitable[httpx.Response]:
                    return client.post(f"{s.proxy_url}/v1/chat/completions", headers=HEADERS,
                                       json={"model": "gpt-4o-mini", "messages": MESSAGES})
                first = asyncio.ensure_future(post())
                # The second starts once the first reached the provider (its worst case
                # reserved, its reply 0.5 s away), not after a guessed delay: on a
                # loaded machine the first may take longer than that to get there.
                for _ in range(1000):  # another process: polled, for at most ~10 s
                    if await asyncio.to_thread(s.mock_requests):
                        break
                    await asyncio.sleep(0.01)
                held = await post()
                return await first, held

        slow, held = asyncio.run(two())
        assert slow.status_code == 200
        assert held.status_code == 429
        assert held.json()["error"]["code"] == "rate_limit_exceeded"
        assert "held by requests in flight" in held.json()["error"]["message"]
        assert held.headers["Retry-After"] == "1"
        assert chat(s).status_code == 200  # settled: room again
        metrics = httpx.get(f"{s.proxy_url}/metrics").text
        assert 'warden_limit_refusals_total{limit="usd",policy="budget",reason="held",' \
               'tenant="acme"} 1.0' in metrics
        assert http_json("GET", f"{s.mock_url}/_mock/stats")["requests"] == 2


def test_the_cap_stays_under_the_scope_ceiling(tmp_path: Path) -> None:
    with Stack(lambda url: [priced(url, budget={"usd": 1.0}, scope={"max_tokens": 300})],
               tmp_path) as s:
        assert chat(s).status_code == 200  # the client asked for nothing: not refused
        assert s.mock_requests()[-1]["max_tokens"] == 300
        assert chat(s, max_tokens=500).status_code == 403  # the client asked: scope says no
