"""Redis chaos: the store's Redis killed (SIGKILL) and restarted repeatedly under load,
in both failure modes; then no crash, no 500, and no reservation left once leases ran out.

A private ``redis-server`` is started on a free loopback port (never the shared 6379),
with append-only persistence (``appendfsync always``) so what Redis held when it was
killed is still there after the restart: a reservation made just before a kill and
never settled must expire by its lease, not vanish with the data.

For each mode (``WARDEN_STORE_FAILURE_MODE=open`` then ``closed``): Warden runs with a
tenant that has rate limits, a concurrency limit and a token budget on that Redis, and
a short reservation lease (``WARDEN_RESERVATION_TTL_S``). Clients send plain and
streamed requests while Redis is killed and restarted every few seconds. Allowed
replies: 200; 429 (a limit, OpenAI-shaped); in closed mode 503 ``service_unavailable``
while Redis is down. Never a 500, never a non-OpenAI error, and the proxy stays up.
Afterwards, with Redis up, the lease is waited out and one more request sweeps expired
leases; then every concurrency-slot and budget-lease set under the run's prefix must be
empty.

    python bench/redis_chaos.py                     # ~2 min: 2 modes x 40 s
    python bench/redis_chaos.py --seconds 15        # quick look (what CI runs)

Needs the Redis store (proxy/store, from the limits/budget work); exits 2 saying so
when the tree it runs does not have it. Loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import harness
from bench.fuzzing import TRACE_MARKERS, is_openai_error
from bench.procs import free_port

KEY = harness.KEY
TTL_S = 4.0


def has_redis_store(repo: Path) -> bool:
    """Whether the tree at ``repo`` has the Redis store (it lands with limits/budget)."""
    store = repo / "proxy" / "store"
    return (store / "redis_store.py").is_file() or "RedisStore" in (
        (repo / "proxy" / "store.py").read_text() if (repo / "proxy" / "store.py").is_file()
        else "")


def policies(mock: str) -> list[dict[str, Any]]:
    t = harness.basic_tenant(mock)
    t["limits"] = {"rpm": 100_000, "tpm": 50_000_000, "concurrency": 12}
    t["budget"] = {"tokens": 500_000_000, "period": "day", "max_tokens": 64}
    return [t]


class RedisProcess:
    """A private redis-server on a free port; kill -9 and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown, no final save
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class ModeResult:
    mode: str
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    kills: int = 0
    leftover: dict[str, int] = field(default_factory=dict)
    spent: int = 0
    alive: bool = False
    requests: int = 0

    @property
    def ok(self) -> bool:
        # spent > 0: the run really reserved and settled in Redis (else the check on
        # leftovers proves nothing).
        return (self.alive and not self.bad and not any(self.leftover.values())
                and self.spent > 0)

    def row(self) -> str:
        st = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        codes = ", ".join(f"{k}={v}" for k, v in sorted(self.codes.items())) or "-"
        left = sum(self.leftover.values())
        return (f"| {self.mode} | {self.kills} | {self.requests} | {st} | {codes} | "
                f"{len(self.bad)} | {left} | {self.spent} | {'yes' if self.alive else 'NO'} |")


async def one(session: aiohttp.ClientSession, url: str, rng: random.Random, mode: str,
              result: ModeResult) -> None:
    stream = rng.random() < 0.4
    body = {"model": "gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": f"redis chaos {rng.random():.6f}"}]}
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {KEY}"}) as r:
            raw = await r.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        result.bad.append(f"connection error {e!r}")
        return
    result.requests += 1
    result.statuses[r.status] += 1
    text = raw.decode("utf-8", "replace")
    if any(m in text for m in TRACE_MARKERS):
        result.bad.append(f"traceback: {text[:200]}")
    if r.status == 200:
        if stream and not raw.rstrip().endswith(b"data: [DONE]"):
            result.bad.append(f"stream without [DONE]: {raw[-200:]!r}")
        return
    if not is_openai_error(raw):
        result.bad.append(f"{r.status} not OpenAI-shaped: {text[:200]}")
        return
    code = str(json.loads(raw)["error"].get("code"))
    result.codes[f"{r.status}:{code}"] += 1
    allowed = {429} | ({503} if mode == "closed" else set())
    if r.status not in allowed:
        result.bad.append(f"{mode}: unexpected {r.status}: {text[:200]}")


