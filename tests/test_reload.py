"""Hot reload of the policy set: file watching (plain and Kubernetes symlink swaps),
SIGHUP, rejection of broken files, and metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.appkeys import POLICIES
from proxy.metrics import Metrics
from proxy.mock_upstream import create_mock_app
from proxy.reload import PolicyReloader, ReloadOutcome, fingerprint, reload_metrics, running
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import MemoryStore
from proxy.tenants import PolicyHolder, load_policy_set
from proxy.upstream.translated import TranslatedTransport
from tests.support import WardenServer


def tenant_yaml(tenant: str, key: str, model: str = "gpt-4o-mini") -> str:
    return f"""\
tenant: {tenant}
keys: ["{key}"]
models:
  {model}:
    - provider: openai_compatible
      model: {model}
      api_base: http://127.0.0.1:9/v1
"""


@pytest.fixture
def services() -> Iterator[Services]:
    s = Services(settings=Settings(), store=MemoryStore(), metrics=Metrics())
    yield s
    s.close()


def make_reloader(
    directory: Path, services: Services, **kw: object
) -> tuple[PolicyReloader, PolicyHolder, list[ReloadOutcome]]:
    holder = PolicyHolder(load_policy_set(directory, services))
    seen: list[ReloadOutcome] = []
    reloader = PolicyReloader(
        directory,
        services,
        holder,
        listeners=(seen.append,),
        **kw,  # type: ignore[arg-type]
    )
    return reloader, holder, seen


class KubeConfigMapDir:
    """Lays out files the way the kubelet mounts a ConfigMap, and updates them the same
    way: a new hidden timestamped dir, then an atomic rename of the ``..data`` link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        gen = self.root / f"..2026_11_24_01_00_{self.generation:02d}.{os.getpid()}"
        gen.mkdir()
        for name, text in files.items():
            (gen / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(gen.name)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for link in self.root.iterdir():
            if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
                link.unlink()
        if old is not None:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


def test_fingerprint_sees_edit_add_remove_and_symlink_swap(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "notes.txt").write_text("ignored")
    first = fingerprint(tmp_path)
    assert [e[0] for e in first] == ["a.yaml"]
    (tmp_path / "notes.txt").write_text("still ignored")
    assert fingerprint(tmp_path) == first
    (tmp_path / "a.yaml").write_text("xy")
    second = fingerprint(tmp_path)
    assert second != first
    (tmp_path / "b.yml").write_text("y")
    assert [e[0] for e in fingerprint(tmp_path)] == ["a.yaml", "b.yml"]

    kube = KubeConfigMapDir(tmp_path / "cm")
    kube.root.mkdir()
    kube.write({"t.yaml": "same size"})
    before = fingerprint(kube.root)
    kube.write({"t.yaml": "same size"})  # identical bytes, new inode behind ..data
    after = fingerprint(kube.root)
    assert [e[0] for e in after] == ["t.yaml"]
    assert before != after and before[0][1] != after[0][1]


async def test_valid_change_swaps_whole_set(tmp_path: Path, services: Services) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    reloader, holder, seen = make_reloader(tmp_path, services)
    old = holder.current
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-2"))
    (tmp_path / "b.yaml").write_text(tenant_yaml("beta", "sk-beta-1"))
    outcome = await reloader.reload()
    assert outcome.ok and outcome.version == 2 and holder.version == 2
    assert holder.current is not old
    assert holder.current.authenticate("sk-alpha-1") is None
    assert holder.current.authenticate("sk-alpha-2") is not None
    assert holder.current.authenticate("sk-beta-1") is not None
    # The old set is untouched: a request that authenticated before still has it.
    assert old.authenticate("sk-alpha-1") is not None
    assert seen == [outcome]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tenant: alpha\nkeys: [\n", "invalid YAML"),
        (tenant_yaml("alpha", "sk-alpha-2") + "bogus: 1\n", "bogus: unknown key"),
        (tenant_yaml("alpha", "short"), "at least 8 characters"),
    ],
)
async def test_invalid_change_is_rejected_and_old_set_stays(
    tmp_path: Path, services: Services, text: str, reason: str
) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    reloader, holder, seen = make_reloader(tmp_path, services)
    old = holder.current
    (tmp_path / "a.yaml").write_text(text)
    outcome = await reloader.reload()
    assert not outcome.ok and outcome.version == 1
    assert holder.current is old and holder.version == 1
    assert holder.last_error is not None and reason in holder.last_error
    assert "a.yaml" in holder.last_error
    assert outcome.error == holder.last_error and seen == [outcome]
    # Fixing the file clears the error.
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-3"))
    fixed = await reloader.reload()
    assert fixed.ok and holder.last_error is None
    assert holder.current.authenticate("sk-alpha-3") is not None


