"""Process introspection for hardening runs: asyncio task count and open descriptors.

Served in /readyz only when ``WARDEN_DEBUG_RUNTIME`` is on, so the chaos and soak
scripts can prove that nothing leaks (tasks, sockets) after faults and disconnects.
Off by default: a production /readyz has no reason to tell anyone how busy it is.
"""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from typing import Any


def snapshot() -> dict[str, Any]:
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the count is unknown, not zero
        fds = None
    return {"asyncio_tasks": len(asyncio.all_tasks()), "open_fds": fds, "pid": os.getpid()}


def openapi_document() -> bytes:
    """The OpenAPI 3.1 description shipped in the package (proxy/openapi.json)."""
    return resources.files("proxy").joinpath("openapi.json").read_bytes()
