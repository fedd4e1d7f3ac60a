"""/metrics after scripted traffic through the real proxy and mock provider: exact
counter values and label sets, GenAI conventions, estimated usage, bounded labels."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.appkeys import SERVICES
from proxy.context import Attempt, RequestContext, Usage
from proxy.metrics import Metrics
from proxy.mock_upstream import _pieces, prompt_text, tokens
from proxy.semconv import (
    CHUNK_BUCKETS,
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
)
from proxy.tenants import Deployment, Tenant, TenantConfig
from proxy.tokens import TokenCounter
from tests.support import KEY, Stack, env_for_subprocess, spawn, write_policies
from tests.telemetry_support import Refuser, chat, install, ls, parse, scrape

PRICE_IN, PRICE_OUT = 1e-6, 2e-6
GENAI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "tenant": "acme"}


def deployment(api_base: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt-4o-mini", "api_base": api_base, **extra}


def acme(mock: str) -> dict[str, Any]:
    return {"tenant": "acme", "keys": [KEY], "models": {
        "chat": [deployment(f"{mock}/v1", input_cost_per_token=PRICE_IN,
                            output_cost_per_token=PRICE_OUT)],
        "quiet": [deployment(f"{mock}/f/no_usage=1/v1")],
        "broken": [deployment(f"{mock}/f/status=500/v1")],
        "down": [deployment("http://127.0.0.1:9/v1", timeouts={"connect": 2})],
        "cut": [deployment(f"{mock}/f/reset_after=3/v1")],
    }}


@pytest.fixture
def tstack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(lambda url: [acme(url)], tmp_path) as s:
        install(s, "acme", Refuser())
        yield s


def mock_usage(text: str) -> tuple[int, int]:
    """What the mock reports for one user message (its own counting rule)."""
    return tokens(prompt_text([{"content": text}])), tokens(f"Echo: {text}")


def stream_events(text: str, usage: bool) -> int:
    """Events the mock streams before [DONE]: role, one per piece, finish, usage."""
    return 1 + len(_pieces(f"Echo: {text}", None)) + 1 + (1 if usage else 0)


def test_scripted_traffic_exact_counters(tstack: Stack) -> None:
    s = tstack
    texts = ["hello there world", "the quick brown fox jumps", "streamed reply please"]
    assert chat(s, "chat", texts[0], key=KEY).status_code == 200
    assert chat(s, "chat", texts[1], key=KEY).status_code == 200
    streamed = chat(s, "chat", texts[2], key=KEY, stream=True)
    assert streamed.status_code == 200 and b"[DONE]" in streamed.content
    assert chat(s, "quiet", "no usage here", key=KEY).status_code == 200
    assert chat(s, "quiet", "no usage streamed", key=KEY, stream=True).status_code == 200
    assert chat(s, "broken", "x", key=KEY).status_code == 502  # every attempt failed
    assert chat(s, "down", "x", key=KEY).status_code == 502
    assert chat(s, "gpt-unrouted", "x", key=KEY).status_code == 404
    assert chat(s, "chat", "x", key="vk-wrong-key-000").status_code == 401
    assert chat(s, "chat", "[[refuse:scope]]", key=KEY).status_code == 403
    assert chat(s, "chat", "[[refuse:rate]]", key=KEY).status_code == 429

    m = scrape(s.proxy_url, requests=11)
    assert m.label_sets("warden_requests_total") == {
        ls(tenant="acme", model="chat", outcome="ok"),
        ls(tenant="acme", model="quiet", outcome="ok"),
        ls(tenant="acme", model="broken", outcome="error"),
        ls(tenant="acme", model="down", outcome="error"),
        ls(tenant="acme", model="-", outcome="refused"),
        ls(tenant="-", model="-", outcome="refused"),
        ls(tenant="acme", model="chat", outcome="refused"),
    }
    req = {labels: v for (n, labels), v in m.items() if n == "warden_requests_total"}
    assert req[ls(tenant="acme", model="chat", outcome="ok")] == 3
    assert req[ls(tenant="acme", model="quiet", outcome="ok")] == 2
    assert req[ls(tenant="acme", model="chat", outcome="refused")] == 2
    assert sum(req.values()) == 11

    # Tokens and cost of "chat" are the provider's own figures times the override price.
    usages = [mock_usage(t) for t in texts]
    chat_ok = {**GENAI, "gen_ai_request_model": "chat", "gen_ai_response_model": "gpt-4o-mini"}
    for token_type, index in (("input", 0), ("output", 1)):
        labels = {**chat_ok, "gen_ai_token_type": token_type}
        assert m.get_value("gen_ai_client_token_usage_count", **labels) == 3
        assert m.get_value("gen_ai_client_token_usage_sum", **labels) == sum(
            u[index] for u in usages)
    cost = sum(p * PRICE_IN + c * PRICE_OUT for p, c in usages)
    assert m.get_value("warden_cost_usd_total", tenant="acme", model="chat") == \
        pytest.approx(cost, rel=1e-12)

    # Durations: successes have an empty error_type, failures the last attempt's reason.
    assert m.get_value("gen_ai_client_operation_duration_seconds_count",
                       **chat_ok, error_type="") == 3
    failed = {**GENAI, "gen_ai_response_model": "-"}
    assert m.get_value("gen_ai_client_operation_duration_seconds_count", **failed,
                       gen_ai_request_model="broken", error_type="status_500") == 1
    assert m.get_value("gen_ai_client_operation_duration_seconds_count", **failed,
                       gen_ai_request_model="down", error_type="connect_error") == 1
    error_types = {dict(lab)["error_type"] for lab in
                   m.label_sets("gen_ai_client_operation_duration_seconds_count")}
    assert error_types == {"", "status_500", "connect_error"}
    # Refusals never reached a provider: no GenAI series for them.
    models = {dict(lab)["gen_ai_request_model"] for lab in
              m.label_sets("gen_ai_client_operation_duration_seconds_count")}
    assert models == {"chat", "quiet", "broken", "down"}

    # Streams: one TTFT each; one chunk gap per upstream event after the first.
    assert m.get_value("gen_ai_server_time_to_first_token_seconds_count", **chat_ok) == 1
    assert m.get_value("gen_ai_client_operation_time_per_output_chunk_seconds_count",
                       **chat_ok) == stream_events(texts[2], usage=True) - 1
    quiet = {**GENAI, "gen_ai_request_model": "quiet", "gen_ai_response_model": "gpt-4o-mini"}
    assert m.get_value("gen_ai_client_operation_time_per_output_chunk_seconds_count",
                       **quiet) == stream_events("no usage streamed", usage=False) - 1

    # Policies: decisions by bounded codes.
    assert m.get_value("warden_policy_decisions_total", tenant="acme", policy="scope",
                       action="block", reason="topic_denied") == 1
    assert m.get_value("warden_policy_decisions_total", tenant="acme", policy="limits",
                       action="refuse", reason="rpm") == 1
    assert m.get_value("warden_proxy_overhead_seconds_count", operation="chat") == 11


def test_provider_without_usage_gets_estimated_tokens(tstack: Stack) -> None:
    s = tstack
    text = "count these words for me please"
    plain = chat(s, "quiet", text, key=KEY)
    assert plain.status_code == 200 and "usage" not in plain.json()
    assert chat(s, "quiet", text, key=KEY, stream=True).status_code == 200

    counter = TokenCounter()
    asyncio.run(counter.prepare("o200k_base"))  # gpt-4o-mini's encoding
    sent = s.mock_requests()[-1]["messages"]
    prompt = counter.chat_prompt("o200k_base", {"messages": sent})
    completion = counter.count("o200k_base", f"Echo: {text}")
    m = scrape(s.proxy_url, requests=2)
    est = {"tenant": "acme", "model": "quiet"}
    assert m.get_value("warden_estimated_tokens_total", **est, gen_ai_token_type="input") == \
        2 * prompt
    assert m.get_value("warden_estimated_tokens_total", **est,
                       gen_ai_token_type="output") == 2 * completion
    labels = {**GENAI, "gen_ai_request_model": "quiet", "gen_ai_response_model": "gpt-4o-mini",
              "gen_ai_token_type": "output"}
    assert m.get_value("gen_ai_client_token_usage_sum", **labels) == 2 * completion
    # The estimate is priced like real usage (gpt-4o-mini from litellm's table).
    assert m.get_value("warden_cost_usd_total", tenant="acme", model="quiet") > 0
    # A provider that reports usage is never estimated.
    assert chat(s, "chat", text, key=KEY, stream=True).status_code == 200
    m = scrape(s.proxy_url, requests=3)
    assert [v for _, v in m.matching("warden_estimated_tokens_total", model="chat")] == [0, 0]


def test_stream_cut_mid_way_is_an_error_and_not_estimated(tstack: Stack) -> None:
    r = chat(tstack, "cut", "one two three four five six", key=KEY, stream=True)
    assert r.status_code == 200 and b'"error"' in r.content  # failed after the head
    m = scrape(tstack.proxy_url, requests=1)
    assert m.get_value("warden_requests_total", tenant="acme", model="cut",
                       outcome="error") == 1
    labels = {**GENAI, "gen_ai_request_model": "cut", "gen_ai_response_model": "-"}
    assert m.get_value("gen_ai_client_operation_duration_seconds_count", **labels,
                       error_type="reset") == 1
    # What arrived understates what may have been billed: no estimate (the budget
    # charges the worst case), so no token series for it.
    assert m.get_value("warden_estimated_tokens_total", tenant="acme", model="cut",
                       gen_ai_token_type="output") == 0
    counts = m.matching("gen_ai_client_token_usage_count", gen_ai_request_model="cut")
    assert counts and all(v == 0 for _, v in counts)


def test_stream_overhead_header(tstack: Stack) -> None:
    r = chat(tstack, "chat", "hi", key=KEY, stream=True)
    assert 0 <= float(r.headers["x-warden-overhead-ms"]) < 1000
    plain = chat(tstack, "chat", "hi", key=KEY)
    assert 0 <= float(plain.headers["x-warden-overhead-ms"]) < 1000


def test_cardinality_bounded_under_distinct_agents_and_models(tstack: Stack) -> None:
    s = tstack
    with httpx.Client(timeout=30) as client:
        def send(model: str, agent: str, text: str) -> int:
            r = client.post(f"{s.proxy_url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": text}]},
                headers={"Authorization": f"Bearer {KEY}", "X-Warden-Agent": agent,
                         "X-Warden-Conversation": f"conv-{agent}"})
            return r.status_code

        assert send("chat", "warmup", "x") == 200
        assert send("no-such-model-warmup", "warmup", "x") == 404
        assert send("chat", "warmup", "[[decide:warmup]]") == 200
        metrics = s.app[SERVICES].metrics  # type: ignore[index]
        before = metrics.series_count()
        for i in range(1000):
            assert send("chat", f"agent-{i}", f"message {i}") == 200
            assert send(f"no-such-model-{i}", f"agent-{i}", "x") == 404
            # A careless policy putting free text in a decision reason.
            assert send("chat", f"agent-{i}", f"[[decide:user-{i}@example.com]]") == 200
    text = httpx.get(f"{s.proxy_url}/metrics").text
    assert "agent-" not in text and "no-such-model" not in text and "conv-" not in text
    after = metrics.series_count()
    # Only the decision reasons may grow, and only up to their fixed cap (+1 "other").
    decisions = parse(text).label_sets("warden_policy_decisions_total")
    assert len(decisions) <= 257
    assert after - before <= len(decisions)
    assert parse(text).get_value("warden_policy_decisions_total", tenant="acme",
                                 policy="other", action="other", reason="other") > 0


# The semantic conventions' explicit bucket boundaries, written out as the spec does.
SPEC_BUCKETS = {
    "gen_ai_client_token_usage_bucket": [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144,
                                         1048576, 4194304, 16777216, 67108864],
    "gen_ai_client_operation_duration_seconds_bucket": [
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
    "gen_ai_server_time_to_first_token_seconds_bucket": [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0],
    "gen_ai_client_operation_time_per_output_chunk_seconds_bucket": [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
}


def test_exported_buckets_are_the_conventions(tstack: Stack) -> None:
    empty = parse(Metrics(access_log_enabled=False).render().decode())
    assert list(empty) == []  # no label sets before the first request
    assert chat(tstack, "chat", "hi", key=KEY, stream=True).status_code == 200
    m = scrape(tstack.proxy_url, requests=1)
    for name, bounds in SPEC_BUCKETS.items():
        les = {float(dict(lab)["le"]) for lab in m.label_sets(name)}
        assert les == {*map(float, bounds), float("inf")}, name
    ours = (TOKEN_BUCKETS, DURATION_BUCKETS, TTFT_BUCKETS, CHUNK_BUCKETS)
    assert ours == tuple(tuple(b) for b in SPEC_BUCKETS.values())


def _tenant() -> Tenant:
    cfg = TenantConfig.model_validate({"tenant": "t1", "keys": ["vk-12345678"], "models": {
        "m": [{"provider": "openai", "model": "gpt-4o-mini", "name": "primary"},
              {"provider": "azure", "model": "gpt-4o-mini", "name": "backup"}]}})
    return Tenant(config=cfg, policies=(), source=Path("t1.yaml"))


def test_genai_provider_is_the_answering_deployments() -> None:
    metrics = Metrics(access_log_enabled=False)
    tenant = _tenant()
    primary, backup = tenant.config.models["m"].deployments
    ctx = RequestContext(request_id="r1", operation="chat", tenant=tenant, model="m",
                         deployments=(primary, backup), deployment=backup, status=200,
                         usage=Usage(10, 5), response_model="gpt-4o-mini")
    ctx.attempts = [Attempt("primary", 503, "upstream_503", 0.01),
                    Attempt("backup", 200, "ok", 0.2)]
    metrics.record(ctx)
    m = parse(metrics.render().decode())
    # The provider of the GenAI series is the one that answered (Azure's OTel name).
    assert m.get_value("gen_ai_client_operation_duration_seconds_count",
                       gen_ai_operation_name="chat", gen_ai_provider_name="azure.ai.openai",
                       gen_ai_request_model="m", gen_ai_response_model="gpt-4o-mini",
                       tenant="t1", error_type="") == 1
    # Azure has no bare-name entry of its own here: priced from OpenAI's list.
    assert m.get_value("warden_cost_usd_total", tenant="t1", model="m") > 0


def test_disabled_metrics_record_nothing() -> None:
    metrics = Metrics(access_log_enabled=False, enabled=False)
    tenant = _tenant()
    ctx = RequestContext(request_id="r", operation="chat", tenant=tenant, model="m",
                         deployments=tenant.routes("m") or (), status=200)
    metrics.record(ctx)
    assert list(parse(metrics.render().decode())) == []


def test_unpriced_deployment_is_counted_not_guessed() -> None:
    metrics = Metrics(access_log_enabled=False)
    cfg = TenantConfig.model_validate({"tenant": "t2", "keys": ["vk-12345678"], "models": {
        "local": [{"provider": "vllm", "model": "gpt-4o", "api_base": "http://h/v1"}]}})
    tenant = Tenant(config=cfg, policies=(), source=Path("t2.yaml"))
    d: Deployment = cfg.models["local"].deployments[0]
    ctx = RequestContext(request_id="r", operation="chat", tenant=tenant, model="local",
                         deployments=(d,), deployment=d, status=200, usage=Usage(3, 4))
    ctx.attempts = [Attempt(d.label, 200, "ok", 0.1)]
    metrics.record(ctx)
    m = parse(metrics.render().decode())
    assert m.get_value("warden_unpriced_requests_total", tenant="t2", model="local") == 1
    assert m.get_value("warden_cost_usd_total", tenant="t2", model="local") == 0
    assert ctx.cost_usd is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_metrics_on_their_own_port(tstack: Stack, tmp_path: Path) -> None:
    """`warden serve --metrics-port` serves /metrics there, fed by the proxy's traffic."""
    pdir = write_policies(tmp_path / "sub", acme(tstack.mock_url))
    mport = _free_port()
    with spawn("serve", "--port", "0", "--policies", str(pdir),
               "--metrics-port", str(mport)) as (_, port):
        url = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        m = scrape(f"http://127.0.0.1:{mport}", requests=1)
        assert m.get_value("warden_requests_total", tenant="acme", model="chat",
                           outcome="ok") == 1
        # The metrics port serves nothing else.
        assert httpx.post(f"http://127.0.0.1:{mport}/v1/chat/completions").status_code in \
            (404, 405)


