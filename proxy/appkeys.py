"""Typed application state (aiohttp AppKeys), in one place so modules agree on them."""

from __future__ import annotations

from aiohttp import web

from proxy.router import Routes
from proxy.services import Services
from proxy.settings import Settings
from proxy.tenants import PolicyHolder
from proxy.upstream.failover import Upstream

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
POLICIES = web.AppKey("policies", PolicyHolder)
UPSTREAM = web.AppKey("upstream", Upstream)
ROUTES = web.AppKey("routes", Routes)  # what proxy/server.py serves on this app's port
