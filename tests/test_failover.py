"""Failover through the real proxy, the real openai SDK and mock-upstream fault injection.

The openai client runs with ``max_retries=0``: whatever the agent sees is what Warden
did, not the SDK's own retries. Each deployment asks the mock for a different model
name, so the mock's request log tells which deployment was called.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.appkeys import POLICIES, UPSTREAM
from proxy.context import RequestContext
from proxy.pipeline import Policy
from proxy.tenants import PolicySet
from tests.support import KEY, Stack, http_json

FAST = {"connect": 1.0, "first_byte": 0.5, "idle": 0.5, "total": 5.0}
SETTINGS: dict[str, Any] = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05,
                            "breaker_failures": 3, "breaker_open_s": 60.0}


def dep(mock_url: str, name: str, spec: str = "", **extra: Any) -> dict[str, Any]:
    base = f"{mock_url}/f/{spec}" if spec else mock_url
    return {"provider": "openai", "model": f"{name}-model", "name": name,
            "api_base": f"{base}/v1", "api_key": "env:WARDEN_TEST_OPENAI_KEY",
            "timeouts": FAST, **extra}


def tenant(mock_url: str, route: Any, **models: Any) -> dict[str, Any]:
    return {"tenant": "acme", "keys": [KEY], "models": {"gpt-4o-mini": route, **models}}


def pair(primary_spec: str, secondary_spec: str = "") -> Any:
    """Policies: model gpt-4o-mini -> [primary (with a fault), secondary]."""
    return lambda url: [tenant(url, [dep(url, "primary", primary_spec),
                                     dep(url, "secondary", secondary_spec)])]


class Probe(Policy):
    name = "probe"

    def __init__(self) -> None:
        self.done: list[RequestContext] = []

    async def on_done(self, ctx: RequestContext) -> None:
        self.done.append(ctx)


def add_probe(stack: Stack) -> Probe:
    assert stack.app is not None
    holder = stack.app[POLICIES]
    current = holder.current.tenants["acme"]
    probe = Probe()
    patched = replace(current, policies=(*current.policies, probe))
    holder.swap(PolicySet(tenants={"acme": patched}, by_key={
        k: patched for k, t in holder.current.by_key.items() if t is current}))
    return probe


def settled(probe: Probe, n: int) -> list[RequestContext]:
    """The contexts of the first ``n`` requests once their on_done ran (Warden sends the
    reply first and settles after)."""
    deadline = time.monotonic() + 5
    while len(probe.done) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(probe.done) == n
    return probe.done


def client(stack: Stack, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0, **kw)


def called(stack: Stack, name: str) -> int:
    return sum(1 for b in stack.mock_requests() if b.get("model") == f"{name}-model")


def ask(c: openai.OpenAI, text: str = "hello there", stream: bool = False) -> tuple[str, str]:
    """(reply text, model that answered)."""
    messages: Any = [{"role": "user", "content": text}]
    if not stream:
        r = c.chat.completions.create(model="gpt-4o-mini", messages=messages)
        return r.choices[0].message.content or "", r.model
    parts, model = [], ""
    for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                           stream=True):
        model = chunk.model
        parts.extend(ch.delta.content or "" for ch in chunk.choices)
    return "".join(parts), model


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[Any]:
    opened: list[Stack] = []

    def start(policies: Any, **settings: Any) -> Stack:
        s = Stack(policies, tmp_path / f"s{len(opened)}", **{**SETTINGS, **settings})
        opened.append(s.__enter__())
        return s

    yield start
    for s in opened:
        s.__exit__(None, None, None)


BOTH, PLAIN, STREAM = (False, True), (False,), (True,)
FAULTS = {  # id: (mock spec of the primary, which requests it breaks)
    "500": ("status=500", BOTH),
    "429-retry-after": ("status=429,retry_after=1", BOTH),
    "hang": ("hang=1", BOTH),
    "garbage": ("garbage=1", BOTH),
    "slow-first-byte": ("first_byte_ms=2000", BOTH),
    "reset-before-first-event": ("reset_after=0", STREAM),
    "error-event-first": ("error_after=0", STREAM),
    "truncated-body": ("truncate=1", PLAIN),
}


@pytest.mark.parametrize(("fault", "modes"), FAULTS.values(), ids=FAULTS.keys())
def test_primary_fault_secondary_answers(stacks: Any, fault: str, modes: tuple[bool]) -> None:
    stack = stacks(pair(fault))
    c = client(stack)
    started = time.monotonic()
    for stream in modes:
        text, model = ask(c, "are you there", stream=stream)
        assert text == "Echo: are you there"
        assert model == "secondary-model"
    # The primary really was tried (and failed) for each request.
    assert called(stack, "primary") == len(modes)
    assert called(stack, "secondary") == len(modes)
    # A healthy secondary is used at once: no Retry-After or back-off is waited out;
    # only the primary's own first-byte limit (0.5 s) is, for hang / slow first byte.
    assert time.monotonic() - started < len(modes) * FAST["first_byte"] + 1.0


def test_attempts_are_logged_and_the_body_is_never_mutated(stacks: Any) -> None:
    stack = stacks(pair("status=503"))
    probe = add_probe(stack)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client(stack).chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                              temperature=0.2, max_tokens=7)
    assert r.model == "secondary-model"
    first, second = stack.mock_requests()
    assert first.pop("model") == "primary-model"
    assert second.pop("model") == "secondary-model"
    assert first == second == {"messages": messages, "temperature": 0.2, "max_tokens": 7}
    ctx = settled(probe, 1)[0]
    assert [(a.deployment, a.status, a.reason) for a in ctx.attempts] == [
        ("primary", 503, "status_503"), ("secondary", 200, "ok")]
    assert ctx.deployment is not None and ctx.deployment.label == "secondary"


def test_all_down_is_one_error_naming_every_attempt(stacks: Any) -> None:
    stack = stacks(pair("status=500", "garbage=1"))
    with pytest.raises(openai.InternalServerError) as info:
        ask(client(stack))
    err = info.value
    assert err.status_code == 502
    body: Any = err.body
    assert body["code"] == "upstream_error"
    message = body["message"]
    # Round robin: each deployment twice (retry_attempts=2), the healthy-looking order.
    assert message.count("primary (500, status_500)") == 2
    assert message.count("secondary (200, bad_reply: provider sent a body that is not JSON)") == 2
    assert message.index("primary") < message.index("secondary")
    assert "sk-upstream-secret" not in message and "mock fault" not in message
    assert called(stack, "primary") == 2 and called(stack, "secondary") == 2


def test_all_down_stream_is_an_error_before_any_byte(stacks: Any) -> None:
    stack = stacks(pair("status=502", "status=503"))
    r = httpx.post(f"{stack.proxy_url}/v1/chat/completions",
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "gpt-4o-mini", "stream": True,
                         "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502  # failover ran before the head: a normal error reply
    assert r.headers["content-type"].startswith("application/json")
    assert "primary (502, status_502)" in r.json()["error"]["message"]


def test_retry_after_is_honoured_on_the_same_deployment(stacks: Any) -> None:
    stack = stacks(lambda url: [tenant(url, [dep(url, "only", "status=429,retry_after_ms=400")])])
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        ask(client(stack))
    elapsed = time.monotonic() - started
    assert called(stack, "only") == 2
    assert elapsed >= 0.4  # waited what the provider asked, not the 10 ms back-off
    # The hint reaches the client, so the SDK's own retry waits as long.
    assert info.value.response.headers["retry-after-ms"] == "400"
    assert info.value.response.headers["retry-after"] == "1"
    assert "only (429, rate_limited) x2" in info.value.message


def test_retry_after_beyond_the_cap_is_not_waited(stacks: Any) -> None:
    stack = stacks(lambda url: [tenant(url, [dep(url, "only", "status=429,retry_after=90")])],
                   retry_after_max_s=5.0)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        ask(client(stack))
    assert time.monotonic() - started < 2
    assert called(stack, "only") == 1
    assert info.value.response.headers["retry-after"] == "90"


def test_model_retry_section_overrides_the_setting(stacks: Any) -> None:
    route = {"deployments": None, "retry": {"attempts": 4, "backoff_s": 0.001}}
    stack = stacks(lambda url: [tenant(url, {**route, "deployments": [
        dep(url, "only", "status=500")]})], breaker_failures=10)
    with pytest.raises(openai.InternalServerError):
        ask(client(stack))
    assert called(stack, "only") == 4


def test_deadline_follows_the_clients_read_timeout(stacks: Any) -> None:
    """The SDK says how long it waits (x-stainless-read-timeout); Warden answers first,
    with an error naming the attempts, instead of leaving the client to time out."""
    slow = {"connect": 1.0, "first_byte": 30.0, "idle": 30.0, "total": 60.0}
    stack = stacks(lambda url: [tenant(url, [dep(url, "primary", "hang=1", timeouts=slow),
                                             dep(url, "secondary")])])
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        ask(client(stack, timeout=2.0))
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504
    assert 1.5 <= elapsed < 2.0
    assert "ran out of time" in info.value.message
    assert "primary (-, deadline)" in info.value.message


def test_context_window_fallback(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, {
            "deployments": [dep(url, "small", "context_error=1"), dep(url, "small2")],
            "context_window_fallbacks": [dep(url, "big")],
        })]

    stack = stacks(policies)
    for stream in (False, True):
        text, model = ask(client(stack), "a very long prompt", stream=stream)
        assert (text, model) == ("Echo: a very long prompt", "big-model")
    # The other primary is the same model (same window): not tried.
    assert called(stack, "small") == 2 and called(stack, "small2") == 0


def test_context_window_fallback_by_model_name(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, {"deployments": [dep(url, "small", "context_error=1")],
                             "context_window_fallbacks": ["gpt-4o-128k"]},
                       **{"gpt-4o-128k": [dep(url, "big")]})]

    stack = stacks(policies)
    assert ask(client(stack))[1] == "big-model"


def test_context_error_without_fallbacks_is_returned_as_is(stacks: Any) -> None:
    stack = stacks(pair("context_error=1"))
    with pytest.raises(openai.BadRequestError) as info:
        ask(client(stack))
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in info.value.message
    assert called(stack, "secondary") == 0 and called(stack, "primary") == 1


def test_context_error_everywhere_returns_the_providers_refusal(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, {"deployments": [dep(url, "small", "context_error=1")],
                             "context_window_fallbacks": [dep(url, "big", "context_error=1"),
                                                          dep(url, "big2", "status=500")]})]

    stack = stacks(policies)
    with pytest.raises(openai.BadRequestError) as info:
        ask(client(stack))
    assert info.value.code == "context_length_exceeded"
    assert [called(stack, n) for n in ("small", "big", "big2")] == [1, 1, 2]


def test_content_policy_fallback(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, {"deployments": [dep(url, "azure", "content_error=1")],
                             "content_policy_fallbacks": [dep(url, "other")]})]

    stack = stacks(policies)
    assert ask(client(stack)) == ("Echo: hello there", "other-model")


def test_content_refusal_without_fallbacks_is_returned_as_is(stacks: Any) -> None:
    stack = stacks(pair("content_error=1"))
    with pytest.raises(openai.BadRequestError) as info:
        ask(client(stack))
    # AG2 re-raises content_filter instead of moving to its next config entry.
    assert info.value.code == "content_filter"
    assert called(stack, "secondary") == 0


def test_other_4xx_is_returned_as_is(stacks: Any) -> None:
    stack = stacks(pair("status=404"))
    with pytest.raises(openai.NotFoundError):
        ask(client(stack))
    assert called(stack, "secondary") == 0


def test_provider_auth_failure_fails_over(stacks: Any) -> None:
    """A 401 from a provider is about Warden's credential for it, not the agent's key:
    never shown to the agent (providers echo part of the key), next deployment instead."""
    stack = stacks(pair("status=401"))
    assert ask(client(stack))[1] == "secondary-model"


def test_mid_stream_reset_ends_with_an_error_event(stacks: Any) -> None:
    stack = stacks(pair("reset_after=2"))
    probe = add_probe(stack)
    started = time.monotonic()
    r = httpx.post(f"{stack.proxy_url}/v1/chat/completions",
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=10,
                   json={"model": "gpt-4o-mini", "stream": True,
                         "messages": [{"role": "user", "content": "one two three four"}]})
    assert time.monotonic() - started < 2  # no hang
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"role":"assistant"' in events[0]  # the primary's stream had started
    assert '"error"' in events[-1] and "provider stream failed" in events[-1]
    assert sum('"error"' in e for e in events) == 1
    assert "[DONE]" not in r.text
    # Accounting settled: on_done ran, and the attempt log says what happened.
    ctx = settled(probe, 1)[0]
    assert [(a.deployment, a.reason) for a in ctx.attempts] == [("primary", "midstream_reset")]
    assert called(stack, "secondary") == 0  # too late to fail over: bytes were sent
    assert stack.app is not None
    breaker = stack.app[UPSTREAM].breakers.all()[0]
    assert breaker.label == "primary" and breaker.consecutive == 1


def test_mid_stream_reset_through_the_sdk(stacks: Any) -> None:
    stack = stacks(pair("reset_after=2"))
    got: list[str] = []
    with pytest.raises(openai.APIError, match="provider stream failed"):
        for chunk in client(stack).chat.completions.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "one two three four"}]):
            got.extend(ch.delta.content or "" for ch in chunk.choices)
    assert "".join(got).startswith("Echo:")


def test_weights_split_first_tries(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, [dep(url, "heavy", weight=4), dep(url, "light", weight=1),
                             dep(url, "backup", priority=1)])]

    stack = stacks(policies)
    c = client(stack)
    for _ in range(40):
        ask(c)
    heavy, light = called(stack, "heavy"), called(stack, "light")
    assert heavy + light == 40 and called(stack, "backup") == 0
    assert 22 <= heavy <= 39  # expected 32; bounds are > 4 sigma wide


def test_embeddings_fail_over(stacks: Any) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        return [{"tenant": "acme", "keys": [KEY], "models": {"emb": [
            dep(url, "primary", "status=500"), dep(url, "secondary")]}}]

    stack = stacks(policies)
    r = client(stack).embeddings.create(model="emb", input="hello")
    assert len(r.data[0].embedding) == 16
    assert called(stack, "primary") == 1


def test_readyz_and_metrics_show_attempts(stacks: Any) -> None:
    stack = stacks(pair("status=500"))
    ask(client(stack))
    ready = http_json("GET", f"{stack.proxy_url}/readyz")
    states = {u["deployment"]: u["state"] for u in ready["upstreams"]}
    assert states == {"primary": "closed", "secondary": "closed"}
    text = httpx.get(f"{stack.proxy_url}/metrics").text
    assert 'warden_upstream_attempts_total{deployment="primary",reason="status_500"} 1.0' in text
    assert 'warden_upstream_attempts_total{deployment="secondary",reason="ok"} 1.0' in text
    assert 'warden_upstream_failovers_total{deployment="primary",reason="status_500"} 1.0' in text
    assert 'warden_upstream_breaker_state{deployment="primary"} 0.0' in text


def test_translated_and_fast_deployments_share_the_loop(stacks: Any) -> None:
    def anthropic(url: str, name: str, spec: str = "") -> dict[str, Any]:
        return {"provider": "anthropic", "model": f"{name}-model", "name": name,
                "api_base": f"{url}/f/{spec}" if spec else url,
                # litellm's first call still imports provider modules: no tight limit.
                "timeouts": {**FAST, "first_byte": 10.0},
                "api_key": "env:WARDEN_TEST_ANTHROPIC_KEY"}

    def policies(url: str) -> list[dict[str, Any]]:
        return [tenant(url, [anthropic(url, "claude", "status=529"), dep(url, "gpt")],
                       **{"reverse": [dep(url, "gpt", "status=500"), anthropic(url, "claude")]})]

    stack = stacks(policies)
    probe = add_probe(stack)
    c = client(stack)
    assert ask(c, "hi", stream=False) == ("Echo: hi", "gpt-model")
    assert ask(c, "hi", stream=True) == ("Echo: hi", "gpt-model")
    r = c.chat.completions.create(model="reverse", messages=[{"role": "user", "content": "yo"}])
    assert r.choices[0].message.content == "Echo: yo"
    # Anthropic's 529 "overloaded" arrives as litellm's mapping of it, a 500.
    assert [[(a.deployment, a.status, a.reason) for a in ctx.attempts]
            for ctx in settled(probe, 3)] \
        == [[("claude", 500, "status_500"), ("gpt", 200, "ok")]] * 2 \
        + [[("gpt", 500, "status_500"), ("claude", 200, "ok")]]
    # litellm's own retries are off: one call per attempt reached the provider.
    assert called(stack, "claude") == 3
