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

The logger's handlers decide where lines go (``warden serve`` writes them to stdout,
bare); a logger that is not enabled for INFO costs one check per request.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from proxy.context import RequestContext

LOGGER = "warden.access"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


class AccessLog:
    __slots__ = ("_log",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER)

    def write(self, ctx: RequestContext, outcome: str, elapsed: float, overhead: float) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        self._log.info(_encode(line(ctx, outcome, elapsed, overhead)))


def line(ctx: RequestContext, outcome: str, elapsed: float, overhead: float) -> dict[str, Any]:
    """The access-log record of one request (a dict, JSON-encoded by the caller)."""
    usage = ctx.usage
    deployment = ctx.deployment
    record: dict[str, Any] = {
        "ts": round(time.time(), 3),
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
