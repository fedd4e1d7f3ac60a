"""The policy chain: an onion around the upstream call.

Request hooks run in chain order (A -> B -> C); response, chunk, stream-end and done
hooks run in reverse (C -> B -> A), as Envoy's HTTP filters do. A policy says no by
raising a ``WardenError``; the route renders it.

``on_done`` runs for every policy whose ``on_request`` was *called*, including one that
raised: a policy that reserves something must be able to release it from ``on_done``
even when its own request hook failed half-way. Policies that never entered (a policy
earlier in the chain refused) get no ``on_done``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from proxy.context import RequestContext

log = logging.getLogger("warden.pipeline")

Chunk = dict[str, Any]


class RetryUpstream(Exception):
    """Raised by ``on_response`` to ask for one more upstream call with the unchanged
    body. The second reply runs through every entered policy's ``on_response`` again,
    so a policy inside the raising one (later in ``ORDER``, e.g. ``pii``) sees two
    replies for one request. The route retries at most once per request, so a policy
    must refuse (not ask again) when the second reply fails too. Not for stream hooks:
    a stream's head is already sent by then.
    """


class Policy:
    """Base class of a policy. Override only the hooks you need.

    A policy object is built once per policy set (at load and on every reload) and
    shared by all requests of its tenant: keep per-request state on the context.
    """

    name: ClassVar[str] = "policy"

    async def on_request(self, ctx: RequestContext) -> None:
        """Before the upstream call. ``ctx.body`` may still be edited; raise to refuse."""

    async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """After a non-streamed reply arrived (status 2xx), before it reaches the client.

        Edit ``body`` in place (restore PII, validate output); raise to refuse. Headers
        are not sent yet, so ``ctx.response_headers`` may still change.
        """

    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        """One parsed SSE chunk of a streamed reply; return what to send instead.

        Return ``[chunk]`` to pass it on, ``[]`` to hold it back, several to release
        held-back text. Synchronous on purpose: it runs per chunk, and the per-chunk
        budget is tens of microseconds. The first chunk is seen before headers are sent.
        Raising a ``WardenError`` refuses: on the first chunk as an ordinary error
        reply, later as one final SSE error event (what was sent stays sent).
        """
        return [chunk]

    async def on_stream_end(self, ctx: RequestContext) -> list[Chunk]:
        """The upstream stream ended cleanly; return chunks still held back (flushed
        before ``[DONE]``). Raise to end the stream with an error event instead."""
        return []

    async def on_done(self, ctx: RequestContext) -> None:
        """Always last, once, also after errors and client disconnects (shielded from
        cancellation). Settle reservations, release slots. Must not raise."""

    @classmethod
    def handles_chunks(cls) -> bool:
        return cls.on_chunk is not Policy.on_chunk or cls.on_stream_end is not Policy.on_stream_end

    @classmethod
    def handles_responses(cls) -> bool:
        return cls.on_response is not Policy.on_response


class Chain:
    """Runs policies for one request and remembers which ones entered."""

    __slots__ = ("_entered", "_policies", "responds", "streams")

    def __init__(self, policies: Sequence[Policy] = ()) -> None:
        self._policies: list[Policy] = []
        self._entered: list[Policy] = []
        # Whether any policy needs parsed chunks / replies; if none does, Warden relays
        # the provider's bytes untouched.
        self.streams = False
        self.responds = False
        self.extend(policies)

    def extend(self, policies: Sequence[Policy]) -> None:
        """Append policies after the chain has started (the tenant's, once auth ran)."""
        self._policies.extend(policies)
        self.streams = self.streams or any(type(p).handles_chunks() for p in policies)
        self.responds = self.responds or any(type(p).handles_responses() for p in policies)

    async def request(self, ctx: RequestContext, start: int = 0) -> None:
        for policy in self._policies[start:]:
            self._entered.append(policy)
            await policy.on_request(ctx)

    def __len__(self) -> int:
        return len(self._policies)

    async def response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        for policy in reversed(self._entered):
            await policy.on_response(ctx, body)

    def chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        chunks = [chunk]
        for policy in reversed(self._entered):
            if not chunks:
                break
            out: list[Chunk] = []
            for c in chunks:
                out.extend(policy.on_chunk(ctx, c))
            chunks = out
        return chunks

    async def stream_end(self, ctx: RequestContext) -> list[Chunk]:
        """Flush held-back chunks; what an outer policy releases passes the inner ones'
        chunk hooks on the way out, exactly like upstream chunks do."""
        tail: list[Chunk] = []
        entered = list(reversed(self._entered))
        for i, policy in enumerate(entered):
            released = await policy.on_stream_end(ctx)
            for chunk in released:
                pending = [chunk]
                for later in entered[i + 1 :]:
                    nxt: list[Chunk] = []
                    for c in pending:
                        nxt.extend(later.on_chunk(ctx, c))
                    pending = nxt
                tail.extend(pending)
        return tail

    async def done(self, ctx: RequestContext) -> None:
        """Run every entered policy's on_done, shielded: a client that hangs up must
        not cancel the settling of a budget reservation."""
        if not self._entered:
            return
        await asyncio.shield(self._done(ctx))

    async def _done(self, ctx: RequestContext) -> None:
        for policy in reversed(self._entered):
            try:
                await policy.on_done(ctx)
            except Exception:  # one broken cleanup must not skip the others
                log.exception("on_done of policy %s failed", policy.name)
