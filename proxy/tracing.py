"""OpenTelemetry traces over OTLP/HTTP (JSON), when ``WARDEN_OTLP_ENDPOINT`` is set.

One SERVER span per proxied request and one CLIENT span per upstream attempt, with the
GenAI semantic-convention attributes. Spans are built after the request from the
``RequestContext`` (nothing on the request path but one timestamp per attempt), queued,
and POSTed in batches to ``<endpoint>/v1/traces`` as OTLP's JSON encoding, with the
aiohttp client Warden already has: no OpenTelemetry SDK, no protobuf (the SDK's OTLP
exporter needs a protobuf that conflicts with autogen-core's pin).

An incoming W3C ``traceparent`` makes Warden's span a child of the agent's, so an
instrumented agent sees its model calls in its own trace. Unlike metric labels, trace
attributes may carry the agent and conversation names (``gen_ai.agent.name``,
``gen_ai.conversation.id``); never prompts or completions.

Export is best effort: a collector that is down costs a warning a minute, and spans
beyond ``MAX_QUEUE`` are dropped (counted in the warning), never memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from proxy import jsonbody
from proxy.appkeys import SERVICES, SETTINGS
from proxy.context import RequestContext
from proxy.semconv import PROVIDER_NAMES

log = logging.getLogger("warden.tracing")

FLUSH_S = 1.0
BATCH = 512
MAX_QUEUE = 8192
SERVER, CLIENT = 2, 3  # OTLP SpanKind
STATUS_ERROR = 2
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [
            {"stringValue": str(v)} for v in value]}}}
    return {"key": key, "value": {"stringValue": str(value)}}


def _attrs(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    return [_attr(k, v) for k, v in pairs.items() if v is not None]


def _new_id(n: int) -> str:
    return os.urandom(n).hex()


def request_spans(ctx: RequestContext, outcome: str, error_type: str | None,
                  now_ns: int | None = None) -> list[dict[str, Any]]:
    """The spans of one finished request, in OTLP JSON form."""
    now_ns = now_ns or time.time_ns()
    # perf_counter timestamps -> wall clock, anchored at "now".
    offset = now_ns - int(time.perf_counter() * 1e9)
    start = int(ctx.started * 1e9) + offset
    parent = _TRACEPARENT.match(ctx.client_headers.get("traceparent", ""))
    trace_id = parent.group(1) if parent else _new_id(16)
    root_id = _new_id(8)
    d = ctx.deployment
    usage = ctx.usage
    root: dict[str, Any] = {
        "traceId": trace_id, "spanId": root_id,
        "parentSpanId": parent.group(2) if parent else "",
        "name": f"{ctx.operation} {ctx.model if ctx.deployments else 'unrouted'}",
        "kind": SERVER, "startTimeUnixNano": str(start), "endTimeUnixNano": str(now_ns),
        "attributes": _attrs({
            "gen_ai.operation.name": ctx.operation,
            "gen_ai.request.model": ctx.model if ctx.deployments else None,
            "gen_ai.response.model": ctx.response_model,
            "gen_ai.provider.name": PROVIDER_NAMES.get(d.provider, d.provider) if d else None,
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage else None,
            "gen_ai.agent.name": ctx.client_headers.get("x-warden-agent"),
            "gen_ai.conversation.id": ctx.client_headers.get("x-warden-conversation"),
            "gen_ai.response.time_to_first_chunk": ctx.first_token_s,
            "http.response.status_code": ctx.status or None,
            "error.type": error_type,
            "warden.tenant": ctx.tenant.name if ctx.tenant else None,
            "warden.request_id": ctx.request_id,
            "warden.outcome": outcome,
            "warden.stream": ctx.stream,
            "warden.tokens_estimated": usage.estimated if usage else None,
            "warden.cost_usd": ctx.cost_usd,
            "warden.decisions": [f"{x.policy}:{x.action}:{x.reason}" for x in ctx.decisions]
            or None,
        }),
        "status": {"code": STATUS_ERROR} if error_type else {},
    }
    spans = [root]
    by_label = {dep.label: dep for dep in ctx.deployments}
    for a in ctx.attempts:
        dep = by_label.get(a.deployment)
        a_start = int(a.started * 1e9) + offset
        failed = a.reason != "ok"
        spans.append({
            "traceId": trace_id, "spanId": _new_id(8), "parentSpanId": root_id,
            "name": f"{ctx.operation} {dep.model if dep else a.deployment}", "kind": CLIENT,
            "startTimeUnixNano": str(a_start),
            "endTimeUnixNano": str(a_start + int(a.duration_s * 1e9)),
            "attributes": _attrs({
                "gen_ai.operation.name": ctx.operation,
                "gen_ai.request.model": dep.model if dep else None,
                "gen_ai.provider.name":
                    PROVIDER_NAMES.get(dep.provider, dep.provider) if dep else None,
                "warden.deployment": a.deployment,
                "http.response.status_code": a.status,
                "error.type": a.reason if failed else None,
            }),
            "status": {"code": STATUS_ERROR} if failed else {},
        })
    return spans


class Tracer:
    """Queues spans and exports them in batches from a background task."""

    def __init__(self, endpoint: str, service_name: str = "warden") -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self._resource = {"attributes": _attrs({"service.name": service_name})}
        self._queue: list[dict[str, Any]] = []
        self._dropped = 0
        self._wake = asyncio.Event()
        self._warned = 0.0
        self.exported = 0

    def record(self, ctx: RequestContext, outcome: str, error_type: str | None) -> None:
        if len(self._queue) >= MAX_QUEUE:
            self._dropped += 1
            return
        self._queue.extend(request_spans(ctx, outcome, error_type))
        if len(self._queue) >= BATCH:
            self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_S):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush(session)

    async def flush(self, session: aiohttp.ClientSession) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            body = {"resourceSpans": [{"resource": self._resource, "scopeSpans": [
                {"scope": {"name": "warden"}, "spans": batch}]}]}
            try:
                async with session.post(self.url, data=jsonbody.dumps(body),
                                        headers={"Content-Type": "application/json"}) as r:
                    if r.status >= 300:
                        raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
                self.exported += len(batch)
            except (aiohttp.ClientError, TimeoutError) as e:
                self._warn(f"OTLP export to {self.url} failed: {e}; dropped {len(batch)} spans")
                return

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            dropped, self._dropped = self._dropped, 0
            log.warning("%s (%d more dropped on a full queue)", message, dropped)


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: export while the app runs, flush at shutdown."""
    endpoint = app[SETTINGS].otlp_endpoint
    if not endpoint:
        yield
        return
    tracer = Tracer(endpoint)
    metrics = app[SERVICES].metrics
    metrics.tracer = tracer
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    task = asyncio.create_task(tracer.run(session))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await tracer.flush(session)
        metrics.tracer = None
        await session.close()
