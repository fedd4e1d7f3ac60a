from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import Stack, WardenServer, tenant_policy

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WARDEN_TEST_OPENAI_KEY", "sk-upstream-secret-openai")
os.environ.setdefault("WARDEN_TEST_ANTHROPIC_KEY", "sk-ant-upstream-secret")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Mock provider + Warden with one tenant and no policies."""
    with Stack(lambda url: [tenant_policy(url)], tmp_path) as s:
        yield s


@pytest.fixture
async def warden_server() -> AsyncIterator[Callable[[web.Application], Awaitable[WardenServer]]]:
    """Serve Warden apps on loopback ports in the test's loop; all closed afterwards."""
    started: list[WardenServer] = []

    async def start(app: web.Application) -> WardenServer:
        server = WardenServer(app)
        await server.start_server()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.close()
