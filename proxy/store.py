"""Counters shared by limits and budgets: in-memory (one replica) or Redis (a fleet).

Everything that counts goes through a ``Store``; nothing else talks to Redis.
"""

from __future__ import annotations

from typing import Any


class Store:
    """Interface. ``ping`` backs /readyz; the limits/budget issue adds the counters."""

    kind = "abstract"

    async def ping(self) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    async def close(self) -> None:
        return None


class MemoryStore(Store):
    """The embedded default: this process's memory, exact for one replica."""

    kind = "memory"

    async def ping(self) -> bool:
        return True


def create_store(redis_url: str | None, prefix: str = "warden") -> Store:
    if redis_url is None:
        return MemoryStore()
    raise NotImplementedError("Redis store arrives with the limits/budget issue")
