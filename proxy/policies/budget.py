"""Budgets per tenant, in USD and/or tokens per period, with zero overshoot.

::

    budget:
      usd: 25.0            # per period
      tokens: 5000000      # per period, prompt + completion
      period: day          # day | week | month
      rolling: false       # false: calendar-aligned UTC (00:00, ISO Monday, the 1st);
                           # true: the last 24 h / 7 d / 30 d, in 1/96-period buckets
      soft_threshold: 0.8  # past it: x-warden-flags budget_soft_limit, a log line, a gauge
      max_tokens: 1024     # output cap written into requests that set none (default:
                           # the smallest maximum output of the model's deployments)

Before the call the worst case is reserved: counted prompt tokens plus the output cap,
priced at the dearest of the request's deployments. A request that sets no
``max_tokens`` gets one (this cap, else the model's maximum output from the price map),
so the worst case is one the provider enforces. A request is admitted only if
``spent + reserved + worst case <= budget``, atomically across replicas, so concurrent
requests can never overshoot together. After the call the reservation settles to the
provider's reported usage (or stays at the worst case when nothing is known, see
``admission.billed``). A reservation whose replica died is charged in full when its
lease runs out. The remaining overshoot is the tokenizer's estimation error on the
prompt, which ``tokens.FOREIGN_MARGIN`` covers for non-OpenAI models.

Refusals: ``insufficient_quota`` (429, ``x-should-retry: false``, reset time in the
message) when the spend itself leaves no room; ``rate_limit_exceeded`` with
``Retry-After: 1`` when only in-flight reservations do (they may settle lower).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from proxy.admission import AdmissionPolicy, billed, go_duration
from proxy.context import RequestContext, StateKey
from proxy.errors import QuotaExceeded, RateLimited, WardenError
from proxy.prices import FREE, NANO_PER_USD, Price
from proxy.store import NO_SWEEP, Check, Spend, Verdict
from proxy.tenants import Frozen
from proxy.tokens import DEFAULT_MAX_OUTPUT, ESTIMATE, Estimate, estimate, requested_max_output

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger("warden.budget")

PeriodName = Literal["day", "week", "month"]
_ROLLING_MS = {"day": 86_400_000, "week": 7 * 86_400_000, "month": 30 * 86_400_000}
_BUCKETS = 96  # a rolling period forgets spend in 1/96 steps (15 min for a day)
# OpenAI's reasoning models refuse max_tokens and want max_completion_tokens.
_REASONING = re.compile(r"^(o\d|gpt-5)")


class BudgetConfig(Frozen):
    usd: float | None = Field(None, gt=0, description="USD per period.")
    tokens: int | None = Field(None, ge=1, description="Prompt + completion tokens per period.")
    period: PeriodName = Field("month", description="day | week | month.")
    rolling: bool = Field(False, description="Last 24 h / 7 d / 30 d instead of calendar UTC.")
    soft_threshold: float = Field(0.8, gt=0, le=1, description="Warn past this fraction.")
    max_tokens: int | None = Field(
        None, ge=1, description="Output cap set on requests that carry none (default: the "
        "smallest maximum output of the model's deployments, from the price map).")

    @model_validator(mode="after")
    def _something(self) -> BudgetConfig:
        if self.usd is None and self.tokens is None:
            raise ValueError("set usd, tokens, or both")
        return self


@dataclass(frozen=True, slots=True)
class Period:
    """Where this moment's spend goes in the store, and when the period resets."""

    ledger: str
    entry: str
    entry_score_ms: int
    cutoff_ms: int
    expire_at_ms: int
    resets_at: datetime | None  # calendar periods only

    def spend(self, name: str, limit: int, amount: int) -> Spend:
        return Spend(name, limit, amount, self.ledger, self.entry, self.entry_score_ms,
                     self.cutoff_ms, self.expire_at_ms)


