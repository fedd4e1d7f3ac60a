"""RequestContext: everything one request carries through the pipeline.

Policy objects are shared by every request of a tenant, so anything that belongs to one
request lives here: the body as policies edit it, timings, usage, headers to add to the
response, decisions for the access log, and typed per-policy state (``StateKey``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

if TYPE_CHECKING:
    from proxy.tenants import Deployment, Tenant

T = TypeVar("T")

Operation = Literal["chat", "embeddings", "models"]


class StateKey(Generic[T]):
    """A typed slot in ``RequestContext.state``; create one per module, at import time."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the provider reported nothing and Warden counted with a tokenizer.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Attempt:
    """One upstream attempt, for the access log and the all-failed error."""

    deployment: str
    status: int | None
    reason: str
    duration_s: float
    # perf_counter when the attempt object was made, just before the call (trace spans).
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Decision:
    """One policy decision, for the access log and metrics (bounded values, no text)."""

    policy: str
    action: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class RequestContext:
    request_id: str
    operation: Operation
    started: float = field(default_factory=time.perf_counter)
    # Set by the auth policy.
    tenant: Tenant | None = None
    # The JSON body as the client sent it, edited in place by request hooks.
    body: dict[str, Any] = field(default_factory=dict)
    # The model name the agent asked for (the key into the tenant's routing table).
    model: str = ""
    stream: bool = False
    # The client asked for stream_options.include_usage itself (else Warden strips it).
    client_wants_usage: bool = False
    deployments: tuple[Deployment, ...] = ()
    deployment: Deployment | None = None  # the one that answered
    attempts: list[Attempt] = field(default_factory=list)
    # Seconds from ``started`` the upstream may take before the first byte (retries
    # included); None: the upstream_deadline_s setting. Set from what the client waits.
    deadline_s: float | None = None
    usage: Usage | None = None
    response_model: str | None = None
    status: int = 0
    error_type: str | None = None
    # Time spent waiting on the provider, to report Warden's own overhead.
    upstream_s: float = 0.0
    first_token_s: float | None = None
    chunks: int = 0
    # Streams: seconds between consecutive upstream events (the time-per-chunk metric).
    chunk_gaps: list[float] = field(default_factory=list)
    # USD; whoever prices the request first (budget policy, else metrics) sets it.
    cost_usd: float | None = None
    # The provider's reply text, kept only when the tenant opts in to log_prompts.
    completion_text: str | None = None
    client_disconnected: bool = False
    # Incoming headers Warden may log (agent / conversation identity), lower-cased.
    client_headers: dict[str, str] = field(default_factory=dict)
    # Headers every policy may add; sent with the response (or the stream's head).
    response_headers: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def get(self, key: StateKey[T], default: T | None = None) -> T | None:
        return cast("T | None", self.state.get(key.name, default))

    def require(self, key: StateKey[T]) -> T:
        return cast(T, self.state[key.name])

    def set(self, key: StateKey[T], value: T) -> None:
        self.state[key.name] = value

    def decide(self, policy: str, action: str, reason: str, **detail: Any) -> None:
        self.decisions.append(Decision(policy, action, reason, detail))

    def flag(self, value: str) -> None:
        """Add a bounded flag to the ``x-warden-flags`` response header."""
        if value not in self.flags:
            self.flags.append(value)

    @property
    def tenant_name(self) -> str:
        return self.tenant.name if self.tenant is not None else "-"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def overhead(self) -> float:
        """Seconds spent in Warden so far, time waiting on the provider excluded."""
        return max(0.0, self.elapsed() - self.upstream_s)
