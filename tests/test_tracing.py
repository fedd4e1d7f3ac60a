"""OTLP/HTTP JSON traces: one SERVER span per request, one CLIENT span per attempt,
GenAI attributes, the agent's traceparent honoured, no prompt text."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.context import Attempt, Decision, RequestContext, Usage
from proxy.tenants import Tenant, TenantConfig
from proxy.tracing import CLIENT, MAX_QUEUE, SERVER, Tracer, request_spans
from tests.support import KEY, Stack
from tests.telemetry_support import chat

SECRET = "my card is 4111 1111 1111 1111"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Collector:
    """A stand-in OTLP/HTTP collector: keeps every JSON body POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces"
                assert self.headers["Content-Type"] == "application/json"
                outer.raw.append(data)
                outer.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [s for b in self.bodies for rs in b["resourceSpans"]
                     for ss in rs["scopeSpans"] for s in ss["spans"]]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()


def tenant(mock: str) -> dict[str, Any]:
    return {"tenant": "acme", "keys": [KEY], "models": {"m": [
        {"provider": "openai", "model": "gpt-4o-mini", "name": "primary",
         "api_base": f"{mock}/f/status=500/v1"},
        {"provider": "azure", "model": "gpt-4o-mini", "name": "backup", "api_base": mock}]}}


def test_request_and_attempt_spans_exported(collector: Collector, tmp_path: Path) -> None:
    with Stack(lambda url: [tenant(url)], tmp_path, otlp_endpoint=collector.url) as s:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                   "X-Warden-Agent": "planner", "X-Warden-Conversation": "conv-9"}
        r = chat(s, "m", SECRET, key=KEY, headers=headers, stream=True)
        assert r.status_code == 200
        calls = len(s.mock_requests())  # every attempt reached the mock
        spans = collector.spans(1 + calls)
    (root,) = [x for x in spans if x["kind"] == SERVER]
    children = [x for x in spans if x["kind"] == CLIENT]
    assert len(children) == calls >= 2  # the primary failed, the backup answered
    # The agent's trace continues through Warden.
    assert root["traceId"] == TRACE_ID and root["parentSpanId"] == PARENT_ID
    assert all(c["traceId"] == TRACE_ID and c["parentSpanId"] == root["spanId"]
               for c in children)
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m"
    assert a["gen_ai.provider.name"] == "azure.ai.openai"
    assert (a["gen_ai.agent.name"], a["gen_ai.conversation.id"]) == ("planner", "conv-9")
    assert int(a["gen_ai.usage.input_tokens"]) > 0 and int(a["gen_ai.usage.output_tokens"]) > 0
    assert a["warden.request_id"] == r.headers["x-request-id"]
    assert root["name"] == "chat m" and root["status"] == {}
    failed = [c for c in children if attrs(c).get("error.type")]
    assert {attrs(c)["warden.deployment"] for c in failed} == {"primary"}
    assert all(attrs(c)["error.type"] == "status_500" and c["status"]["code"] == 2
               for c in failed)
    # Child spans sit inside the request span, one after another.
    start, end = int(root["startTimeUnixNano"]), int(root["endTimeUnixNano"])
    ordered = sorted(children, key=lambda c: int(c["startTimeUnixNano"]))
    for c in ordered:
        assert start <= int(c["startTimeUnixNano"]) <= int(c["endTimeUnixNano"]) <= end
    for prev, nxt in itertools.pairwise(ordered):
        assert int(prev["endTimeUnixNano"]) <= int(nxt["startTimeUnixNano"])
    assert all(SECRET.encode() not in raw for raw in collector.raw)


def _ctx(**kw: Any) -> RequestContext:
    cfg = TenantConfig.model_validate({"tenant": "t", "keys": ["vk-12345678"], "models": {
        "m": [{"provider": "openai", "model": "gpt-4o-mini"}]}})
    d = cfg.models["m"].deployments[0]
    ctx = RequestContext(request_id="r", operation="chat", model="m", deployments=(d,),
                         tenant=Tenant(config=cfg, policies=(), source=Path("t.yaml")), **kw)
    return ctx


def test_spans_of_a_failed_request_and_a_bad_traceparent() -> None:
    ctx = _ctx(status=502, error_type="upstream_error")
    ctx.client_headers["traceparent"] = "00-not-a-trace-id-01"
    ctx.attempts = [Attempt("openai/gpt-4o-mini", None, "connect_error", 0.001)]
    ctx.decisions = [Decision("pii", "redact", "PERSON")]
    root, child = request_spans(ctx, "error", "connect_error")
    assert root["parentSpanId"] == "" and len(root["traceId"]) == 32
    assert root["status"] == {"code": 2} and attrs(root)["error.type"] == "connect_error"
    assert attrs(root)["warden.decisions"] == {"values": [{"stringValue": "pii:redact:PERSON"}]}
    assert attrs(child)["error.type"] == "connect_error"
    assert "http.response.status_code" not in attrs(child)


async def test_collector_down_drops_spans_without_failing(
        caplog: pytest.LogCaptureFixture) -> None:
    tracer = Tracer("http://127.0.0.1:9")  # nothing listens there
    ctx = _ctx(status=200, usage=Usage(1, 2))
    for _ in range(3):
        tracer.record(ctx, "ok", None)
    async with aiohttp.ClientSession() as session:
        await tracer.flush(session)
    assert tracer.exported == 0
    assert "OTLP export" in caplog.text
    for _ in range(MAX_QUEUE):
        tracer.record(ctx, "ok", None)
    assert len(tracer._queue) <= MAX_QUEUE + 1  # bounded: extra requests are dropped
