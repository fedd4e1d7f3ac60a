"""Policies, one module each; the module name is the key in a tenant's policy file.

``ORDER`` is the chain order after ``auth`` (which runs first for every request and
resolves the tenant). Request hooks run in this order, response hooks in reverse, so
``pii`` (last) is the first to see a reply and restores placeholders before ``output``
validates it, and cheap refusals (limits, scope) come before expensive scans. ``loops``
is first: refusing a runaway loop needs no store round trip and spends no rate limit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Policy modules subclass tenants.Frozen and tenants.py imports their config models:
# loading tenants first makes `import proxy.policies.<key>` work as a first import.
import proxy.tenants  # noqa: F401

if TYPE_CHECKING:
    from proxy.pipeline import Policy
    from proxy.services import Services
    from proxy.tenants import TenantConfig

ORDER: tuple[str, ...] = ("loops", "limits", "budget", "scope", "injection", "output", "pii")


def build_chain(config: TenantConfig, services: Services) -> tuple[Policy, ...]:
    """Build the tenant's policies; each module exposes ``build(section, services)``."""
    chain: list[Policy] = []
    for name in ORDER:
        section = getattr(config, name, None)
        if section is None:
            continue
        module = importlib.import_module(f"proxy.policies.{name}")
        chain.append(module.build(section, services))
    return tuple(chain)
