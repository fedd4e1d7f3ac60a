"""Warden vs direct-to-mock vs LiteLLM Proxy, side by side in one run on this machine.

    python bench/run.py                       # every scenario, ~2 minutes
    python bench/run.py --append --note "quiet machine"   # also append to RESULTS.md

Starts one ``warden mock-upstream`` (zero latency), LiteLLM Proxy (one worker, from
``bench/.venv-litellm``; see setup_litellm.sh) and one ``warden serve`` per scenario
(``bench/scenarios.py``), then measures each with ``bench/loadgen.py`` in its own process:
plain requests at concurrency 1 and 32 and streamed requests at concurrency 1, in
``--rounds`` interleaved rounds. Loopback only; every server it started is stopped when it
ends, and the whole run stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import machine, profile, report, scenarios  # noqa: E402
from bench.procs import Server, Servers, free_port  # noqa: E402
from bench.report import KINDS, PLAIN_C32, STREAM_C1, Measured  # noqa: E402

# Keeps LiteLLM from fetching its price map, beta-header list, presets, blog posts and
# policy templates from GitHub, and from serving the admin UI and API docs (verified with
# strace: with these set, LiteLLM Proxy connects to nothing but loopback).
LITELLM_OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "DISABLE_SCHEMA_UPDATE": "True",
    "LITELLM_LOG": "ERROR",
}


RESULTS_HEADER = """# Benchmark results

Appended by `python bench/run.py --append`, newest last; bench/README.md says how each
figure is measured. Numbers from a machine shared with other work are marked as such.

