"""Mock provider + Warden as real subprocesses, for the hardening scripts.

fuzz, chaos and soak all need the same thing: a ``warden mock-upstream`` and a
``warden serve`` on free loopback ports, with policy files written for the run, and
the proxy's pid so its descriptors and memory can be read from /proc. Both run with
``WARDEN_DEBUG_RUNTIME=true`` so /readyz reports the proxy's asyncio task count.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Server, Servers, free_port, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
KEY = "vk-test-key-0001"
UPSTREAM_SECRET = "sk-upstream-secret-hardening"


def deployment(base: str, spec: str = "", model: str = "gpt-4o-mini-2024-07-18",
               name: str | None = None, **timeouts: float) -> dict[str, Any]:
    """An OpenAI-compatible deployment on the mock; ``spec`` picks its faults."""
    api_base = f"{base}/f/{spec}/v1" if spec else f"{base}/v1"
    d: dict[str, Any] = {"provider": "openai", "model": model, "api_base": api_base,
                         "api_key": "env:WARDEN_HARDENING_UPSTREAM_KEY"}
    if name:
        d["name"] = name
    if timeouts:
        d["timeouts"] = timeouts
    return d


def tenant(name: str, key: str, models: dict[str, list[dict[str, Any]]],
           **sections: Any) -> dict[str, Any]:
    return {"tenant": name, "keys": [key], "models": models, **sections}


def basic_tenant(mock: str, key: str = KEY, name: str = "acme") -> dict[str, Any]:
    return tenant(name, key, {
        "gpt-4o-mini": [deployment(mock)],
        "text-embedding-3-small": [deployment(mock, model="text-embedding-3-small")],
    })


@dataclass
class Running:
    mock: Server
    proxy: Server
    policies: Path

    @property
    def url(self) -> str:
        return self.proxy.base

    @property
    def mock_url(self) -> str:
        return self.mock.base

    @property
    def pid(self) -> int:
        assert self.proxy.proc is not None
        return self.proxy.proc.pid

    def alive(self) -> bool:
        return self.proxy.proc is not None and self.proxy.proc.poll() is None

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sockets(self) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                continue
        return n

    def rss_mb(self) -> float:
        return rss_bytes([self.pid]) / 1e6

    def runtime(self) -> dict[str, Any]:
        """/readyz's debug block: asyncio_tasks, open_fds (from inside the process)."""
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=10) as r:
            return json.loads(r.read())["runtime"]  # type: ignore[no-any-return]

    def mock_faults(self, spec: dict[str, Any]) -> None:
        req = urllib.request.Request(f"{self.mock_url}/_mock/faults", method="POST",
                                     data=json.dumps(spec).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
         "WARDEN_ACCESS_LOG": "false", "WARDEN_DEBUG_RUNTIME": "true",
         "WARDEN_POLICY_RELOAD_INTERVAL_S": "0",
         "WARDEN_HARDENING_UPSTREAM_KEY": UPSTREAM_SECRET}
    e.update(extra)
    return e


def warden_argv(repo: Path | None) -> list[str]:
    """``python -m proxy`` of this tree, or of ``repo`` (another worktree): ``-m`` would
    put the current directory first on sys.path, so the other tree is imported by hand."""
    if repo is None:
        return [sys.executable, "-m", "proxy"]
    return [sys.executable, "-c", f"import sys; sys.path[0] = {str(repo)!r}; "
            "from proxy.cli import main; sys.exit(main())"]


@contextmanager
def stack(workdir: Path, policies: Callable[[str], list[dict[str, Any]]],
          proxy_env: dict[str, str] | None = None, mock_args: tuple[str, ...] = (),
          repo: Path | None = None) -> Iterator[Running]:
    """Start the mock, write ``policies(mock_url)``, start Warden (of ``repo`` when
    given); stop both on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    with Servers() as servers:
        mport = free_port()
        mock = servers.start(Server(
            "mock", [sys.executable, "-m", "proxy", "mock-upstream", "--host", "127.0.0.1",
                     "--port", str(mport), *mock_args],
            mport, "/_mock/stats", workdir / "mock.log", env()), timeout=60)
        pdir = workdir / "policies"
        pdir.mkdir(exist_ok=True)
        for t in policies(mock.base):
            (pdir / f"{t['tenant']}.yaml").write_text(yaml.safe_dump(t, sort_keys=False))
        pport = free_port()
        proxy = servers.start(Server(
            "warden", [*warden_argv(repo), "serve", "--host", "127.0.0.1",
                       "--port", str(pport), "--policies", str(pdir)],
            pport, "/readyz", workdir / "warden.log",
            env(**(proxy_env or {}), **({"PYTHONPATH": str(repo)} if repo else {}))),
            timeout=90)
        yield Running(mock, proxy, pdir)
