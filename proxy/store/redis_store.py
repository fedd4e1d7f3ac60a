"""The Redis store: counters a fleet of replicas shares, exact across all of them.

One ``EVALSHA`` of ``store.lua`` per ``reserve`` and one per ``settle`` (over the lean
RESP client in resp.py; redis-py for Redis Cluster): the script
decides and reserves every check of a request atomically (Redis runs scripts one at a
time), so two replicas can never both take the last slot. The script is sent once per
Redis node (``EVAL`` on the first ``NOSCRIPT``), never ``SCRIPT LOAD``-ed ahead of time,
so a Redis restart or failover just costs one ``EVAL``.

When Redis cannot be reached, ``failure_mode`` decides: ``open`` answers from a local
``MemoryStore`` (per-replica limits, so a fleet of N admits up to N times a limit —
logged, flagged in ``describe()`` for /readyz, and reported to listeners for metrics),
``closed`` refuses with 503. While down, Redis is retried once a second by a single
request (the others stay local), so a Redis that hangs does not stall every request,
and the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any, Literal, cast

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from proxy.errors import ServiceUnavailable
from proxy.store.base import (
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
from proxy.store.memory import MemoryStore
from proxy.store.resp import NoScript, RespClient, RespError

log = logging.getLogger("warden.store")

SCRIPT = resources.files("proxy.store").joinpath("store.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

# Everything that means "Redis did not answer properly"; nothing else is caught.
_FAILURES = (RedisError, RedisClusterException, RespError, OSError, EOFError, TimeoutError)
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_WARN_EVERY_S = 30.0
_RS, _US = "\x1e", "\x1f"  # record and unit separators of the script's spec string


MAX_CONNECTIONS = 64  # calls to Redis in flight at once (more wait their turn)


class RedisStore(Store):
    kind = "redis"
    remote = True

    def __init__(
        self, url: str, prefix: str = "warden", *,
        failure_mode: Literal["open", "closed"] = "open", timeout_s: float = 2.0,
        retry_interval_s: float = 1.0, max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__()
        self.cluster = url.startswith(_CLUSTER_SCHEMES)
        self.failure_mode = failure_mode
        self.prefix = prefix
        self._keys = Keys(prefix)
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        # Calls queue here rather than in a client pool: waiting for a connection is an
        # overload on this side, not an outage of Redis.
        self._slots = asyncio.Semaphore(max_connections)
        self._resp: RespClient | None = None
        self._cluster: RedisCluster | None = None
        if self.cluster:
            # One immediate retry: a pooled connection to a node that restarted fails at
            # once, and the retry on a fresh connection succeeds. Both scripts are
            # idempotent per request id, so a retried reserve never reserves twice.
            self._cluster = RedisCluster.from_url(
                url.replace("+cluster", "", 1), socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1),
                max_connections=max_connections + 8)
        else:
            self._resp = RespClient(url, timeout_s=timeout_s)
        self._local = MemoryStore(prefix)
        self.degraded = False
        self.last_error: str | None = None
        self.fallbacks = 0
        self._down_until = 0.0
        self._probing = False
        self._last_warning = 0.0

    # -- health --------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._resp is not None:
                    await self._resp.execute("PING")
                else:
                    await cast("Awaitable[Any]", cast(Any, self._cluster).ping())
        except _FAILURES:
            return False
        self._down_until = 0.0  # let the next request probe at once
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "cluster": self.cluster, "failure_mode": self.failure_mode,
                "degraded": self.degraded, "fallback_requests": self.fallbacks,
                "last_error": self.last_error}

    async def close(self) -> None:
        await self.drain()
        if self._resp is not None:
            await self._resp.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()

    def _should_try(self) -> bool:
        if not self.degraded:
            return True
        if self._probing or time.monotonic() < self._down_until:
            return False
        self._probing = True  # this request probes; the others stay local meanwhile
        return True

    def _up(self) -> None:
        self._probing = False
        if self.degraded:
            self.degraded = False
            log.warning("Redis store recovered after %d request(s) served with local "
                        "per-replica limits", self.fallbacks)
            self._emit("recovered", {"fallback_requests": self.fallbacks})

    def _down(self, error: BaseException) -> None:
        self._probing = False
        self._down_until = time.monotonic() + self._retry_interval_s
        self.last_error = f"{type(error).__name__}: {error}"[:200]
        if not self.degraded:
            self.degraded = True
            log.error("Redis store unreachable (%s); failing %s: %s", self.last_error,
                      self.failure_mode, "limits and budgets are now per replica"
                      if self.failure_mode == "open" else "requests are refused with 503")
            self._emit("degraded", {"error": self.last_error, "mode": self.failure_mode})

    # -- the two calls -------------------------------------------------------------

    async def reserve(
        self, tenant: str, request_id: str, checks: Sequence[Check], *, now: float,
        ttl_s: float, dry_run: bool = False,
    ) -> Reservation:
        args = self._args("peek" if dry_run else "reserve", request_id, checks, now, ttl_s, None)
        raw = await self._call(tenant, checks, args)
        if raw is not None:
            return Reservation(tenant, request_id, tuple(checks), _verdict(raw, checks))
        if self.failure_mode == "closed":
            raise ServiceUnavailable(
                "Warden cannot reach its rate-limit and budget store; the request was not "
                "sent (the store fails closed). Retry shortly.",
                headers={"Retry-After": str(math.ceil(self._retry_interval_s))},
            )
        self.fallbacks += 1
        self._emit("fallback", {"tenant": tenant})
        if time.monotonic() - self._last_warning > _WARN_EVERY_S:
            self._last_warning = time.monotonic()
            log.warning("Redis store still unreachable: %d request(s) decided with local "
                        "per-replica limits so far", self.fallbacks)
        res = self._local.reserve_now(tenant, request_id, checks, now=now, ttl_s=ttl_s,
                                      dry_run=dry_run)
        return replace(res, verdict=replace(res.verdict, local=True))

    async def settle(self, reservation: Reservation, actual: Mapping[str, int], *,
                     now: float) -> None:
        if reservation.verdict.local:
            self._local.settle_now(reservation, actual, now=now)
            return
        if not reservation.verdict.granted:
            return
        args = self._args("settle", reservation.request_id, reservation.checks, now, 0, actual)
        if await self._call(reservation.tenant, reservation.checks, args) is None:
            # Nothing to fall back to: the reservation lives in Redis. Its leases run
            # out by themselves (a budget lease is then charged in full).
            log.warning("could not settle request %s in Redis (%s); its reservation "
                        "expires with its lease", reservation.request_id, self.last_error)

    # -- plumbing ------------------------------------------------------------------

    def _args(self, mode: str, rid: str, checks: Sequence[Check], now: float, ttl_s: float,
              actual: Mapping[str, int] | None) -> list[str | int]:
        records = []
        for c in checks:
            amount: str | int
            if actual is not None:
                value = actual.get(c.name)
                amount = "" if value is None else value
            else:
                amount = 0 if isinstance(c, Slots) else c.amount
            if isinstance(c, Window):
                fields: tuple[object, ...] = ("W", c.name, c.limit, amount, c.window_ms)
            elif isinstance(c, Slots):
                fields = ("C", c.name, c.limit)
            else:
                fields = ("S", c.name, c.limit, amount, c.ledger, c.entry, c.entry_score_ms,
                          c.cutoff_ms, c.expire_at_ms)
            records.append(_US.join(map(str, fields)))
        return [mode, math.floor(now * 1000), rid, math.floor(ttl_s * 1000), _RS.join(records)]

    async def _call(self, tenant: str, checks: Sequence[Check], args: list[str | int]
                    ) -> Any | None:
        """The script's reply, or None when Redis was skipped (down) or failed now."""
        base = self._keys.base(tenant)
        async with self._slots:
            if not self._should_try():
                return None
            try:
                async with asyncio.timeout(self._timeout_s):
                    raw = await self._eval(base, args)
            except _FAILURES as e:
                self._down(e)
                return None
        self._up()
        return raw


    async def _eval(self, base: str, args: list[str | int]) -> Any:
        if self._resp is not None:
            try:
                return await self._resp.execute("EVALSHA", SCRIPT_SHA, 1, base, *args)
            except NoScript:
                return await self._resp.execute("EVAL", SCRIPT, 1, base, *args)
        client = cast(Any, self._cluster)  # redis-py's sync/async union types
        try:
            return await client.evalsha(SCRIPT_SHA, 1, base, *args)
        except NoScriptError:
            return await client.eval(SCRIPT, 1, base, *args)


def _verdict(raw: bytes | str, checks: Sequence[Check]) -> Verdict:
    text = raw.decode() if isinstance(raw, bytes) else raw
    granted, denied_index, reason, retry_ms, *rest = text.split(_US)
    states: dict[str, State] = {}
    for i, check in enumerate(checks):
        used, reserved, reset_ms = rest[3 * i: 3 * i + 3]
        states[check.name] = State(int(used), check.limit, int(reserved), int(reset_ms) / 1000)
    index = int(denied_index)
    return Verdict(
        granted=granted == "1", states=states, denied=checks[index - 1].name if index else None,
        reason=cast(DenyReason, reason), retry_after_s=max(0, int(retry_ms)) / 1000,
    )
