"""A circuit breaker per deployment: stop calling a provider that is down.

::

    closed ──(N consecutive failures, or error rate ≥ R over the window)──► open
    open ──(open_s elapsed; checked lazily, on the next request)─────────► half_open
    half_open ──(a probe succeeds)──► closed        half_open ──(a probe fails)──► open

While open, the deployment is skipped without a network call (the check is a few
attribute reads: well under the 0.1 ms budget). Half-open lets ``probes`` attempts
through at a time; the rest keep skipping it until a probe answers.

State is per process. Sharing it across replicas through the store was left out: each
replica learns that a provider is down from its own first N failures, which costs N
failed attempts per replica per outage (and those are absorbed by failover anyway),
while a shared breaker would put a store round trip on every attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from proxy.settings import Settings
from proxy.tenants import Deployment

log = logging.getLogger("warden.breaker")

_BUCKETS = 10  # the error-rate window is kept as this many time slices


class State(IntEnum):
    """Ordered by badness: the gauge value in metrics."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Permit(IntEnum):
    REJECT = 0
    ADMIT = 1
    PROBE = 2


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    error_rate: float = 0.5
    window_s: float = 30.0
    min_requests: int = 20
    open_s: float = 30.0
    probes: int = 1

    @classmethod
    def from_settings(cls, s: Settings) -> BreakerConfig:
        return cls(s.breaker_failures, s.breaker_error_rate, s.breaker_window_s,
                   s.breaker_min_requests, s.breaker_open_s, s.breaker_half_open_probes)

    @property
    def enabled(self) -> bool:
        return self.failures > 0


Listener = Callable[[str, State, State], None]


class Breaker:
    __slots__ = ("_buckets", "_listeners", "config", "consecutive", "label", "opened_at",
                 "probes_out", "state")

    def __init__(self, label: str, config: BreakerConfig,
                 listeners: list[Listener] | None = None) -> None:
        self.label = label
        self.config = config
        self.state = State.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probes_out = 0
        # [slice number, successes, failures] per slice of the window.
        self._buckets: list[list[int]] = [[-1, 0, 0] for _ in range(_BUCKETS)]
        self._listeners = listeners if listeners is not None else []

    def allow(self, now: float | None = None) -> Permit:
        """May an attempt go to this deployment now? The hot path: keep it tiny."""
        if self.state is State.CLOSED:
            return Permit.ADMIT
        now = time.monotonic() if now is None else now
        if self.state is State.OPEN:
            if now - self.opened_at < self.config.open_s:
                return Permit.REJECT
            self._move(State.HALF_OPEN)
        if self.probes_out >= self.config.probes:
            return Permit.REJECT
        self.probes_out += 1
        return Permit.PROBE

    def record(self, permit: Permit, ok: bool, now: float | None = None) -> None:
        """The result of an attempt ``allow`` let through."""
        now = time.monotonic() if now is None else now
        if permit is Permit.PROBE:
            self.probes_out = max(0, self.probes_out - 1)
            if self.state is State.HALF_OPEN:
                if ok:
                    self._close()
                else:
                    self._open(now)
                return
        self._count(ok, now)
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.state is State.CLOSED and self._tripped(now):
            self._open(now)

    def release(self, permit: Permit) -> None:
        """An attempt ended without a verdict (the client went away): free its slot."""
        if permit is Permit.PROBE:
            self.probes_out = max(0, self.probes_out - 1)

    def failed_midstream(self, now: float | None = None) -> None:
        """A stream that had started broke: a failure, though its head counted as ok."""
        self.record(Permit.ADMIT, False, now)

    def _tripped(self, now: float) -> bool:
        if self.consecutive >= self.config.failures:
            return True
        ok, failed = self.window(now)
        total = ok + failed
        return total >= self.config.min_requests and failed / total >= self.config.error_rate

    def window(self, now: float) -> tuple[int, int]:
        """(successes, failures) within the last ``window_s``."""
        current = int(now / self._slice_s())
        ok = failed = 0
        for number, good, bad in self._buckets:
            if current - number < _BUCKETS:
                ok += good
                failed += bad
        return ok, failed

    def _slice_s(self) -> float:
        return self.config.window_s / _BUCKETS

    def _count(self, ok: bool, now: float) -> None:
        number = int(now / self._slice_s())
        bucket = self._buckets[number % _BUCKETS]
        if bucket[0] != number:
            bucket[0], bucket[1], bucket[2] = number, 0, 0
        bucket[1 if ok else 2] += 1

    def _open(self, now: float) -> None:
        self.opened_at = now
        self._move(State.OPEN)

    def _close(self) -> None:
        self.consecutive = 0
        for bucket in self._buckets:  # a fresh start: old failures must not re-trip it
            bucket[0], bucket[1], bucket[2] = -1, 0, 0
        self._move(State.CLOSED)

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        if old is new:
            return
        log.warning("circuit breaker for deployment %s: %s -> %s", self.label,
                    old.name.lower(), new.name.lower())
        for listener in self._listeners:
            listener(self.label, old, new)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        ok, failed = self.window(now)
        out: dict[str, Any] = {"deployment": self.label, "state": self.state.name.lower(),
                               "consecutive_failures": self.consecutive,
                               "window": {"ok": ok, "failed": failed}}
        if self.state is not State.CLOSED:
            out["open_for_s"] = round(max(0.0, self.opened_at + self.config.open_s - now), 3)
        return out


class _NoBreaker(Breaker):
    """Breakers switched off (``breaker_failures: 0``): always admit, count nothing."""

    def allow(self, now: float | None = None) -> Permit:
        return Permit.ADMIT

    def record(self, permit: Permit, ok: bool, now: float | None = None) -> None:
        return None


def identity(d: Deployment) -> tuple[str | None, ...]:
    """What makes two deployments the same upstream: same endpoint, model and credential.
    Two tenants sharing a provider key share its breaker; different keys do not (a 429
    on one key says nothing about another)."""
    return (d.provider, d.api_base, d.model, d.api_key, d.api_version, d.name)


class BreakerRegistry:
    """The breakers of one process, created on first use; survives policy reloads."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.listeners: list[Listener] = []
        self._by_identity: dict[tuple[str | None, ...], Breaker] = {}

    def get(self, deployment: Deployment) -> Breaker:
        key = identity(deployment)
        breaker = self._by_identity.get(key)
        if breaker is None:
            kind = Breaker if self.config.enabled else _NoBreaker
            breaker = kind(deployment.label, self.config, self.listeners)
            self._by_identity[key] = breaker
        return breaker

    def all(self) -> list[Breaker]:
        return list(self._by_identity.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """For /readyz and metrics: every deployment called so far, worst first."""
        now = time.monotonic()
        return [b.describe(now) for b in
                sorted(self.all(), key=lambda b: (-b.state, b.label))]
