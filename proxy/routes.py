"""OpenAI-compatible handlers: chat completions, embeddings, models; health and metrics.

Each proxied request: authenticate -> read and check the body -> route the model ->
the tenant's chain of request hooks -> upstream (with failover) -> the chain in reverse
-> the client. Every refusal is a ``WardenError``, rendered here and only here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from typing import Any

from aiohttp import web

from proxy import jsonbody, runtime, validate
from proxy.appkeys import POLICIES, ROUTES, SERVICES, SETTINGS, UPSTREAM
from proxy.context import Operation, RequestContext, Usage
from proxy.errors import (
    BadRequest,
    ModelNotFound,
    UnsupportedMediaType,
    UpstreamFailed,
    WardenError,
)
from proxy.pipeline import Chain, RetryUpstream
from proxy.policies.auth import authenticate
from proxy.relay import force_stream_usage, relay_stream, usage_of
from proxy.request import Request
from proxy.response import Response, StreamResponse, json_response
from proxy.router import Routes
from proxy.services import Services
from proxy.tokens import TokenCounter
from proxy.upstream.base import UpstreamError, UpstreamReply
from proxy.upstream.retry import client_budget
from proxy.usage import completion_text, estimate_reply, prepare

log = logging.getLogger("warden.routes")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Client headers that identify the AutoGen agent / conversation (logged, never labels).
_IDENTITY_HEADERS = ("x-warden-agent", "x-warden-conversation", "traceparent")


class RequestIds:
    """Generated ids: a random per-app prefix and a counter. Unique across replicas
    without a uuid4 (a getrandom syscall) per request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


REQUEST_IDS = web.AppKey("request_ids", RequestIds)


def request_id(request: Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return request.app[REQUEST_IDS].next()


def error_response(error: WardenError, ctx: RequestContext | None = None) -> Response:
    headers = dict(error.headers)
    if ctx is not None:
        headers.update(ctx.response_headers)
        headers["x-request-id"] = ctx.request_id
        ctx.status = error.status
        ctx.error_type = ctx.error_type or error.reason
    return json_response(error.body(), status=error.status, headers=headers)


def read_json(request: Request) -> Any:
    """The body as JSON (the server has read it whole, within the size limit)."""
    raw = request.body
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and raw:
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype!r}")
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    return jsonbody.loads(raw)


async def proxied(request: Request, operation: Operation) -> Response | StreamResponse:
    app = request.app
    ctx = RequestContext(request_id=request_id(request), operation=operation)
    for name in _IDENTITY_HEADERS:
        if name in request.headers:
            ctx.client_headers[name] = request.headers[name][:128]
    chain = Chain()
    try:
        try:
            response = await _proxied(request, ctx, chain)
        except WardenError as e:
            response = error_response(e, ctx)
        if not response.prepared:
            # Send now: settling budgets and writing telemetry must not delay the agent.
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                ctx.client_disconnected = True
        return response
    except asyncio.CancelledError:
        ctx.client_disconnected = True
        ctx.status = ctx.status or 499
        raise
    finally:
        try:
            await chain.done(ctx)
        finally:
            app[SERVICES].metrics.record(ctx)


async def _proxied(request: Request, ctx: RequestContext, chain: Chain
                   ) -> Response | StreamResponse:
    app = request.app
    tenant = authenticate(app[POLICIES].current, request.headers)
    ctx.tenant = tenant
    raw = read_json(request)
    body = validate.chat(raw) if ctx.operation == "chat" else validate.embeddings(raw)
    ctx.body = body
    ctx.model = body["model"]
    ctx.stream = body.get("stream") is True and ctx.operation == "chat"
    deployments = tenant.routes(ctx.model)
    if deployments is None:
        raise ModelNotFound(
            f"The model '{ctx.model}' does not exist or you do not have access to it.",
            param="model",
        )
    ctx.deployments = deployments
    ctx.deadline_s = client_budget(request.headers, app[SETTINGS].upstream_deadline_s)
    chain.extend(tenant.policies)
    await chain.request(ctx)
    if ctx.stream:
        force_stream_usage(ctx)
    result = await app[UPSTREAM].call(ctx, ctx.body)
    if isinstance(result, UpstreamReply):
        services = app[SERVICES]
        try:
            return await _reply(ctx, chain, result, services)
        except RetryUpstream:
            # A response hook rejected the reply (an output contract): one more call
            # with the same body; both calls' tokens count.
            spent = ctx.usage
        again = await app[UPSTREAM].call(ctx, ctx.body)
        if not isinstance(again, UpstreamReply):
            raise UpstreamFailed("provider streamed a reply to a plain request")
        try:
            return await _reply(ctx, chain, again, services, spent)
        except RetryUpstream:  # a policy must refuse the second time; never loop
            raise UpstreamFailed("the provider's reply was rejected twice") from None
    response = StreamResponse(status=200, headers=_head(ctx, "text/event-stream"))
    response.headers["Cache-Control"] = "no-cache"
    await relay_stream(request, response, ctx, chain, result)
    return response


