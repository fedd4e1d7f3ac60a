"""Rate limits per tenant, and optionally per tenant and model: requests per minute,
tokens per minute, requests in flight.

Algorithm: a sliding-window log (``store.Window``). Each admitted request is an entry
stamped with its arrival time, and a request is admitted only if the entries of the
last 60 s plus itself fit the limit. So *any* 60-second interval holds at most ``rpm``
requests and ``tpm`` tokens, with no 2x burst at a window boundary, and ``Retry-After``
is the exact moment enough entries leave. Tokens are reserved as counted prompt tokens
plus ``max_tokens`` (times ``n``) and settled to the provider's usage afterwards.
Concurrency is a set of leased slots (``store.Slots``), released when the request ends
or, if its replica died, when the lease runs out.

::

    limits:
      rpm: 600            # requests per minute, whole tenant
      tpm: 200000         # prompt + completion tokens per minute
      concurrency: 20     # requests in flight
      models:             # optional, on top of the tenant-wide limits
        gpt-4o: {rpm: 60, tpm: 50000}

Every response carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
(the tightest applicable window; reset = when the oldest counted entry leaves it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from proxy.admission import AdmissionPolicy, billed, go_duration
from proxy.context import RequestContext
from proxy.errors import RateLimited, WardenError
from proxy.store import Check, Slots, State, Verdict, Window
from proxy.tenants import Frozen
from proxy.tokens import (
    DEFAULT_MAX_OUTPUT,
    ESTIMATE,
    Estimate,
    estimate,
    requested_max_output,
)

if TYPE_CHECKING:
    from proxy.services import Services

MINUTE_MS = 60_000


class Rates(Frozen):
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Prompt + completion tokens per minute.")
    concurrency: int | None = Field(None, ge=1, description="Requests in flight.")

    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None


class LimitsConfig(Rates):
    models: dict[str, Rates] = Field(
        default_factory=dict, description="Per-model limits, on top of the tenant-wide ones.")

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, Rates]) -> dict[str, Rates]:
        for name in models:
            if not name or any(ord(ch) < 0x20 for ch in name):
                raise ValueError(f"model name {name!r} is empty or has control characters")
        return models

    @model_validator(mode="after")
    def _something(self) -> LimitsConfig:
        if self.empty() and all(r.empty() for r in self.models.values()):
            raise ValueError("set at least one of rpm, tpm, concurrency")
        return self


def _rates(rates: Rates, suffix: str, worst: Estimate | None, guessed: bool) -> list[Check]:
    checks: list[Check] = []
    if rates.rpm is not None:
        checks.append(Window(f"rpm{suffix}", rates.rpm, MINUTE_MS, 1))
    if rates.tpm is not None and worst is not None:
        tokens = worst.total
        if guessed:  # the output size is our guess: never "too large" because of it
            tokens = min(tokens, max(rates.tpm, worst.prompt))
        checks.append(Window(f"tpm{suffix}", rates.tpm, MINUTE_MS, tokens))
    if rates.concurrency is not None:
        checks.append(Slots(f"concurrency{suffix}", rates.concurrency))
    return checks


def _tightest(verdict: Verdict, kind: str) -> State | None:
    states = [s for name, s in verdict.states.items() if name.split("@", 1)[0] == kind]
    return min(states, key=lambda s: s.remaining, default=None)


class LimitsPolicy(AdmissionPolicy):
    name = "limits"

    def __init__(self, config: LimitsConfig, services: Services, **kw: Any) -> None:
        super().__init__(services, **kw)
        self.config = config

    async def checks(self, ctx: RequestContext) -> list[Check]:
        worst: Estimate | None = None
        per_model = self.config.models.get(ctx.model)
        if self.config.tpm is not None or (per_model is not None and per_model.tpm is not None):
            worst = await estimate(ctx, self.tokens, self._default_output(ctx),
                                   self.services.executor)
        # Without max_tokens (and no budget cap), the output reserved is the model's
        # maximum: right to settle from, wrong to refuse a request for.
        guessed = ctx.operation == "chat" and requested_max_output(ctx.body) is None
        checks = _rates(self.config, "", worst, guessed)
        if per_model is not None:
            checks += _rates(per_model, f"@{ctx.model}", worst, guessed)
        return checks

    def _default_output(self, ctx: RequestContext) -> int:
        if not ctx.deployments:
            return DEFAULT_MAX_OUTPUT
        found = [self.prices.price(d).max_output_tokens for d in ctx.deployments]
        return max((m for m in found if m), default=DEFAULT_MAX_OUTPUT)

    def owns(self, check_name: str) -> bool:
        return check_name.split("@", 1)[0] in ("rpm", "tpm", "concurrency")

    def admitted(self, ctx: RequestContext, verdict: Verdict) -> None:
        headers = ctx.response_headers
        for kind, suffix in (("rpm", "requests"), ("tpm", "tokens")):
            state = _tightest(verdict, kind)
            if state is not None:
                headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{suffix}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{suffix}"] = go_duration(state.reset_s)

    def refusal(self, ctx: RequestContext, verdict: Verdict) -> WardenError:
        name = verdict.denied or ""
        kind, _, model = name.partition("@")
        state = verdict.states[name]
        scope = f"tenant {ctx.tenant_name}" + (f" on model {model}" if model else "")
        wait = verdict.retry_after_s
        headers = {"retry-after-ms": str(max(1, round(wait * 1000)))}
        if kind == "concurrency":
            return RateLimited(
                f"Too many concurrent requests for {scope}: limit {state.limit} in flight. "
                f"Please try again in {go_duration(wait)}.", retry_after_s=wait,
                headers=headers)
        unit = "requests per minute (RPM)" if kind == "rpm" else "tokens per minute (TPM)"
        wanted = 1
        if kind == "tpm":
            found = ctx.get(ESTIMATE)
            wanted = found.total if found is not None else 0
        if verdict.reason == "too_large":
            return RateLimited(
                f"Request too large for {scope} on {unit}: Limit {state.limit}, Requested "
                f"{wanted}. Shorten the prompt or lower max_tokens.", retry_after_s=0,
                headers={"x-should-retry": "false"})
        return RateLimited(
            f"Rate limit reached for {scope} on {unit}: Limit {state.limit}, Used "
            f"{state.used}, Requested {wanted}. Please try again in {go_duration(wait)}.",
            retry_after_s=wait, headers=headers)

    def actual(self, ctx: RequestContext) -> dict[str, int]:
        found = ctx.get(ESTIMATE)
        if found is None:
            return {}
        used = sum(billed(ctx, found))
        return {name: used for name in _token_windows(self.config, ctx.model)}


def _token_windows(config: LimitsConfig, model: str) -> list[str]:
    names = ["tpm"] if config.tpm is not None else []
    per_model = config.models.get(model)
    if per_model is not None and per_model.tpm is not None:
        names.append(f"tpm@{model}")
    return names


def build(config: LimitsConfig, services: Services) -> LimitsPolicy:
    return LimitsPolicy(config, services)
