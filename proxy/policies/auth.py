"""Authentication: the virtual key picks the tenant, and with it the policy chain.

It runs before every other policy (the chain depends on its answer), so it is a
function rather than a chain member. Keys arrive as ``Authorization: Bearer <key>``
(OpenAI SDKs) or ``api-key: <key>`` (Azure-style clients).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.errors import AuthenticationFailed
from proxy.tenants import PolicySet, Tenant


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("Authorization")
    if auth:
        scheme, _, key = auth.partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
        return None
    alt = headers.get("api-key")
    return alt.strip() if alt and alt.strip() else None


def authenticate(policies: PolicySet, headers: Mapping[str, str]) -> Tenant:
    key = presented_key(headers)
    if key is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send your Warden virtual key as "
            "'Authorization: Bearer <key>'."
        )
    tenant = policies.authenticate(key)
    if tenant is None:
        # Never echo the key: a typo'd key is still a secret.
        raise AuthenticationFailed("Incorrect API key provided.")
    return tenant
