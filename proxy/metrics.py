"""Prometheus metrics and the access log. One registry per app (tests build several
apps per process, and a registry is the unit Prometheus scrapes)."""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proxy.context import RequestContext

access_log = logging.getLogger("warden.access")

_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def outcome(ctx: RequestContext) -> str:
    if ctx.client_disconnected:
        return "client_disconnected"
    if 200 <= ctx.status < 300:
        return "error" if ctx.error_type else "ok"
    return "refused" if 400 <= ctx.status < 500 else "error"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, access_log_enabled: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.access_log_enabled = access_log_enabled
        self.requests = Counter(
            "warden_requests", "Proxied requests by tenant, model and outcome.",
            ["tenant", "model", "outcome"], registry=self.registry,
        )
        self.overhead = Histogram(
            "warden_proxy_overhead_seconds", "Time spent in Warden, upstream excluded.",
            ["operation"], buckets=_OVERHEAD_BUCKETS, registry=self.registry,
        )

    def record(self, ctx: RequestContext) -> None:
        """Called once per proxied request, after every policy's on_done."""
        model = ctx.model if ctx.deployments else "-"  # unrouted names are free text
        result = outcome(ctx)
        self.requests.labels(ctx.tenant_name, model, result).inc()
        elapsed = ctx.elapsed()
        overhead = max(0.0, elapsed - ctx.upstream_s)
        self.overhead.labels(ctx.operation).observe(overhead)
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "request_id": ctx.request_id,
                "tenant": ctx.tenant_name, "model": ctx.model or None,
                "operation": ctx.operation, "stream": ctx.stream, "status": ctx.status,
                "outcome": result, "error_type": ctx.error_type,
                "deployment": ctx.deployment.label if ctx.deployment else None,
                "attempts": [[a.deployment, a.status, a.reason] for a in ctx.attempts],
                "prompt_tokens": ctx.usage.prompt_tokens if ctx.usage else None,
                "completion_tokens": ctx.usage.completion_tokens if ctx.usage else None,
                "latency_ms": round(elapsed * 1000, 3),
                "overhead_ms": round(overhead * 1000, 3),
                "ttft_ms": round(ctx.first_token_s * 1000, 3) if ctx.first_token_s else None,
                "decisions": [[d.policy, d.action, d.reason] for d in ctx.decisions],
                "flags": ctx.flags or None,
                **{k.removeprefix("x-warden-"): v for k, v in ctx.client_headers.items()},
            }, separators=(",", ":")))

    def render(self) -> bytes:
        return generate_latest(self.registry)
