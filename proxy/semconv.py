"""OpenTelemetry GenAI semantic conventions as Warden exports them, and bounded labels.

The conventions' histogram bucket boundaries (``explicit_bucket_boundaries``), the
well-known ``gen_ai.provider.name`` values, ``Bounded`` (the admission set that keeps
label values Warden does not choose from growing without limit) and ``observe_many``
(a stream's chunk gaps folded into a histogram in one pass).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

# Bucket boundaries from the GenAI semantic conventions (explicit_bucket_boundaries).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Warden's own: its overhead is tens of microseconds, not seconds.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

OTHER = "other"
NONE = "-"

# Deployment.provider -> gen_ai.provider.name (the conventions' well-known values);
# anything else is reported as configured (it comes from the policy files: bounded).
PROVIDER_NAMES = {
    "openai": "openai", "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference",
    "anthropic": "anthropic", "bedrock": "aws.bedrock", "bedrock_converse": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini", "cohere": "cohere",
    "mistral": "mistral_ai", "groq": "groq", "deepseek": "deepseek",
    "perplexity": "perplexity", "xai": "x_ai", "watsonx": "ibm.watsonx.ai",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@-]")
DECISION_LIMIT = 256


def clean(value: str) -> str:
    """A label-safe rendering of a value (64 characters, no quotes or control bytes)."""
    return _UNSAFE.sub("_", value[:64]) if value else NONE


class Bounded:
    """Admits at most ``limit`` distinct label values; later newcomers become ``other``.

    For values Warden does not choose itself (reason codes from policies and providers,
    the model name a provider reports): a misbehaving provider or policy can add at most
    ``limit`` series, never one per request.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return NONE
        if value in self._seen:
            return value
        safe = clean(value)
        if safe in self._seen:
            return safe
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(safe)
        return safe


def provider_name(provider: str) -> str:
    return PROVIDER_NAMES.get(provider, provider)


def observe_many(child: Any, values: Sequence[float]) -> None:
    """Observe every value in one pass: bucket counts are summed first, then each
    touched bucket is incremented once (one lock each instead of one per value).

    Uses prometheus_client's Histogram child internals (``_upper_bounds``, ``_buckets``,
    ``_sum``; the version is pinned); falls back to plain observes if they change.
    """
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            child.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect_left(bounds, v)  # first bound >= v: Prometheus' "le" bucket
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)
