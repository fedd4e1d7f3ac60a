"""The real openai SDK through Warden to the mock provider: what arrives is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import KEY, Stack, http_json, tenant_policy

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plan in one line."}]


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)


def test_plain_reply_arrives_unchanged(stack: Stack) -> None:
    reply = client(stack).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: Summarise the plan in one line."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # The provider got the deployment's model name and the messages as sent.
    sent = stack.mock_requests()[-1]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert sent["messages"] == MESSAGES


def test_plain_reply_bytes_equal_the_providers(stack: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {KEY}"}
    via = httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body, headers=headers)
    direct = httpx.post(f"{stack.mock_url}/v1/chat/completions",
                        json={**body, "model": "gpt-4o-mini-2024-07-18"})
    assert via.status_code == 200
    assert via.content == direct.content
    assert via.headers["x-request-id"]
    assert float(via.headers["x-warden-overhead-ms"]) >= 0


def test_tool_calls_arrive_unchanged(stack: Stack) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": 'go [[call:lookup {"q": "weather"}]]'}]
    reply = client(stack).chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                  tools=tools)  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"q": "weather"}  # type: ignore[union-attr]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert stack.mock_requests()[-1]["tools"] == tools


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_bytes_equal_the_providers(stack: Stack, include_usage: bool) -> None:
    body: dict[str, object] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    via = httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body, headers=headers)
    direct = httpx.post(f"{stack.mock_url}/v1/chat/completions",
                        json={**body, "model": "gpt-4o-mini-2024-07-18"})
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.content == direct.content
    # Warden always asked the provider for usage, and hid it when the client did not.
    assert stack.mock_requests()[-2]["stream_options"] == {"include_usage": True}
    assert (b'"usage":{' in via.content) is include_usage


def test_stream_through_the_sdk(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Summarise the plan in one line."
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"


async def test_async_sdk_plain_and_stream(stack: Stack) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)
    reply = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: Summarise the plan in one line."
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                   stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: Summarise the plan in one line."
    await aclient.close()


def test_streamed_tool_call(stack: Stack) -> None:
    messages = [{"role": "user", "content": '[[call:add {"a": 1, "b": 2}]]'}]
    stream = client(stack).chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                   stream=True)
    args = ""
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            args += call.function.arguments or ""  # type: ignore[union-attr]
    assert json.loads(args) == {"a": 1, "b": 2}


def test_embeddings(stack: Stack) -> None:
    result = client(stack).embeddings.create(model="text-embedding-3-small",
                                             input=["alpha", "beta"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 16
    assert result.usage.prompt_tokens > 0


def test_models_lists_what_the_key_may_use(stack: Stack) -> None:
    models = client(stack).models.list()
    assert sorted(m.id for m in models) == ["claude", "gpt-4o-mini", "text-embedding-3-small"]
    assert client(stack).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client(stack).models.retrieve("gpt-5")


def test_routes_without_v1_prefix(stack: Stack) -> None:
    r = httpx.post(f"{stack.proxy_url}/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": MESSAGES},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200


def test_request_id_is_honoured_or_made(stack: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {KEY}", "x-request-id": "agent-42.turn-7"}
    r = httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body, headers=headers)
    assert r.headers["x-request-id"] == "agent-42.turn-7"
    bad = httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body,
                     headers={**headers, "x-request-id": "x" * 500})
    assert len(bad.headers["x-request-id"]) == 32
    refused = httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body)
    assert refused.status_code == 401 and refused.headers["x-request-id"]


def test_health_ready_metrics(stack: Stack) -> None:
    assert httpx.get(f"{stack.proxy_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.proxy_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["policies"]["tenants"] == 1
    assert ready.json()["store"]["reachable"] is True
    client(stack).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    text = httpx.get(f"{stack.proxy_url}/metrics").text
    assert 'warden_requests_total{model="gpt-4o-mini",outcome="ok",tenant="acme"} 1.0' in text


def test_provider_credentials_come_from_the_deployment(stack: Stack) -> None:
    """The agent's virtual key never reaches the provider; the deployment's key does."""
    client(stack).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client(stack).embeddings.create(model="text-embedding-3-small", input="x")
    seen = http_json("GET", f"{stack.mock_url}/_mock/credentials")
    assert seen == ["Bearer sk-upstream-secret-openai", ""]
    assert all(KEY not in s for s in seen)


def test_azure_deployment_url_and_key_shape(tmp_path: Path) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        t = tenant_policy(url)
        t["models"]["gpt-4o-mini"] = [{"provider": "azure", "model": "my-gpt4o",
                                       "api_base": url, "api_version": "2024-10-21",
                                       "api_key": "env:WARDEN_TEST_OPENAI_KEY"}]
        return [t]

    with Stack(policies, tmp_path) as s:
        reply = client(s).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "Echo: Summarise the plan in one line."
        assert http_json("GET", f"{s.mock_url}/_mock/credentials") == [
            "sk-upstream-secret-openai"]  # sent as Azure's api-key header, not a Bearer
