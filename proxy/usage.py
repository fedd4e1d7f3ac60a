"""Usage for replies whose provider reported none: counted with a tokenizer
(``tokens.TokenCounter``, shared with the limits and budget policies), marked
``estimated``.

Budgets settle and telemetry reports tokens for every complete reply, so a provider that
sends no ``usage`` (some vLLM/TGI builds) still gets a figure: the prompt as Warden
forwarded it and the completion text that came back. A reply cut short is not estimated
(see ``relay._account``): the budget charges its worst case instead.

Streams stay cheap on the fast path: ``StreamTap`` keeps a *reference* to each raw
upstream event (no parsing, no copy) and is parsed only at the end, and only when no
usage chunk arrived. Past ``TAP_LIMIT`` bytes it stops keeping events and counts one
token per further event (OpenAI-style streams carry about one token per chunk), so a
runaway stream cannot grow memory without bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from proxy import sse
from proxy.context import RequestContext, Usage
from proxy.tokens import TokenCounter, encoding_for

TAP_LIMIT = 1 << 20  # bytes of raw events kept per stream (1 MiB)


class StreamTap:
    """Raw upstream events of one stream, kept until it is known whether usage came."""

    __slots__ = ("events", "kept", "overflow")

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.kept = 0
        self.overflow = 0  # events not kept once TAP_LIMIT was reached

    def add(self, raw: bytes) -> None:
        if self.kept < TAP_LIMIT:
            self.events.append(raw)
            self.kept += len(raw)
        else:
            self.overflow += 1

    def text(self) -> str:
        return read_events(self.events)[0]


def completion_text_of_events(events: Iterable[bytes]) -> str:
    """The generated text of OpenAI-format stream events (content, refusals, tool-call
    names and arguments); events that do not parse are skipped."""
    return read_events(events)[0]


def read_events(events: Iterable[bytes]) -> tuple[str, str | None]:
    """(generated text, the model the provider named) of raw stream events."""
    parts: list[str] = []
    model: str | None = None
    for raw in events:
        data = sse.event_data(raw)
        if not data or data == sse.DONE:
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            if model is None and isinstance(chunk.get("model"), str):
                model = chunk["model"]
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict):
                    _texts(choice.get("delta"), parts)
    return "".join(parts), model


def completion_text(payload: dict[str, Any]) -> str:
    """The generated text of a non-streamed chat completion."""
    parts: list[str] = []
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            _texts(choice.get("message"), parts)
    return "".join(parts)


def _texts(message: Any, out: list[str]) -> None:
    if not isinstance(message, dict):
        return
    for key in ("content", "refusal", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str):
            out.append(value)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))


def encoding(ctx: RequestContext) -> str:
    """The tiktoken encoding for the deployment that answered (or was asked)."""
    return encoding_for(ctx.deployment.model if ctx.deployment is not None else ctx.model)[0]


async def prepare(ctx: RequestContext, counter: TokenCounter) -> None:
    """Load the encoding off the event loop (once per process) before counting."""
    await counter.prepare(encoding(ctx))


def estimate(ctx: RequestContext, counter: TokenCounter, completion: str,
             extra_completion_tokens: int = 0) -> Usage:
    """Usage of ``ctx``'s request as sent upstream plus ``completion``, estimated: the
    best guess (no reservation margin); bytes / 3 if the encoding is not loaded yet."""
    name = encoding(ctx)
    if ctx.operation == "embeddings":
        prompt = counter.embeddings_input(name, ctx.body.get("input"))
    else:
        prompt = counter.chat_prompt(name, ctx.body)
    completion_tokens = counter.count(name, completion) + extra_completion_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, estimated=True)


def estimate_stream(ctx: RequestContext, counter: TokenCounter, tap: StreamTap) -> None:
    """At the end of a complete stream: fill ``ctx.usage`` if the provider sent none."""
    if ctx.usage is None and ctx.deployment is not None and (tap.events or tap.overflow):
        text, model = read_events(tap.events)
        ctx.usage = estimate(ctx, counter, text, tap.overflow)
        ctx.response_model = ctx.response_model or model


def estimate_reply(ctx: RequestContext, counter: TokenCounter, payload: dict[str, Any]) -> None:
    """After a non-streamed 2xx reply without usage."""
    if ctx.usage is None:
        text = completion_text(payload) if ctx.operation == "chat" else ""
        ctx.usage = estimate(ctx, counter, text)
