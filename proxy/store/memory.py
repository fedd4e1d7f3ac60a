"""The in-memory store: the embedded default, exact for one replica, and the Redis
store's per-replica fallback when it fails open.

The same algorithm as store.lua, line for line (tests/test_store.py runs one suite
against both): ledgers of entries with amounts and scores, their totals, swept by
score. Everything happens between two awaits, so each call is atomic.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.store.base import (
    HELD_RETRY_MS,
    NO_SWEEP,
    Check,
    DenyReason,
    Keys,
    Reservation,
    Slots,
    State,
    Store,
    Verdict,
    Window,
)


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
