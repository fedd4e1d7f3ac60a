"""Upstream chaos: a misbehaving provider, impatient clients, then a leak check.

The mock provider serves several deployments, each broken in its own way (5xx, 429,
resets mid-stream, truncated JSON, hangs, latency spikes); models list them in
different orders so failover (when configured) has somewhere to go. Midway, a global
fault (``POST /_mock/faults``) hits every deployment at once. Clients send plain and
streamed requests and hang up at random. Afterwards:

- every client that did not hang up got a 200 or a clean OpenAI-format error (a JSON
  error body, or for a stream that had started, a final SSE ``error`` event);
- the proxy's asyncio tasks are back to their idle count, no socket is left in
  CLOSE_WAIT (a peer closed and Warden never did), and its sockets are no more than the
  idle keep-alive pool allows;
- the proxy is still alive and answers.

    python bench/chaos.py                       # ~1 min: 1500 requests, 32 clients
    python bench/chaos.py --requests 200 --concurrency 16    # the CI size

Loopback only, bounded by --max-seconds; both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import harness
from bench.fuzzing import TRACE_MARKERS, is_openai_error
from proxy.store.redis_store import MAX_CONNECTIONS as REDIS_POOL

KEY = harness.KEY
# Hung deployments must give up quickly, or the run measures the timeout, not the proxy.
FAST_TIMEOUTS = {"connect": 1.0, "first_byte": 1.5, "idle": 1.0, "total": 3.0}


# With --accounting: limits and a budget on a private Redis, so afterwards every
# concurrency slot and budget reservation can be counted (must be zero: exact accounting).
ACCOUNTING_TTL_S = 15.0  # reservation lease: longer than any request in this run
WORST_CASE_TOKENS = 64 + 64  # max_tokens below + a generous prompt estimate
ACCOUNTING_SECTIONS: dict[str, Any] = {
    "limits": {"rpm": 1_000_000, "tpm": 1_000_000_000, "concurrency": 10_000},
    "budget": {"tokens": 1_000_000_000, "period": "day", "max_tokens": 64},
}


def policies(mock: str) -> list[dict[str, Any]]:
    def d(spec: str, name: str) -> dict[str, Any]:
        return harness.deployment(mock, spec, name=name, **FAST_TIMEOUTS)

    ok = d("", "ok")
    dep = {
        "5xx": d("fail_rate=0.5,status=500", "5xx"),
        "429": d("fail_rate=0.5,status=429,retry_after=1", "429"),
        "reset": d("reset_after=2,chunks=6", "reset"),
        "trunc": d("truncate=1", "trunc"),
        "hang": d("hang=1", "hang"),
        "spike": d("latency_ms=400", "spike"),
        "slowstream": d("chunks=8,chunk_delay_ms=30", "slowstream"),
        "garbage": d("garbage=1", "garbage"),
        "midstream": d("error_after=3,chunks=6", "midstream"),
    }
    models = {f"m-{name}": [dep[name], ok] for name in dep}
    models["m-ok"] = [ok]
    models["m-mixed"] = [dep["5xx"], dep["429"], dep["hang"], ok]
    return [harness.tenant("chaos", KEY, models)]


MODELS = ["m-5xx", "m-429", "m-reset", "m-trunc", "m-hang", "m-spike", "m-slowstream",
          "m-garbage", "m-midstream", "m-ok", "m-mixed"]
GLOBAL_FAULTS = [{"latency_ms": 150}, {"fail_rate": 0.3, "status": 502},
                 {"first_byte_ms": 200}, {}]


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    tokens: int = 0  # total_tokens of every usage block a client received
    with_usage: int = 0  # replies that carried one

    def fail(self, what: str) -> None:
        self.outcomes["bad"] += 1
        if len(self.bad) < 20:
            self.bad.append(what)


def judge_stream(body: bytes) -> tuple[str, str | None]:
    """(how it ended, problem): "done" ([DONE]) and "error_event" (a final OpenAI error
    event, then a clean close) are clean; anything else is a problem."""
    events = [e for e in body.split(b"\n\n") if e.strip()]
    if not events:
        return "bad", "empty stream"
    last = events[-1].strip()
    if last == b"data: [DONE]":
        return "done", None
    data = last.removeprefix(b"event: error\n").removeprefix(b"data: ")
    try:
        doc = json.loads(data)
    except ValueError:
        return "bad", f"stream cut without an error event: {last[:120]!r}"
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return "error_event", None
    return "bad", f"stream ended without [DONE] or error: {last[:120]!r}"


def stream_tokens(body: bytes) -> int:
    for event in body.split(b"\n\n"):
        if b'"usage":{' in event or b'"usage": {' in event:
            try:
                doc = json.loads(event.strip().removeprefix(b"data: "))
            except ValueError:
                continue
            if isinstance(doc.get("usage"), dict):
                return int(doc["usage"].get("total_tokens", 0))
    return 0


async def one(session: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally,
              disconnect_rate: float, client_timeout: float) -> None:
    model = rng.choice(MODELS)
    stream = rng.random() < 0.5
    body: dict[str, Any] = {
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": f"chaos {rng.random():.6f}"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    hang_up_after = rng.uniform(0.0, 0.6) if rng.random() < disconnect_rate else None

    async def exchange() -> None:
        async with session.post(f"{url}/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {KEY}"}) as r:
            raw = await r.read()
            tally.statuses[r.status] += 1
            text = raw.decode("utf-8", "replace")
            if any(m in text for m in TRACE_MARKERS):
                tally.fail(f"traceback in reply: {text[:200]}")
            elif r.status == 200 and stream:
                seen = stream_tokens(raw)
                tally.tokens += seen
                tally.with_usage += seen > 0
                ending, problem = judge_stream(raw)
                if problem is None:
                    tally.outcomes[f"stream_{ending}"] += 1
                else:
                    tally.fail(f"{model}: {problem}")
            elif r.status == 200:
                try:
                    reply = json.loads(raw)
                    reply["choices"]
                    tally.outcomes["ok"] += 1
                    tally.tokens += int((reply.get("usage") or {}).get("total_tokens", 0))
                    tally.with_usage += 1
                except (ValueError, KeyError, TypeError):
                    tally.fail(f"{model}: 200 that is not a completion: {text[:200]}")
            elif is_openai_error(raw):
                tally.outcomes[f"clean_error_{r.status}"] += 1
                # A provider's own 500 is relayed as the provider said it (DESIGN: provider
                # errors pass through); a 500 of Warden's own is a bug.
                if r.status == 500 and json.loads(raw)["error"].get("code") == "internal_error":
                    tally.fail(f"{model}: Warden 500 {text[:200]}")
            else:
                tally.fail(f"{model}: {r.status} not OpenAI-shaped: {text[:200]}")

    try:
        if hang_up_after is not None:
            try:
                await asyncio.wait_for(exchange(), hang_up_after)
                tally.outcomes["finished_before_hang_up"] += 1
            except TimeoutError:
                tally.outcomes["client_hung_up"] += 1
        else:
            await asyncio.wait_for(exchange(), client_timeout)
    except TimeoutError:
        tally.fail(f"{model} stream={stream}: no reply within {client_timeout} s")
    except aiohttp.ClientError as e:
        tally.fail(f"{model} stream={stream}: connection error {e!r}")


async def drive(url: str, mock_faults: Any, requests: int, concurrency: int,
                disconnect_rate: float, seed: int, client_timeout: float) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    phase_every = max(1, requests // len(GLOBAL_FAULTS))

    async def worker() -> None:
        # A connection per request: a hang-up closes a real socket, as an agent's would.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if i and i % phase_every == 0:
                    fault = GLOBAL_FAULTS[(i // phase_every - 1) % len(GLOBAL_FAULTS)]
                    await asyncio.to_thread(mock_faults, fault)
                await one(session, url, rng, tally, disconnect_rate, client_timeout)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.to_thread(mock_faults, {})
    return tally


def tcp_states(pid: int) -> Counter[str]:
    """States of the process's TCP sockets, from /proc/net/tcp{,6} by inode."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    names = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN",
             "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK", "07": "CLOSE"}
    states: Counter[str] = Counter()
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                rows += [line.split() for line in f]
        except OSError:
            continue
    listening = {int(r[1].split(":")[1], 16) for r in rows if r[9] in inodes and r[3] == "0A"}
    for parts in rows:
        if parts[9] in inodes and parts[3] != "0A" \
                and int(parts[1].split(":")[1], 16) in listening:
            states["CLIENT"] += 1  # accepted from a client, not one Warden opened
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[9] in inodes:
                        state = names.get(parts[3], parts[3])
                        states[state] += 1
                        if state == "ESTABLISHED":
                            states[f"REMOTE {int(parts[2].split(':')[1], 16)}"] += 1
                        if state == "CLOSE_WAIT":  # which side: a client, or a provider?
                            local = int(parts[1].split(":")[1], 16)
                            remote = int(parts[2].split(":")[1], 16)
                            states[f"CLOSE_WAIT local={local} remote={remote}"] += 1
        except OSError:
            continue
    return states


