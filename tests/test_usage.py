"""Estimated usage: completion text from raw stream events and plain replies, the
bounded stream tap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proxy import sse
from proxy.context import RequestContext, Usage
from proxy.tenants import Tenant, TenantConfig
from proxy.tokens import TokenCounter
from proxy.usage import (
    TAP_LIMIT,
    StreamTap,
    completion_text,
    completion_text_of_events,
    estimate_reply,
    estimate_stream,
    prepare,
    read_events,
)


def event(delta: dict[str, Any], model: str = "m-1") -> bytes:
    return sse.encode({"object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": delta}]})


def ctx_for(operation: str = "chat", **body: Any) -> RequestContext:
    cfg = TenantConfig.model_validate({"tenant": "t", "keys": ["vk-12345678"], "models": {
        "m": [{"provider": "openai", "model": "gpt-4o-mini"}]}})
    tenant = Tenant(config=cfg, policies=(), source=Path("t.yaml"))
    d = cfg.models["m"].deployments[0]
    return RequestContext(request_id="r", operation=operation,  # type: ignore[arg-type]
                          tenant=tenant, model="m", deployments=(d,), deployment=d, body=body)


def test_text_of_events_content_tool_calls_and_junk() -> None:
    events = [
        event({"role": "assistant", "content": ""}),
        event({"content": "Hel"}), event({"content": "lo"}),
        b": keep-alive\n\n", b"data: {not json\n\n",
        event({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{\"a\""}}]}),
        event({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        sse.encode_done(),
    ]
    assert completion_text_of_events(events) == 'Hellof{"a": 1}'
    assert read_events(events)[1] == "m-1"


def test_text_of_a_plain_reply() -> None:
    payload = {"choices": [{"message": {"content": "Hi", "refusal": None}},
                           {"message": {"content": None, "tool_calls": [
                               {"function": {"name": "g", "arguments": "{}"}}]}}]}
    assert completion_text(payload) == "Hig{}"


def test_tap_is_bounded_and_counts_what_it_dropped() -> None:
    tap = StreamTap()
    big = event({"content": "x" * 1000})
    n = TAP_LIMIT // len(big) + 50
    for _ in range(n):
        tap.add(big)
    assert tap.kept >= TAP_LIMIT and tap.kept < TAP_LIMIT + len(big)
    assert len(tap.events) + tap.overflow == n and tap.overflow > 0


async def test_estimate_stream_only_when_the_provider_sent_none() -> None:
    counter = TokenCounter()
    await counter.prepare("o200k_base")  # gpt-4o-mini's
    messages = [{"role": "user", "content": "count me"}]
    ctx = ctx_for(messages=messages)
    tap = StreamTap()
    for piece in ("Echo: ", "count ", "me"):
        tap.add(event({"content": piece}, model="gpt-4o-mini-2024"))
    estimate_stream(ctx, counter, tap)
    assert ctx.usage == Usage(counter.chat_prompt("o200k_base", {"messages": messages}),
                              counter.count("o200k_base", "Echo: count me"), estimated=True)
    assert ctx.response_model == "gpt-4o-mini-2024"
    reported = ctx_for(messages=messages)
    reported.usage = Usage(5, 6)
    estimate_stream(reported, counter, tap)
    assert reported.usage == Usage(5, 6)
    # A stream that never reached a provider gets nothing invented.
    unanswered = ctx_for(messages=messages)
    unanswered.deployment = None
    estimate_stream(unanswered, counter, tap)
    assert unanswered.usage is None


async def test_estimate_reply_embeddings_and_chat() -> None:
    counter = TokenCounter()
    emb = ctx_for("embeddings", input=["alpha beta", "gamma"])
    await prepare(emb, counter)
    estimate_reply(emb, counter, {"data": []})
    assert emb.usage == Usage(counter.embeddings_input("o200k_base", ["alpha beta", "gamma"]),
                              0, estimated=True)
    chat = ctx_for(messages=[{"role": "user", "content": "q"}])
    reply = json.loads('{"choices": [{"message": {"content": "an answer"}}]}')
    estimate_reply(chat, counter, reply)
    assert chat.usage is not None and chat.usage.estimated
    assert chat.usage.completion_tokens == counter.count("o200k_base", "an answer")
    # Counted with tiktoken, not the bytes fallback: o200k_base makes 2 tokens of it.
    assert chat.usage.completion_tokens == 2
