"""Calls the deployments of a request, in order, until one answers.

Work done once per request (the policy-edited body) is kept apart from work done once
per attempt (the deployment's model name, its transport): an attempt never mutates the
body the next attempt sends.

A stream is only returned once its first event has arrived, so everything up to the
first byte the client sees can still fail over.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.context import Attempt, RequestContext
from proxy.errors import UpstreamFailed, UpstreamTimeout
from proxy.tenants import Deployment
from proxy.upstream.base import Transport, UpstreamError, UpstreamReply, UpstreamStream


class PrefetchedStream:
    """An upstream stream whose first event was already read (before prepare())."""

    def __init__(self, inner: UpstreamStream, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self.status = inner.status
        self.headers = inner.headers
        self.first = first
        self._inner = inner
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        async for event in self._rest:
            yield event

    async def aclose(self) -> None:
        await self._inner.aclose()


async def prefetch(stream: UpstreamStream) -> PrefetchedStream:
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        await stream.aclose()
        raise UpstreamError("empty_stream", "provider ended the stream before any event") from None
    except BaseException:
        await stream.aclose()
        raise
    return PrefetchedStream(stream, first, iterator)


class Upstream:
    def __init__(self, fast: Transport, translated: Transport) -> None:
        self.fast = fast
        self.translated = translated

    def transport(self, deployment: Deployment) -> Transport:
        return self.fast if deployment.fast else self.translated

    async def call(
        self, ctx: RequestContext, body: dict[str, Any]
    ) -> UpstreamReply | PrefetchedStream:
        """One attempt at the first deployment (the failover issue adds the rest)."""
        deployment = ctx.deployments[0]
        attempt_body = {**body, "model": deployment.model}
        started = time.perf_counter()
        try:
            result = await self.transport(deployment).send(
                deployment, ctx.operation, attempt_body, ctx.stream
            )
            if isinstance(result, UpstreamReply):
                ctx.attempts.append(Attempt(deployment.label, result.status, "ok",
                                            time.perf_counter() - started))
            else:
                result = await prefetch(result)
                ctx.attempts.append(Attempt(deployment.label, 200, "ok",
                                            time.perf_counter() - started))
        except UpstreamError as e:
            ctx.attempts.append(Attempt(deployment.label, None, e.reason,
                                        time.perf_counter() - started))
            error = UpstreamTimeout if e.timeout else UpstreamFailed
            raise error(f"deployment {deployment.label} failed: {e}") from None
        finally:
            ctx.upstream_s += time.perf_counter() - started
        ctx.deployment = deployment
        return result

    async def close(self) -> None:
        await self.fast.close()
        await self.translated.close()