def period_at(now: float, period: PeriodName, rolling: bool) -> Period:
    now_ms = int(now * 1000)
    if rolling:
        window = _ROLLING_MS[period]
        bucket = window // _BUCKETS
        index = now_ms // bucket
        return Period(f"r{window}", str(index), (index + 1) * bucket, now_ms - window,
                      now_ms + window + bucket, None)
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end, ledger = day, day + timedelta(days=1), f"d{day:%Y-%m-%d}"
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end, ledger = start + timedelta(days=7), f"w{start:%Y-%m-%d}"
    else:
        start = day.replace(day=1)
        end, ledger = (start + timedelta(days=32)).replace(day=1), f"m{start:%Y-%m}"
    end_ms = int(end.timestamp() * 1000)
    # Kept a day past its end, so late settles of the period still land in it.
    return Period(ledger, "s", end_ms, NO_SWEEP, end_ms + 86_400_000, end)


PERIOD: StateKey[Period] = StateKey("budget.period")


def cap_field(ctx: RequestContext) -> str:
    for d in ctx.deployments:
        if d.fast and _REASONING.match(d.model.rsplit("/", 1)[-1]):
            return "max_completion_tokens"
    return "max_tokens"


def _usd(nano: int) -> str:
    return f"${nano / NANO_PER_USD:.4f}"


