"""The fake provider itself: faults chosen by path, request log, Azure path shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.mock_upstream import _pieces, create_mock_app

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello world"}]}


@pytest.fixture
async def mock() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_mock_app())) as client:
        yield client


async def test_echo_and_usage(mock: TestClient) -> None:  # type: ignore[type-arg]
    r = await mock.post("/v1/chat/completions", json=BODY)
    data = await r.json()
    assert data["choices"][0]["message"]["content"] == "Echo: hello world"
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + \
        data["usage"]["completion_tokens"]


async def test_status_fault_with_retry_after(mock: TestClient) -> None:  # type: ignore[type-arg]
    r = await mock.post("/f/status=429,retry_after=3/v1/chat/completions", json=BODY)
    assert r.status == 429 and r.headers["Retry-After"] == "3"


async def test_global_fault_and_request_log(mock: TestClient) -> None:  # type: ignore[type-arg]
    await mock.post("/_mock/faults", json={"status": 503})
    assert (await mock.post("/v1/chat/completions", json=BODY)).status == 503
    await mock.post("/_mock/faults", json={})
    assert (await mock.post("/v1/chat/completions", json=BODY)).status == 200
    log = await (await mock.get("/_mock/requests")).json()
    assert len(log) == 2 and log[0]["messages"] == BODY["messages"]
    await mock.delete("/_mock/requests")
    assert await (await mock.get("/_mock/requests")).json() == []


async def test_stream_usage_only_when_asked(mock: TestClient) -> None:  # type: ignore[type-arg]
    plain = await (await mock.post("/v1/chat/completions", json={**BODY, "stream": True})).read()
    assert b'"usage"' not in plain and plain.endswith(b"data: [DONE]\n\n")
    asked = await (await mock.post("/v1/chat/completions", json={
        **BODY, "stream": True, "stream_options": {"include_usage": True}})).read()
    events = [json.loads(e[6:]) for e in asked.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


async def test_azure_path_and_unknown_spec(mock: TestClient) -> None:  # type: ignore[type-arg]
    r = await mock.post("/openai/deployments/gpt4/chat/completions?api-version=x", json=BODY)
    assert r.status == 200
    bad = await mock.post("/f/colour=red/v1/chat/completions", json=BODY)
    assert bad.status == 400


def test_pieces() -> None:
    assert _pieces("a b c", None) == ["a ", "b ", "c"]
    assert "".join(_pieces("abcdefg", 3)) == "abcdefg" and len(_pieces("abcdefg", 3)) == 3
