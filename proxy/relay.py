"""Replies on their way back: usage accounting, the policy chain, bytes to the client.

Usage is always wanted (budgets, telemetry), so streams are sent upstream with
``stream_options.include_usage``; when the client did not ask for it, the usage chunk is
dropped and the ``"usage":null`` fields removed, so the client sees what the provider
would have sent it. Chunks no policy needs are relayed as the exact upstream bytes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from proxy import sse
from proxy.appkeys import SERVICES
from proxy.context import RequestContext, Usage
from proxy.errors import UpstreamFailed, WardenError
from proxy.pipeline import Chain
from proxy.request import Request
from proxy.response import StreamResponse
from proxy.tokens import TokenCounter
from proxy.upstream.base import UpstreamError, parse_chunk
from proxy.upstream.failover import PrefetchedStream
from proxy.usage import StreamTap, estimate_stream, prepare

_USAGE_OBJECT = (b'"usage":{', b'"usage": {')
_USAGE_NULL = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')


def usage_of(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def force_stream_usage(ctx: RequestContext) -> None:
    """Ask the provider for a usage chunk; remember whether the client asked itself."""
    options = ctx.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        ctx.client_wants_usage = True
        return
    ctx.body["stream_options"] = {**(options or {}), "include_usage": True}


class StreamRelay:
    """Turns upstream SSE events into the bytes to write, one event at a time."""

    __slots__ = ("_chain", "_ctx", "done", "tap")

    def __init__(self, ctx: RequestContext, chain: Chain) -> None:
        self._ctx = ctx
        self._chain = chain
        self.done = False
        # References to the raw events, parsed only if no usage chunk arrives (usage.py).
        self.tap = StreamTap()

    def event(self, raw: bytes) -> bytes:
        """Bytes to send for one upstream event (b"" to send nothing yet)."""
        self.tap.add(raw)
        data = sse.event_data(raw)
        if data is None:
            return raw  # comments / keep-alives pass through untouched
        if data == sse.DONE:
            self.done = True
            return b""  # the caller flushes held-back chunks before [DONE]
        ctx = self._ctx
        has_usage = any(m in data for m in _USAGE_OBJECT)
        if not has_usage and not self._chain.streams:
            if not ctx.client_wants_usage:
                for marker in _USAGE_NULL:
                    if marker in raw:
                        raw = raw.replace(marker, b"")
                        break
            return raw
        chunk = parse_chunk(data)
        if has_usage:
            ctx.usage = usage_of(chunk) or ctx.usage
            ctx.response_model = chunk.get("model") or ctx.response_model
        if not ctx.client_wants_usage and "usage" in chunk:
            del chunk["usage"]
            if not chunk.get("choices"):
                return b""  # the usage-only chunk the client did not ask for
        out = self._chain.chunk(ctx, chunk) if self._chain.streams else [chunk]
        return b"".join(sse.encode(c) for c in out)

    async def tail(self) -> bytes:
        """Held-back chunks, then [DONE]."""
        out = await self._chain.stream_end(self._ctx)
        return b"".join(sse.encode(c) for c in out) + sse.encode_done()


def error_event(error: WardenError) -> bytes:
    return sse.encode(error.body())


async def relay_stream(
    request: Request,
    response: StreamResponse,
    ctx: RequestContext,
    chain: Chain,
    stream: PrefetchedStream,
) -> None:
    """Write the stream, including its head, to the client.

    The first upstream event is run through the chain *before* ``prepare()``, so
    policies can still refuse or set headers then; after it, failures become one SSE
    error event and a clean close. A client that hangs up closes the upstream stream.
    """
    relay = StreamRelay(ctx, chain)
    try:
        first = relay.event(stream.first)
        response.headers.update(ctx.response_headers)
        # For a stream the header can only say what Warden spent before the head left
        # (auth, policies, the first event); the whole-stream figure is in the access log.
        response.headers["x-warden-overhead-ms"] = f"{ctx.overhead() * 1000:.3f}"
        await response.prepare(request)
    except UpstreamError as e:
        await stream.aclose()
        raise UpstreamFailed(f"provider stream is unreadable: {e}") from None
    except BaseException:
        # Nothing was sent yet: the route turns this into an ordinary error reply.
        await stream.aclose()
        raise
    ctx.status = 200
    gaps = ctx.chunk_gaps
    try:
        if first:
            await response.write(first)
            ctx.first_token_s = ctx.elapsed()
        ctx.chunks += 1
        waited = arrived = time.perf_counter()
        if not relay.done:  # else the first event was already [DONE]
            await stream.__anext__()  # the prefetched first event, handled above
            async for raw in stream:
                now = time.perf_counter()
                ctx.upstream_s += now - waited
                out = relay.event(raw)
                if not relay.done:  # [DONE] is not an output chunk
                    gaps.append(now - arrived)
                    arrived = now
                if out:
                    await response.write(out)
                    if ctx.first_token_s is None:
                        ctx.first_token_s = ctx.elapsed()
                ctx.chunks += 1
                if relay.done:
                    break
                waited = time.perf_counter()
        if not relay.done:
            raise UpstreamError("truncated", "provider stream ended without [DONE]")
        await _account(request, ctx, relay.tap)
        await response.write(await relay.tail())
    except UpstreamError as e:
        ctx.error_type = e.reason
        await _write_quietly(response, error_event(UpstreamFailed(
            f"provider stream failed after it started: {e}")))
    except WardenError as e:  # a policy refused at the end (e.g. an output contract)
        ctx.error_type = e.reason
        await _write_quietly(response, error_event(e))
    except (ConnectionResetError, ConnectionError):
        ctx.client_disconnected = True
    finally:
        if ctx.tenant is not None and ctx.tenant.config.log_prompts \
                and ctx.completion_text is None:
            ctx.completion_text = relay.tap.text()  # what arrived before it ended
        await stream.aclose()
    if not ctx.client_disconnected:
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            ctx.client_disconnected = True


async def _account(request: Request, ctx: RequestContext, tap: StreamTap) -> None:
    """A stream that ended with [DONE] but no usage chunk: estimate it from what came
    (the whole reply), with the encoding loaded off the loop; before ``on_done``, so
    budgets settle on it. A stream cut short (provider error, client gone) is not
    estimated: what arrived understates what may have been billed, and the budget
    charges the worst case instead (admission.billed)."""
    if ctx.usage is None and ctx.deployment is not None and tap.events:
        counter = request.app[SERVICES].shared("tokens", TokenCounter)
        await prepare(ctx, counter)
        estimate_stream(ctx, counter, tap)


async def _write_quietly(response: StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):  # the client may be gone already
        await response.write(data)
