"""Typed placeholders from a keyed HMAC: ``<EMAIL_ADDRESS_7f3a9c>``.

The same value gets the same placeholder on every turn and on every replica, without
storing PII anywhere: the placeholder is ``HMAC-SHA256(key, tenant, entity, value)``
cut to a few hex digits. The provider therefore sees a stable prompt (its prompt cache
keeps hitting) and the model can say "the same person" across turns.

Where the key comes from, first found wins:

1. the tenant's ``pii.secret`` — ``env:VAR`` or ``file:/path`` (a rotated Secret);
2. the process-wide ``WARDEN_PII_SECRET`` (one value for every replica);
3. neither: a random key per process, with a warning. Pseudonyms are then stable within
   one replica's lifetime only — fine for one sidecar, not for several replicas.

The tenant name is part of the HMAC input, so two tenants sharing the process key never
get the same placeholder for the same value (no cross-tenant linkage).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("warden.pii")

PLACEHOLDER_RE = re.compile(r"<([A-Z][A-Z0-9_]*)_([0-9a-f]{6,16})>")
DIGITS = 6
# Longest placeholder a stream restorer may have to hold back (entity names are short).
MAX_PLACEHOLDER = 64


class SecretMissing(ValueError):
    """A configured secret reference resolved to nothing (fails the policy load)."""


def resolve_secret(ref: str | None, process_secret: str | None) -> bytes | None:
    """The key bytes for a tenant, or None when neither source is configured."""
    if ref is not None:
        kind, _, where = ref.partition(":")
        if kind == "env":
            value = os.environ.get(where)
        else:
            try:
                value = Path(where).read_text().strip()
            except OSError:
                value = None
        if not value:
            raise SecretMissing(f"pii.secret {ref!r} is not set or empty")
        return value.encode()
    if process_secret:
        return process_secret.encode()
    return None


def random_process_key() -> bytes:
    log.warning(
        "pii: no pii.secret and no WARDEN_PII_SECRET; pseudonyms use a random per-process "
        "key and differ between replicas and restarts"
    )
    return os.urandom(32)


class Pseudonymizer:
    __slots__ = ("_key", "_tenant")

    def __init__(self, key: bytes, tenant: str) -> None:
        self._key = key
        self._tenant = tenant.encode()

    def digest(self, entity: str, value: str, purpose: bytes = b"p") -> str:
        msg = b"\0".join((purpose, self._tenant, entity.encode(),
                          value.encode("utf-8", "surrogatepass")))
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def placeholder(self, entity: str, value: str, digits: int = DIGITS) -> str:
        return f"<{entity}_{self.digest(entity, value)[:digits]}>"

    def hashed(self, entity: str, value: str) -> str:
        """The ``hash`` action: not restorable, not typed beyond the label."""
        # Its own purpose byte: a hash never reveals the matching placeholder.
        return f"<{entity}:{self.digest(entity, value, b'h')[:16]}>"
