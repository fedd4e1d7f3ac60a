"""The application factory: state, lifecycle and routes of one Warden.

No module-level state: everything a request needs hangs off the app under typed keys,
and everything that must be closed is owned by a cleanup context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.appkeys import POLICIES, ROUTES, SERVICES, SETTINGS, UPSTREAM
from proxy.metrics import Metrics
from proxy.reload import reload_ctx
from proxy.router import Routes
from proxy.routes import add_routes
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
    app = web.Application()
    app[SETTINGS] = settings
    app[SERVICES] = services
    # One price book per process: what metrics report is what budgets charge.
    services.shared("prices", lambda: services.metrics.prices)
    app[POLICIES] = PolicyHolder(load_policy_set(settings.policies_dir, services))
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(reload_ctx)  # last in, first out: stops before services close
    app.cleanup_ctx.append(tracing_ctx)  # WARDEN_OTLP_ENDPOINT: flushes before the rest stops
    add_routes(app)
    return app


def create_metrics_app(services: Services) -> web.Application:
    """/metrics alone, for WARDEN_METRICS_PORT."""
    from proxy.routes import metrics

    app = web.Application()
    app[SERVICES] = services
    app[ROUTES] = Routes()
    app[ROUTES].get("/metrics", metrics)
    return app
