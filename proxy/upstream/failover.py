"""Calls a model's deployments until one answers: ordering, retries, breakers, deadline.

One request walks its deployments in order (``order.py``); each attempt's outcome is
classified (``classify.py``). The provider's trouble moves on to the next deployment
*at once*, and a deployment is tried again (``retry.py``: back-off with jitter, the
provider's Retry-After) only after the others had their turn in that round: a healthy
secondary answers without anyone waiting out a back-off. Deployments whose circuit
breaker is open are skipped without a call (``breaker.py``). Nothing runs past the
request's deadline (what the client waits, at most ``upstream_deadline_s``).

Work done once per request (the policy-edited body) is kept apart from work done once
per attempt (the deployment's model name, its transport): an attempt never mutates the
body the next attempt sends.

A stream is only returned once its first event has arrived (and parsed), so everything
up to the first byte the client sees can still fail over; later failures are the relay's
(one SSE error event, a clean close) and still count against the breaker.

When every attempt fails the client gets one error naming each attempt (deployment
label, status, reason; never provider text, which may echo credentials), 504 when it
ran out of time, else 502, carrying the last ``Retry-After`` the providers sent. Not the
last provider's own reply: it would tell the agent about one deployment of several, and
the openai SDK retries 502/504 exactly as it retries a provider's 429/5xx.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy import sse
from proxy.context import Attempt, RequestContext
from proxy.errors import UpstreamFailed, UpstreamTimeout, WardenError
from proxy.settings import Settings
from proxy.tenants import Deployment, FallbackKind, ModelRoute
from proxy.upstream.base import (
    Transport,
    UpstreamError,
    UpstreamReply,
    UpstreamStream,
    parse_chunk,
)
from proxy.upstream.breaker import Breaker, BreakerConfig, BreakerRegistry, Permit
from proxy.upstream.classify import OK, Outcome, Verdict, classify_error, classify_reply
from proxy.upstream.order import ordered
from proxy.upstream.retry import RetryPolicy

_LEADING_COMMENTS = 64  # keep-alives tolerated before a stream's first data event
_FALLBACK_KIND: dict[Verdict, FallbackKind] = {
    Verdict.CONTEXT_WINDOW: "context_window_fallbacks",
    Verdict.CONTENT_POLICY: "content_policy_fallbacks",
}


class PrefetchedStream:
    """An upstream stream whose first event was already read (before prepare())."""

    def __init__(self, inner: UpstreamStream, first: bytes, rest: AsyncIterator[bytes],
                 on_failure: Callable[[UpstreamError], None] | None = None) -> None:
        self.status = inner.status
        self.headers = inner.headers
        self.first = first
        self._inner = inner
        self._rest = rest
        self._on_failure = on_failure
        self._first_pending = True

    # One pass, as a class iterator: ``first`` then the rest. A consumer that stops
    # early (at [DONE]) leaves no async generator for the event loop to finalise.
    def __aiter__(self) -> PrefetchedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._first_pending:
            self._first_pending = False
            return self.first
        try:
            return await self._rest.__anext__()
        except UpstreamError as e:
            if self._on_failure is not None:
                self._on_failure(e)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _check_first(data: bytes) -> None:
    """A stream's first data event must be a chunk: garbage or an error event there
    still fails over (nothing reached the client yet)."""
    if data == sse.DONE:
        raise UpstreamError("empty_stream", "provider ended the stream before any chunk")
    parse_chunk(data)


async def prefetch(stream: UpstreamStream,
                   on_failure: Callable[[UpstreamError], None] | None = None) -> PrefetchedStream:
    iterator = stream.__aiter__()
    try:
        for _ in range(_LEADING_COMMENTS):
            event = await iterator.__anext__()
            data = sse.event_data(event)
            if data is None:
                continue  # a keep-alive before any content: nothing the client needs
            _check_first(data)
            return PrefetchedStream(stream, event, iterator, on_failure)
        raise UpstreamError("bad_reply", "provider sent only comments")
    except StopAsyncIteration:
        await stream.aclose()
        raise UpstreamError("empty_stream", "provider ended the stream before any event") from None
    except BaseException:
        await stream.aclose()
        raise


Result = UpstreamReply | PrefetchedStream

_DEADLINE = Outcome(Verdict.RETRY, "deadline", timeout=True)
_LEAKED_TIMEOUT = Outcome(Verdict.RETRY, "timeout", timeout=True)
_SKIPPED = Outcome(Verdict.RETRY, "breaker_open")


class _OutOfTime(Exception):
    """The request's deadline passed: stop trying, whatever is left."""


