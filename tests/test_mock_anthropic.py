"""The mock's Anthropic Messages endpoint: plain and streamed shapes, faults by path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.mock_upstream import create_mock_app

BODY = {"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def mock() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_mock_app())) as client:
        yield client


async def test_plain(mock: TestClient) -> None:  # type: ignore[type-arg]
    data = await (await mock.post("/v1/messages", json=BODY)).json()
    assert data["content"] == [{"type": "text", "text": "Echo: hi"}]
    assert data["stop_reason"] == "end_turn" and data["usage"]["output_tokens"] > 0


async def test_stream_events_in_order(mock: TestClient) -> None:  # type: ignore[type-arg]
    raw = (await (await mock.post("/v1/messages", json={**BODY, "stream": True})).read()).decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in raw.split("\n\n") if block]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events


async def test_fault_by_path(mock: TestClient) -> None:  # type: ignore[type-arg]
    assert (await mock.post("/f/status=529/v1/messages", json=BODY)).status == 529