@pytest.mark.slow
def test_multiprocess_workers_aggregate(tstack: Stack, tmp_path: Path) -> None:
    """Two worker processes sharing PROMETHEUS_MULTIPROC_DIR: either one's /metrics shows
    the sum of both."""
    pdir = write_policies(tmp_path / "mp", acme(tstack.mock_url))
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = env_for_subprocess(PROMETHEUS_MULTIPROC_DIR=str(mpdir))
    args = ("serve", "--port", "0", "--policies", str(pdir))
    with spawn(*args, env=env) as (_, port_a), spawn(*args, env=env) as (_, port_b):
        for port, n in ((port_a, 2), (port_b, 3)):
            for _ in range(n):
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               headers={"Authorization": f"Bearer {KEY}"},
                               json={"model": "chat",
                                     "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
        for port in (port_a, port_b):
            m = scrape(f"http://127.0.0.1:{port}", requests=5)
            assert m.get_value("warden_requests_total", tenant="acme", model="chat",
                               outcome="ok") == 5
            assert m.get_value("gen_ai_client_token_usage_count", **GENAI,
                               gen_ai_request_model="chat", gen_ai_response_model="gpt-4o-mini",
                               gen_ai_token_type="input") == 5
    assert len(list(mpdir.glob("*.db"))) >= 2  # one set of files per process
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the test process is unaffected