class BudgetPolicy(AdmissionPolicy):
    name = "budget"

    def __init__(self, config: BudgetConfig, services: Services, **kw: Any) -> None:
        super().__init__(services, **kw)
        self.config = config
        self.usd_nano = round(config.usd * NANO_PER_USD) if config.usd is not None else None
        self._soft_logged: set[tuple[str, str]] = services.shared("budget.soft_logged", set)

    def _price(self, ctx: RequestContext, worst: Estimate) -> Price:
        """The answering deployment's price, or (before / without one) the dearest."""
        if ctx.deployment is not None:
            return self.prices.price(ctx.deployment)
        prices = [self.prices.price(d) for d in ctx.deployments]
        return max(prices, key=lambda p: p.cost_nano(worst.prompt, worst.max_output),
                   default=FREE)

    async def prepare(self, ctx: RequestContext) -> None:
        if ctx.operation != "chat" or requested_max_output(ctx.body) is not None:
            return
        # The smallest maximum of the deployments: every one of them must accept it.
        cap = self.config.max_tokens or min(
            (m for d in ctx.deployments if (m := self.prices.price(d).max_output_tokens)),
            default=DEFAULT_MAX_OUTPUT)
        # scope runs later and refuses a max_tokens above its own ceiling: a cap the
        # client never asked for must stay under it.
        scope = getattr(ctx.tenant.config, "scope", None) if ctx.tenant is not None else None
        ceiling = getattr(scope, "max_tokens", None)
        if isinstance(ceiling, int):
            cap = min(cap, ceiling)
        ctx.body[cap_field(ctx)] = cap
        ctx.decide(self.name, "cap", "max_tokens", max_tokens=cap)

    def _period(self, ctx: RequestContext) -> Period:
        """The period this request counts in, decided once (a reset mid-request moves
        nothing: its reservation and its settle go to the same ledger)."""
        period = ctx.get(PERIOD)
        if period is None:
            period = period_at(self.clock(), self.config.period, self.config.rolling)
            ctx.set(PERIOD, period)
        return period

    async def checks(self, ctx: RequestContext) -> list[Check]:
        worst = await estimate(ctx, self.tokens, DEFAULT_MAX_OUTPUT, self.services.executor)
        period = self._period(ctx)
        checks: list[Check] = []
        if self.usd_nano is not None:
            cost = self._price(ctx, worst).cost_nano(worst.prompt, worst.max_output)
            checks.append(period.spend("usd", self.usd_nano, cost))
        if self.config.tokens is not None:
            checks.append(period.spend("tokens", self.config.tokens, worst.total))
        return checks

    def owns(self, check_name: str) -> bool:
        return check_name in ("usd", "tokens")

    def admitted(self, ctx: RequestContext, verdict: Verdict) -> None:
        parts: list[str] = []
        soft = False
        for unit in ("usd", "tokens"):
            state = verdict.states.get(unit)
            if state is None:
                continue
            left = state.remaining
            parts.append(f"usd={left / NANO_PER_USD:.9f}" if unit == "usd" else f"tokens={left}")
            ratio = min(1.0, (state.used + state.reserved) / state.limit)
            self.metrics.budget(ctx.tenant_name, unit,
                                left / NANO_PER_USD if unit == "usd" else left, ratio)
            soft = soft or ratio >= self.config.soft_threshold
        ctx.response_headers["x-warden-budget-remaining"] = ", ".join(parts)
        period = self._period(ctx)
        if period.resets_at is not None:
            ctx.response_headers["x-warden-budget-reset"] = f"{period.resets_at:%Y-%m-%dT%H:%M:%SZ}"
        if soft and verdict.granted:
            ctx.flag("budget_soft_limit")
            ctx.decide(self.name, "warn", "soft_threshold")
            if (ctx.tenant_name, period.ledger) not in self._soft_logged:
                self._soft_logged.add((ctx.tenant_name, period.ledger))
                log.warning("tenant %s passed %.0f%% of its %s budget (%s)", ctx.tenant_name,
                            self.config.soft_threshold * 100, self.config.period,
                            ctx.response_headers["x-warden-budget-remaining"])

    def refusal(self, ctx: RequestContext, verdict: Verdict) -> WardenError:
        unit = verdict.denied or "usd"
        state = verdict.states[unit]
        worst = ctx.get(ESTIMATE)
        assert worst is not None  # checks() computed it
        fmt = _usd if unit == "usd" else (lambda n: f"{n} tokens")
        wanted = (self._price(ctx, worst).cost_nano(worst.prompt, worst.max_output)
                  if unit == "usd" else worst.total)
        needs = (f"this request could cost up to {fmt(wanted)} ({worst.prompt} prompt tokens "
                 f"+ {worst.max_output} max output tokens)")
        if verdict.reason == "held":
            return RateLimited(
                f"The {self.config.period} budget of tenant {ctx.tenant_name} is held by "
                f"requests in flight ({fmt(state.used)} spent, {fmt(state.reserved)} "
                f"reserved of {fmt(state.limit)}); {needs}. Please try again in 1s.",
                retry_after_s=verdict.retry_after_s or 1.0)
        return QuotaExceeded(
            f"Budget exhausted for tenant {ctx.tenant_name}: {fmt(state.used)} of "
            f"{fmt(state.limit)} spent {self._when(ctx, verdict)}; {needs}. Lower "
            "max_tokens, or wait for the budget to reset.",
            headers={k: v for k, v in ctx.response_headers.items()
                     if k == "x-warden-budget-reset"})

    def _when(self, ctx: RequestContext, verdict: Verdict) -> str:
        period = self._period(ctx)
        if period.resets_at is not None:
            return (f"this {self.config.period} (it resets at "
                    f"{period.resets_at:%Y-%m-%dT%H:%M:%SZ})")
        return (f"in the rolling {self.config.period} (enough frees up in "
                f"{go_duration(verdict.retry_after_s)})")

    def actual(self, ctx: RequestContext) -> dict[str, int]:
        worst = ctx.get(ESTIMATE)
        if worst is None:
            return {}
        prompt, completion = billed(ctx, worst)
        out: dict[str, int] = {}
        if self.usd_nano is not None:
            out["usd"] = self._price(ctx, worst).cost_nano(prompt, completion)
        if self.config.tokens is not None:
            out["tokens"] = prompt + completion
        return out


def build(config: BudgetConfig, services: Services) -> BudgetPolicy:
    return BudgetPolicy(config, services)
