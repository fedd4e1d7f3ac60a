"""The store's contract: checks, verdicts, reservations, the ``Store`` interface, key names.

A request brings a list of *checks* and the store decides all of them at once,
atomically: either every check passes and every one is reserved, or nothing is
reserved. After the upstream call the same checks are *settled* to what was really
used. That is one store call before the upstream call and one after, whatever limits
and budgets are on.

Three kinds of check, all built on one primitive, a *ledger*: entries (id -> amount,
with a score in ms) plus their running total, swept by score::

    Window   sliding-window log: at most ``limit`` units in any ``window_ms`` (RPM, TPM).
             One entry per admitted request, scored with its arrival time; entries
             leave the window exactly ``window_ms`` later. No fixed-window 2x burst.
    Slots    requests in flight (concurrency). One entry per request, scored with its
             lease deadline, so a replica that dies mid-request frees its slots after
             the lease, not never.
    Spend    a budget dimension (nano-USD or tokens): spent + reserved + amount must
             fit the limit. Reservations are leased too; a lease that runs out is
             *charged in full* (the provider may have billed the call a dead replica
             made), so a crash never turns into budget overshoot.

Amounts are integers (USD in nano-dollars) so both backends add exactly. ``now`` is
passed in by the caller, in seconds: the Redis and memory backends then agree to the
millisecond, and tests inject a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# Why a check was refused; "" when granted.
DenyReason = Literal["", "limit", "too_large", "exhausted", "held", "unavailable"]

# A Spend whose ledger is calendar-aligned never sweeps (the key changes per period).
NO_SWEEP = -1
HELD_RETRY_MS = 1000  # slots / in-flight budget: the wait depends on other requests


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` units (requests or tokens) in any ``window_ms``."""

    name: str
    limit: int
    window_ms: int
    amount: int


@dataclass(frozen=True, slots=True)
class Slots:
    """At most ``limit`` requests in flight."""

    name: str
    limit: int


@dataclass(frozen=True, slots=True)
class Spend:
    """One budget dimension of one period.

    ``ledger`` names the period (``d2026-11-24``, or ``r86400000`` for a rolling day);
    spend is added to ``entry`` (``"s"``, or a time bucket for rolling periods) scored
    ``entry_score_ms``; entries scored at or below ``cutoff_ms`` have left a rolling
    period (``NO_SWEEP`` for calendar ones). The ledger key expires at ``expire_at_ms``
    (0: never).
    """

    name: str
    limit: int
    amount: int
    ledger: str
    entry: str = "s"
    entry_score_ms: int = 0
    cutoff_ms: int = NO_SWEEP
    expire_at_ms: int = 0


Check = Window | Slots | Spend


@dataclass(frozen=True, slots=True)
class State:
    """One check as the store saw it: ``used`` after this request's reservation when
    granted, before it when refused. ``reset_s``: when the oldest counted entry leaves a
    window (0 when empty, or for calendar budgets, whose reset the caller knows)."""

    used: int
    limit: int
    reserved: int = 0
    reset_s: float = 0.0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class Verdict:
    granted: bool
    states: Mapping[str, State]
    denied: str | None = None  # name of the first check that failed
    reason: DenyReason = ""
    retry_after_s: float = 0.0
    local: bool = False  # decided by the per-replica fallback (Redis unreachable)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``settle`` needs to undo or correct a granted reservation."""

    tenant: str
    request_id: str
    checks: tuple[Check, ...]
    verdict: Verdict


StoreListener = Callable[[str, dict[str, Any]], None]


class Store:
    """Interface. ``ping``/``describe`` back /readyz; ``reserve``/``settle`` are the two
    calls a request makes. Implementations never raise from reserve/settle, except
    ``errors.ServiceUnavailable`` when a fail-closed store cannot decide."""

    kind = "abstract"
    # Whether reserve() waits on I/O, so a cancelled caller may not learn a reservation
    # it made (admission.py then finishes the call and gives it back). An in-process
    # store decides without yielding to the event loop.
    remote = False

    def __init__(self) -> None:
        self._listeners: list[StoreListener] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def ping(self) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "degraded": False}

    async def close(self) -> None:
        return None

    async def reserve(
        self, tenant: str, request_id: str, checks: Sequence[Check], *, now: float,
        ttl_s: float, dry_run: bool = False,
    ) -> Reservation:
        """Decide every check; reserve all of them only if all pass (unless dry_run,
        which only reads — expired leases are still swept and charged)."""
        raise NotImplementedError

    async def settle(self, reservation: Reservation, actual: Mapping[str, int], *,
                     now: float) -> None:
        """Release slots and budget reservations and record what was really used.
        ``actual`` maps check names to real amounts; a Window or Spend not named keeps
        its reserved amount. Idempotent; never raises."""
        raise NotImplementedError

    def settle_soon(self, reservation: Reservation, actual: Mapping[str, int], *,
                    now: float) -> None:
        """``settle`` off the response path: the client need not wait for accounting.
        Meanwhile the reservation still counts, which errs on the safe side. ``drain``
        (called by ``close``) waits for what is pending."""
        task = asyncio.ensure_future(self.settle(reservation, actual, now=now))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

    def add_listener(self, listener: StoreListener) -> None:
        """Called with ("degraded" | "recovered" | "fallback", detail) — the metrics
        hook for the telemetry module."""
        self._listeners.append(listener)

    def _emit(self, event: str, detail: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener(event, detail)


class Keys:
    """Key names, shared by both backends. Every key of a tenant carries the hash tag
    ``{tenant}``, so one request's keys live in one Redis Cluster slot."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the Redis key prefix must not contain braces (hash tags)")
        self.prefix = prefix

    def base(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}"

    def of(self, tenant: str, check: Check) -> list[str]:
        base = self.base(tenant)
        if isinstance(check, Window):
            return [f"{base}:w:{check.name}:z", f"{base}:w:{check.name}:h"]
        if isinstance(check, Slots):
            return [f"{base}:c:{check.name}"]
        spend, leases = f"{base}:b:{check.name}:{check.ledger}", f"{base}:r:{check.name}"
        return [f"{spend}:z", f"{spend}:h", f"{leases}:z", f"{leases}:h"]
