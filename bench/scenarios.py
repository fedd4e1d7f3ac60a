"""What the benchmark runs: workloads, Warden scenarios, and the targets they must meet.

A later issue measures its policy by appending one ``Scenario`` to ``SCENARIOS``: the
policy-file sections it turns on, the environment it needs, optionally its own workload
and targets. ``run.py`` then measures it side by side with direct-to-mock and LiteLLM
Proxy (both run once per distinct workload) and with the other scenarios, e.g.::

    Scenario(
        name="limits+budget/redis",
        description="limits and budget on the shared Redis",
        sections={"limits": {"rpm": 10_000_000}, "budget": {"usd": 1e9, "period": "month"}},
        env={"WARDEN_REDIS_URL": "redis://127.0.0.1:6379/0"},
        targets=(Target("added_p50_ms", max=0.3, vs="warden"),),
    )

Every Warden scenario gets its own ``WARDEN_REDIS_PREFIX`` (``bench-<random>``), so runs
never share Redis keys with each other or with tests. In ``sections`` and ``env`` values
the text ``{mock}`` is replaced by the mock-upstream's base URL (``http://127.0.0.1:P``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The one virtual key of the bench tenant; the tenant's two model names below.
API_KEY = "vk-bench-0123456789"
MODEL = "bench"
STREAM_MODEL = "bench-stream"


@dataclass(frozen=True, eq=False)
class Workload:
    """The request every target receives (the same bytes for direct, Warden, LiteLLM).

    ``stream_chunks`` content chunks are asked of the mock for streamed replies, with
    no delay between them: the time between two chunks is then what relaying costs.
    """

    name: str
    messages: tuple[Mapping[str, Any], ...]
    stream_chunks: int = 20
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self, model: str, stream: bool) -> bytes:
        payload: dict[str, Any] = {"model": model, "messages": list(self.messages)}
        payload.update(self.extra)
        if stream:
            payload["stream"] = True
        return json.dumps(payload, separators=(",", ":")).encode()


def conversation(turns: int, words_per_message: int = 40) -> tuple[Mapping[str, Any], ...]:
    """An AutoGen-shaped history: a system message, then ``turns`` user/assistant pairs
    ending on a user message, as AssistantAgent resends it on every call."""
    filler = " ".join(f"word{i}" for i in range(words_per_message))
    out: list[Mapping[str, Any]] = [
        {"role": "system", "content": "You are a helpful AI assistant. Reply TERMINATE "
         "when the task is done."}
    ]
    for t in range(turns):
        out.append({"role": "user", "content": f"Turn {t}: please continue. {filler}"})
        if t < turns - 1:
            out.append({"role": "assistant", "content": f"Step {t} done. {filler}"})
    return tuple(out)


# The mock cuts its reply ("Echo: " + this text) into `stream_chunks` equal pieces at most,
# fewer when the text is short: this one is exactly 20 pieces long.
ONE_TURN = Workload(
    "one-turn",
    ({"role": "user", "content": "Please summarise the quarterly report in three bullets"},),
)


@dataclass(frozen=True)
class Target:
    """A bound a scenario must meet: ``metric`` (see ``report.METRICS``), compared with
    scenario ``vs`` of the same run where the metric is relative (added latency,
    throughput ratio). Exactly one of ``max`` / ``min``."""

    metric: str
    max: float | None = None
    min: float | None = None
    vs: str = "direct"

    def __post_init__(self) -> None:
        if (self.max is None) == (self.min is None):
            raise ValueError("a Target needs exactly one of max= or min=")

    def met(self, value: float) -> bool:
        return value <= self.max if self.max is not None else value >= (self.min or 0.0)

    def describe(self) -> str:
        bound = f"≤ {self.max:g}" if self.max is not None else f"≥ {self.min:g}"
        return bound


@dataclass(frozen=True)
class Scenario:
    """One Warden configuration to measure."""

    name: str
    description: str
    sections: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    workload: Workload = ONE_TURN
    targets: Sequence[Target] = ()


# Issue 2's bounds for Warden with policies off (bench/README.md says what each means).
CORE_TARGETS: tuple[Target, ...] = (
    Target("rps32_ratio", min=0.5, vs="direct"),
    Target("added_p50_ms", max=0.3, vs="direct"),
    Target("added_p99_ms", max=2.0, vs="direct"),
    Target("added_ttft_ms", max=1.0, vs="direct"),
    Target("added_chunk_us", max=50.0, vs="direct"),
    Target("idle_rss_mb", max=120.0),
    Target("ready_s", max=2.0),
)

REDIS = {"WARDEN_REDIS_URL": "redis://127.0.0.1:6379/0"}
# Limits and budget high enough never to refuse during a run: what is measured is the
# cost of checking them (one Redis round trip before the call, one after).
UNREFUSING = {"limits": {"rpm": 100_000_000, "tpm": 10_000_000_000, "concurrency": 10_000},
              "budget": {"usd": 1e9, "period": "month"}}
TWENTY_TURNS = Workload("twenty-turns", conversation(20))

SCENARIOS: list[Scenario] = [
    Scenario(
        name="warden",
        description="Warden, no policies (key check and routing only)",
        targets=CORE_TARGETS,
    ),
    Scenario(
        name="limits+budget/redis",
        description="limits and budget on the shared Redis (issue 5)",
        sections=UNREFUSING,
        env=REDIS,
        targets=(Target("added_p50_ms", max=0.3, vs="warden"),),
    ),
    Scenario(
        name="whole-chain/20-turns",
        description="limits+budget on Redis, loops, scope, injection, PII, telemetry on a "
                    "20-turn AutoGen-shaped conversation; every message already judged and "
                    "scanned (the cached path a resent history takes)",
        sections={**UNREFUSING, "loops": {"repeats": 3}, "scope": {"max_messages": 100},
                  "injection": {"action": "block"}, "pii": {}},
        env=REDIS,
        workload=TWENTY_TURNS,
        targets=(Target("added_p50_ms", max=1.0, vs="direct"),
                 Target("rps32_ratio", min=20.0, vs="litellm")),
    ),
]


def by_name(names: Sequence[str] | None) -> list[Scenario]:
    """The scenarios selected on the command line, in registry order; all when None."""
    if not names:
        return list(SCENARIOS)
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown scenario(s) {unknown}; known: {sorted(known)}")
    return [s for s in SCENARIOS if s.name in names]


def workloads(chosen: Sequence[Scenario]) -> list[Workload]:
    """The distinct workloads of these scenarios, in order; baselines run once for each."""
    found: dict[str, Workload] = {}
    for s in chosen:
        seen = found.setdefault(s.workload.name, s.workload)
        if seen is not s.workload and seen != s.workload:
            raise ValueError(f"two different workloads are both called {seen.name!r}")
    return list(found.values())


def substitute(value: Any, mock: str) -> Any:
    """Replace ``{mock}`` in every string of a nested section / env value."""
    if isinstance(value, str):
        return value.replace("{mock}", mock)
    if isinstance(value, Mapping):
        return {k: substitute(v, mock) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, mock) for v in value]
    return value


def stream_base(mock: str, workload: Workload) -> str:
    """The mock's OpenAI base URL that streams ``workload.stream_chunks`` chunks."""
    return f"{mock}/f/chunks={workload.stream_chunks}/v1"


def tenant_policy(scenario: Scenario, mock: str) -> dict[str, Any]:
    """The bench tenant's policy file for ``scenario`` (written as YAML by run.py)."""
    deployment = {"provider": "openai", "model": "bench-upstream", "api_key": "env:BENCH_KEY"}
    policy: dict[str, Any] = {
        "tenant": "bench",
        "keys": [API_KEY],
        "models": {
            MODEL: [{**deployment, "api_base": f"{mock}/v1"}],
            STREAM_MODEL: [{**deployment, "api_base": stream_base(mock, scenario.workload)}],
        },
    }
    policy.update(substitute(dict(scenario.sections), mock))
    return policy


def litellm_config(mock: str, workload: Workload) -> dict[str, Any]:
    """LiteLLM Proxy's config: the same two model names, same mock, a master key."""

    def entry(name: str, base: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {"model": "openai/bench-upstream", "api_base": base,
                               "api_key": "sk-bench-dummy"},
        }

    return {
        "model_list": [
            entry(MODEL, f"{mock}/v1"),
            entry(STREAM_MODEL, stream_base(mock, workload)),
        ],
        # A master key makes LiteLLM check the key as Warden does; no DB, so nothing else.
        "general_settings": {"master_key": "sk-" + API_KEY},
    }
