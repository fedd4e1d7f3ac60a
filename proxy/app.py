"""The aiohttp application factory.

No module-level state: everything a request needs hangs off the app under typed keys,
and everything that must be closed is owned by a cleanup context.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from proxy import logsafe
from proxy.appkeys import POLICIES, SERVICES, SETTINGS, UPSTREAM
from proxy.errors import BadRequest, PayloadTooLarge, WardenError
from proxy.metrics import Metrics
from proxy.reload import reload_ctx
from proxy.routes import add_routes
from proxy.server import SERVER
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import create_store
from proxy.tenants import PolicyHolder, PolicySet, load_policy_set
from proxy.tracing import tracing_ctx
from proxy.upstream.collector import UpstreamCollector
from proxy.upstream.failover import Upstream
from proxy.upstream.http1 import Client
from proxy.upstream.openai import OpenAITransport
from proxy.upstream.translated import TranslatedTransport

log = logging.getLogger("warden.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _RouteError(WardenError):
    """A router-level HTTP error (unknown path, wrong method) in OpenAI's shape."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message, code=code)
        self.status = status  # type: ignore[misc]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever escapes a handler still leaves as an OpenAI-format error, never a
    traceback: router 404/405/413 included."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        err: WardenError = PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        message = f"{request.method} {request.path}: {e.reason}"
        err = _RouteError(e.status, message, code)
    except WardenError as e:
        err = e
    except ValueError as e:  # e.g. a header aiohttp could not parse
        err = BadRequest(f"malformed request: {e}")
    except Exception:  # the one deliberate catch-all: a bug becomes a logged 500, never a traceback
        log.exception("unhandled error on %s %s", request.method, request.path)
        # Base WardenError: status 500, type server_error (not an invalid_request_error).
        err = WardenError("internal error in Warden; see its log", code="internal_error")
    return web.json_response(err.body(), status=err.status, headers=err.headers)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would name itself and its version: nothing an agent needs, something a
    # scanner can match against advisories.
    response.headers["Server"] = SERVER


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    translated = TranslatedTransport()
    upstream = Upstream(OpenAITransport(Client(settings.upstream_pool_size)), translated,
                        settings)
    app[UPSTREAM] = upstream
    services = app[SERVICES]
    collector = services.shared(
        "upstream_collector", lambda: UpstreamCollector.registered(services.metrics.registry))
    collector.upstreams.append(upstream)
    if _needs_translation(app[POLICIES].current):
        await translated.warm()  # pay litellm's import before the first request, not in it
    yield
    collector.upstreams.remove(upstream)
    await upstream.close()


def _needs_translation(policies: PolicySet) -> bool:
    return any(
        not d.fast
        for tenant in policies.tenants.values()
        for route in tenant.config.models.values()
        for d in route.all_deployments()
    )


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    services = app[SERVICES]
    await services.store.close()
    services.close()


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    """Build the proxy app; raises ``tenants.PolicyError`` when the policies are invalid."""
    if services is None:
        services = Services(
            settings=settings,
            store=create_store(settings.redis_url, settings.redis_prefix,
                               failure_mode=settings.store_failure_mode),
            metrics=Metrics(access_log_enabled=settings.access_log,
                            enabled=settings.metrics_enabled),
        )
    logsafe.install()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[openai_errors])
    app[SETTINGS] = settings
    app[SERVICES] = services
    # One price book per process: what metrics report is what budgets charge.
    services.shared("prices", lambda: services.metrics.prices)
    app[POLICIES] = PolicyHolder(load_policy_set(settings.policies_dir, services))
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(reload_ctx)  # last in, first out: stops before services close
    app.cleanup_ctx.append(tracing_ctx)  # WARDEN_OTLP_ENDPOINT: flushes before the rest stops
    app.on_response_prepare.append(_server_header)
    add_routes(app)
    return app


def create_metrics_app(services: Services) -> web.Application:
    """/metrics alone, for WARDEN_METRICS_PORT."""
    from proxy.routes import metrics

    app = web.Application()
    app[SERVICES] = services
    app.on_response_prepare.append(_server_header)
    app.router.add_get("/metrics", metrics)
    return app
