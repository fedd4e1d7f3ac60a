"""Onion order, on_done only for policies that entered, chunk hooks and flushes."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.context import RequestContext
from proxy.errors import ContentFiltered
from proxy.pipeline import Chain, Chunk, Policy


class Recorder(Policy):
    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.label, self.log, self.refuse = name, log, refuse

    async def on_request(self, ctx: RequestContext) -> None:
        self.log.append(f"req:{self.label}")
        if self.refuse:
            raise ContentFiltered(f"{self.label} says no")

    async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        self.log.append(f"resp:{self.label}")
        body.setdefault("seen", []).append(self.label)

    async def on_done(self, ctx: RequestContext) -> None:
        self.log.append(f"done:{self.label}")


def ctx() -> RequestContext:
    return RequestContext(request_id="r1", operation="chat")


async def test_request_in_order_response_and_done_in_reverse() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log), Recorder("c", log)])
    c = ctx()
    await chain.request(c)
    body: dict[str, Any] = {}
    await chain.response(c, body)
    await chain.done(c)
    assert log == ["req:a", "req:b", "req:c", "resp:c", "resp:b", "resp:a",
                   "done:c", "done:b", "done:a"]
    assert body["seen"] == ["c", "b", "a"]
    assert chain.responds and not chain.streams


async def test_refusal_stops_the_chain_and_only_entered_policies_clean_up() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, refuse=True), Recorder("c", log)])
    c = ctx()
    with pytest.raises(ContentFiltered, match="b says no"):
        await chain.request(c)
    await chain.done(c)
    # b's request hook was called (and raised), so b may release what it half-took.
    assert log == ["req:a", "req:b", "done:b", "done:a"]


async def test_done_runs_every_cleanup_even_if_one_fails() -> None:
    log: list[str] = []

    class Broken(Recorder):
        async def on_done(self, ctx: RequestContext) -> None:
            raise RuntimeError("cleanup bug")

    chain = Chain([Recorder("a", log), Broken("b", log)])
    c = ctx()
    await chain.request(c)
    await chain.done(c)
    assert log[-1] == "done:a"


class HoldBack(Policy):
    """Holds every chunk until the stream ends (like a strict output contract)."""

    def __init__(self) -> None:
        self.held: list[Chunk] = []

    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        self.held.append(chunk)
        return []

    async def on_stream_end(self, ctx: RequestContext) -> list[Chunk]:
        return self.held


class Upper(Policy):
    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        return [{**chunk, "text": chunk["text"].upper()}]


async def test_flushed_chunks_pass_outer_chunk_hooks() -> None:
    # Chain order [Upper, HoldBack]: chunks reach HoldBack first (reverse order).
    chain = Chain([Upper(), HoldBack()])
    c = ctx()
    await chain.request(c)
    assert chain.streams
    assert chain.chunk(c, {"text": "a"}) == []
    assert chain.chunk(c, {"text": "b"}) == []
    assert await chain.stream_end(c) == [{"text": "A"}, {"text": "B"}]


async def test_no_hooks_means_raw_relay() -> None:
    chain = Chain([Recorder("a", [])])
    assert not chain.streams
    chain.extend([Upper()])
    assert chain.streams
