"""``warden mock-upstream``: a fake provider for demos, tests and benchmarks.

OpenAI-compatible chat (plain and SSE) and embeddings, plus Anthropic's /v1/messages.
The reply echoes the last user (or tool) text, so what the provider saw is visible in
what the agent gets back. ``[[call:NAME {json}]]`` in that text makes it answer with a
tool call instead.

Behaviour and faults are chosen by a path prefix, so a deployment's ``api_base`` picks
them without Warden forwarding anything special::

    http://127.0.0.1:PORT/f/status=500,retry_after=2/v1/chat/completions

Keys: status, retry_after, retry_after_ms, hang, reset_after (chunks), garbage,
truncate, latency_ms, first_byte_ms, chunks, chunk_delay_ms, fail_rate, no_usage,
error_after (send an error event after N chunks), raw (reply with the text alone, no
"Echo: ": a JSON document sent is a JSON document answered), context_error (OpenAI's
400 ``context_length_exceeded``), content_error (Azure's 400 ``content_filter``).
``POST /_mock/faults`` sets a spec for every request (``{}`` clears);
``GET /_mock/requests`` lists request bodies received (``DELETE`` clears), which is
how tests prove what reached "the provider".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import web

MAX_LOG = 2000
CREATED = 1_700_000_000
_CALL = re.compile(r"\[\[call:([A-Za-z0-9_\-]+)\s*(\{.*?\})?\]\]", re.S)


@dataclass
class Spec:
    status: int = 200
    retry_after: float | None = None
    retry_after_ms: int | None = None
    hang: bool = False
    reset_after: int | None = None
    garbage: bool = False
    truncate: bool = False
    latency_ms: float = 0.0
    first_byte_ms: float = 0.0
    chunks: int | None = None
    chunk_delay_ms: float = 0.0
    fail_rate: float = 0.0
    no_usage: bool = False
    error_after: int | None = None
    context_error: bool = False
    content_error: bool = False
    raw: bool = False

    @classmethod
    def parse(cls, text: str, base: Spec) -> Spec:
        spec = Spec(**base.__dict__)
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            apply(spec, key, value or "1")
        return spec


def apply(spec: Spec, key: str, value: Any) -> None:
    if key not in Spec.__dataclass_fields__:
        raise web.HTTPBadRequest(text=f"unknown mock spec key {key!r}")
    current = Spec.__dataclass_fields__[key].type
    text = str(value)
    if "bool" in str(current):
        setattr(spec, key, text.lower() in ("1", "true", "yes"))
    elif "int" in str(current):
        setattr(spec, key, int(float(text)))
    else:
        setattr(spec, key, float(text))


def tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def last_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") in ("user", "tool", "function"):
            return _text(m.get("content"))
    return _text(messages[-1].get("content")) if messages else ""


def prompt_text(messages: list[dict[str, Any]]) -> str:
    return " ".join(_text(m.get("content")) for m in messages)


# The bodies real providers send, so failover's classification is tested on them.
_CONTEXT_ERROR = {"error": {
    "message": "This model's maximum context length is 128000 tokens. However, your "
               "messages resulted in 130000 tokens. Please reduce the length of the messages.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
_CONTENT_ERROR = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
               "content management policy.",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation",
                   "content_filter_result": {"violence": {"filtered": True,
                                                          "severity": "medium"}}}}}


class Mock:
    def __init__(self, base: Spec) -> None:
        self.base = base
        self.default = base
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)
        # Credentials as received, so tests can prove which key reached "the provider".
        self.credentials: deque[str] = deque(maxlen=MAX_LOG)
        self.in_flight = 0
        self.max_in_flight = 0
        self.counter = 0

    def log(self, request: web.Request, body: dict[str, Any]) -> None:
        self.requests.append(body)
        self.credentials.append(request.headers.get("Authorization")
                                or request.headers.get("x-api-key")
                                or request.headers.get("api-key") or "")

    async def receive(self, request: web.Request) -> tuple[dict[str, Any], Spec]:
        """Every endpoint's first step: the body, logged, and the behaviour asked for."""
        body = await request.json()
        self.log(request, body)
        return body, self.spec_for(request)

    def spec_for(self, request: web.Request) -> Spec:
        return Spec.parse(request.match_info.get("spec", ""), self.default)

    async def before(self, spec: Spec, request: web.Request) -> web.Response | None:
        """Latency and faults common to every endpoint; a response means 'stop here'."""
        if spec.latency_ms:
            await asyncio.sleep(spec.latency_ms / 1000)
        if spec.hang:
            await _until_gone(request)
        failing = spec.status >= 400 and (spec.fail_rate == 0 or random.random() < spec.fail_rate)
        if failing:
            headers = {}
            if spec.retry_after is not None:
                headers["Retry-After"] = f"{spec.retry_after:g}"
            if spec.retry_after_ms is not None:
                headers["retry-after-ms"] = str(spec.retry_after_ms)
            body = {"error": {"message": f"mock fault {spec.status}", "type": "server_error"
                              if spec.status >= 500 else "invalid_request_error",
                              "param": None, "code": str(spec.status)}}
            return web.json_response(body, status=spec.status, headers=headers)
        if spec.context_error:
            return web.json_response(_CONTEXT_ERROR, status=400)
        if spec.content_error:
            return web.json_response(_CONTENT_ERROR, status=400)
        if spec.garbage:
            return web.Response(body=b"<html>502 Bad Gateway</html>", status=200,
                                content_type="application/json")
        if spec.first_byte_ms:
            await asyncio.sleep(spec.first_byte_ms / 1000)
        return None

    def reply_for(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text = last_text(body.get("messages") or [])
        m = _CALL.search(text)
        if m:
            self.counter += 1
            call = {"id": f"call_{self.counter:06d}", "type": "function",
                    "function": {"name": m.group(1), "arguments": m.group(2) or "{}"}}
            return "", [call]
        return f"Echo: {text}", []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, spec = await self.receive(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            early = await self.before(spec, request)
            if early is not None:
                return early
            content, calls = self.reply_for(body)
            if spec.raw:
                content = content.removeprefix("Echo: ")
            usage = {"prompt_tokens": tokens(prompt_text(body["messages"])),
                     "completion_tokens": tokens(content) if content else 8}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            model = body.get("model", "mock")
            # Ids and timestamps depend only on the conversation, so two runs of the same
            # conversation (direct and through Warden) can be compared byte for byte.
            digest = hashlib.sha1(json.dumps(body["messages"]).encode()).hexdigest()
            cid = f"chatcmpl-{digest[:12]}"
            if body.get("stream"):
                return await self.stream_chat(request, spec, body, cid, model, content,
                                              calls, usage)
            message: dict[str, Any] = {"role": "assistant", "content": content or None,
                                       "refusal": None}
            if calls:
                message["tool_calls"] = calls
            reply: dict[str, Any] = {
                "id": cid, "object": "chat.completion", "created": CREATED,
                "model": model, "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else "stop"}],
            }
            if not spec.no_usage:
                reply["usage"] = usage
            raw = json.dumps(reply).encode()
            if spec.truncate:
                raw = raw[: len(raw) // 2]
            return web.Response(body=raw, content_type="application/json")
        finally:
            self.in_flight -= 1

    async def stream_chat(
        self, request: web.Request, spec: Spec, body: dict[str, Any], cid: str, model: str,
        content: str, calls: list[dict[str, Any]], usage: dict[str, int],
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = CREATED

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                                 "created": created, "model": model,
                                 "system_fingerprint": "fp_mock",
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]}
            if include_usage:
                c["usage"] = None
            return c

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if calls:
            for i, call in enumerate(calls):
                events.append(chunk({"tool_calls": [{"index": i, "id": call["id"],
                                     "type": "function", "function": {
                                         "name": call["function"]["name"], "arguments": ""}}]}))
                args = call["function"]["arguments"]
                step = max(1, len(args) // 3)
                for j in range(0, len(args), step):
                    events.append(chunk({"tool_calls": [{"index": i, "function": {
                        "arguments": args[j:j + step]}}]}))
        else:
            for piece in _pieces(content, spec.chunks):
                events.append(chunk({"content": piece}))
        events.append(chunk({}, "tool_calls" if calls else "stop"))
        if include_usage and not spec.no_usage:
            events.append({"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": "fp_mock", "choices": [],
                           "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for i, event in enumerate(events):
            if spec.reset_after is not None and i >= spec.reset_after:
                assert request.transport is not None
                request.transport.abort()  # a provider that drops the connection
                return response
            if spec.error_after is not None and i >= spec.error_after:
                await response.write(b'data: {"error": {"message": "mock mid-stream error", '
                                     b'"type": "server_error"}}\n\n')
                return response
            if i and spec.chunk_delay_ms:
                await asyncio.sleep(spec.chunk_delay_ms / 1000)
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode()
                                 + b"\n\n")
        if not spec.truncate:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body, spec = await self.receive(request)
        early = await self.before(spec, request)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, item in enumerate(inputs):
            digest = hashlib.sha256(json.dumps(item).encode()).digest()
            data.append({"object": "embedding", "index": i,
                         "embedding": [round(b / 255 - 0.5, 4) for b in digest[:16]]})
        n = sum(tokens(json.dumps(x)) for x in inputs)
        return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.requests))

    async def get_credentials(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.credentials))

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.credentials.clear()
        self.max_in_flight = self.in_flight
        return web.json_response({"cleared": True})

    async def set_faults(self, request: web.Request) -> web.Response:
        data = await request.json()
        spec = Spec(**self.base.__dict__)
        for key, value in data.items():
            apply(spec, key, value)
        self.default = spec
        return web.json_response(spec.__dict__)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"in_flight": self.in_flight,
                                  "max_in_flight": self.max_in_flight,
                                  "requests": len(self.requests)})


