"""The structured access log: one JSON line per proxied request on ``warden.access``.

What a line holds: request id, tenant, operation, model, stream, status, outcome and
error type, the provider and deployment that answered, every attempt as
``[deployment, status, reason, ms]``, tokens in/out and whether they were estimated,
cost in USD, latency, time to first token, Warden's overhead, policy decisions as
``[policy, action, reason]`` (compact arrays: cheaper to write, easy to query), flags, the
AutoGen identity the client sent (``X-Warden-Agent`` -> ``agent``,
``X-Warden-Conversation`` -> ``conversation``; truncated to 128 characters).

No prompt or completion text, unless the tenant's policy file says
``log_prompts: true``; then ``prompt`` is the messages (or embeddings input) *as
forwarded to the provider* and ``completion`` the text the provider returned, before
any restoration: with PII redaction on, the log holds placeholders, not the values.

``warden serve`` writes the lines to stdout directly (see ``AccessLog``); embedded, they
go to the ``warden.access`` logger, whose handlers decide where (a logger that is not
enabled for INFO costs one check per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, TextIO

import orjson

from proxy.context import RequestContext

LOGGER = "warden.access"
FLUSH_S = 0.1  # seconds a line may wait in the queue
BATCH = 64  # lines queued before a write is forced
SLICE = 16  # lines built and written per loop turn
_stdlib_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _encode(record: dict[str, Any]) -> str:
    """One compact JSON line. orjson writes the same form several times faster; what it
    refuses (a lone surrogate in a logged prompt, an integer beyond 64 bits) goes
    through the stdlib encoder."""
    try:
        return orjson.dumps(record, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _stdlib_encode(record)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


Pending = tuple[RequestContext, str, float, float, float]


class AccessLog:
    """Writes lines to a text stream (``warden serve``: stdout) or, when given none, to
    the ``warden.access`` logger (embedding, tests with ``caplog``), right away.

    The stream path keeps the request path to one list append: the finished context is
    queued, and lines are built, encoded (~4.5 µs each here) and written ``FLUSH_S``
    later, or on the next loop turn once ``BATCH`` are waiting, at most ``SLICE`` per
    loop turn. A burst costs a few writes instead of one logging call (~20 µs more: record
    object, caller lookup, lock, a flush syscall) per line, and a request arriving during
    a flush waits for one slice (~70 µs), not for the whole batch (64 lines held the loop
    ~0.3 ms: the C=1 p99). Building each line on its own request's turn instead cost every
    request those microseconds at p50. The price of batching: a process killed with
    SIGKILL loses at most the last ``FLUSH_S`` of lines (``flush()`` at shutdown writes
    the rest).
    """

    __slots__ = ("_log", "_pending", "_stream")

    def __init__(self, logger: logging.Logger | None = None,
                 stream: TextIO | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER)
        self._stream = stream
        self._pending: list[Pending] = []

    def write(self, ctx: RequestContext, outcome: str, elapsed: float, overhead: float) -> None:
        if self._stream is None:
            if self._log.isEnabledFor(logging.INFO):
                record = line(ctx, outcome, elapsed, overhead, time.time())
                self._log.info(_encode(record))
            return
        # The context is finished (every hook ran): safe to read later.
        self._pending.append((ctx, outcome, elapsed, overhead, time.time()))
        waiting = len(self._pending)
        if waiting == 1:
            self._schedule(FLUSH_S)
        elif waiting == BATCH:
            self._schedule(0.0)  # soon, but after this reply left

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script): write now
            self.flush()
            return
        if delay:
            loop.call_later(delay, self._drain)
        else:
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Write one slice of the queue; the rest on the next loop turn. (A drain that
        finds the queue empty, an earlier one having written it, does nothing.)"""
        part, self._pending = self._pending[:SLICE], self._pending[SLICE:]
        self._emit(part)
        if self._pending:
            self._schedule(0.0)

    def flush(self) -> None:
        """Write every queued line now (shutdown)."""
        part, self._pending = self._pending, []
        self._emit(part)

    def _emit(self, part: list[Pending]) -> None:
        if self._stream is None or not part:
            return
        text = "".join(_encode(line(*p)) + "\n" for p in part)
        with contextlib.suppress(OSError, ValueError):  # stdout gone: never fail a request
            self._stream.write(text)
            self._stream.flush()


def line(ctx: RequestContext, outcome: str, elapsed: float, overhead: float,
         ts: float) -> dict[str, Any]:
    """The access-log record of one request (a dict, JSON-encoded by the caller)."""
    usage = ctx.usage
    deployment = ctx.deployment
    record: dict[str, Any] = {
        "ts": round(ts, 3),
        "request_id": ctx.request_id,
        "tenant": ctx.tenant.name if ctx.tenant is not None else None,
        "operation": ctx.operation,
        "model": ctx.model[:128] or None,
        "stream": ctx.stream,
        "status": ctx.status,
        "outcome": outcome,
        "error_type": ctx.error_type,
        "provider": deployment.provider if deployment is not None else None,
        "deployment": deployment.label if deployment is not None else None,
        "response_model": ctx.response_model,
        "attempts": [[a.deployment, a.status, a.reason, _ms(a.duration_s)]
                     for a in ctx.attempts],
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "completion_tokens": usage.completion_tokens if usage is not None else None,
        "tokens_estimated": usage.estimated if usage is not None else None,
        "cost_usd": ctx.cost_usd,
        "latency_ms": _ms(elapsed),
        "ttft_ms": _ms(ctx.first_token_s),
        "overhead_ms": _ms(overhead),
        "chunks": ctx.chunks if ctx.stream else None,
        "decisions": [[d.policy, d.action, d.reason] for d in ctx.decisions],
        "flags": ctx.flags or None,
        "agent": ctx.client_headers.get("x-warden-agent"),
        "conversation": ctx.client_headers.get("x-warden-conversation"),
    }
    if ctx.client_disconnected:
        record["client_disconnected"] = True
    if ctx.tenant is not None and ctx.tenant.config.log_prompts:
        body = ctx.body
        record["prompt"] = body.get("messages") if ctx.operation == "chat" else body.get("input")
        record["completion"] = ctx.completion_text
    return record
