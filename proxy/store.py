"""Counters shared by limits and budgets: in-memory (one replica) or Redis (a fleet).

Everything that counts goes through a ``Store``; nothing else talks to Redis. A request
brings a list of *checks* and the store decides all of them at once, atomically: either
every check passes and every one is reserved, or nothing is reserved. After the
upstream call the same checks are *settled* to what was really used. That is one store
call before the upstream call and one after, whatever limits and budgets are on.

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
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


# ----------------------------------------------------------------------------------------
# The in-memory backend. The Lua script in store.lua is the same algorithm, line for
# line; tests/test_store.py runs one suite against both.


class _Ledger:
    """Entries with amounts and scores, their total, and a heap to sweep by score
    (lazy deletion: a heap item whose entry was removed or rescored is skipped)."""

    __slots__ = ("amounts", "expire_at", "heap", "scores", "total")

    def __init__(self) -> None:
        self.amounts: dict[str, int] = {}
        self.scores: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []
        self.total = 0
        self.expire_at = math.inf

    def sweep(self, cutoff: float) -> int:
        """Drop entries scored at or below ``cutoff``; return their total."""
        dropped = 0
        while self.heap and self.heap[0][0] <= cutoff:
            score, entry = heapq.heappop(self.heap)
            if self.scores.get(entry) == score:
                del self.scores[entry]
                dropped += self.amounts.pop(entry, 0)
        self.total -= dropped
        return dropped

    def add(self, entry: str, amount: int, score: float) -> None:
        if self.scores.get(entry) != score:
            self.scores[entry] = score
            heapq.heappush(self.heap, (score, entry))
        self.amounts[entry] = self.amounts.get(entry, 0) + amount
        self.total += amount

    def remove(self, entry: str) -> int | None:
        if entry not in self.scores:
            return None
        del self.scores[entry]
        amount = self.amounts.pop(entry, 0)
        self.total -= amount
        return amount

    def oldest(self) -> float | None:
        while self.heap and self.scores.get(self.heap[0][1]) != self.heap[0][0]:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None

    def time_to_free(self, need: int, cutoff: float) -> float:
        """ms until entries worth ``need`` have left (each leaves when cutoff reaches it)."""
        freed = 0
        for entry, score in sorted(self.scores.items(), key=lambda kv: kv[1]):
            freed += self.amounts.get(entry, 0)
            if freed >= need:
                return score - cutoff
        return -1.0


@dataclass(slots=True)
class _Plan:
    check: Check
    ledgers: list[_Ledger]
    held: bool = False  # this request already holds it (a retried reserve)
    state: State | None = None
    extras: dict[str, float] = field(default_factory=dict)


class MemoryStore(Store):
    """The embedded default: this process's memory, exact for one replica. Also the
    per-replica fallback of the Redis store when it fails open."""

    kind = "memory"

    def __init__(self, prefix: str = "warden") -> None:
        super().__init__()
        self._keys = Keys(prefix)
        self._ledgers: dict[str, _Ledger] = {}
        self._ops = 0

    async def ping(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "degraded": False, "keys": len(self._ledgers)}

    def _ledger(self, key: str, now_ms: float) -> _Ledger:
        ledger = self._ledgers.get(key)
        if ledger is None or ledger.expire_at <= now_ms:
            ledger = self._ledgers[key] = _Ledger()
        return ledger

    def _expire(self, ledger: _Ledger, at_ms: float) -> None:
        ledger.expire_at = at_ms

    def _purge(self, now_ms: float) -> None:
        """Forget expired ledgers now and then (Redis expires keys by itself)."""
        self._ops += 1
        if self._ops % 1024 == 0:
            for key in [k for k, v in self._ledgers.items() if v.expire_at <= now_ms]:
                del self._ledgers[key]

    async def reserve(
        self, tenant: str, request_id: str, checks: Sequence[Check], *, now: float,
        ttl_s: float, dry_run: bool = False,
    ) -> Reservation:
        return self.reserve_now(tenant, request_id, checks, now=now, ttl_s=ttl_s,
                                dry_run=dry_run)

    def reserve_now(
        self, tenant: str, request_id: str, checks: Sequence[Check], *, now: float,
        ttl_s: float, dry_run: bool = False,
    ) -> Reservation:
        now_ms = math.floor(now * 1000)
        ttl_ms = math.floor(ttl_s * 1000)
        self._purge(now_ms)
        plans: list[_Plan] = []
        denied: str | None = None
        reason: DenyReason = ""
        retry_ms = 0.0
        for check in checks:
            ledgers = [self._ledger(k, now_ms) for k in self._keys.of(tenant, check)[::2]]
            plan = _Plan(check, ledgers)
            plans.append(plan)
            why, wait = self._evaluate(plan, request_id, now_ms)
            if why and denied is None:
                denied, reason, retry_ms = check.name, why, wait
        granted = denied is None
        if granted and not dry_run:
            for plan in plans:
                self._commit(plan, request_id, now_ms, ttl_ms)
        states = {p.check.name: self._state(p, now_ms) for p in plans}
        verdict = Verdict(granted=granted, states=states, denied=denied, reason=reason,
                          retry_after_s=max(0.0, retry_ms) / 1000)
        return Reservation(tenant, request_id, tuple(checks), verdict)

    def _evaluate(self, plan: _Plan, rid: str, now_ms: int) -> tuple[DenyReason, float]:
        check = plan.check
        if isinstance(check, Window):
            (ledger,) = plan.ledgers
            cutoff = now_ms - check.window_ms
            ledger.sweep(cutoff)
            plan.held = rid in ledger.scores
            if plan.held:
                return "", 0
            if check.amount > check.limit:
                return "too_large", 0
            if ledger.total + check.amount > check.limit:
                need = ledger.total + check.amount - check.limit
                return "limit", ledger.time_to_free(need, cutoff)
            return "", 0
        if isinstance(check, Slots):
            (ledger,) = plan.ledgers
            ledger.sweep(now_ms)
            plan.held = rid in ledger.scores
            if not plan.held and ledger.total + 1 > check.limit:
                return "limit", HELD_RETRY_MS
            return "", 0
        spend, held = plan.ledgers
        expired = held.sweep(now_ms)
        if expired:  # leases of requests nobody settled: charge them in full
            spend.add(check.entry, expired, check.entry_score_ms)
            if check.expire_at_ms:
                spend.expire_at = check.expire_at_ms
        if check.cutoff_ms != NO_SWEEP:
            spend.sweep(check.cutoff_ms)
        plan.held = rid in held.scores
        if plan.held:
            return "", 0
        if spend.total + check.amount > check.limit:
            if check.cutoff_ms == NO_SWEEP:
                return "exhausted", 0
            need = spend.total + check.amount - check.limit
            return "exhausted", spend.time_to_free(need, check.cutoff_ms)
        if spend.total + held.total + check.amount > check.limit:
            return "held", HELD_RETRY_MS
        return "", 0

    def _commit(self, plan: _Plan, rid: str, now_ms: int, ttl_ms: int) -> None:
        if plan.held:
            return
        check = plan.check
        if isinstance(check, Window):
            (ledger,) = plan.ledgers
            ledger.add(rid, check.amount, now_ms)
            self._expire(ledger, now_ms + check.window_ms + 60_000)
        elif isinstance(check, Slots):
            (ledger,) = plan.ledgers
            ledger.add(rid, 1, now_ms + ttl_ms)
            self._expire(ledger, now_ms + ttl_ms + 60_000)
        else:
            held = plan.ledgers[1]
            held.add(rid, check.amount, now_ms + ttl_ms)
            self._expire(held, now_ms + ttl_ms + 86_400_000)

    def _state(self, plan: _Plan, now_ms: int) -> State:
        check = plan.check
        if isinstance(check, Window):
            (ledger,) = plan.ledgers
            oldest = ledger.oldest()
            reset = 0.0 if oldest is None else oldest + check.window_ms - now_ms
            return State(ledger.total, check.limit, 0, max(0.0, reset) / 1000)
        if isinstance(check, Slots):
            return State(plan.ledgers[0].total, check.limit)
        spend, held = plan.ledgers
        reset = 0.0
        if check.cutoff_ms != NO_SWEEP:
            oldest = spend.oldest()
            reset = 0.0 if oldest is None else max(0.0, oldest - check.cutoff_ms)
        return State(spend.total, check.limit, held.total, reset / 1000)

    async def settle(self, reservation: Reservation, actual: Mapping[str, int], *,
                     now: float) -> None:
        self.settle_now(reservation, actual, now=now)

    def settle_soon(self, reservation: Reservation, actual: Mapping[str, int], *,
                    now: float) -> None:
        self.settle_now(reservation, actual, now=now)  # no I/O: nothing to defer

    def settle_now(self, reservation: Reservation, actual: Mapping[str, int], *,
                   now: float) -> None:
        now_ms = math.floor(now * 1000)
        rid = reservation.request_id
        for check in reservation.checks:
            keys = self._keys.of(reservation.tenant, check)[::2]
            ledgers = [self._ledgers.get(k) for k in keys]
            if isinstance(check, Window):
                ledger = ledgers[0]
                if ledger is not None and rid in ledger.scores:
                    new = actual.get(check.name, ledger.amounts[rid])
                    ledger.total += new - ledger.amounts[rid]
                    ledger.amounts[rid] = new
            elif isinstance(check, Slots):
                if ledgers[0] is not None:
                    ledgers[0].remove(rid)
            else:
                held = ledgers[1]
                amount = held.remove(rid) if held is not None else None
                if amount is None:
                    continue  # already charged in full when its lease ran out
                spend = self._ledger(keys[0], now_ms)
                spend.add(check.entry, actual.get(check.name, amount), check.entry_score_ms)
                if check.expire_at_ms:
                    spend.expire_at = check.expire_at_ms


def create_store(redis_url: str | None, prefix: str = "warden", *,
                 failure_mode: Literal["open", "closed"] = "open") -> Store:
    """No URL: the in-memory store. ``redis://``/``rediss://``: one Redis;
    ``redis+cluster://``/``rediss+cluster://``: a Redis Cluster (seed node in the URL)."""
    if redis_url is None:
        return MemoryStore(prefix)
    from proxy.store_redis import RedisStore

    return RedisStore(redis_url, prefix, failure_mode=failure_mode)