async def _until_gone(request: web.Request, limit_s: float = 3600) -> None:
    """Hang until the client hangs up (not a fixed sleep: a server shutting down waits
    for its handlers, and a hung handler would hold the mock's shutdown for a minute)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.02)


def _pieces(text: str, chunks: int | None) -> list[str]:
    """Split into ``chunks`` pieces (default: one per word, like a tokenizer would)."""
    if not text:
        return []
    if chunks is None:
        words = re.findall(r"\S+\s*|\s+", text)
        return words or [text]
    size = max(1, -(-len(text) // chunks))
    return [text[i:i + size] for i in range(0, len(text), size)]


def create_mock_app(base: Spec | None = None) -> web.Application:
    from proxy.mock_anthropic import anthropic_messages

    mock = Mock(base or Spec())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("", "/f/{spec}"):
        app.router.add_post(f"{prefix}/v1/chat/completions", mock.chat)
        app.router.add_post(f"{prefix}/chat/completions", mock.chat)
        app.router.add_post(f"{prefix}/v1/embeddings", mock.embeddings)
        app.router.add_post(f"{prefix}/v1/messages", partial(anthropic_messages, mock))
        # Azure's URL shape, so the azure provider's fast path can be exercised.
        app.router.add_post(f"{prefix}/openai/deployments/{{dep}}/chat/completions", mock.chat)
    app.router.add_get("/_mock/requests", mock.get_requests)
    app.router.add_delete("/_mock/requests", mock.clear_requests)
    app.router.add_get("/_mock/credentials", mock.get_credentials)
    app.router.add_post("/_mock/faults", mock.set_faults)
    app.router.add_get("/_mock/stats", mock.stats)
    return app
