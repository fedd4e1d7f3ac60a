"""One store reservation per request, however many policies contribute to it.

``limits`` (RPM, TPM, concurrency) and ``budget`` (USD, tokens) are separate policies
with separate sections in the policy file, but a request may cost only one store round
trip before the upstream call and one after (DESIGN §3). So both are
``AdmissionPolicy``\\ s and share the request's ``Admission``:

- each one's ``on_request`` joins it (and may edit the body first: the budget caps
  ``max_tokens``, which the TPM check must then see);
- the *last* member to join (the tenant's chain says how many there are) gathers every
  member's checks and makes the single ``Store.reserve`` call; a refusal is raised as
  the error of the member that owns the failed check;
- the *first* ``on_done`` settles for everyone, off the response path
  (``Store.settle_soon``); the others find it settled.

A future counting policy joins by subclassing ``AdmissionPolicy``; nothing else changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from prometheus_client import Counter, Gauge

from proxy.context import RequestContext, StateKey
from proxy.errors import ServiceUnavailable, WardenError
from proxy.pipeline import Policy
from proxy.prices import PriceBook
from proxy.store import Check, Reservation, Verdict
from proxy.tokens import Estimate, TokenCounter

if TYPE_CHECKING:
    from proxy.services import Services

Clock = Callable[[], float]


class AdmissionMetrics:
    """Counters of refusals and budget levels, and the store's health, once per process."""

    def __init__(self, services: Services) -> None:
        registry = services.metrics.registry
        self.refusals = Counter(
            "warden_limit_refusals", "Requests refused by a rate limit or budget.",
            ["tenant", "policy", "limit", "reason"], registry=registry)
        self.budget_remaining = Gauge(
            "warden_budget_remaining", "Budget left in the current period (usd or tokens).",
            ["tenant", "unit"], registry=registry)
        self.budget_used_ratio = Gauge(
            "warden_budget_used_ratio", "Spent plus reserved over the budget, 0..1.",
            ["tenant", "unit"], registry=registry)
        self.store_degraded = Gauge(
            "warden_store_degraded",
            "1 while Redis is unreachable (limits are per replica, or refused).",
            registry=registry)
        self.store_fallbacks = Counter(
            "warden_store_fallback_requests",
            "Requests decided by per-replica counters because Redis was unreachable.",
            registry=registry)
        services.store.add_listener(self._store_event)
        self._gauges: dict[tuple[str, str, str], Gauge] = {}

    def budget(self, tenant: str, unit: str, remaining: float, ratio: float) -> None:
        """Set both budget gauges; labelled children are cached (labels() takes a lock)."""
        for name, family, value in (("left", self.budget_remaining, remaining),
                                    ("ratio", self.budget_used_ratio, ratio)):
            child = self._gauges.get((name, tenant, unit))
            if child is None:
                child = self._gauges[(name, tenant, unit)] = family.labels(tenant, unit)
            child.set(value)

    def _store_event(self, event: str, detail: object) -> None:
        if event == "degraded":
            self.store_degraded.set(1)
        elif event == "recovered":
            self.store_degraded.set(0)
        elif event == "fallback":
            self.store_fallbacks.inc()


class Admission:
    """Per request: who joined, the reservation, whether it was settled."""

    __slots__ = ("expected", "members", "reservation", "settled")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.members: list[AdmissionPolicy] = []
        self.reservation: Reservation | None = None
        self.settled = False

    async def submit(self, ctx: RequestContext, by: AdmissionPolicy) -> None:
        checks: list[Check] = []
        for member in self.members:
            checks += await member.checks(ctx)
        if not checks:
            return
        try:
            res = await self._reserve(ctx, by, checks)
        except ServiceUnavailable:
            ctx.decide(by.name, "refuse", "store_unavailable")
            raise
        self.reservation = res
        verdict = res.verdict
        if verdict.local:
            ctx.flag("limits_local")  # Redis unreachable: per-replica counters decided
        for member in self.members:
            member.admitted(ctx, verdict)
        if not verdict.granted:
            owner = next(m for m in self.members if m.owns(verdict.denied or ""))
            kind = (verdict.denied or "").split("@", 1)[0]
            ctx.decide(owner.name, "refuse", kind, why=verdict.reason)
            by.metrics.refusals.labels(ctx.tenant_name, owner.name, kind, verdict.reason).inc()
            raise owner.refusal(ctx, verdict)

    async def _reserve(self, ctx: RequestContext, by: AdmissionPolicy,
                       checks: list[Check]) -> Reservation:
        reserve = by.store.reserve(ctx.tenant_name, ctx.request_id, checks, now=by.clock(),
                                   ttl_s=by.ttl_s)
        if not by.store.remote:
            return await reserve  # decided in-process, without yielding: not cancellable
        # Shielded: a client that hangs up while Redis decides must not leave a
        # reservation behind that nobody settles (it would hold a concurrency slot and
        # a budget lease until the lease ran out). The call finishes on its own; if it
        # reserved, the reservation is settled at once, for nothing (nothing was sent).
        reserving = asyncio.ensure_future(reserve)
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            reserving.add_done_callback(lambda done: self._abandoned(done, ctx, by))
            raise

    def _abandoned(self, done: asyncio.Future[Reservation], ctx: RequestContext,
                   by: AdmissionPolicy) -> None:
        """The reserve of a request whose client left finished: give it all back."""
        if done.cancelled() or done.exception() is not None:
            return  # nothing was reserved (or the store failed: nothing to give back)
        self.reservation = done.result()
        self.settle(ctx, by)  # no upstream call was made: members bill nothing

    def settle(self, ctx: RequestContext, by: AdmissionPolicy) -> None:
        res = self.reservation
        if self.settled or res is None or not res.verdict.granted:
            return
        self.settled = True
        actual: dict[str, int] = {}
        for member in self.members:
            actual.update(member.actual(ctx))
        by.store.settle_soon(res, actual, now=by.clock())


