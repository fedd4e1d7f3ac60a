"""Process settings: ``WARDEN_*`` environment variables, overridden by CLI flags.

Frozen once built. Per-tenant behaviour lives in the policy files (``tenants.py``), not
here: these are the things that are the same for every tenant of one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on its own port as well."
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
