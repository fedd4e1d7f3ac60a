"""Real servers for tests: mock provider and proxy on loopback, in a thread or a process.

``Stack`` runs ``warden mock-upstream`` and the proxy app in a background thread's
event loop, so synchronous clients (the openai SDK's sync client, AG2) can talk to them
from the test thread. ``spawn`` starts the real CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from proxy.app import create_app
from proxy.mock_upstream import create_mock_app
from proxy.server import Runner
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "vk-test-key-0001"


def tenant_policy(mock_url: str, tenant: str = "acme", key: str = KEY,
                  spec: str = "", **sections: Any) -> dict[str, Any]:
    """A tenant whose models point at the mock (``spec`` selects mock behaviour)."""
    base = f"{mock_url}/f/{spec}" if spec else mock_url
    return {
        "tenant": tenant,
        "keys": [key],
        "models": {
            "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18",
                             "api_base": f"{base}/v1", "api_key": "env:WARDEN_TEST_OPENAI_KEY"}],
            "text-embedding-3-small": [{"provider": "openai", "model": "text-embedding-3-small",
                                        "api_base": f"{base}/v1"}],
            "claude": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest",
                        "api_base": base, "api_key": "env:WARDEN_TEST_ANTHROPIC_KEY"}],
        },
        **sections,
    }


def write_policies(directory: Path, *tenants: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for t in tenants:
        (directory / f"{t['tenant']}.yaml").write_text(yaml.safe_dump(t, sort_keys=False))
    return directory


class WardenServer:
    """A Warden app served on a loopback port in the running loop (the interface of
    aiohttp's TestServer that the tests use)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._runner = Runner(app)
        self.url = ""

    async def start_server(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def make_url(self, path: str) -> str:
        return self.url + path

    async def close(self) -> None:
        await self._runner.cleanup()


class Stack:
    """Mock provider + Warden in a background event loop."""

    def __init__(self, policies: Callable[[str], list[dict[str, Any]]], tmp: Path,
                 **settings: Any) -> None:
        self._policies = policies
        self._tmp = tmp
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self.app: web.Application | None = None
        self.mock_url = ""
        self.proxy_url = ""

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    async def _start(self) -> None:
        mock = web.AppRunner(create_mock_app(), access_log=None)
        await mock.setup()
        await web.TCPSite(mock, "127.0.0.1", 0).start()
        self._runners.append(mock)
        self.mock_url = f"http://127.0.0.1:{mock.addresses[0][1]}"
        pdir = write_policies(self._tmp / "policies", *self._policies(self.mock_url))
        settings = Settings(**{"policies_dir": pdir, "access_log": False, **self._settings})
        self.app = create_app(settings)
        proxy = Runner(self.app)
        await proxy.setup()
        await web.TCPSite(proxy, "127.0.0.1", 0).start()
        self._runners.append(proxy)
        self.proxy_url = f"http://127.0.0.1:{proxy.addresses[0][1]}"

    async def _stop(self) -> None:
        for r in reversed(self._runners):
            await r.cleanup()

    def __enter__(self) -> Stack:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def mock_requests(self) -> list[dict[str, Any]]:
        return http_json("GET", f"{self.mock_url}/_mock/requests")  # type: ignore[no-any-return]

    def mock_faults(self, **spec: Any) -> None:
        http_json("POST", f"{self.mock_url}/_mock/faults", spec)


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
              ) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def env_for_subprocess(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.update(extra)
    return env


@contextmanager
def spawn(*args: str, ready: str = "WARDEN_READY", env: dict[str, str] | None = None,
          timeout: float = 60) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``python -m proxy <args>`` until it prints its ready line; yield (proc, port)."""
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or env_for_subprocess())
    port = None
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(rf"{ready} port=(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"proxy {args} did not start: {err[-2000:]}")
    # Keep draining stdout (the access log) so the child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