async def test_a_build_crash_is_a_rejection(
    tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    reloader, holder, _ = make_reloader(tmp_path, services)
    old = holder.current

    def boom(directory: Path, services: Services) -> None:
        raise RuntimeError("model file missing")

    monkeypatch.setattr("proxy.reload.load_policy_set", boom)
    outcome = await reloader.reload()
    assert not outcome.ok and holder.current is old
    assert holder.last_error == "RuntimeError: model file missing"


async def wait_for(predicate: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_watcher_follows_kubernetes_configmap_swaps(
    tmp_path: Path, services: Services
) -> None:
    kube = KubeConfigMapDir(tmp_path)
    kube.write({"alpha.yaml": tenant_yaml("alpha", "sk-alpha-1")})
    reloader, holder, seen = make_reloader(tmp_path, services, interval_s=0.05, settle_s=0.02)
    async with running(reloader, sighup=False):
        await asyncio.sleep(0.2)
        assert seen == []  # nothing changed, nothing reloaded
        kube.write({"alpha.yaml": tenant_yaml("alpha", "sk-alpha-2")})
        await wait_for(lambda: holder.version == 2)
        assert holder.current.authenticate("sk-alpha-2") is not None

        kube.write({"alpha.yaml": "tenant: [broken\n"})
        await wait_for(lambda: holder.last_error is not None)
        assert holder.version == 2 and holder.current.authenticate("sk-alpha-2") is not None
        await asyncio.sleep(0.2)
        assert len(seen) == 2  # a rejected state is not retried on every poll

        kube.write(
            {
                "alpha.yaml": tenant_yaml("alpha", "sk-alpha-3"),
                "beta.yaml": tenant_yaml("beta", "sk-beta-1"),
            }
        )
        await wait_for(lambda: holder.version == 3)
        assert holder.last_error is None
        assert holder.current.authenticate("sk-beta-1") is not None

        kube.write({"beta.yaml": tenant_yaml("beta", "sk-beta-1")})  # alpha removed
        await wait_for(lambda: holder.version == 4)
        assert holder.current.authenticate("sk-alpha-3") is None
    assert [o.trigger for o in seen] == ["watch"] * 4


async def test_watcher_waits_for_files_to_settle(tmp_path: Path, services: Services) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    reloader, holder, seen = make_reloader(tmp_path, services, interval_s=0.05, settle_s=0.3)
    async with running(reloader, sighup=False):
        # Written in two steps; the half-written state is valid YAML but not a policy.
        (tmp_path / "a.yaml").write_text("tenant: alpha\n")
        await asyncio.sleep(0.1)
        (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-2"))
        await wait_for(lambda: holder.version == 2)
    assert all(o.ok for o in seen) and holder.last_error is None


async def test_sighup_reloads(tmp_path: Path, services: Services) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    reloader, holder, seen = make_reloader(tmp_path, services, interval_s=0)
    async with running(reloader):
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: holder.version == 2)
    assert [o.trigger for o in seen] == ["sighup"]
    assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.default_int_handler, None)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_reload_metrics(tmp_path: Path, services: Services) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    registry = CollectorRegistry()
    reloader, holder, _ = make_reloader(tmp_path, services)
    reloader.listeners = (reload_metrics(registry),)
    assert sample(registry, "warden_policy_set_version") == 1
    (tmp_path / "a.yaml").write_text("nope: [")
    await reloader.reload("watch")
    assert sample(registry, "warden_policy_reloads_total", outcome="rejected", trigger="watch") == 1
    assert sample(registry, "warden_policy_reload_failing") == 1
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-2"))
    await reloader.reload("sighup")
    assert sample(registry, "warden_policy_reloads_total", outcome="ok", trigger="sighup") == 1
    assert sample(registry, "warden_policy_reload_failing") == 0
    assert sample(registry, "warden_policy_set_version") == holder.version == 2
    last = sample(registry, "warden_policy_reload_last_success_timestamp_seconds")
    assert last is not None and abs(last - time.time()) < 60


# --- Under load, through the real proxy and the mock provider ---------------------------


def routed_yaml(key: str, upstream_model: str, base: str, extra_key: str | None = None) -> str:
    keys = [key] if extra_key is None else [key, extra_key]
    # Streams of 4 chunks, 15 ms apart: reloads land while replies are in flight.
    return f"""\
tenant: alpha
keys: {json.dumps(keys)}
models:
  chat:
    - provider: openai_compatible
      model: {upstream_model}
      api_base: {base}/f/chunks=4,chunk_delay_ms=15/v1
"""


class Load:
    """A bounded client loop: workers alternate plain and streamed chat calls."""

    def __init__(self, url: str, key: str, workers: int = 4, max_requests: int = 3000) -> None:
        self.url, self.key, self.workers, self.max_requests = url, key, workers, max_requests
        self.models: list[list[str]] = [[] for _ in range(workers)]
        self.failures: list[str] = []
        self.sent = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _one(self, session: aiohttp.ClientSession, stream: bool) -> str:
        body = {
            "model": "chat",
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        }
        headers = {"Authorization": f"Bearer {self.key}"}
        async with session.post(self.url, json=body, headers=headers) as resp:
            if resp.status != 200:
                raise AssertionError(f"{resp.status}: {await resp.text()}")
            if not stream:
                return str((await resp.json())["model"])
            model, done = "", False
            async for line in resp.content:
                text = line.decode().strip()
                if text == "data: [DONE]":
                    done = True
                elif text.startswith("data: "):
                    event = json.loads(text[6:])
                    if "error" in event:
                        raise AssertionError(f"stream error event: {event}")
                    model = event.get("model") or model
            if not done:
                raise AssertionError("stream ended without [DONE]")
            return model

    async def _worker(self, i: int) -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while not self._stop.is_set() and self.sent < self.max_requests:
                self.sent += 1
                n += 1
                try:
                    self.models[i].append(await self._one(session, stream=n % 2 == 0))
                except Exception as e:  # every failure is collected and reported
                    self.failures.append(f"{type(e).__name__}: {e}")

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def seen(self) -> set[str]:
        return {m for per in self.models for m in per}


@pytest.mark.parametrize("layout", ["in_place", "kubernetes"])
async def test_edit_break_fix_under_load(tmp_path: Path, layout: str) -> None:
    mock = TestServer(create_mock_app())
    await mock.start_server()
    base = str(mock.make_url("")).rstrip("/")
    policies = tmp_path / "policies"
    policies.mkdir()
    kube = KubeConfigMapDir(policies)

    def write(text: str) -> None:
        if layout == "kubernetes":
            kube.write({"alpha.yaml": text})
        else:
            (policies / "alpha.yaml").write_text(text)  # non-atomic, like an editor

    write(routed_yaml("sk-alpha-load-1", "echo-a", base))
    settings = Settings(
        policies_dir=policies, policy_reload_interval_s=0.05, access_log=False, port=0
    )
    proxy = WardenServer(create_app(settings))
    await proxy.start_server()
    holder = proxy.app[POLICIES]
    url = str(proxy.make_url("/v1/chat/completions"))
    load = Load(url, "sk-alpha-load-1")
    load.start()
    try:
        await wait_for(lambda: "echo-a" in load.seen())

        # Edit: a new upstream model and a second key.
        write(routed_yaml("sk-alpha-load-1", "echo-b", base, extra_key="sk-alpha-load-2"))
        await wait_for(lambda: holder.version == 2)
        await wait_for(lambda: "echo-b" in load.seen())
        async with aiohttp.ClientSession() as s:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            auth = {"Authorization": "Bearer sk-alpha-load-2"}
            async with s.post(url, json=body, headers=auth) as r:
                assert r.status == 200 and (await r.json())["model"] == "echo-b"

        # Break: rejected, reported, ignored.
        write("tenant: alpha\nkeys: [sk-alpha-load-1\nmodels: {}\n")
        await wait_for(lambda: holder.last_error is not None)
        assert holder.version == 2 and "alpha.yaml" in str(holder.last_error)
        served_before = load.sent
        await wait_for(lambda: load.sent > served_before + 20)
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.make_url("/readyz")) as r:
                ready = await r.json()
                assert r.status == 200
                assert "alpha.yaml" in ready["policies"]["last_reload_error"]
                assert ready["policies"]["version"] == 2
            async with s.get(proxy.make_url("/metrics")) as r:
                assert "warden_policy_reload_failing 1.0" in await r.text()

        # Fix.
        write(routed_yaml("sk-alpha-load-1", "echo-c", base))
        await wait_for(lambda: holder.version == 3)
        assert holder.last_error is None
        await wait_for(lambda: "echo-c" in load.seen())
    finally:
        await load.stop()
        await proxy.close()
        await mock.close()

    assert load.failures == [], load.failures[:5]
    assert load.seen() == {"echo-a", "echo-b", "echo-c"}
    # Each worker saw the versions in order, never going back: whole-set swaps.
    rank = {"echo-a": 0, "echo-b": 1, "echo-c": 2}
    for per_worker in load.models:
        ranks = [rank[m] for m in per_worker]
        assert ranks == sorted(ranks)
    assert sum(len(m) for m in load.models) > 40


