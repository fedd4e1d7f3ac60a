"""Back-off with full jitter, Retry-After caps, and the client's deadline."""

from __future__ import annotations

import random

import pytest

from proxy.settings import Settings
from proxy.tenants import Retry
from proxy.upstream.retry import RetryPolicy, client_budget

POLICY = RetryPolicy(attempts=4, backoff_s=0.1, backoff_max_s=0.3, retry_after_max_s=5.0)


def test_full_jitter_stays_under_a_doubling_capped_ceiling() -> None:
    rng = random.Random(7)
    for tries_done, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (9, 0.3)):
        waits = [POLICY.backoff(tries_done, rng) for _ in range(2000)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > ceiling * 0.95  # the whole range is used: it is jitter
        assert abs(sum(waits) / len(waits) - ceiling / 2) < ceiling * 0.05


def test_wait_takes_the_providers_hint_when_longer() -> None:
    rng = random.Random(1)
    assert POLICY.wait(1, 2.0, rng) == 2.0
    assert 0 <= (POLICY.wait(1, 0.0, rng) or 0) <= 0.1
    assert POLICY.wait(1, 5.5, rng) is None  # beyond the cap: not retried here
    assert POLICY.wait(4, None, rng) is None  # every try used


def test_model_overrides_fall_back_to_settings() -> None:
    s = Settings(retry_attempts=3, retry_backoff_s=0.5, retry_after_max_s=7)
    assert RetryPolicy.from_settings(s) == RetryPolicy(3, 0.5, 8.0, 7.0)
    assert RetryPolicy.from_settings(s, Retry(attempts=1, backoff_max_s=2)) == \
        RetryPolicy(1, 0.5, 2.0, 7.0)


@pytest.mark.parametrize(("header", "budget"), [
    (None, 600.0), ("600", 599.5), ("600.0", 599.5), ("2", 1.8), ("0.5", 0.45),
    ("900", 600.0), ("abc", 600.0), ("-3", 600.0), ("inf", 600.0), ("0", 600.0),
])
def test_client_budget(header: str | None, budget: float) -> None:
    headers = {} if header is None else {"x-stainless-read-timeout": header}
    assert client_budget(headers, 600.0) == pytest.approx(budget)
