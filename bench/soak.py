"""Soak: minutes of mixed traffic, then is anything growing?

Paced traffic (plain and streamed chat, embeddings, model lists, a flaky primary that
fails over, and requests that must be refused: bad JSON, bad key, unknown model) goes
through a ``warden serve`` subprocess for ``--minutes``. Every window the proxy's RSS,
open descriptors and asyncio tasks are sampled, and each reply is checked against the
status its kind must get. Printed as a table, with start/end and the error-rate drift.

    python bench/soak.py --minutes 30      # the long run (the lead's, on a quiet machine)
    python bench/soak.py --minutes 1       # what CI runs (tests/test_soak.py)

"Start" is sampled after a warm-up window, so first-use allocations (pools, caches)
are not counted as growth. Loopback only; paced at --rps; servers stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import harness
from bench.chaos import tcp_states

KEY = harness.KEY


def policies(mock: str) -> list[dict[str, Any]]:
    t = harness.basic_tenant(mock)
    t["models"]["flaky"] = [harness.deployment(mock, "fail_rate=0.3,status=503", name="flaky"),
                            harness.deployment(mock, name="steady")]
    return [t]


# kind -> (weight, expected status)
KINDS: dict[str, tuple[int, int]] = {
    "chat": (30, 200), "stream": (30, 200), "embeddings": (10, 200), "models": (5, 200),
    "flaky": (10, 200), "bad_json": (5, 400), "bad_key": (5, 401), "unknown_model": (5, 404),
}


async def one(session: aiohttp.ClientSession, url: str, kind: str, rng: random.Random
              ) -> tuple[int, str | None]:
    """(status, problem) for one request of this kind."""
    auth = {"Authorization": f"Bearer {KEY}"}
    text = f"soak {rng.randrange(10**6)} " + "x" * rng.randrange(0, 2000)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if kind == "models":
        req = session.get(f"{url}/v1/models", headers=auth)
    elif kind == "embeddings":
        req = session.post(f"{url}/v1/embeddings", headers=auth,
                           json={"model": "text-embedding-3-small", "input": text})
    elif kind == "bad_json":
        req = session.post(f"{url}/v1/chat/completions", data=b'{"model": "gpt-4o-mini", ',
                           headers={**auth, "Content-Type": "application/json"})
    elif kind == "bad_key":
        req = session.post(f"{url}/v1/chat/completions", json=chat,
                           headers={"Authorization": "Bearer vk-not-a-real-key"})
    elif kind == "unknown_model":
        req = session.post(f"{url}/v1/chat/completions", headers=auth,
                           json={**chat, "model": "no-such-model"})
    else:
        body = {**chat, "stream": kind == "stream"}
        if kind == "flaky":
            body["model"] = "flaky"
        req = session.post(f"{url}/v1/chat/completions", headers=auth, json=body)
    async with req as r:
        raw = await r.read()
    expected = KINDS[kind][1]
    if r.status != expected:
        return r.status, f"{kind}: {r.status} (expected {expected}): {raw[:160]!r}"
    if kind == "stream" and not raw.rstrip().endswith(b"data: [DONE]"):
        return r.status, f"stream without [DONE]: {raw[-160:]!r}"
    if expected >= 400 and "error" not in json.loads(raw):
        return r.status, f"{kind}: refusal not OpenAI-shaped: {raw[:160]!r}"
    return r.status, None


@dataclass
class Window:
    index: int
    seconds: float
    requests: int = 0
    refusals: int = 0  # expected 4xx (bad input by design)
    unexpected: int = 0
    rss_mb: float = 0.0
    fds: int = 0
    tasks: int = 0


@dataclass
class SoakReport:
    windows: list[Window]
    problems: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    # Before any traffic, and after the clients closed their connections.
    idle_before: dict[str, float] = field(default_factory=dict)
    idle_after: dict[str, float] = field(default_factory=dict)

    @property
    def start(self) -> Window:
        return self.windows[0]

    @property
    def end(self) -> Window:
        return self.windows[-1]

    @property
    def unexpected(self) -> int:
        return sum(w.unexpected for w in self.windows)

    @property
    def requests(self) -> int:
        return sum(w.requests for w in self.windows)

    def error_rate(self, w: Window) -> float:
        return w.unexpected / w.requests if w.requests else 0.0

    def render(self) -> str:
        lines = ["| window | s | requests | req/s | expected 4xx | unexpected | RSS MB "
                 "| open fds* | asyncio tasks* |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w in self.windows:
            lines.append(f"| {w.index} | {w.seconds:.0f} | {w.requests} | "
                         f"{w.requests / w.seconds if w.seconds else 0:.0f} | {w.refusals} | "
                         f"{w.unexpected} | {w.rss_mb:.1f} | {w.fds} | {w.tasks} |")
        s, e = self.start, self.end
        lines += [
            "* not counting client keep-alive connections and their handler tasks",
            "",
            f"{self.requests} requests, {self.unexpected} unexpected replies; "
            f"RSS start/end {s.rss_mb:.1f}/{e.rss_mb:.1f} MB "
            f"({e.rss_mb - s.rss_mb:+.1f}); open fds start/end {s.fds}/{e.fds}; "
            f"asyncio tasks start/end {s.tasks}/{e.tasks}; unexpected-error rate "
            f"first/last window {self.error_rate(s):.4f}/{self.error_rate(e):.4f}",
        ]
        b, a = self.idle_before, self.idle_after
        if b and a:
            lines.append(f"idle before/after traffic: RSS {b['rss_mb']:.1f}/{a['rss_mb']:.1f} MB, "
                         f"open fds {b['fds']:.0f}/{a['fds']:.0f}, asyncio tasks "
                         f"{b['tasks']:.0f}/{a['tasks']:.0f} (after: clients disconnected; "
                         "idle keep-alive connections to the provider may stay pooled)")
        lines += [f"  problem: {p}" for p in self.problems[:20]]
        return "\n".join(lines)


async def drive(run: harness.Running, seconds: float, windows: int, rps: float,
                concurrency: int, seed: int) -> SoakReport:
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    report = SoakReport([])
    window_s = seconds / windows
    interval = 1.0 / rps
    sem = asyncio.Semaphore(concurrency)
    current = Window(0, 0.0)
    pending: set[asyncio.Task[None]] = set()

    async def fire(session: aiohttp.ClientSession, kind: str, w: Window) -> None:
        async with sem:
            try:
                status, problem = await asyncio.wait_for(one(session, run.url, kind, rng), 30)
            except (TimeoutError, aiohttp.ClientError) as e:
                status, problem = 0, f"{kind}: {e!r}"
        w.requests += 1
        report.kinds[kind] += 1
        if problem is not None:
            w.unexpected += 1
            if len(report.problems) < 50:
                report.problems.append(problem)
        elif status >= 400:
            w.refusals += 1

    def sample(w: Window, started: float) -> None:
        # Connections the clients keep alive (and the one handler task each) move with
        # the client pool's size, not with Warden's health: counted out.
        rt = run.runtime()
        clients = tcp_states(run.pid).get("CLIENT", 0)
        w.seconds = time.monotonic() - started
        w.rss_mb = run.rss_mb()
        w.fds = run.open_fds() - clients
        w.tasks = rt["asyncio_tasks"] - clients

    async with aiohttp.ClientSession() as session:
        # Warm-up window (not reported): pools fill, caches warm, first-use allocations.
        warm_until = time.monotonic() + min(10.0, window_s)
        while time.monotonic() < warm_until:
            pending.add(asyncio.create_task(fire(session, rng.choices(kinds, weights)[0],
                                                 Window(-1, 0))))
            await asyncio.sleep(interval)
        await asyncio.gather(*pending)
        pending.clear()
        for i in range(windows):
            current = Window(i, 0.0)
            started = time.monotonic()
            next_at = started
            while time.monotonic() - started < window_s:
                task = asyncio.create_task(fire(session, rng.choices(kinds, weights)[0],
                                                current))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*list(pending))  # this window's requests are this window's
            await asyncio.to_thread(sample, current, started)
            report.windows.append(current)
    return report


def idle(run: harness.Running) -> dict[str, float]:
    return {"rss_mb": run.rss_mb(), "fds": run.open_fds(),
            "tasks": run.runtime()["asyncio_tasks"]}


def run_soak(workdir: Path, minutes: float, windows: int, rps: float, concurrency: int,
             seed: int = 1) -> SoakReport:
    with harness.stack(workdir, policies) as run:
        before = idle(run)
        report = asyncio.run(drive(run, minutes * 60, windows, rps, concurrency, seed))
        time.sleep(1.0)  # let the server see the clients' FINs
        report.idle_before, report.idle_after = before, idle(run)
        return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--rps", type=float, default=150, help="request rate (paced)")
    ap.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.minutes > 120:
        ap.error("--minutes is bounded at 120")
    with tempfile.TemporaryDirectory(prefix="warden-soak-") as tmp:
        report = run_soak(Path(tmp), args.minutes, args.windows, args.rps, args.concurrency,
                          args.seed)
    print(report.render())
    return 0 if report.unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
