"""Two ``warden serve`` processes sharing one Redis: limits and budgets hold across both,
also when clients hang up mid-stream and when one replica is SIGKILLed mid-request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.policies.budget import period_at
from proxy.store import create_store
from proxy.tokens import TokenCounter
from tests.redis_support import SHARED_URL, unique_prefix
from tests.support import KEY, env_for_subprocess, http_json, spawn, tenant_policy, write_policies

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Count slowly from one to twenty, please, in words."}]
TTL_S = 3.0


class Fleet:
    def __init__(self, tmp: Path, prefix: str, **sections: Any) -> None:
        self.tmp, self.prefix, self.sections = tmp, prefix, sections
        self.stack = ExitStack()
        self.procs: list[Any] = []
        self.ports: list[int] = []
        self.mock_url = ""

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.stack.close()  # never leave half a fleet running
            raise
        return self

    def _start(self) -> None:
        _, mock_port = self.stack.enter_context(
            spawn("mock-upstream", "--port", "0", ready="MOCK_READY"))
        self.mock_url = f"http://127.0.0.1:{mock_port}"
        policies = write_policies(self.tmp / "policies",
                                  tenant_policy(self.mock_url, **self.sections))
        env = env_for_subprocess(
            WARDEN_REDIS_URL=SHARED_URL, WARDEN_REDIS_PREFIX=self.prefix,
            WARDEN_RESERVATION_TTL_S=str(TTL_S), WARDEN_ACCESS_LOG="false",
            WARDEN_LOG_LEVEL="warning")
        for _ in range(2):
            proc, port = self.stack.enter_context(
                spawn("serve", "--port", "0", "--policies", str(policies), env=env))
            self.procs.append(proc)
            self.ports.append(port)

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i % 2]}/v1/chat/completions"

    def mock(self, method: str, path: str) -> Any:
        return http_json(method, f"{self.mock_url}{path}")


@pytest.fixture
def session_factory() -> Iterator[Any]:
    def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60))
    yield make


async def post(session: aiohttp.ClientSession, url: str, **extra: Any) -> tuple[int, bytes]:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    async with session.post(url, json=body, headers=HEADERS) as r:
        return r.status, await r.read()


async def test_rpm_is_exact_across_two_replicas(tmp_path: Path, session_factory: Any) -> None:
    with Fleet(tmp_path, unique_prefix(), limits={"rpm": 100}) as fleet:
        async with session_factory() as session:
            results = await asyncio.gather(*(
                post(session, fleet.url(i), stream=i % 3 == 0) for i in range(300)))
        codes = [status for status, _ in results]
        assert codes.count(200) == 100
        assert codes.count(429) == 200
        refused = [json.loads(body) for status, body in results if status == 429]
        assert {r["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
        assert len(fleet.mock("GET", "/_mock/requests")) == 100


async def test_concurrency_never_exceeds_the_limit_across_replicas(
        tmp_path: Path, session_factory: Any) -> None:
    with Fleet(tmp_path, unique_prefix(), spec="latency_ms=250",
               limits={"concurrency": 5}) as fleet:
        fleet.mock("DELETE", "/_mock/requests")
        admitted = 0
        deadline = time.monotonic() + 4

        async def worker(n: int, session: aiohttp.ClientSession) -> None:
            nonlocal admitted
            i = 0
            while time.monotonic() < deadline:
                i += 1
                status, _ = await post(session, fleet.url(n + i), stream=(n + i) % 2 == 0)
                assert status in (200, 429)
                if status == 200:
                    admitted += 1
                else:
                    await asyncio.sleep(0.02)

        async with session_factory() as session:
            await asyncio.gather(*(worker(n, session) for n in range(16)))
        stats = fleet.mock("GET", "/_mock/stats")
        assert stats["max_in_flight"] <= 5
        assert stats["max_in_flight"] >= 3  # the limit was actually reached for
        assert admitted == stats["requests"] and admitted > 10  # slots were reused


class Stream:
    """A streamed request that can be read to the end or hung up on."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.response: aiohttp.ClientResponse | None = None
        self.data = b""

    async def start(self) -> int:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                "max_tokens": 50, "stream_options": {"include_usage": True}}
        self.response = await self.session.post(self.url, json=body, headers=HEADERS)
        if self.response.status == 200:
            self.data = await self.response.content.readany()
        return self.response.status

    async def finish(self) -> dict[str, int]:
        assert self.response is not None
        self.data += await self.response.content.read()
        for line in self.data.decode().splitlines():
            if line.startswith("data: {") and '"usage":{' in line:
                return json.loads(line[6:])["usage"]  # type: ignore[no-any-return]
        raise AssertionError("no usage chunk")

    async def until_cut(self) -> None:
        assert self.response is not None
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self.response.content.read()

    def hang_up(self) -> None:
        assert self.response is not None
        self.response.close()


async def test_budget_holds_with_hangups_and_a_killed_replica(
        tmp_path: Path, session_factory: Any) -> None:
    counter = TokenCounter()
    await counter.prepare("o200k_base")
    worst = counter.chat_prompt("o200k_base", {"messages": MESSAGES}) + 50
    budget = 12 * worst  # tokens: exactly twelve worst cases
    prefix = unique_prefix()
    with Fleet(tmp_path, prefix, spec="chunks=20,chunk_delay_ms=150",
               budget={"tokens": budget, "period": "day"}) as fleet:
        async with session_factory() as session:
            on_a = [Stream(session, fleet.url(0)) for _ in range(8)]
            on_b = [Stream(session, fleet.url(1)) for _ in range(4)]
            assert await asyncio.gather(*(s.start() for s in on_a + on_b)) == [200] * 12
            # The budget is fully reserved: more requests, on either replica, must wait.
            extra = await asyncio.gather(*(post(session, fleet.url(i), max_tokens=50)
                                           for i in range(6)))
            assert [status for status, _ in extra] == [429] * 6
            assert all(b"held by requests in flight" in body for _, body in extra)

            fleet.procs[1].kill()  # SIGKILL replica B mid-request: 4 leases orphaned
            for s in on_a[4:]:
                s.hang_up()  # 4 clients leave mid-stream
            cut = asyncio.gather(*(s.until_cut() for s in on_b))
            usages = await asyncio.gather(*(s.finish() for s in on_a[:4]))
            await cut
        used = usages[0]["prompt_tokens"] + usages[0]["completion_tokens"]
        assert all(u["prompt_tokens"] + u["completion_tokens"] == used for u in usages)
        await asyncio.sleep(TTL_S + 1.0)  # B's leases run out

        store = create_store(SHARED_URL, prefix)
        check = period_at(time.time(), "day", rolling=False).spend("tokens", budget, 0)
        peek = await store.reserve("acme", "inspect", [check], now=time.time(), ttl_s=1,
                                   dry_run=True)
        await store.close()
        state = peek.verdict.states["tokens"]
        assert state.reserved == 0  # no reservation outlives its lease
        # Completed: real usage. Hung up, or on the killed replica: the full worst case.
        assert state.used == 4 * used + 8 * worst
        assert state.used <= budget