# --- SIGHUP on a real `warden serve` process ------------------------------------------


@pytest.mark.slow
def test_sighup_reloads_warden_serve(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "WARDEN_POLICY_RELOAD_INTERVAL_S": "0",  # only the signal may reload
        "WARDEN_ACCESS_LOG": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", "0", "--policies", str(policies)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("WARDEN_READY port="), line
        port = int(line.strip().split("=")[1])

        def readyz() -> dict[str, object]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return dict(json.loads(r.read())["policies"])

        def until(check: Callable[[dict[str, object]], bool]) -> dict[str, object]:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                state = readyz()
                if check(state):
                    return state
                time.sleep(0.05)
            raise AssertionError(f"not reached: {readyz()}")

        assert readyz()["version"] == 1
        (policies / "a.yaml").write_text("tenant: [")
        time.sleep(0.3)
        assert readyz()["version"] == 1  # watching is off: nothing happens by itself
        proc.send_signal(signal.SIGHUP)
        state = until(lambda s: s["last_reload_error"] is not None)
        assert state["version"] == 1 and "a.yaml" in str(state["last_reload_error"])
        (policies / "b.yaml").write_text(tenant_yaml("beta", "sk-beta-1"))
        (policies / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-2"))
        proc.send_signal(signal.SIGHUP)
        state = until(lambda s: s["version"] == 2)
        assert state["tenants"] == 2 and state["last_reload_error"] is None
        assert proc.poll() is None, "SIGHUP must not stop the process"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "policy reload rejected (sighup)" in err
    assert "policies reloaded (sighup): version 2, 2 tenants" in err


async def test_prepare_runs_before_the_swap_and_its_failure_rejects(
    tmp_path: Path, services: Services
) -> None:
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    holder = PolicyHolder(load_policy_set(tmp_path, services))
    versions_seen: list[int] = []

    async def prepare(new: object) -> None:
        versions_seen.append(holder.version)  # still the old set while preparing
        if len(versions_seen) == 2:
            raise RuntimeError("warm-up failed")

    reloader = PolicyReloader(tmp_path, services, holder, prepare=prepare)
    assert (await reloader.reload()).ok and versions_seen == [1] and holder.version == 2
    failed = await reloader.reload()
    assert not failed.ok and holder.version == 2
    assert holder.last_error == "RuntimeError: warm-up failed"


async def test_reload_warms_litellm_for_a_new_translated_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[int] = []

    async def fake_warm(self: TranslatedTransport) -> None:
        warmed.append(holder.version)  # before the swap: the old version still serves

    monkeypatch.setattr(TranslatedTransport, "warm", fake_warm)
    (tmp_path / "a.yaml").write_text(tenant_yaml("alpha", "sk-alpha-1"))
    settings = Settings(policies_dir=tmp_path, policy_reload_interval_s=0.05, access_log=False)
    proxy = WardenServer(create_app(settings))
    await proxy.start_server()
    holder = proxy.app[POLICIES]
    try:
        (tmp_path / "a.yaml").write_text(
            tenant_yaml("alpha", "sk-alpha-2", "gpt-4o")
            + """\
  claude:
    - provider: anthropic
      model: claude-3-5-haiku-latest
"""
        )
        await wait_for(lambda: holder.version == 2)
        assert warmed == [1]
    finally:
        await proxy.close()
