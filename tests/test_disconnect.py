"""A client that leaves mid-stream: the upstream stream is closed, on_done still runs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx

from proxy.appkeys import POLICIES
from proxy.context import RequestContext
from proxy.pipeline import Policy
from proxy.tenants import PolicySet
from tests.support import KEY, Stack, http_json, tenant_policy


class Probe(Policy):
    def __init__(self) -> None:
        self.done: list[RequestContext] = []

    async def on_done(self, ctx: RequestContext) -> None:
        self.done.append(ctx)


def test_client_leaving_mid_stream(tmp_path: Path) -> None:
    probe = Probe()
    slow = "chunks=40,chunk_delay_ms=50"
    with Stack(lambda url: [tenant_policy(url, spec=slow)], tmp_path) as stack:
        assert stack.app is not None
        holder = stack.app[POLICIES]
        tenant = holder.current.tenants["acme"]
        patched = replace(tenant, policies=(probe,))
        holder.swap(PolicySet(tenants={"acme": patched}, by_key={
            k: patched for k, t in holder.current.by_key.items() if t is tenant}))
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "x " * 40}]}
        with httpx.stream("POST", f"{stack.proxy_url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            it = r.iter_raw()
            next(it)
            next(it)
        # The client is gone; within a few chunk delays Warden notices and lets go.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not probe.done:
            time.sleep(0.05)
        assert len(probe.done) == 1
        ctx = probe.done[0]
        assert ctx.client_disconnected
        while time.monotonic() < deadline:
            if http_json("GET", f"{stack.mock_url}/_mock/stats")["in_flight"] == 0:
                break
            time.sleep(0.05)
        assert http_json("GET", f"{stack.mock_url}/_mock/stats")["in_flight"] == 0
        assert ctx.chunks < 40