ADMISSION: StateKey[Admission] = StateKey("admission")


def _expected(ctx: RequestContext) -> int:
    if ctx.tenant is None:
        return 1
    return sum(isinstance(p, AdmissionPolicy) for p in ctx.tenant.policies) or 1


class AdmissionPolicy(Policy):
    """Base of policies whose checks go into the request's one reservation."""

    name: ClassVar[str] = "admission"

    def __init__(self, services: Services, clock: Clock = time.time) -> None:
        self.services = services
        self.store = services.store
        self.ttl_s = services.settings.reservation_ttl_s
        self.clock = clock
        self.metrics = services.shared("admission.metrics", lambda: AdmissionMetrics(services))
        self.tokens = services.shared("tokens", TokenCounter)
        self.prices = services.shared("prices", PriceBook.bundled)

    # -- what a member provides ------------------------------------------------------

    async def prepare(self, ctx: RequestContext) -> None:
        """Edit the body before any member computes its checks."""

    async def checks(self, ctx: RequestContext) -> list[Check]:
        raise NotImplementedError

    def owns(self, check_name: str) -> bool:
        raise NotImplementedError

    def admitted(self, ctx: RequestContext, verdict: Verdict) -> None:
        """Every member sees the verdict, granted or not (headers, flags, gauges)."""

    def refusal(self, ctx: RequestContext, verdict: Verdict) -> WardenError:
        raise NotImplementedError

    def actual(self, ctx: RequestContext) -> dict[str, int]:
        """Real amounts by check name, from ``ctx.usage`` (or the worst case)."""
        return {}

    # -- hooks -----------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.operation == "models":
            return
        admission = ctx.get(ADMISSION)
        if admission is None:
            admission = Admission(_expected(ctx))
            ctx.set(ADMISSION, admission)
        admission.members.append(self)
        await self.prepare(ctx)
        if len(admission.members) >= admission.expected:
            await admission.submit(ctx, self)

    async def on_done(self, ctx: RequestContext) -> None:
        admission = ctx.get(ADMISSION)
        if admission is not None:
            admission.settle(ctx, self)


# Attempts that never reached a provider: nothing to bill.
_NOT_SENT = frozenset({"connect_error", "breaker_open"})


def billed(ctx: RequestContext, worst: Estimate) -> tuple[int, int]:
    """(prompt, completion) tokens the provider can have billed for this request.

    Its reported usage when there is one. Nothing when it was never called, or every
    attempt was refused (an HTTP error status, or no connection at all). Otherwise —
    the client left mid-stream, a timeout, a reset, a reply without usage — the worst
    case: the provider may have generated every token it was allowed to, and a budget
    must not count less than may have been spent. (Failed attempts failover moved past
    are not added on top: a provider that billed a timed-out attempt anyway is missed.)
    """
    if ctx.usage is not None:
        return ctx.usage.prompt_tokens, ctx.usage.completion_tokens
    if not ctx.attempts and ctx.upstream_s == 0:
        return 0, 0  # never called (refused, or the client left before the call)
    refused = all((a.status is not None and a.status >= 400) or a.reason in _NOT_SENT
                  for a in ctx.attempts)
    if ctx.attempts and refused and not ctx.client_disconnected:
        return 0, 0
    return worst.prompt, worst.max_output


def go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text
