"""Prometheus metrics: OpenTelemetry GenAI semantic-convention names plus Warden's own.

One registry per app (tests build several apps per process, and a registry is the unit
Prometheus scrapes). ``record(ctx)`` runs once per proxied request, after every
policy's ``on_done`` and after the reply left. Other modules register their own series
on ``registry``: breaker states, upstream attempts and failovers
(``upstream/collector.py``, read at scrape time), limit refusals, budget levels and
store health (``admission.py``), policy reloads (``reload.py``), PII and injection
detections (their policies).

GenAI names follow the conventions' Prometheus translation (dots to underscores, unit
suffix): ``gen_ai_client_token_usage``, ``gen_ai_client_operation_duration_seconds``,
``gen_ai_server_time_to_first_token_seconds`` and
``gen_ai_client_operation_time_per_output_chunk_seconds``, with the conventions'
explicit bucket boundaries. They are recorded for requests that reached a provider;
``warden_requests_total`` counts every request.

Labels are bounded by construction. tenant, model, provider and deployment come from
the policy files (a model name the tenant does not route is ``-``, never the string the
client sent); everything else that could vary (reason codes, error types, response
models, policy decisions) goes through ``Bounded``, which admits a fixed number of
distinct values and folds the rest into ``other``. Keys, users, agent names,
conversations and text never become labels: they are in the access log.

Several worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory shared
by the workers *before* they start; each writes its own files and ``/metrics`` on any of
them aggregates all (``prometheus_client`` multiprocess mode); scrape-time collectors
report the worker that answered.

The per-request cost is kept to a few microseconds: label children are looked up once
per label tuple and cached, and the per-chunk gaps of a stream are folded into the
histogram in one pass at the end instead of one locked observe per chunk.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prom_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from proxy.accesslog import AccessLog
from proxy.context import RequestContext, Usage
from proxy.prices import NANO_PER_USD, PriceBook
from proxy.semconv import (
    CHUNK_BUCKETS,
    DECISION_LIMIT,
    DURATION_BUCKETS,
    NONE,
    OTHER,
    OVERHEAD_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    Bounded,
    clean,
    observe_many,
    provider_name,
)

if TYPE_CHECKING:
    from proxy.tenants import Deployment
    from proxy.tracing import Tracer

def outcome(ctx: RequestContext) -> str:
    if ctx.client_disconnected:
        return "client_disconnected"
    if 200 <= ctx.status < 300:
        return "error" if ctx.error_type else "ok"
    return "refused" if 400 <= ctx.status < 500 else "error"


class _GenAI:
    """Cached children of the GenAI histograms for one attribute set."""

    __slots__ = ("chunk", "duration", "errors", "input", "labels", "m", "output", "ttft")

    def __init__(self, m: Metrics, labels: tuple[str, ...]) -> None:
        self.m = m
        self.labels = labels
        self.duration = m.duration.labels(*labels, "")
        self.input = m.token_usage.labels(*labels, "input")
        self.output = m.token_usage.labels(*labels, "output")
        self.ttft = m.ttft.labels(*labels)
        self.chunk = m.time_per_chunk.labels(*labels)
        self.errors: dict[str, Any] = {}

    def error(self, error_type: str) -> Any:
        child = self.errors.get(error_type)
        if child is None:
            child = self.errors[error_type] = self.m.duration.labels(*self.labels, error_type)
        return child


class _Warden:
    """Cached children of Warden's per-(tenant, model) series."""

    __slots__ = ("cost", "est_input", "est_output", "labels", "m", "requests", "unpriced")

    def __init__(self, m: Metrics, tenant: str, model: str) -> None:
        self.m = m
        self.labels = (tenant, model)
        self.cost = m.cost.labels(tenant, model)
        self.unpriced = m.unpriced.labels(tenant, model)
        self.est_input = m.estimated_tokens.labels(tenant, model, "input")
        self.est_output = m.estimated_tokens.labels(tenant, model, "output")
        self.requests: dict[str, Any] = {}

    def request(self, result: str) -> Any:
        child = self.requests.get(result)
        if child is None:
            child = self.requests[result] = self.m.requests.labels(*self.labels, result)
        return child


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, access_log_enabled: bool = True, enabled: bool = True,
                 prices: PriceBook | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.enabled = enabled
        self.access = AccessLog() if access_log_enabled else None
        self.tracer: Tracer | None = None  # set by tracing_ctx when WARDEN_OTLP_ENDPOINT is
        # The budget policy's price book (Services.shared("prices")): one price per model.
        self.prices = prices if prices is not None else PriceBook.bundled()
        self._priced: dict[tuple[str, str, float | None, float | None], bool] = {}
        # Decided by prometheus_client when it was imported (PROMETHEUS_MULTIPROC_DIR).
        self.multiprocess = bool(getattr(prom_values.ValueClass, "_multiprocess", False))
        self._reasons = Bounded(128)
        self._errors = Bounded(128)
        self._response_models = Bounded(64)
        self._decisions: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self._decision_children: dict[tuple[str, str, str, str], Any] = {}
        self._genai: dict[tuple[str, ...], _GenAI] = {}
        self._warden: dict[tuple[str, str], _Warden] = {}
        self._overhead: dict[str, Any] = {}
        self._define()

    def _define(self) -> None:
        r = self.registry
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                 "gen_ai_response_model", "tenant"]
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens used per GenAI operation, by token type "
            "(estimated counts included; see warden_estimated_tokens_total).",
            [*genai, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r)
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "GenAI operation duration as the "
            "agent sees it (whole stream included); error_type set on failures.",
            [*genai, "error_type"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Streams: from request arrival "
            "to the first chunk written to the agent.",
            genai, buckets=TTFT_BUCKETS, registry=r)
        self.time_per_chunk = Histogram(
            "gen_ai_client_operation_time_per_output_chunk_seconds", "Streams: gap between "
            "consecutive upstream chunks, each chunk after the first.",
            genai, buckets=CHUNK_BUCKETS, registry=r)
        self.requests = Counter(
            "warden_requests", "Proxied requests by tenant, model and outcome "
            "(ok, refused, error, client_disconnected).",
            ["tenant", "model", "outcome"], registry=r)
        self.cost = Counter(
            "warden_cost_usd", "Spend in USD (provider usage x price).",
            ["tenant", "model"], registry=r)
        self.unpriced = Counter(
            "warden_unpriced_requests", "Requests with usage but no known price "
            "(set input_cost_per_token/output_cost_per_token on the deployment).",
            ["tenant", "model"], registry=r)
        self.estimated_tokens = Counter(
            "warden_estimated_tokens", "Tokens counted by Warden's tokenizer because the "
            "provider reported no usage.",
            ["tenant", "model", "gen_ai_token_type"], registry=r)
        self.decisions = Counter(
            "warden_policy_decisions", "Policy decisions by policy, action and reason code.",
            ["tenant", "policy", "action", "reason"], registry=r)
        self.overhead = Histogram(
            "warden_proxy_overhead_seconds", "Time spent in Warden per request, waiting "
            "on the provider excluded.",
            ["operation"], buckets=OVERHEAD_BUCKETS, registry=r)

    def log_to(self, stream: TextIO) -> None:
        """Write the access log straight to ``stream`` (``warden serve``: stdout)."""
        if self.access is not None:
            self.access.flush()
            self.access = AccessLog(stream=stream)

    def flush(self) -> None:
        """Write access-log lines still queued (at shutdown)."""
        if self.access is not None:
            self.access.flush()

    # ---- per request ----------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Called once per proxied request, after every policy's on_done."""
        if not self.enabled:
            if self.access is not None:
                self.access.write(ctx, outcome(ctx), ctx.elapsed(), ctx.overhead())
            if self.tracer is not None:
                result = outcome(ctx)
                self.tracer.record(ctx, result, None if result == "ok" else
                                   _error_type(ctx, result))
            return
        elapsed = ctx.elapsed()
        overhead = max(0.0, elapsed - ctx.upstream_s)
        result = outcome(ctx)
        tenant = ctx.tenant_name
        model = ctx.model if ctx.deployments else NONE  # unrouted names are free text
        key = (tenant, model)
        w = self._warden.get(key)
        if w is None:
            w = self._warden[key] = _Warden(self, tenant, model)
        w.request(result).inc()
        child = self._overhead.get(ctx.operation)
        if child is None:
            child = self._overhead[ctx.operation] = self.overhead.labels(ctx.operation)
        child.observe(overhead)

        usage = ctx.usage
        if usage is not None and ctx.deployment is not None:
            if ctx.cost_usd is None:
                ctx.cost_usd = self._cost(ctx.deployment, usage)
            if ctx.cost_usd is None:
                w.unpriced.inc()
            elif ctx.cost_usd:
                w.cost.inc(ctx.cost_usd)
            if usage.estimated:
                w.est_input.inc(usage.prompt_tokens)
                w.est_output.inc(usage.completion_tokens)
        if ctx.attempts:
            self._record_genai(ctx, model, result, elapsed)
        if ctx.decisions:
            for d in ctx.decisions:
                self._decision(tenant, d.policy, d.action, d.reason).inc()
        if self.access is not None:
            self.access.write(ctx, result, elapsed, overhead)
        if self.tracer is not None:
            self.tracer.record(ctx, result, None if result == "ok" else
                               _error_type(ctx, result))

    def _record_genai(self, ctx: RequestContext, model: str, result: str,
                      elapsed: float) -> None:
        deployment = ctx.deployment or _attempted(ctx)
        provider = provider_name(deployment.provider) if deployment is not None else NONE
        labels = (ctx.operation, provider, model, self._response_models(ctx.response_model),
                  ctx.tenant_name)
        g = self._genai.get(labels)
        if g is None:
            g = self._genai[labels] = _GenAI(self, labels)
        if result == "ok":
            g.duration.observe(elapsed)
        else:
            g.error(self._errors(_error_type(ctx, result))).observe(elapsed)
        usage = ctx.usage
        if usage is not None:
            g.input.observe(usage.prompt_tokens)
            if ctx.operation == "chat":
                g.output.observe(usage.completion_tokens)
        if ctx.first_token_s is not None:
            g.ttft.observe(ctx.first_token_s)
        if ctx.chunk_gaps:
            observe_many(g.chunk, ctx.chunk_gaps)

    def _cost(self, deployment: Deployment, usage: Usage) -> float | None:
        """USD, from the same price book the budget policy charges with; ``None`` when
        nobody knows the deployment's price (the budget counts it as free)."""
        key = (deployment.provider, deployment.model, deployment.input_cost_per_token,
               deployment.output_cost_per_token)
        known = self._priced.get(key)
        if known is None:
            known = self._priced[key] = self.prices.known(deployment)
        if not known:
            return None
        nano = self.prices.price(deployment).cost_nano(usage.prompt_tokens,
                                                         usage.completion_tokens)
        return nano / NANO_PER_USD

    def _decision(self, tenant: str, policy: str, action: str, reason: str) -> Any:
        """The counter child of one decision; at most DECISION_LIMIT distinct
        (policy, action, reason) triples, the rest count as other/other/other."""
        key = (tenant, policy, action, reason)
        child = self._decision_children.get(key)
        if child is not None:
            return child
        triple = (policy, action, reason)
        labels = self._decisions.get(triple)
        if labels is None:
            if len(self._decisions) >= DECISION_LIMIT:
                return self.decisions.labels(tenant, OTHER, OTHER, OTHER)
            labels = self._decisions[triple] = (clean(policy), clean(action), clean(reason))
        child = self.decisions.labels(tenant, *labels)
        if len(self._decision_children) < 16 * DECISION_LIMIT:  # tenants x triples
            self._decision_children[key] = child
        return child

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        # Metric objects write to the shared files (every worker's values, summed);
        # scrape-time collectors (the failover module's) report this worker only.
        registry = CollectorRegistry()
        MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        for collector in list(self.registry._collector_to_names):
            if not isinstance(collector, MetricWrapperBase):
                registry.register(collector)
        return generate_latest(registry)

    def series_count(self) -> int:
        """Distinct label sets across Warden's metrics (for cardinality tests)."""
        total = 0
        for metric in self._all():
            total += len(metric._metrics)
        return total

    def _all(self) -> list[MetricWrapperBase]:
        return [self.token_usage, self.duration, self.ttft, self.time_per_chunk,
                self.requests, self.cost, self.unpriced, self.estimated_tokens,
                self.decisions, self.overhead]


def _error_type(ctx: RequestContext, result: str) -> str:
    """What went wrong, as a code: when every attempt failed, the last attempt's reason
    (``status_500``, ``connect_error``, ``timeout``) says more than "upstream_error"."""
    error = ctx.error_type or result
    if error in ("upstream_error", "upstream_timeout") and ctx.attempts \
            and ctx.attempts[-1].reason != "ok":
        return ctx.attempts[-1].reason
    return error


def _attempted(ctx: RequestContext) -> Any:
    """The deployment of the last attempt (for failed requests), by label."""
    last = ctx.attempts[-1].deployment
    for d in ctx.deployments:
        if d.label == last:
            return d
    return ctx.deployments[0] if ctx.deployments else None

