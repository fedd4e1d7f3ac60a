"""Counters shared by limits and budgets: in-memory (one replica) or Redis (a fleet).

Everything that counts goes through a ``Store``; nothing else talks to Redis::

    base.py         the contract: checks (Window, Slots, Spend), Verdict, Reservation,
                    the Store interface, key names
    memory.py       MemoryStore: the embedded default, and the fail-open fallback
    redis_store.py  RedisStore: the same algorithm in store.lua, one EVALSHA per call
    resp.py         the lean Redis client redis_store.py uses (redis-py for Cluster)
"""

from __future__ import annotations

from typing import Literal

from proxy.store.base import (
    NO_SWEEP,
    Check,
    DenyReason,
    Keys,
    Reservation,
    Slots,
    Spend,
    State,
    Store,
    StoreListener,
    Verdict,
    Window,
)
from proxy.store.memory import MemoryStore

__all__ = [
    "NO_SWEEP", "Check", "DenyReason", "Keys", "MemoryStore", "Reservation", "Slots", "Spend",
    "State", "Store", "StoreListener", "Verdict", "Window", "create_store",
]


def create_store(redis_url: str | None, prefix: str = "warden", *,
                 failure_mode: Literal["open", "closed"] = "open") -> Store:
    """No URL: the in-memory store. ``redis://``/``rediss://``: one Redis;
    ``redis+cluster://``/``rediss+cluster://``: a Redis Cluster (seed node in the URL)."""
    if redis_url is None:
        return MemoryStore(prefix)
    from proxy.store.redis_store import RedisStore

    return RedisStore(redis_url, prefix, failure_mode=failure_mode)
