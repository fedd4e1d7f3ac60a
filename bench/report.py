"""Turning load-generator results into numbers, target checks and markdown.

A ``Measured`` holds everything measured for one column of the table (direct-to-mock,
LiteLLM Proxy, or one Warden scenario) over all rounds; each figure is the median over
rounds, which keeps one noisy round on a shared machine from deciding the result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.scenarios import Target

# The three load shapes measured for every column.
PLAIN_C1, PLAIN_C32, STREAM_C1 = "plain-c1", "plain-c32", "stream-c1"
KINDS = (PLAIN_C1, PLAIN_C32, STREAM_C1)


@dataclass
class Measured:
    label: str  # "direct", "litellm" or a scenario name
    kind: str  # "baseline" or "warden"
    workload: str
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ready_s: float | None = None
    idle_rss: int | None = None
    loaded_rss: int | None = None
    error: str | None = None

    def add(self, shape: str, result: Mapping[str, Any]) -> None:
        self.runs.setdefault(shape, []).append(dict(result))

    def _median(self, shape: str, *path: str) -> float:
        values = []
        for r in self.runs.get(shape, []):
            v: Any = r
            for p in path:
                v = v.get(p) if isinstance(v, Mapping) else None
            if isinstance(v, int | float) and not math.isnan(v):
                values.append(float(v))
        return statistics.median(values) if values else math.nan

    @property
    def rps1(self) -> float:
        return self._median(PLAIN_C1, "rps")

    @property
    def rps32(self) -> float:
        return self._median(PLAIN_C32, "rps")

    @property
    def p50_ms(self) -> float:
        return self._median(PLAIN_C1, "latency_ms", "p50")

    @property
    def p99_ms(self) -> float:
        return self._median(PLAIN_C1, "latency_ms", "p99")

    @property
    def ttft_ms(self) -> float:
        return self._median(STREAM_C1, "ttft_ms", "p50")

    @property
    def chunk_us(self) -> float:
        # The mean, not the median: when a relay coalesces a burst into one read, most
        # replies show 0 between events and the median hides the replies that paid.
        return self._median(STREAM_C1, "per_chunk_us", "mean")

    @property
    def cpu1_us(self) -> float:
        return self._median(PLAIN_C1, "server_cpu_us")

    @property
    def cpu32_us(self) -> float:
        return self._median(PLAIN_C32, "server_cpu_us")

    @property
    def cpu_chunk_us(self) -> float:
        """Server CPU a streamed reply costs beyond a plain one, per SSE event."""
        events = self._median(STREAM_C1, "events_per_reply")
        return (self._median(STREAM_C1, "server_cpu_us") - self.cpu1_us) / events

    @property
    def errors(self) -> int:
        return sum(int(r.get("errors", 0)) for runs in self.runs.values() for r in runs)

    @property
    def client_cpu32(self) -> float:
        return self._median(PLAIN_C32, "client_cpu")


def _mb(v: int | None) -> float:
    return v / 2**20 if v is not None else math.nan


def _ready(m: Measured) -> float:
    return m.ready_s if m.ready_s is not None else math.nan


# name -> (unit, how it is computed from the scenario `s` and its reference `r`)
METRICS: dict[str, tuple[str, Callable[[Measured, Measured | None], float]]] = {
    "rps1_ratio": ("x", lambda s, r: s.rps1 / r.rps1 if r else math.nan),
    "rps32_ratio": ("x", lambda s, r: s.rps32 / r.rps32 if r else math.nan),
    "added_p50_ms": ("ms", lambda s, r: s.p50_ms - r.p50_ms if r else math.nan),
    "added_p99_ms": ("ms", lambda s, r: s.p99_ms - r.p99_ms if r else math.nan),
    "added_ttft_ms": ("ms", lambda s, r: s.ttft_ms - r.ttft_ms if r else math.nan),
    "added_chunk_us": ("µs", lambda s, r: s.chunk_us - r.chunk_us if r else math.nan),
    "cpu_us": ("µs", lambda s, r: s.cpu32_us),
    "added_cpu_us": ("µs", lambda s, r: s.cpu32_us - r.cpu32_us if r else math.nan),
    "cpu_chunk_us": ("µs", lambda s, r: s.cpu_chunk_us),
    "idle_rss_mb": ("MB", lambda s, r: _mb(s.idle_rss)),
    "loaded_rss_mb": ("MB", lambda s, r: _mb(s.loaded_rss)),
    "ready_s": ("s", lambda s, r: _ready(s)),
}
RELATIVE = {"rps1_ratio", "rps32_ratio", "added_p50_ms", "added_p99_ms", "added_ttft_ms",
            "added_chunk_us", "added_cpu_us"}


def metric(name: str, s: Measured, r: Measured | None) -> float:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    if name in RELATIVE and (r is None or r.error is not None):
        return math.nan
    try:
        return METRICS[name][1](s, r)
    except ZeroDivisionError:
        return math.nan


def fmt(v: float, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _cell(pair: tuple[float, float], digits: int = 2, sep: str = " / ") -> str:
    return sep.join(fmt(v, digits) for v in pair)


@dataclass
class Check:
    scenario: str
    target: Target
    value: float

    @property
    def ok(self) -> bool | None:
        return None if math.isnan(self.value) else self.target.met(self.value)


def reference(
    name: str, workload: str, columns: Sequence[Measured]
) -> Measured | None:
    """``direct`` / ``litellm`` of the same workload, or the scenario called ``name``."""
    for m in columns:
        if m.label == name and (m.kind == "warden" or m.workload == workload):
            return m
    return None


def checks(columns: Sequence[Measured], targets: Mapping[str, Sequence[Target]]) -> list[Check]:
    out = []
    for m in columns:
        if m.kind != "warden":
            continue
        for t in targets.get(m.label, ()):
            ref = reference(t.vs, m.workload, columns) if t.metric in RELATIVE else None
            value = metric(t.metric, m, ref) if m.error is None else math.nan
            out.append(Check(m.label, t, value))
    return out


def table(columns: Sequence[Measured]) -> str:
    """One markdown table for the columns of one workload."""
    direct = next((m for m in columns if m.label == "direct"), None)
    litellm = next((m for m in columns if m.label == "litellm"), None)
    passthrough = next((m for m in columns if m.label == "passthrough"), None)
    heads = [_head(m) for m in columns]
    rows: list[tuple[str, list[str]]] = [
        ("req/s, C=1 / C=32", [_cell((m.rps1, m.rps32), 0) for m in columns]),
        ("latency p50 / p99, C=1 (ms)", [_cell((m.p50_ms, m.p99_ms), 3) for m in columns]),
        ("added p50 / p99 vs direct, C=1 (ms)",
         [_rel(m, direct, ("added_p50_ms", "added_p99_ms"), 3) for m in columns]),
        ("stream TTFT p50 (ms)", [fmt(m.ttft_ms, 3) for m in columns]),
        ("added TTFT vs direct (ms)", [_rel(m, direct, ("added_ttft_ms",), 3) for m in columns]),
        ("stream time per chunk, mean (µs)", [fmt(m.chunk_us, 1) for m in columns]),
        ("added per chunk vs direct (µs)",
         [_rel(m, direct, ("added_chunk_us",), 1) for m in columns]),
        ("throughput ÷ direct, C=1 / C=32",
         [_rel(m, direct, ("rps1_ratio", "rps32_ratio"), 2) for m in columns]),
        ("throughput ÷ LiteLLM, C=1 / C=32",
         [_rel(m, litellm, ("rps1_ratio", "rps32_ratio"), 1) if m.kind == "warden" else "—"
          for m in columns]),
        ("throughput ÷ pass-through, C=1 / C=32",
         [_rel(m, passthrough, ("rps1_ratio", "rps32_ratio"), 2) if m.kind == "warden" else "—"
          for m in columns]),
        ("server CPU per request, C=1 / C=32 (µs)",
         [_cell((m.cpu1_us, m.cpu32_us), 0) if m.label != "direct" else "—" for m in columns]),
        ("server CPU per streamed chunk (µs)",
         [fmt(m.cpu_chunk_us, 1) if m.label != "direct" else "—" for m in columns]),
        ("RSS idle / loaded (MB)", [_cell((_mb(m.idle_rss), _mb(m.loaded_rss)), 0)
                                    if m.label != "direct" else "—" for m in columns]),
        ("time to ready (s)", [fmt(_ready(m), 2) if m.label != "direct" else "—"
                               for m in columns]),
        ("failed requests", [str(m.errors) for m in columns]),
        ("client CPU share, C=32", [fmt(m.client_cpu32, 2) for m in columns]),
    ]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(columns)]
    for label, cells in rows:
        cells = [c if m.error is None else "failed" for c, m in zip(cells, columns, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _head(m: Measured) -> str:
    names = {"direct": "direct to mock", "passthrough": "minimal pass-through (aiohttp)",
             "llhttp-passthrough": "minimal pass-through (llhttp)", "litellm": "LiteLLM Proxy"}
    return names.get(m.label, f"Warden: {m.label}")


def _rel(m: Measured, ref: Measured | None, names: Sequence[str], digits: int) -> str:
    if ref is None or m is ref or m.label == "direct":
        return "—"
    return " / ".join(fmt(metric(n, m, ref), digits) for n in names)


def checks_table(found: Sequence[Check]) -> str:
    if not found:
        return "(no targets)"
    lines = ["| scenario | metric | vs | value | bound | met |", "|---|---|---|---:|---|---|"]
    for c in found:
        unit = METRICS[c.target.metric][0]
        vs = c.target.vs if c.target.metric in RELATIVE else "—"
        met = {True: "yes", False: "**NO**", None: "n/a"}[c.ok]
        lines.append(f"| {c.scenario} | {c.target.metric} | {vs} | {fmt(c.value, 3)} {unit} "
                     f"| {c.target.describe()} {unit} | {met} |")
    return "\n".join(lines)


def failures(columns: Sequence[Measured]) -> str:
    out = [f"- **{m.label}** failed: {m.error}" for m in columns if m.error]
    return "\n".join(out)