def metric_sums(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Totals of some Prometheus counters (all label sets added up); absent ones are 0."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def attempt_reasons(url: str) -> Counter[str]:
    import re
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Counter[str] = Counter()
    for m in re.finditer(r'^warden_upstream_attempts_total\{[^}]*reason="([^"]+)"[^}]*\} (\S+)',
                         text, re.M):
        out[m.group(1)] += int(float(m.group(2)))
    return out


@dataclass
class Report:
    tally: Tally
    baseline: dict[str, Any]
    after: dict[str, Any]
    tcp_after: Counter[str]
    alive: bool
    elapsed_s: float
    concurrency: int
    attempts: Counter[str] = field(default_factory=Counter)
    failovers: float = 0.0
    # --accounting: entries still held per slot/lease set right after the run, and the
    # tokens the budget ledger recorded (None: off)
    held: dict[str, int] | None = None
    spent: int = 0
    seen_tokens: int = 0
    held_at_end: int = 0  # held 5 s after the run, before leases ran out
    redis_port: int | None = None  # --accounting: the private redis-server's port

    @property
    def leaks(self) -> list[str]:
        out = []
        if self.after["asyncio_tasks"] > self.baseline["asyncio_tasks"] + 1:
            out.append(f"asyncio tasks {self.baseline['asyncio_tasks']} -> "
                       f"{self.after['asyncio_tasks']}")
        if self.tcp_after.get("CLOSE_WAIT", 0):
            where = [k for k in self.tcp_after if k.startswith("CLOSE_WAIT ")]
            out.append(f"{self.tcp_after['CLOSE_WAIT']} sockets in CLOSE_WAIT: {where}")
        # Idle keep-alive connections to the mock may stay pooled, at most one per
        # concurrent request; anything beyond that is a socket nobody owns. With
        # --accounting the store keeps its own Redis connections, bounded by its pool
        # (not by the clients: a hung-up request's settle still runs when the next
        # request's reserve starts).
        redis = self.tcp_after.get(f"REMOTE {self.redis_port}", 0) if self.redis_port else 0
        if redis > REDIS_POOL:
            out.append(f"{redis} connections to Redis (its pool holds {REDIS_POOL})")
        allowed = self.baseline["sockets"] + self.concurrency + redis
        # (An ESTABLISHED client connection is one the client side still holds: on
        # loopback a closed client socket shows up here as CLOSE_WAIT, counted above.)
        if self.after["sockets"] > allowed:
            out.append(f"sockets {self.baseline['sockets']} -> {self.after['sockets']} "
                       f"(allowed {allowed})")
        if self.held is not None:
            if any(self.held.values()):
                out.append(f"accounting: reservations still held {self.held}")
            # Every token a client saw in a usage block was charged (hung-up and failed
            # requests may add more: they settle to what is known, or the worst case).
            # Each of the others is charged at most its worst case (prompt + max_tokens).
            unseen = self.requests - self.tally.with_usage
            ceiling = self.seen_tokens + unseen * WORST_CASE_TOKENS
            if not self.seen_tokens <= self.spent <= ceiling or self.spent == 0:
                out.append(f"accounting: budget recorded {self.spent} tokens; clients saw "
                           f"{self.seen_tokens}, ceiling {ceiling}")
        return out

    @property
    def requests(self) -> int:
        return sum(self.tally.statuses.values()) + self.tally.outcomes["client_hung_up"]

    @property
    def ok(self) -> bool:
        return self.alive and not self.tally.bad and not self.leaks

    def render(self) -> str:
        t = self.tally
        answered = sum(t.statuses.values())
        lines = [
            f"{answered + t.outcomes['client_hung_up']} requests in {self.elapsed_s:.1f} s: "
            f"{t.outcomes['client_hung_up']} clients hung up, {answered} answered, "
            f"{t.outcomes['bad']} bad replies",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(t.outcomes.items())),
            "statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(t.statuses.items())),
            "",
            "| proxy | before | after |",
            "|---|---:|---:|",
            f"| asyncio tasks | {self.baseline['asyncio_tasks']} | {self.after['asyncio_tasks']} |",
            f"| open fds | {self.baseline['open_fds']} | {self.after['open_fds']} |",
            f"| sockets | {self.baseline['sockets']} | {self.after['sockets']} |",
            f"| CLOSE_WAIT sockets (10 s after) | - | {self.tcp_after.get('CLOSE_WAIT', 0)} |",
            "",
            "upstream attempts by outcome: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.attempts.items())) or "(no metric)"),
            f"failovers: {self.failovers:.0f}",
            *([] if self.held is None else [
                f"reservations held 5 s after the run: {self.held_at_end}, after their "
                f"lease ran out: {sum(self.held.values())}; budget "
                f"tokens recorded {self.spent} (usage seen by clients {self.seen_tokens})"]),
            f"alive afterwards: {self.alive}; leaks: {self.leaks or 'none'}",
        ]
        lines += [f"  bad: {b}" for b in t.bad]
        return "\n".join(lines)


