"""Process settings: ``WARDEN_*`` environment variables, overridden by CLI flags.

Frozen once built. Per-tenant behaviour lives in the policy files (``tenants.py``), not
here: these are the things that are the same for every tenant of one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WARDEN_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Proxy port (0 picks a free one).")
    policies_dir: Path = Field(Path("policies"), description="Directory of tenant YAML files.")
    policy_reload_interval_s: float = Field(
        1.0, ge=0, description="How often the policies directory is checked for changes "
        "(0: never; SIGHUP still reloads)."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    shutdown_grace_s: float = Field(
        15.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL; unset means the in-memory store."
    )
    redis_prefix: str = Field("warden", description="Namespace for every Redis key.")
    store_failure_mode: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: 'open' falls back to local per-replica counters "
        "(logged, metered), 'closed' refuses with 503.",
    )
    reservation_ttl_s: float = Field(
        660.0, gt=0,
        description="Lease on a request's concurrency slot and budget reservation: a "
        "replica that dies mid-request frees them after this long (a budget lease is then "
        "charged in full). Must exceed the longest request.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on its own port as well."
    )
    metrics_enabled: bool = Field(
        True, description="Record Prometheus metrics per request (off: nothing is "
        "recorded, the access log is unaffected; for overhead comparisons)."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL (e.g. http://otel-collector:4318): "
        "export one trace per request, JSON-encoded, to <url>/v1/traces."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="One JSON line per request on stdout.")
    upstream_pool_size: int = Field(
        256, ge=1, description="Pooled connections per upstream host (aiohttp limit_per_host)."
    )
    debug_runtime: bool = Field(
        False, description="Add asyncio task and open-fd counts to /readyz (chaos/soak runs)."
    )
    cpu_workers: int = Field(
        0, ge=0, description="Threads for CPU-bound policy work (0: one per core)."
    )
    # Failover (proxy/upstream/). Retry knobs are defaults a model's `retry:` overrides.
    upstream_deadline_s: float = Field(
        600.0, gt=0, description="Longest a request may spend on upstream attempts, "
        "retries and back-off before its first byte; lowered per request to what the "
        "client waits (the openai SDK's x-stainless-read-timeout header).",
    )
    retry_attempts: int = Field(2, ge=1, le=10, description="Tries per deployment.")
    retry_backoff_s: float = Field(
        0.25, ge=0, description="Back-off ceiling before a deployment's 2nd try; doubles "
        "each try (full jitter: the wait is uniform in [0, ceiling]).",
    )
    retry_backoff_max_s: float = Field(8.0, ge=0, description="Largest back-off ceiling.")
    retry_after_max_s: float = Field(
        30.0, ge=0, description="A provider's Retry-After / retry-after-ms is honoured up "
        "to this; a longer one means no retry at that deployment.",
    )
    breaker_failures: int = Field(
        5, ge=0, description="Consecutive failures that open a deployment's breaker "
        "(0: breakers off).",
    )
    breaker_error_rate: float = Field(
        0.5, gt=0, le=1, description="Failure share over breaker_window_s that opens it."
    )
    breaker_window_s: float = Field(30.0, gt=0, description="Error-rate window, seconds.")
    breaker_min_requests: int = Field(
        20, ge=1, description="Attempts in the window before the error rate counts."
    )
    breaker_open_s: float = Field(
        30.0, gt=0, description="How long an open breaker skips its deployment before "
        "letting probes through (half-open).",
    )
    breaker_half_open_probes: int = Field(
        1, ge=1, description="Concurrent probe attempts while half-open."
    )
    pii_secret: SecretStr | None = Field(
        None, description="Key for PII pseudonyms when a tenant sets no pii.secret; the same "
        "value on every replica keeps placeholders stable across them."
    )
    pii_cache_size: int = Field(
        20_000, ge=0, description="Entries in the PII scan-result cache (spans only, no text)."
    )
