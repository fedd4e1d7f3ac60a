"""Circuit breakers: the state machine on a fake clock, then through the real proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.appkeys import UPSTREAM
from proxy.tenants import Deployment
from proxy.upstream.breaker import Breaker, BreakerConfig, BreakerRegistry, Permit, State
from tests.support import KEY, Stack, http_json

CFG = BreakerConfig(failures=3, error_rate=0.5, window_s=10.0, min_requests=6, open_s=5.0,
                    probes=1)


def fail(b: Breaker, n: int, now: float) -> None:
    for _ in range(n):
        b.record(b.allow(now), False, now)


def test_opens_after_consecutive_failures_and_skips() -> None:
    b = Breaker("d", CFG)
    fail(b, 2, 0.0)
    assert b.state is State.CLOSED
    b.record(b.allow(0.0), True, 0.0)  # a success resets the run
    fail(b, 2, 0.0)
    assert b.state is State.CLOSED
    fail(b, 1, 0.0)
    assert b.state is State.OPEN
    assert b.allow(4.9) is Permit.REJECT


def test_opens_on_error_rate_without_a_long_run() -> None:
    b = Breaker("d", CFG)
    for i in range(6):  # ok, fail, ok, fail...: never 3 in a row, but 50 %
        b.record(b.allow(1.0), i % 2 == 0, 1.0)
    assert b.state is State.OPEN


def test_error_rate_needs_min_requests_and_forgets_old_slices() -> None:
    b = Breaker("d", CFG)
    fail(b, 2, 0.0)
    assert b.state is State.CLOSED  # 100 % of 2 is below min_requests
    for _ in range(10):
        b.record(b.allow(11.0), True, 11.0)  # the window moved on: old failures gone
    assert b.window(11.0) == (10, 0)
    fail(b, 2, 11.0)
    assert b.state is State.CLOSED


def test_half_open_probe_closes_on_success() -> None:
    b = Breaker("d", CFG)
    fail(b, 3, 0.0)
    probe = b.allow(5.0)
    assert probe is Permit.PROBE and b.state is State.HALF_OPEN
    assert b.allow(5.0) is Permit.REJECT  # one probe at a time
    b.record(probe, True, 5.1)
    assert b.state is State.CLOSED and b.consecutive == 0
    assert b.allow(5.2) is Permit.ADMIT
    fail(b, 2, 5.2)
    assert b.state is State.CLOSED  # the earlier failures do not count any more


def test_half_open_probe_failure_reopens() -> None:
    b = Breaker("d", CFG)
    fail(b, 3, 0.0)
    probe = b.allow(6.0)
    b.record(probe, False, 6.0)
    assert b.state is State.OPEN
    assert b.allow(10.9) is Permit.REJECT  # a fresh open period from the probe's failure
    assert b.allow(11.0) is Permit.PROBE


def test_released_probe_frees_the_slot() -> None:
    b = Breaker("d", CFG)
    fail(b, 3, 0.0)
    probe = b.allow(5.0)
    b.release(probe)  # the client left mid-probe: no verdict
    assert b.state is State.HALF_OPEN
    assert b.allow(5.0) is Permit.PROBE


def test_results_of_earlier_attempts_do_not_close_an_open_breaker() -> None:
    b = Breaker("d", CFG)
    admitted = [b.allow(0.0) for _ in range(4)]
    for permit in admitted[:3]:
        b.record(permit, False, 0.0)
    assert b.state is State.OPEN
    b.record(admitted[3], True, 0.1)  # started before it opened
    assert b.state is State.OPEN


def test_transitions_reach_listeners() -> None:
    seen: list[tuple[str, State, State]] = []
    b = Breaker("d", CFG, [lambda *t: seen.append(t)])
    fail(b, 3, 0.0)
    b.record(b.allow(5.0), True, 5.0)
    assert seen == [("d", State.CLOSED, State.OPEN), ("d", State.OPEN, State.HALF_OPEN),
                    ("d", State.HALF_OPEN, State.CLOSED)]


def test_registry_shares_a_breaker_per_endpoint_model_and_key() -> None:
    reg = BreakerRegistry(CFG)
    a = Deployment(provider="openai", model="m", api_key="env:A")
    same = Deployment(provider="openai", model="m", api_key="env:A", weight=2)
    other_key = Deployment(provider="openai", model="m", api_key="env:B")
    assert reg.get(a) is reg.get(same)
    assert reg.get(a) is not reg.get(other_key)


def test_disabled_breakers_always_admit() -> None:
    reg = BreakerRegistry(BreakerConfig(failures=0))
    b = reg.get(Deployment(provider="openai", model="m"))
    fail(b, 100, 0.0)
    assert b.allow(0.0) is Permit.ADMIT and b.state is State.CLOSED


def test_open_path_costs_well_under_a_tenth_of_a_millisecond() -> None:
    reg = BreakerRegistry(CFG)
    d = Deployment(provider="openai", model="m", api_base="http://x/v1")
    fail(reg.get(d), 3, time.monotonic())
    n = 20000
    started = time.perf_counter()
    for _ in range(n):
        assert reg.get(d).allow() is Permit.REJECT
    per_call = (time.perf_counter() - started) / n
    assert per_call < 0.0001 / 5, per_call  # lookup + check, with 5x headroom


# Through the proxy: the primary follows the mock's global fault (POST /_mock/faults);
# the secondary pins status=200 in its path, so it stays healthy whatever the fault.


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    def policies(url: str) -> list[dict[str, Any]]:
        def dep(name: str, base: str) -> dict[str, Any]:
            return {"provider": "openai", "model": f"{name}-model", "name": name,
                    "api_base": f"{base}/v1"}

        return [{"tenant": "acme", "keys": [KEY], "models": {"gpt-4o-mini": [
            dep("primary", url), dep("secondary", f"{url}/f/status=200")]}}]

    with Stack(policies, tmp_path, breaker_failures=3, breaker_open_s=1.0,
               retry_backoff_s=0.01) as s:
        yield s


def primary_calls(stack: Stack) -> int:
    return sum(1 for b in stack.mock_requests() if b["model"] == "primary-model")


def states(stack: Stack) -> dict[str, str]:
    ready = http_json("GET", f"{stack.proxy_url}/readyz")
    return {u["deployment"]: u["state"] for u in ready["upstreams"]}


def test_breaker_opens_skips_the_primary_and_closes_after_a_probe(stack: Stack) -> None:
    c = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)

    def ask() -> str:
        r = c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{"role": "user", "content": "hi"}])
        return r.model

    stack.mock_faults(status=500)
    assert [ask() for _ in range(3)] == ["secondary-model"] * 3
    assert primary_calls(stack) == 3
    assert states(stack)["primary"] == "open"
    metrics = httpx.get(f"{stack.proxy_url}/metrics").text
    assert 'warden_upstream_breaker_state{deployment="primary"} 2.0' in metrics

    opened = time.monotonic()
    for _ in range(10):
        assert ask() == "secondary-model"
    assert primary_calls(stack) == 3  # skipped without a call while open
    assert time.monotonic() - opened < 1.0, "the breaker must still be open here"
    metrics = httpx.get(f"{stack.proxy_url}/metrics").text
    assert 'warden_upstream_attempts_total{deployment="primary",reason="breaker_open"} 10.0' \
        in metrics

    time.sleep(1.05)  # open_s elapsed: the next request probes the (still broken) primary
    assert ask() == "secondary-model"
    assert primary_calls(stack) == 4
    assert states(stack)["primary"] == "open"

    stack.mock_faults()  # the primary recovers
    time.sleep(1.05)
    assert ask() == "primary-model"  # the probe succeeded: closed again
    assert states(stack)["primary"] == "closed"
    assert [ask() for _ in range(2)] == ["primary-model"] * 2


def test_breaker_state_of_upstream_object(stack: Stack) -> None:
    stack.mock_faults(status=503)
    c = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model="gpt-4o-mini",
                                  messages=[{"role": "user", "content": "hi"}])
    assert stack.app is not None
    snap = stack.app[UPSTREAM].breakers.snapshot()
    assert snap[0]["deployment"] == "primary" and snap[0]["state"] == "open"
    assert 0 < snap[0]["open_for_s"] <= 1.0
    assert snap[1] == {"deployment": "secondary", "state": "closed",
                       "consecutive_failures": 0, "window": {"ok": 3, "failed": 0}}