@dataclass(slots=True)
class _Run:
    """One request's walk over its deployments (per-request state, not on Upstream)."""

    ctx: RequestContext
    body: dict[str, Any]
    retry: RetryPolicy
    deadline: float  # event-loop time
    first: int  # index of this call's first entry in ctx.attempts
    held: UpstreamReply | None = None  # a context/content refusal, kept while fallbacks try
    switch: Verdict | None = None
    retry_after_s: float | None = None
    # The last failed attempt (label, reason): a failover once another attempt starts.
    last_failure: tuple[str, str] | None = None
    # Per attempt of this call, Warden's description of what went wrong.
    details: list[str] = field(default_factory=list)


class Upstream:
    def __init__(self, fast: Transport, translated: Transport, settings: Settings, *,
                 rng: random.Random | None = None) -> None:
        self.fast = fast
        self.translated = translated
        self.settings = settings
        self.breakers = BreakerRegistry(BreakerConfig.from_settings(self.settings))
        self.rng = rng or random.Random()
        self._retry = RetryPolicy.from_settings(self.settings)
        # For metrics (collector.py): attempts by (deployment label, reason), and
        # failovers by (deployment failed, reason): a failed attempt followed by another
        # attempt, at the next deployment or (after back-off) the same one.
        self.attempt_counts: Counter[tuple[str, str]] = Counter()
        self.failover_counts: Counter[tuple[str, str]] = Counter()

    def transport(self, deployment: Deployment) -> Transport:
        return self.fast if deployment.fast else self.translated

    def retry_policy(self, route: ModelRoute | None) -> RetryPolicy:
        if route is None or route.retry.model_fields_set == set():
            return self._retry
        return RetryPolicy.from_settings(self.settings, route.retry)

    async def call(self, ctx: RequestContext, body: dict[str, Any]) -> Result:
        """The first answer from ``ctx.deployments`` (or their fallbacks); raises one
        ``UpstreamFailed`` / ``UpstreamTimeout`` when none answered."""
        loop = asyncio.get_running_loop()
        budget = ctx.deadline_s if ctx.deadline_s is not None \
            else self.settings.upstream_deadline_s
        route = ctx.tenant.config.models.get(ctx.model) if ctx.tenant is not None else None
        run = _Run(ctx, body, self.retry_policy(route),
                   loop.time() + budget - ctx.elapsed(), len(ctx.attempts))
        try:
            result = await self._walk(run, ordered(ctx.deployments, self.rng), fallback=False)
            if result is None and run.switch is not None and ctx.tenant is not None:
                fallbacks = ctx.tenant.config.fallbacks(ctx.model, _FALLBACK_KIND[run.switch])
                result = await self._walk(run, ordered(fallbacks, self.rng), fallback=True)
        except _OutOfTime:
            raise self._all_failed(run, timed_out=True) from None
        if result is not None:
            return result
        if run.held is not None:  # fallbacks did not help: the provider's refusal stands
            return run.held
        raise self._all_failed(run, timed_out=False)

    async def _walk(self, run: _Run, plan: Sequence[Deployment], *, fallback: bool
                    ) -> Result | None:
        loop = asyncio.get_running_loop()
        tries = [0] * len(plan)
        ready = [0.0] * len(plan)
        pending = list(range(len(plan)))
        while pending:
            again: list[int] = []
            for i in pending:
                if loop.time() >= run.deadline:
                    raise _OutOfTime
                if tries[i]:
                    if ready[i] >= run.deadline:
                        continue  # its wait would outlast the client
                    await self._sleep_until(run.ctx, ready[i])
                tries[i] += 1
                outcome, result = await self._attempt(run, plan[i])
                verdict = outcome.verdict
                if verdict in (Verdict.OK, Verdict.FINAL):
                    return result
                if verdict is Verdict.RETRY:
                    self._note_failure(run, plan[i], outcome)
                    if outcome is _SKIPPED:
                        continue
                    wait = run.retry.wait(tries[i], outcome.retry_after_s, self.rng)
                    if wait is not None:
                        ready[i] = loop.time() + wait
                        again.append(i)
                    continue
                # A context-window / content-policy refusal (a reply, never a stream).
                assert isinstance(result, UpstreamReply)
                if fallback:
                    run.held = result  # try the next fallback; keep this if none helps
                    continue
                if run.ctx.tenant is None or not run.ctx.tenant.config.fallbacks(
                        run.ctx.model, _FALLBACK_KIND[verdict]):
                    return result  # no fallbacks configured: a 4xx, returned as is
                run.held, run.switch = result, verdict
                run.last_failure = (plan[i].label, outcome.reason)
                return None
            pending = again
        return None

    async def _sleep_until(self, ctx: RequestContext, when: float) -> None:
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
            ctx.upstream_s += delay  # waiting on the provider, not Warden's overhead

    def _note_failure(self, run: _Run, deployment: Deployment, outcome: Outcome) -> None:
        if outcome.retry_after_s is not None:
            run.retry_after_s = outcome.retry_after_s
        run.last_failure = (deployment.label, outcome.reason)

    async def _attempt(self, run: _Run, d: Deployment) -> tuple[Outcome, Result | None]:
        ctx = run.ctx
        breaker = self.breakers.get(d)
        permit = breaker.allow()
        if permit is Permit.REJECT:
            self._record(run, Attempt(d.label, None, "breaker_open", 0.0),
                         "circuit breaker open")
            return _SKIPPED, None
        if run.last_failure is not None:
            self.failover_counts[run.last_failure] += 1
            run.last_failure = None
        attempt = Attempt(d.label, None, "", 0.0)
        started = time.perf_counter()
        cm = asyncio.timeout_at(run.deadline)
        result: Result | None = None
        try:
            async with cm:
                result = await self._send(run, d, breaker, attempt, started)
            outcome = classify_reply(result) if isinstance(result, UpstreamReply) else OK
        except UpstreamError as e:
            outcome = classify_error(e)
        except TimeoutError:
            # Ours (the deadline), or one a transport failed to translate.
            outcome = _DEADLINE if cm.expired() else _LEAKED_TIMEOUT
        except BaseException:  # cancelled: the client went away mid-attempt
            breaker.release(permit)
            attempt.reason, attempt.duration_s = "cancelled", time.perf_counter() - started
            self._record(run, attempt, "")
            raise
        finally:
            ctx.upstream_s += time.perf_counter() - started
        attempt.duration_s = time.perf_counter() - started
        attempt.reason = outcome.reason
        if result is not None:
            attempt.status = result.status
        self._record(run, attempt, outcome.detail)
        if outcome is _DEADLINE:
            breaker.release(permit)  # the client's patience, not the provider's health
            raise _OutOfTime
        breaker.record(permit, outcome.healthy)
        if outcome.verdict is not Verdict.RETRY:
            ctx.deployment = d  # the one whose reply the client may get
        return outcome, result

    async def _send(self, run: _Run, d: Deployment, breaker: Breaker, attempt: Attempt,
                    started: float) -> Result:
        ctx = run.ctx
        body = {**run.body, "model": d.model}  # a new dict per attempt; run.body untouched
        result = await self.transport(d).send(d, ctx.operation, body, ctx.stream)
        if isinstance(result, UpstreamReply):
            return result

        def failed(e: UpstreamError) -> None:
            attempt.reason = f"midstream_{e.reason}"  # the access log shows it
            breaker.failed_midstream()

        # The first event is part of "first byte": bounded by the deployment's
        # first_byte timeout counted from the start of this attempt.
        remaining = max(0.0, d.timeouts.first_byte - (time.perf_counter() - started))
        cm = asyncio.timeout(remaining)
        try:
            async with cm:
                return await prefetch(result, failed)
        except TimeoutError:
            if not cm.expired():
                raise
            raise UpstreamError("first_byte_timeout", "provider sent no stream event in time",
                                timeout=True) from None

    def _record(self, run: _Run, attempt: Attempt, detail: str) -> None:
        run.ctx.attempts.append(attempt)
        run.details.append(detail)
        self.attempt_counts[(attempt.deployment, attempt.reason)] += 1

    def _all_failed(self, run: _Run, *, timed_out: bool) -> WardenError:
        attempts = run.ctx.attempts[run.first:]
        tried = [a for a in attempts if a.reason != "breaker_open"]
        timeouts = bool(tried) and all(a.reason.endswith("timeout") or a.reason == "deadline"
                                       for a in tried)
        kind: type[WardenError] = UpstreamTimeout if timed_out or timeouts else UpstreamFailed
        what = "ran out of time" if timed_out else "failed"
        listed = _summarise(attempts, run.details)
        message = (f"every upstream attempt for model {run.ctx.model!r} {what}: "
                   + (listed or "no attempt fitted in the deadline"))
        headers: dict[str, str] = {}
        if run.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(run.retry_after_s)))
            headers["retry-after-ms"] = str(round(run.retry_after_s * 1000))
        return kind(message, headers=headers)

    async def close(self) -> None:
        await self.fast.close()
        await self.translated.close()


def _summarise(attempts: Sequence[Attempt], details: Sequence[str]) -> str:
    """``label (status, reason: detail)`` per attempt, repeats folded into ``xN``."""
    parts: list[str] = []
    previous, repeats = "", 0
    for attempt, detail in zip(attempts, details, strict=False):
        status = attempt.status if attempt.status is not None else "-"
        text = f"{attempt.deployment} ({status}, {attempt.reason}" + \
            (f": {detail})" if detail else ")")
        if text == previous:
            repeats += 1
            continue
        if repeats:
            parts[-1] += f" x{repeats + 1}"
        parts.append(text)
        previous, repeats = text, 0
    if repeats:
        parts[-1] += f" x{repeats + 1}"
    return "; ".join(parts)