async def load(url: str, seconds: float, concurrency: int, mode: str, result: ModeResult,
               seed: int) -> None:
    rng = random.Random(seed)
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < stop_at:
                await one(session, url, rng, mode, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def killer(redis_proc: RedisProcess, stop: threading.Event, every_s: float, down_s: float,
           rng: random.Random) -> None:
    while not stop.wait(rng.uniform(every_s * 0.5, every_s * 1.5)):
        redis_proc.kill()
        if stop.wait(rng.uniform(down_s * 0.5, down_s * 1.5)):
            break
        redis_proc.start()
    if not redis_proc.ping():
        redis_proc.start()


def leftovers(redis_url: str, prefix: str) -> dict[str, int]:
    """Entries still held in concurrency-slot sets (``:c:``) and budget-lease sets
    (``:r:``) under ``prefix``: after the leases ran out and a sweep, all must be 0.
    (Redis deletes a zset when its last entry goes, so "all settled" is usually {}.)"""
    import redis

    r = redis.Redis.from_url(redis_url)
    out: dict[str, int] = {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode()
        # Slots are one zset per limit (":c:"); leases a zset + hash pair (":r:"); the
        # zsets hold one entry per live reservation.
        if (":c:" in name or ":r:" in name) and r.type(key) == b"zset":
            out[name] = int(r.zcard(key))
    r.close()
    return out


def budget_spent(redis_url: str, prefix: str) -> int:
    """Tokens recorded as spent in the budget ledgers under ``prefix`` (the ``~`` total
    of each ``:b:...:h`` hash): proof that requests really reserved and settled."""
    import redis

    r = redis.Redis.from_url(redis_url)
    total = 0
    for key in r.scan_iter(match=f"{prefix}:*:b:*:h", count=1000):
        total += int(r.hget(key, "~") or 0)
    r.close()
    return total


def run_mode(workdir: Path, redis_proc: RedisProcess, mode: str, seconds: float,
             concurrency: int, every_s: float, down_s: float, seed: int,
             repo: Path | None) -> ModeResult:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    result = ModeResult(mode)
    proxy_env = {"WARDEN_REDIS_URL": redis_proc.url, "WARDEN_REDIS_PREFIX": prefix,
                 "WARDEN_STORE_FAILURE_MODE": mode, "WARDEN_RESERVATION_TTL_S": str(TTL_S)}
    with harness.stack(workdir / mode, policies, proxy_env=proxy_env, repo=repo) as run:
        stop = threading.Event()
        kills_before = redis_proc.kills
        thread = threading.Thread(target=killer, args=(redis_proc, stop, every_s, down_s,
                                                       random.Random(seed)), daemon=True)
        thread.start()
        try:
            asyncio.run(load(run.url, seconds, concurrency, mode, result, seed))
        finally:
            stop.set()
            thread.join(30)
        result.kills = redis_proc.kills - kills_before
        # Redis is up again: wait out the lease, then one request sweeps what expired.
        time.sleep(TTL_S + 1.5)
        asyncio.run(load(run.url, 0.5, 1, mode, result, seed + 1))
        time.sleep(1.0)  # settle runs off the response path
        result.leftover = {k: v for k, v in leftovers(redis_proc.url, prefix).items() if v}
        result.spent = budget_spent(redis_proc.url, prefix)
        result.alive = run.alive()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=40, help="load per mode")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    ap.add_argument("--down", type=float, default=1.0, help="mean seconds Redis stays down")
    ap.add_argument("--modes", default="open,closed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repo", type=Path, default=None,
                    help="run the Warden tree in this directory (e.g. another worktree)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve() if args.repo else None
    if not has_redis_store(repo or harness.ROOT):
        print("redis_chaos: this tree has no Redis store yet (proxy/store from the "
              "limits/budget work); nothing to run", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("redis_chaos: redis-server is not installed", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="warden-redis-chaos-") as tmp:
        redis_proc = RedisProcess(Path(tmp))
        redis_proc.start()
        try:
            for mode in args.modes.split(","):
                results.append(run_mode(Path(tmp), redis_proc, mode, args.seconds,
                                        args.concurrency, args.kill_every, args.down,
                                        args.seed, repo))
        finally:
            with contextlib.suppress(Exception):
                redis_proc.stop()
    print("| mode | Redis kills | requests | statuses | refusals (status:code) | bad | "
          "reservations left after TTL | budget tokens recorded | proxy alive |")
    print("|---|---:|---:|---|---|---:|---:|---:|---|")
    for r in results:
        print(r.row())
    for r in results:
        for b in r.bad[:10]:
            print(f"  {r.mode} bad: {b}")
        for k, v in r.leftover.items():
            print(f"  {r.mode} leftover: {k} = {v}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