def settle(run: harness.Running, baseline_tasks: int, seconds: float) -> dict[str, Any]:
    """Wait (bounded) for in-flight work to drain: timeouts must fire and tasks end."""
    deadline = time.monotonic() + seconds
    while True:
        snap = {**run.runtime(), "sockets": run.sockets()}
        if snap["asyncio_tasks"] <= baseline_tasks + 1 or time.monotonic() > deadline:
            return snap
        time.sleep(0.25)


def run_chaos(workdir: Path, requests: int, concurrency: int, disconnect_rate: float,
              seed: int, max_seconds: float, proxy_env: dict[str, str] | None = None,
              accounting: bool = False, repo: Path | None = None) -> Report:
    if not accounting:
        return _run(workdir, requests, concurrency, disconnect_rate, seed, max_seconds,
                    proxy_env or {}, policies, None, repo)
    from bench.redis_chaos import RedisProcess, has_redis_store

    if not has_redis_store(repo or harness.ROOT):
        raise RuntimeError("--accounting needs the Redis store (proxy/store from the "
                           "limits/budget work); this tree does not have it yet")
    redis_proc = RedisProcess(workdir)
    redis_proc.start()
    try:
        prefix = f"chaos-{uuid.uuid4().hex[:8]}"
        env = {**(proxy_env or {}), "WARDEN_REDIS_URL": redis_proc.url,
               "WARDEN_REDIS_PREFIX": prefix,
               "WARDEN_RESERVATION_TTL_S": str(ACCOUNTING_TTL_S)}

        def with_accounting(mock: str) -> list[dict[str, Any]]:
            return [{**t, **ACCOUNTING_SECTIONS} for t in policies(mock)]

        return _run(workdir, requests, concurrency, disconnect_rate, seed, max_seconds, env,
                    with_accounting, (redis_proc.url, prefix), repo)
    finally:
        redis_proc.stop()


