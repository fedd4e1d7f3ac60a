"""Rate limits through the real proxy and the real openai SDK (in-memory store; the
Redis store is the same algorithm, see test_store.py, and runs across replicas in
test_limits_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.policies.limits import LimitsConfig
from proxy.tenants import PolicyError, load_configs
from tests.support import KEY, Stack, http_json, tenant_policy, write_policies

HEADERS = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def chat(stack: Stack, model: str = "gpt-4o-mini", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, **extra}
    return httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body, headers=HEADERS,
                      timeout=30)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Stack]:
    limits = {"rpm": 3, "tpm": 50_000}
    with Stack(lambda url: [tenant_policy(url, limits=limits)], tmp_path) as s:
        yield s


def test_openai_headers_on_every_response(limited: Stack) -> None:
    first, second = chat(limited), chat(limited, stream=True)
    for r, remaining in ((first, 2), (second, 1)):
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert r.headers["x-ratelimit-limit-tokens"] == "50000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < 50_000
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    # The reservation (prompt + the model's 16384 max output) settled to real usage.
    usage = first.json()["usage"]
    third = chat(limited)
    used = 50_000 - int(third.headers["x-ratelimit-remaining-tokens"])
    assert used < 2 * 16_384 + 100  # first settled; second streamed and settled too
    assert used >= usage["total_tokens"]


def test_over_the_rpm_limit_is_a_429_the_sdk_understands(limited: Stack) -> None:
    for _ in range(3):
        assert chat(limited).status_code == 200
    refused = chat(limited)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "requests per minute" in error["message"] and "Limit 3" in error["message"]
    assert 55 <= int(refused.headers["Retry-After"]) <= 60
    assert 55_000 <= int(refused.headers["retry-after-ms"]) <= 60_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    client = openai.OpenAI(base_url=f"{limited.proxy_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "rate_limit_exceeded"
    # Refused requests never reached the provider.
    assert len(limited.mock_requests()) == 3


def test_per_model_limits_apply_on_top(tmp_path: Path) -> None:
    limits = {"rpm": 3, "models": {"gpt-4o-mini": {"rpm": 2}}}
    with Stack(lambda url: [tenant_policy(url, limits=limits)], tmp_path) as s:
        assert chat(s).status_code == 200
        second = chat(s)
        # The tightest window is the one reported.
        assert second.headers["x-ratelimit-limit-requests"] == "2"
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        refused = chat(s)
        assert refused.status_code == 429
        assert "on model gpt-4o-mini" in refused.json()["error"]["message"]
        # Another model still has the tenant-wide room left.
        embedded = httpx.post(f"{s.proxy_url}/v1/embeddings", headers=HEADERS,
                              json={"model": "text-embedding-3-small", "input": "hello"})
        assert embedded.status_code == 200
        assert embedded.headers["x-ratelimit-remaining-requests"] == "0"
        assert chat(s, model="text-embedding-3-small").status_code == 429


def test_a_request_larger_than_tpm_is_refused_without_retry(tmp_path: Path) -> None:
    with Stack(lambda url: [tenant_policy(url, limits={"tpm": 1000})], tmp_path) as s:
        # No max_tokens: the model's 16384 maximum output is reserved only up to the
        # limit (then settled), so a guess never makes a request "too large".
        assert chat(s).status_code == 200
        r = chat(s, max_tokens=5000)
        assert r.status_code == 429
        assert r.headers["x-should-retry"] == "false"
        assert "Request too large" in r.json()["error"]["message"]
        assert chat(s, max_tokens=100).status_code == 200


def test_concurrency_limit_holds_with_a_slow_provider(tmp_path: Path) -> None:
    with Stack(lambda url: [tenant_policy(url, spec="latency_ms=300",
                                          limits={"concurrency": 3})], tmp_path) as s:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                replies = await asyncio.gather(*(
                    client.post(f"{s.proxy_url}/v1/chat/completions", headers=HEADERS,
                                json={"model": "gpt-4o-mini", "messages": MESSAGES,
                                      "stream": i % 2 == 0})
                    for i in range(12)))
            return [r.status_code for r in replies]

        codes = asyncio.run(burst())
        assert codes.count(200) == 3 and codes.count(429) == 9
        stats = http_json("GET", f"{s.mock_url}/_mock/stats")
        assert stats["max_in_flight"] == 3
        # Slots came back: the next burst gets three more through.
        assert asyncio.run(burst()).count(200) == 3


def test_limits_need_at_least_one_limit(tmp_path: Path) -> None:
    write_policies(tmp_path, tenant_policy("http://127.0.0.1:9", limits={"models": {}}))
    with pytest.raises(PolicyError, match="limits"):
        load_configs(tmp_path)
    with pytest.raises(ValueError, match=r"[Ee]xtra"):
        LimitsConfig.model_validate({"rpm": 1, "burst": 3})


def test_streamed_refusal_is_json_not_a_stream(limited: Stack) -> None:
    for _ in range(3):
        chat(limited)
    r = chat(limited, stream=True)
    assert r.status_code == 429
    assert json.loads(r.content)["error"]["code"] == "rate_limit_exceeded"


def test_documented_examples_are_valid() -> None:
    """The loops/limits/budget examples in docs/policies.md load as documented."""
    import re

    import yaml

    from proxy.policies.budget import BudgetConfig
    from proxy.policies.loops import LoopsConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    sections = {key: value for block in blocks for key, value in block.items()}
    assert LimitsConfig.model_validate(sections["limits"]).models["gpt-4o"].rpm == 60
    assert BudgetConfig.model_validate(sections["budget"]).period == "day"
    assert LoopsConfig.model_validate(sections["loops"]).repeats == 3
