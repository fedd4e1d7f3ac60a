"""Failover state for Prometheus, read at scrape time (nothing on the request path).

Registered on the app's registry by ``app.py``; the counters are plain ints that
``Upstream`` keeps, so an attempt costs a dict increment, not a labelled metric call.

- ``warden_upstream_breaker_state{deployment}``: 0 closed, 1 half-open, 2 open
- ``warden_upstream_attempts_total{deployment,reason}``: every attempt; ``ok``, a
  failure reason, or ``breaker_open`` for a deployment skipped by its breaker
- ``warden_upstream_failovers_total{deployment,reason}``: failed attempts after which
  Warden tried again (the next deployment, or the same one after back-off)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from proxy.upstream.failover import Upstream


class UpstreamCollector(Collector):
    """One per registry (``Services.shared``); the apps built around it attach their
    ``Upstream`` while they run (tests build several apps around one Services)."""

    def __init__(self) -> None:
        self.upstreams: list[Upstream] = []

    @classmethod
    def registered(cls, registry: CollectorRegistry) -> UpstreamCollector:
        collector = cls()
        registry.register(collector)
        return collector

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "warden_upstream_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"])
        worst: dict[str, int] = {}  # two credentials may share a label: report the worse
        attempt_counts: Counter[tuple[str, str]] = Counter()
        failover_counts: Counter[tuple[str, str]] = Counter()
        for up in self.upstreams:
            for breaker in up.breakers.all():
                worst[breaker.label] = max(worst.get(breaker.label, 0), int(breaker.state))
            attempt_counts.update(up.attempt_counts)
            failover_counts.update(up.failover_counts)
        for label, value in sorted(worst.items()):
            state.add_metric([label], float(value))
        yield state
        attempts = CounterMetricFamily(
            "warden_upstream_attempts", "Upstream attempts by deployment and outcome reason.",
            labels=["deployment", "reason"])
        for (label, reason), n in sorted(attempt_counts.items()):
            attempts.add_metric([label, reason], n)
        yield attempts
        failovers = CounterMetricFamily(
            "warden_upstream_failovers",
            "Failed attempts followed by another attempt, by deployment and reason.",
            labels=["deployment", "reason"])
        for (label, reason), n in sorted(failover_counts.items()):
            failovers.add_metric([label, reason], n)
        yield failovers