def _run(workdir: Path, requests: int, concurrency: int, disconnect_rate: float, seed: int,
         max_seconds: float, proxy_env: dict[str, str],
         make_policies: Callable[[str], list[dict[str, Any]]],
         redis_at: tuple[str, str] | None, repo: Path | None) -> Report:
    started = time.monotonic()
    with harness.stack(workdir, make_policies, proxy_env=proxy_env, repo=repo) as run:
        baseline = {**run.runtime(), "sockets": run.sockets()}
        client_timeout = FAST_TIMEOUTS["total"] * 5 + 5
        tally = asyncio.run(asyncio.wait_for(
            drive(run.url, run.mock_faults, requests, concurrency, disconnect_rate, seed,
                  client_timeout), max_seconds))
        after = settle(run, baseline["asyncio_tasks"], FAST_TIMEOUTS["total"] + 5)
        # A socket the peer closed a moment ago is in CLOSE_WAIT until the loop reads the
        # EOF; only one that stays there is a leak. Watch it for a bounded while.
        deadline = time.monotonic() + 10
        while (tcp := tcp_states(run.pid)).get("CLOSE_WAIT") and time.monotonic() < deadline:
            time.sleep(0.5)
        after = {**after, "sockets": run.sockets()}
        alive = run.alive() and run.runtime()["asyncio_tasks"] >= 0
        failovers = metric_sums(run.url, ("warden_upstream_failovers_total",))
        held = None
        held_at_end = 0
        if redis_at is not None:
            from bench.redis_chaos import budget_spent, leftovers

            # Settles run just after the reply (store.settle_soon), and settle() above
            # tolerates one task still finishing: poll, bounded, until nothing is held.
            deadline = time.monotonic() + 5
            while any((held := leftovers(*redis_at)).values()) \
                    and time.monotonic() < deadline:
                time.sleep(0.25)
            held_at_end = sum(held.values())
            if held_at_end:
                # A request cancelled (client hang-up) during its reserve round trip
                # never settles; its lease must free it. Wait the lease out, let one
                # request sweep, then count again: only what stays is a leak.
                time.sleep(ACCOUNTING_TTL_S + 1)
                import urllib.request

                req = urllib.request.Request(
                    f"{run.url}/v1/chat/completions", method="POST",
                    data=json.dumps({"model": "m-ok", "messages": [
                        {"role": "user", "content": "sweep"}]}).encode(),
                    headers={"Authorization": f"Bearer {KEY}",
                             "Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=30).read()
                time.sleep(1.0)
                held = leftovers(*redis_at)
        report = Report(tally, baseline, after, tcp, alive, time.monotonic() - started,
                        concurrency, attempt_reasons(run.url),
                        failovers["warden_upstream_failovers_total"], held,
                        budget_spent(*redis_at) if redis_at else 0, tally.tokens)
        if redis_at is not None:
            report.held_at_end = held_at_end
            report.redis_port = urlsplit(redis_at[0]).port
        return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--disconnect-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--accounting", action="store_true",
                    help="limits + budget on a private redis-server; afterwards no "
                    "reservation may be left (needs the Redis store)")
    ap.add_argument("--repo", type=Path, default=None, help="run this Warden tree instead")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warden-chaos-") as tmp:
        report = run_chaos(Path(tmp), args.requests, args.concurrency, args.disconnect_rate,
                           args.seed, args.max_seconds, accounting=args.accounting,
                           repo=args.repo)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
