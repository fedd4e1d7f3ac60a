"""How often and when to try a deployment again, and how long a request may take.

Back-off is exponential with full jitter (the wait is uniform in ``[0, ceiling]``,
the ceiling doubling per try): many Warden replicas retrying the same provider
after an outage spread out instead of arriving in waves. A provider's own
``Retry-After`` wins over the back-off when it asks for longer, up to a cap; past the
cap that deployment is not retried for this request (the others still are).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.settings import Settings
from proxy.tenants import Retry

# Kept back from the client's own timeout so that Warden's error (which names every
# attempt) reaches the client before the client gives up on its own.
_CLIENT_MARGIN_S = 0.5
_CLIENT_MARGIN_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    retry_after_max_s: float

    @classmethod
    def from_settings(cls, settings: Settings, override: Retry | None = None) -> RetryPolicy:
        def pick(name: str, default: float) -> float:
            own: float | None = getattr(override, name, None)
            return default if own is None else own

        return cls(
            attempts=int(pick("attempts", settings.retry_attempts)),
            backoff_s=pick("backoff_s", settings.retry_backoff_s),
            backoff_max_s=pick("backoff_max_s", settings.retry_backoff_max_s),
            retry_after_max_s=pick("retry_after_max_s", settings.retry_after_max_s),
        )

    def backoff(self, tries_done: int, rng: random.Random) -> float:
        """Wait before try number ``tries_done + 1`` of the same deployment."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** max(0, tries_done - 1))
        return rng.uniform(0, ceiling)

    def wait(self, tries_done: int, hint_s: float | None, rng: random.Random) -> float | None:
        """Seconds until the next try here, or None when the provider asked for more
        than ``retry_after_max_s`` (or every try is used up)."""
        if tries_done >= self.attempts:
            return None
        if hint_s is not None and hint_s > self.retry_after_max_s:
            return None
        jitter = self.backoff(tries_done, rng)
        return max(jitter, hint_s) if hint_s is not None else jitter


def client_budget(headers: Mapping[str, str], default_s: float) -> float:
    """Seconds the upstream may take for this request: the setting, or less when the
    client says it waits less (the openai SDK sends its read timeout as
    ``x-stainless-read-timeout``; a non-streamed reply is one read)."""
    raw = headers.get("x-stainless-read-timeout")
    if raw is None:
        return default_s
    try:
        client = float(raw)
    except ValueError:
        return default_s
    if not math.isfinite(client) or client <= 0:
        return default_s
    margin = min(_CLIENT_MARGIN_S, client * _CLIENT_MARGIN_SHARE)
    return min(default_s, client - margin)