def _head(ctx: RequestContext, content_type: str) -> dict[str, str]:
    headers = {"Content-Type": content_type, "x-request-id": ctx.request_id}
    if ctx.flags:
        ctx.response_headers["x-warden-flags"] = ",".join(ctx.flags)
    headers.update(ctx.response_headers)
    # Warden's time so far, provider excluded (streams overwrite it at prepare()).
    headers["x-warden-overhead-ms"] = f"{ctx.overhead() * 1000:.3f}"
    return headers


async def _reply(
    ctx: RequestContext, chain: Chain, reply: UpstreamReply, services: Services,
    spent: Usage | None = None,
) -> Response:
    try:
        payload = reply.json()
    except UpstreamError as e:
        raise UpstreamFailed(f"provider returned an unreadable reply (status {reply.status}): "
                             f"{e}") from None
    if reply.status >= 400 or not isinstance(payload, dict):
        if not isinstance(payload, dict):
            raise UpstreamFailed("provider reply is not a JSON object")
        # A provider's own error (after failover gave up) is returned as the provider
        # said it, like the provider would have answered the agent directly.
        ctx.status = reply.status
        ctx.error_type = f"upstream_{reply.status}"
        return Response(body=reply.body, status=reply.status,
                            headers={**reply.headers, **_head(ctx, "application/json")})
    ctx.usage = usage_of(payload)
    if ctx.usage is None:  # a provider that reports none: count it (marked estimated)
        counter = services.shared("tokens", TokenCounter)
        await prepare(ctx, counter)
        estimate_reply(ctx, counter, payload)
    if ctx.tenant is not None and ctx.tenant.config.log_prompts:
        ctx.completion_text = completion_text(payload)  # as the provider said it
    if spent is not None:  # an earlier attempt of this request, rejected by a policy
        now = ctx.usage or Usage()
        ctx.usage = Usage(spent.prompt_tokens + now.prompt_tokens,
                          spent.completion_tokens + now.completion_tokens,
                          estimated=spent.estimated or now.estimated)
    model = payload.get("model")
    ctx.response_model = model if isinstance(model, str) else None
    body = reply.body
    if chain.responds:
        await chain.response(ctx, payload)
        body = jsonbody.dumps(payload)
    ctx.status = 200
    return Response(body=body, status=200, headers=_head(ctx, "application/json"))


async def chat_completions(request: Request) -> Response | StreamResponse:
    return await proxied(request, "chat")


async def embeddings(request: Request) -> Response | StreamResponse:
    return await proxied(request, "embeddings")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "warden"}


async def list_models(request: Request) -> Response:
    ctx = RequestContext(request_id=request_id(request), operation="models")
    try:
        tenant = authenticate(request.app[POLICIES].current, request.headers)
    except WardenError as e:
        return error_response(e, ctx)
    data = [_model_card(name) for name in tenant.config.models]
    return json_response({"object": "list", "data": data},
                             headers={"x-request-id": ctx.request_id})


async def get_model(request: Request) -> Response:
    ctx = RequestContext(request_id=request_id(request), operation="models")
    try:
        tenant = authenticate(request.app[POLICIES].current, request.headers)
        name = request.match_info["model"]
        if name not in tenant.config.models:
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have "
                                "access to it.", param="model")
    except WardenError as e:
        return error_response(e, ctx)
    return json_response(_model_card(name), headers={"x-request-id": ctx.request_id})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    app = request.app
    holder = app[POLICIES]
    services = app[SERVICES]
    started = time.perf_counter()
    try:
        async with asyncio.timeout(2):
            store_ok = await services.store.ping()
    except Exception:  # an unreachable store is a "not ready", never a 500
        store_ok = False
    detail: dict[str, Any] = {
        "policies": {"tenants": len(holder.current.tenants), "version": holder.version,
                     "last_reload_error": holder.last_error},
        "store": {**services.store.describe(), "reachable": store_ok,
                  "ping_ms": round((time.perf_counter() - started) * 1000, 3)},
    }
    # Breakers are detail, not readiness: another replica reaches the same providers.
    detail["upstreams"] = app[UPSTREAM].breakers.snapshot()
    degraded_ok = services.settings.store_failure_mode == "open"
    ready = bool(holder.current.tenants) and (store_ok or degraded_ok)
    detail["status"] = "ready" if ready else "not_ready"
    if services.settings.debug_runtime:
        detail["runtime"] = runtime.snapshot()
    return json_response(detail, status=200 if ready else 503)


async def metrics(request: Request) -> Response:
    m = request.app[SERVICES].metrics
    return Response(body=m.render(), content_type=m.content_type)


async def openapi(request: Request) -> Response:
    return Response(body=request.app[OPENAPI], content_type="application/json")


OPENAPI = web.AppKey("openapi", bytes)


def add_routes(app: web.Application) -> None:
    app[REQUEST_IDS] = RequestIds()
    app[OPENAPI] = runtime.openapi_document()
    routes = app[ROUTES] = Routes(app[SETTINGS].max_body_bytes)
    for prefix in ("/v1", ""):
        routes.post(f"{prefix}/chat/completions", chat_completions)
        routes.post(f"{prefix}/embeddings", embeddings)
        routes.get(f"{prefix}/models", list_models)
        routes.get(f"{prefix}/models/{{model}}", get_model)
    routes.get("/healthz", healthz)
    routes.get("/readyz", readyz)
    routes.get("/metrics", metrics)
    routes.get("/openapi.json", openapi)