"""


@dataclass
class Column:
    """One column of the result: what to send where, and the server behind it (if any)."""

    measured: Measured
    url: str
    stream_url: str
    model: str
    stream_model: str
    api_key: str | None
    workload: scenarios.Workload
    server: Server | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="", help="comma-separated names (default: all): "
                   + ", ".join(s.name for s in scenarios.SCENARIOS))
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per load shape")
    p.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds before each")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    p.add_argument("--concurrency", type=int, default=32, help="the high concurrency level")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM Proxy")
    p.add_argument("--no-passthrough", action="store_true",
                   help="skip the two minimal pass-through reference columns")
    p.add_argument("--litellm-venv", type=Path, default=BENCH_DIR / ".venv-litellm")
    p.add_argument("--repo", type=Path, default=ROOT,
                   help="Warden source tree to run (PYTHONPATH of the servers)")
    p.add_argument("--append", nargs="?", const=BENCH_DIR / "RESULTS.md", type=Path,
                   default=None, metavar="FILE", help="append the report (default RESULTS.md)")
    p.add_argument("--note", default="", help="one line on the conditions, for the report")
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hard bound on the run")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--keep-logs", action="store_true", help="keep server logs and configs")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="after measuring, one unmeasured pass per Warden scenario under "
                   "py-spy; raw profiles go to DIR, top frames into the report")
    return p.parse_args(argv)


def base_env() -> dict[str, str]:
    # Inherited WARDEN_* settings would make runs depend on the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def warden_env(repo: Path, extra: dict[str, str]) -> dict[str, str]:
    env = base_env()
    env["PYTHONPATH"] = str(repo)
    env["BENCH_KEY"] = "sk-bench-dummy"
    env.update(extra)
    return env


def start_mock(servers: Servers, repo: Path, work: Path, timeout: float) -> Server:
    port = free_port()
    mock = Server(
        name="mock-upstream",
        argv=[sys.executable, "-m", "proxy", "mock-upstream", "--host", "127.0.0.1",
              "--port", str(port)],
        port=port, ready_path="/_mock/requests", log_path=work / "mock.log",
        env=warden_env(repo, {}),
    )
    return servers.start(mock, timeout)


def warden_server(
    scenario: scenarios.Scenario, repo: Path, work: Path, mock: str
) -> Server:
    pdir = work / f"policies-{scenario.name.replace('/', '_')}"
    pdir.mkdir()
    policy = scenarios.tenant_policy(scenario, mock)
    (pdir / "bench.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    env = {"WARDEN_REDIS_PREFIX": f"bench-{uuid4().hex[:8]}"}
    env.update(scenarios.substitute(dict(scenario.env), mock))
    port = free_port()
    return Server(
        name=f"warden[{scenario.name}]",
        argv=[sys.executable, "-m", "proxy", "serve", "--policies", str(pdir),
              "--host", "127.0.0.1", "--port", str(port)],
        port=port, ready_path="/readyz", log_path=pdir.with_suffix(".log"),
        env=warden_env(repo, env),
    )


def passthrough_server(work: Path, mock: str, name: str, module: str) -> Server:
    """A reference pass-through (``bench.<module>``) in front of the mock."""
    port = free_port()
    env = base_env()
    env["PYTHONPATH"] = str(ROOT)
    return Server(
        name=name,
        argv=[sys.executable, "-m", f"bench.{module}", "--upstream", mock,
              "--host", "127.0.0.1", "--port", str(port)],
        port=port, ready_path="/ready", log_path=work / f"{name}.log", env=env,
    )


def litellm_server(venv: Path, work: Path, mock: str, workload: scenarios.Workload) -> Server:
    cfg = work / f"litellm-{workload.name}.yaml"
    cfg.write_text(yaml.safe_dump(scenarios.litellm_config(mock, workload), sort_keys=False))
    port = free_port()
    env = base_env()
    env.update(LITELLM_OFFLINE_ENV)
    return Server(
        name=f"litellm[{workload.name}]",
        argv=[str(venv / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
              "--port", str(port), "--num_workers", "1"],
        port=port, ready_path="/health/readiness", log_path=cfg.with_suffix(".log"), env=env,
    )


def post(url: str, body: bytes, api_key: str | None, timeout: float = 30.0) -> tuple[int, bytes]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request("POST", "/" + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sanity_check(col: Column) -> None:
    """One plain and one streamed request must come back right before anything is timed."""
    wl = col.workload
    status, raw = post(col.url, wl.body(col.model, stream=False), col.api_key)
    if status != 200:
        raise RuntimeError(f"plain request: HTTP {status}: {raw[:300]!r}")
    content = json.loads(raw)["choices"][0]["message"]["content"]
    if not str(content).startswith("Echo:"):
        raise RuntimeError(f"plain request: unexpected reply {content!r}")
    status, raw = post(col.stream_url, wl.body(col.stream_model, stream=True), col.api_key)
    events = [e.strip()[5:].strip() for e in raw.split(b"\n\n") if e.strip().startswith(b"data:")]
    text = "".join(
        str(c["delta"].get("content") or "")
        for e in events[:-1] for c in json.loads(e).get("choices", [])
    )
    if status != 200 or not events or events[-1] != b"[DONE]" or not text.startswith("Echo:"):
        raise RuntimeError(f"streamed request: HTTP {status}, {len(events)} events, "
                           f"text {text[:60]!r}: {raw[:300]!r}")


def run_load(
    col: Column, shape: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    stream = shape == STREAM_C1
    body_file = work / f"body-{col.workload.name}-{int(stream)}-{col.measured.label}.json"
    body_file = body_file.with_name(body_file.name.replace("/", "_"))
    body_file.write_bytes(col.workload.body(col.stream_model if stream else col.model, stream))
    argv = [sys.executable, "-m", "bench.loadgen",
            "--url", col.stream_url if stream else col.url, "--body", f"@{body_file}",
            "--concurrency", str(args.concurrency if shape == PLAIN_C32 else 1),
            "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if col.api_key:
        argv += ["--api-key", col.api_key]
    env = base_env()
    env["PYTHONPATH"] = str(ROOT)
    cpu_before = col.server.cpu() if col.server is not None else 0.0
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + args.warmup + args.duration + 60
    peak = 0
    while True:
        try:
            out, err = proc.communicate(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            if col.server is not None:
                peak = max(peak, col.server.rss())
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                raise TimeoutError(
                    f"load generator for {col.measured.label} did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-800:]}")
    result: dict[str, Any] = json.loads(out)
    if col.server is not None:
        col.measured.loaded_rss = max(col.measured.loaded_rss or 0, peak)
        if result.get("completed"):
            # Server CPU over the whole load run, warm-up included, per reply it gave.
            result["server_cpu_us"] = (col.server.cpu() - cpu_before) / result["completed"] * 1e6
    return result


def clear_mock(mock: Server) -> None:
    # The mock keeps every body it received (for tests); do not let it grow all run.
    conn = http.client.HTTPConnection(mock.host, mock.port, timeout=5)
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn.request("DELETE", "/_mock/requests")
        conn.getresponse().read()
    conn.close()


def conditions(args: argparse.Namespace, load_before: float, started: float,
               rtt_us: float) -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for dist in ("aiohttp", "uvloop"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    litellm = "not run"
    if not args.no_litellm:
        found = sorted(args.litellm_venv.glob("lib/python*/site-packages/litellm-*.dist-info"))
        litellm = found[0].name.removesuffix(".dist-info").split("-", 1)[1] if found else "?"
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(args.repo), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    return (
        f"{cpu}, {os.cpu_count()} cores shared by client, proxy and mock; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; a loopback round trip "
        f"between two processes takes {rtt_us:.0f} µs (bench/machine.py). Python "
        f"{platform.python_version()}, {', '.join(versions)}. Warden {commit}; LiteLLM Proxy "
        f"{litellm} (1 worker, own venv). {args.rounds} interleaved round(s) of "
        f"{args.duration:g} s per load shape after {args.warmup:g} s warm-up; C=1 and "
        f"C={args.concurrency}; medians over rounds; whole run {time.monotonic() - started:.0f} s."
    )


def profile_pass(
    columns: list[Column], args: argparse.Namespace, work: Path, started: float
) -> str:
    """Sample each Warden server with py-spy under the plain C=32 and streamed loads."""
    if not profile.available():
        return "py-spy is not installed (pip install py-spy): no profiles."
    args.profile.mkdir(parents=True, exist_ok=True)
    out = []
    for col in columns:
        if col.measured.kind != "warden" or col.measured.error or col.server is None:
            continue
        for shape in (PLAIN_C32, STREAM_C1):
            if time.monotonic() - started + args.warmup + args.duration > args.max_seconds - 15:
                out.append(f"(profiling of {col.measured.label} {shape} skipped: --max-seconds)")
                continue
            path = args.profile / f"profile-{col.measured.label.replace('/', '_')}-{shape}.txt"
            print(f"[bench] profiling {col.measured.label} {shape}", file=sys.stderr)
            spy = profile.record(col.server.pids[0], args.warmup + args.duration, path)
            try:
                run_load(col, shape, args, work)
            finally:
                try:
                    spy.wait(timeout=args.duration + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            text = profile.summary(path) if path.exists() else "(py-spy wrote nothing)"
            out += [f"#### {col.measured.label}, {shape} ({path})", "", "```", text, "```", ""]
    return "\n".join(out)


def render(columns: list[Column], checks: list[report.Check], cond: str, note: str,
           stopped_early: bool, profiles: str = "") -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## {stamp}" + (f" — {note}" if note else ""), "", cond, ""]
    if stopped_early:
        out += ["**Stopped early at --max-seconds: some shapes have fewer rounds.**", ""]
    for wl in dict.fromkeys(c.workload.name for c in columns):
        desc = next(c.workload for c in columns if c.workload.name == wl)
        out += [f"### Workload `{wl}` ({len(desc.messages)} message(s), "
                f"{desc.stream_chunks}-chunk streams)", ""]
        out += [report.table([c.measured for c in columns if c.workload.name == wl]), ""]
    out += ["### Targets", "", report.checks_table(checks), ""]
    fails = report.failures([c.measured for c in columns])
    if fails:
        out += [fails, ""]
    if profiles:
        out += ["### Profiles (py-spy, separate unmeasured pass)", "", profiles]
    return "\n".join(out)


def build_columns(
    args: argparse.Namespace, chosen: list[scenarios.Scenario], mock: Server, work: Path
) -> list[Column]:
    columns: list[Column] = []
    for wl in scenarios.workloads(chosen):
        base = scenarios.stream_base(mock.base, wl)
        columns.append(Column(Measured("direct", "baseline", wl.name),
                              f"{mock.base}/v1/chat/completions", f"{base}/chat/completions",
                              "bench-upstream", "bench-upstream", None, wl))
        if not args.no_passthrough:
            for label, module in (("passthrough", "passthrough"),
                                  ("llhttp-passthrough", "passthrough_llhttp")):
                srv = passthrough_server(work, mock.base, label, module)
                columns.append(Column(
                    Measured(label, "baseline", wl.name), f"{srv.base}/v1/chat/completions",
                    f"{srv.base}/f/chunks={wl.stream_chunks}/v1/chat/completions",
                    "bench-upstream", "bench-upstream", None, wl, srv))
        if not args.no_litellm:
            srv = litellm_server(args.litellm_venv, work, mock.base, wl)
            columns.append(Column(Measured("litellm", "baseline", wl.name),
                                  f"{srv.base}/v1/chat/completions",
                                  f"{srv.base}/v1/chat/completions", scenarios.MODEL,
                                  scenarios.STREAM_MODEL, "sk-" + scenarios.API_KEY, wl, srv))
    for s in chosen:
        srv = warden_server(s, args.repo, work, mock.base)
        columns.append(Column(Measured(s.name, "warden", s.workload.name),
                              f"{srv.base}/v1/chat/completions", f"{srv.base}/v1/chat/completions",
                              scenarios.MODEL, scenarios.STREAM_MODEL, scenarios.API_KEY,
                              s.workload, srv))
    return columns


def prepare(col: Column, servers: Servers, timeout: float) -> None:
    """Start the column's server (time to ready), check it, then take its idle RSS."""
    try:
        if col.server is not None:
            servers.start(col.server, timeout)
            col.measured.ready_s = col.server.ready_s
        sanity_check(col)
        if col.server is not None:
            time.sleep(0.5)  # let work triggered by the first requests settle
            col.measured.idle_rss = col.server.rss()
    except Exception as e:  # a broken column is reported and the run goes on
        col.measured.error = str(e).splitlines()[0][:300]
        print(f"[bench] {col.measured.label}: {e}", file=sys.stderr)
        if col.server is not None:
            servers.stop(col.server)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rtt_us = machine.loopback_rtt_us()  # before any server runs
    try:
        chosen = scenarios.by_name([n for n in args.scenarios.split(",") if n])
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if not args.no_litellm and not (args.litellm_venv / "bin" / "litellm").exists():
        print(f"error: no LiteLLM Proxy at {args.litellm_venv}; run bench/setup_litellm.sh "
              "or pass --no-litellm", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="warden-bench-"))
    stopped_early = False
    profiles = ""
    try:
        with Servers() as servers:
            mock = start_mock(servers, args.repo, work, args.ready_timeout)
            columns = build_columns(args, chosen, mock, work)
            for col in columns:
                prepare(col, servers, args.ready_timeout)
            live = [c for c in columns if c.measured.error is None]
            per_run = args.warmup + args.duration + 0.5
            for rnd in range(args.rounds):
                order = live if rnd % 2 == 0 else live[::-1]  # cancels drift over a round
                for shape in KINDS:
                    for col in order:
                        if time.monotonic() - started + per_run > args.max_seconds - 15:
                            stopped_early = True
                            break
                        print(f"[bench] round {rnd + 1}/{args.rounds} {shape:9} "
                              f"{col.measured.label}", file=sys.stderr)
                        try:
                            col.measured.add(shape, run_load(col, shape, args, work))
                        except (RuntimeError, TimeoutError, ValueError) as e:
                            col.measured.error = str(e).splitlines()[0][:300]
                            print(f"[bench] {col.measured.label}: {e}", file=sys.stderr)
                        clear_mock(mock)
                    live = [c for c in live if c.measured.error is None]
                    order = [c for c in order if c.measured.error is None]
            if args.profile is not None:
                profiles = profile_pass(columns, args, work, started)
    finally:
        if args.keep_logs:
            print(f"[bench] logs and configs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    targets = {s.name: s.targets for s in chosen}
    checks = report.checks([c.measured for c in columns], targets)
    text = render(columns, checks, conditions(args, load_before, started, rtt_us), args.note,
                  stopped_early, profiles)
    print(text)
    if args.append is not None:
        new = not args.append.exists() or args.append.stat().st_size == 0
        with open(args.append, "a", encoding="utf-8") as f:
            f.write(RESULTS_HEADER if new else "\n")
            f.write(text)
    if args.json is not None:
        raw = [{"label": c.measured.label, "workload": c.workload.name, "error": c.measured.error,
                "ready_s": c.measured.ready_s, "idle_rss": c.measured.idle_rss,
                "loaded_rss": c.measured.loaded_rss, "runs": c.measured.runs} for c in columns]
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
