"""bench/report.py: figures from load results, targets checked against the right column."""

from __future__ import annotations

import math

from bench import report
from bench.report import PLAIN_C1, PLAIN_C32, STREAM_C1, Measured
from bench.scenarios import Target


def _measured(label: str, kind: str, p50: float, rps32: float, ttft: float = 0.5,
              chunk: float = 10.0, workload: str = "one-turn") -> Measured:
    m = Measured(label, kind, workload, ready_s=0.4, idle_rss=50 * 2**20, loaded_rss=60 * 2**20)
    for rnd in range(3):
        jitter = (rnd - 1) * 0.01  # medians must ignore it
        m.add(PLAIN_C1, {"rps": 1000.0 + jitter, "latency_ms": {"p50": p50 + jitter,
                                                               "p99": 2 * p50},
                         "server_cpu_us": 100.0, "errors": 0})
        m.add(PLAIN_C32, {"rps": rps32, "latency_ms": {"p50": 1.0, "p99": 2.0},
                          "server_cpu_us": 80.0, "errors": 0, "client_cpu": 0.3})
        m.add(STREAM_C1, {"rps": 500.0, "ttft_ms": {"p50": ttft}, "events_per_reply": 21.0,
                          "per_chunk_us": {"mean": chunk}, "server_cpu_us": 310.0,
                          "errors": 1 if rnd == 0 else 0})
    return m


def test_medians_and_derived_metrics() -> None:
    direct = _measured("direct", "baseline", p50=0.1, rps32=10_000, ttft=0.2, chunk=5)
    warden = _measured("warden", "warden", p50=0.35, rps32=4_000, ttft=0.9, chunk=30)
    assert warden.p50_ms == 0.35
    assert math.isclose(report.metric("added_p50_ms", warden, direct), 0.25)
    assert math.isclose(report.metric("added_p99_ms", warden, direct), 0.5)
    assert report.metric("rps32_ratio", warden, direct) == 0.4
    assert math.isclose(report.metric("added_ttft_ms", warden, direct), 0.7)
    assert math.isclose(report.metric("added_chunk_us", warden, direct), 25)
    assert report.metric("idle_rss_mb", warden, None) == 50
    assert math.isclose(report.metric("cpu_chunk_us", warden, None), 10)  # (310-100)/21
    assert warden.errors == 1


def test_relative_metric_without_reference_is_nan() -> None:
    warden = _measured("warden", "warden", p50=0.35, rps32=4_000)
    assert math.isnan(report.metric("added_p50_ms", warden, None))
    broken = _measured("direct", "baseline", p50=0.1, rps32=1)
    broken.error = "did not start"
    assert math.isnan(report.metric("added_p50_ms", warden, broken))


def test_checks_use_the_named_reference_of_the_same_workload() -> None:
    cols = [
        _measured("direct", "baseline", p50=0.1, rps32=10_000),
        _measured("direct", "baseline", p50=5.0, rps32=10_000, workload="20-turn"),
        _measured("warden", "warden", p50=0.45, rps32=6_000),
        _measured("chain", "warden", p50=0.50, rps32=5_000, workload="20-turn"),
    ]
    targets = {
        "warden": (Target("added_p50_ms", max=0.3), Target("rps32_ratio", min=0.5)),
        # Against direct of its own (20-turn) workload, and against another scenario.
        "chain": (Target("added_p50_ms", max=1.0), Target("added_p50_ms", max=0.01, vs="warden"),
                  Target("ready_s", max=2), Target("added_p50_ms", max=1, vs="absent")),
    }
    found = {(c.scenario, c.target.metric, c.target.vs): c for c in report.checks(cols, targets)}
    assert found[("warden", "added_p50_ms", "direct")].ok is False
    assert found[("warden", "rps32_ratio", "direct")].ok is True
    assert math.isclose(found[("chain", "added_p50_ms", "direct")].value, -4.5)
    assert math.isclose(found[("chain", "added_p50_ms", "warden")].value, 0.05)
    assert found[("chain", "added_p50_ms", "warden")].ok is False
    assert found[("chain", "ready_s", "direct")].ok is True
    assert found[("chain", "added_p50_ms", "absent")].ok is None
    text = report.checks_table(list(found.values()))
    assert "**NO**" in text and "n/a" in text


def test_table_shows_every_column_and_failures() -> None:
    direct = _measured("direct", "baseline", p50=0.1, rps32=10_000)
    litellm = _measured("litellm", "baseline", p50=14, rps32=100)
    warden = _measured("warden", "warden", p50=0.35, rps32=4_000)
    broken = _measured("pii", "warden", p50=1, rps32=1)
    broken.error = "exited with 1"
    text = report.table([direct, litellm, warden, broken])
    lines = text.splitlines()
    assert lines[0] == "| | direct to mock | LiteLLM Proxy | Warden: warden | Warden: pii |"
    ratio_row = next(line for line in lines if line.startswith("| throughput ÷ LiteLLM"))
    assert "| 1.0 / 40.0 |" in ratio_row  # same rps at C=1; 4,000 / 100 at C=32
    assert all(line.endswith("| failed |") for line in lines[2:])
    assert "pii** failed: exited with 1" in report.failures([warden, broken])
