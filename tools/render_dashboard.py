"""Draw docs/dashboard.png: the dashboard's own queries, answered by a real Prometheus
scraping a real Warden under scripted traffic, plotted with matplotlib (no Grafana).

    PYTHONPATH=. python tools/render_dashboard.py [--seconds 240] [--out docs/dashboard.png]

Needs the ``prometheus`` binary (Debian: ``apt-get install prometheus``) and matplotlib.

What is real: Warden (``create_app``, with its failover and circuit breakers) and two
mock providers; agents' requests (plain, streamed, embeddings) from three tenants in
another process; a primary deployment that fails some of the time and fails outright
for a while, so requests fail over and its breaker opens; a provider without usage
(estimated tokens); Prometheus scraping ``/metrics`` every second; every panel's PromQL
from ``tools/dashboard.py``, evaluated by that Prometheus.

Also real: the limits and budget policies (rpm limits and daily USD budgets small enough
to refuse within the run) and the hot reload (one harmless policy edit, one broken file,
then the fix). Scripted: PII / injection / scope decisions (a stand-in policy records
them through ``ctx.decide`` as those policies do, and refuses a few requests), because
running Presidio and the detector here would measure them rather than the dashboard; the
store is the in-memory one, so the Redis panels stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import policies
from proxy.app import create_app
from proxy.context import RequestContext
from proxy.errors import PermissionDenied
from proxy.pipeline import Policy
from proxy.settings import Settings
from tools.dashboard import ROWS, Panel, layout

KEYS = {"research": "vk-render-research", "support": "vk-render-support",
        "batch": "vk-render-batch-0"}


def tenants(mock: str, primary: str) -> list[dict[str, Any]]:
    slow = f"{mock}/f/latency_ms=90,chunk_delay_ms=12/v1"
    return [
        # Budgets and limits are the real policies, sized to bite within 4 minutes.
        {"tenant": "research", "keys": [KEYS["research"]],
         "budget": {"usd": 0.55, "period": "day", "max_tokens": 400},
         "models": {
            "gpt-4o": [
                {"provider": "openai", "model": "gpt-4o", "name": "primary-gpt-4o",
                 "api_base": f"{primary}/f/latency_ms=140,chunk_delay_ms=18/v1"},
                {"provider": "azure", "model": "gpt-4o", "name": "backup-azure-gpt-4o",
                 "api_base": f"{mock}/f/latency_ms=220,chunk_delay_ms=20"}],
            "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini", "api_base": slow}],
        }},
        {"tenant": "support", "keys": [KEYS["support"]], "limits": {"rpm": 240},
         "budget": {"usd": 0.08, "period": "day", "max_tokens": 400}, "models": {
            "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini", "api_base": slow}],
            "local-llama": [{"provider": "vllm", "model": "llama-3.1-8b",
                             "api_base": f"{mock}/f/no_usage=1,latency_ms=60,"
                                         "chunk_delay_ms=8,status=500,fail_rate=0.04/v1",
                             "input_cost_per_token": 2e-7, "output_cost_per_token": 2e-7}],
        }},
        {"tenant": "batch", "keys": [KEYS["batch"]], "limits": {"rpm": 150, "tpm": 60000},
         "models": {
            "text-embedding-3-small": [{"provider": "openai", "model": "text-embedding-3-small",
                                        "api_base": f"{mock}/f/latency_ms=30/v1"}],
            "gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini", "api_base": slow}],
        }},
    ]


class ScriptedPolicies(Policy):
    """Stands in for pii / injection / scope: records decisions the way they do, and
    refuses a few requests."""

    name = "scripted"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def on_request(self, ctx: RequestContext) -> None:
        r = self.rng.random()
        if r < 0.02:
            ctx.decide("scope", "block", "tool_not_allowed")
            raise PermissionDenied("scope: scripted refusal")
        if ctx.operation == "chat":
            for entity in ("EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"):
                if self.rng.random() < 0.25:
                    ctx.decide("pii", "redact", entity)
            verdict = self.rng.random()
            ctx.decide("injection", "flag" if verdict < 0.04 else "pass",
                       "suspected" if verdict < 0.04 else "clean")


class Scenario:
    """Background state changes: a primary outage (through the mock) and policy edits."""

    def __init__(self, primary_url: str, seconds: float, policies: Path) -> None:
        self.primary_url = primary_url
        self.seconds = seconds
        self.policies = policies
        self.started = time.monotonic()

    def edit_policies(self, now: float, done: set[str]) -> None:
        """An operator's edits, picked up by the real hot reload: a harmless change,
        later a broken file (rejected; the older set keeps serving), then the fix."""
        support = self.policies / "support.yaml"
        for name, at in (("touch", 0.3), ("break", 0.62), ("fix", 0.7)):
            if name in done or now < at * self.seconds:
                continue
            done.add(name)
            if name == "touch":
                batch = self.policies / "batch.yaml"
                batch.write_text(batch.read_text() + "# reviewed\n")
            elif name == "break":
                self.good = support.read_text()
                support.write_text(self.good + "  oops: [unclosed\n")
            else:
                support.write_text(self.good)

    async def run(self) -> None:
        outage = (0.45 * self.seconds, 0.6 * self.seconds)
        in_outage = False
        edits: set[str] = set()
        async with aiohttp.ClientSession() as http:
            while True:
                now = time.monotonic() - self.started
                self.edit_policies(now, edits)
                want = outage[0] <= now < outage[1]
                if want != in_outage:
                    in_outage = want
                    spec = {"status": 503} if want else {"status": 503, "fail_rate": 0.08}
                    await http.post(f"{self.primary_url}/_mock/faults", json=spec)
                await asyncio.sleep(1)


async def traffic(proxy: str, seconds: float, rng: random.Random) -> int:
    words = ["plan", "the", "next", "step,", "summarise", "findings", "and", "list", "open",
             "questions", "for", "the", "reviewer"]
    sent = 0
    deadline = time.monotonic() + seconds

    async def agent(tenant: str, models: list[str], rate: float) -> None:
        nonlocal sent
        headers = {"Authorization": f"Bearer {KEYS[tenant]}",
                   "X-Warden-Agent": f"{tenant}-agent", "X-Warden-Conversation": "render"}
        async with aiohttp.ClientSession(headers=headers) as http:
            while time.monotonic() < deadline:
                model = rng.choice(models)
                n = rng.randint(10, 160)
                text = " ".join(rng.choice(words) for _ in range(n))
                if model.startswith("text-embedding"):
                    url, body = f"{proxy}/v1/embeddings", {"model": model, "input": [text]}
                else:
                    url = f"{proxy}/v1/chat/completions"
                    body = {"model": model, "stream": rng.random() < 0.6,
                            "messages": [{"role": "user", "content": text}]}
                try:
                    async with http.post(url, json=body) as r:
                        await r.read()
                        if r.status == 429:  # as the openai SDK does: wait, then go on
                            await asyncio.sleep(min(2.0, float(
                                r.headers.get("Retry-After", "1"))))
                except aiohttp.ClientError:
                    pass
                sent += 1
                # A diurnal-ish swell so the rates are not flat lines.
                phase = math.sin(2 * math.pi * (time.monotonic() % 120) / 120)
                await asyncio.sleep(rng.expovariate(rate * (1.3 + 0.7 * phase)))

    await asyncio.gather(
        *(agent("research", ["gpt-4o", "gpt-4o", "gpt-4o-mini"], 4.0) for _ in range(3)),
        *(agent("support", ["gpt-4o-mini", "local-llama"], 5.0) for _ in range(3)),
        *(agent("batch", ["text-embedding-3-small", "text-embedding-3-small", "gpt-4o-mini"],
                3.0) for _ in range(2)),
    )
    return sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(base: str, path: str, **params: Any) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def substitute(expr: str, seconds: float, whole: bool = False) -> str:
    """Grafana's variables, as Grafana would fill them (stat panels: the whole range)."""
    rate = f"{int(seconds)}s" if whole else "15s"
    return (expr.replace("$__rate_interval", rate).replace("$__range", f"{int(seconds)}s")
            .replace("$tenant", ".*"))


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def start_mock() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "mock-upstream", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split("port=")[1])
    return proc, f"http://127.0.0.1:{port}"


def traffic_process(proxy: str, seconds: float) -> None:
    sent = asyncio.run(traffic(proxy, seconds, random.Random(11)))
    print(f"sent {sent} requests in {seconds:.0f} s", flush=True)


async def run_stack(seconds: float, workdir: Path) -> str:
    """Warden alone on this event loop; mocks, agents and Prometheus in other processes,
    so the overhead panel shows Warden's time, not the load generator's."""
    rng = random.Random(7)
    (mock_proc, mock), (primary_proc, primary) = start_mock(), start_mock()
    pdir = workdir / "policies"
    pdir.mkdir()
    for t in tenants(mock, primary):
        (pdir / f"{t['tenant']}.yaml").write_text(yaml.safe_dump(t))
    # A breaker that opens after 3 straight failures for 8 s: visible in 4 minutes.
    # Every policy set built (at start and on each hot reload) gets the stand-in policy.
    scripted = ScriptedPolicies(rng)
    build_chain = policies.build_chain
    policies.build_chain = lambda cfg, services: (*build_chain(cfg, services), scripted)
    app = create_app(Settings(policies_dir=pdir, access_log=False, breaker_failures=3,
                              breaker_open_s=8, retry_attempts=1))
    proxy_runner, proxy = await serve(app)

    port = free_port()
    prom_dir = workdir / "prom"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "warden", "static_configs": [
            {"targets": [proxy.removeprefix("http://")]}]}]}))
    prom = subprocess.Popen(  # noqa: ASYNC220  (started once, before the measured part)
        ["prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
         f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agents = multiprocessing.get_context("spawn").Process(
        target=traffic_process, args=(proxy, seconds))
    try:
        await asyncio.sleep(3)
        start = time.time()
        scenario = Scenario(primary, seconds, pdir)
        task = asyncio.create_task(scenario.run())
        agents.start()
        await asyncio.get_running_loop().run_in_executor(None, agents.join)
        task.cancel()
        await asyncio.sleep(3)  # two more scrapes
        end = time.time()
        result = dump_queries(f"http://127.0.0.1:{port}", start, end, end - start - 3)
        (workdir / "series.json").write_text(json.dumps(result))
    finally:
        for proc in (prom, mock_proc, primary_proc):
            proc.terminate()
            proc.wait(20)
        await proxy_runner.cleanup()
    return str(workdir / "series.json")


def dump_queries(base: str, start: float, end: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, panels in ROWS:
        for p in panels:
            series = []
            for fmt, expr in p.targets:
                e = substitute(expr, seconds, whole=p.kind == "stat")
                if p.instant or p.kind == "stat":
                    for r in prom_query(base, "query", query=e, time=end):
                        series.append({"name": legend(fmt, r["metric"]),
                                       "value": float(r["value"][1])})
                else:
                    for r in prom_query(base, "query_range", query=e, start=start, end=end,
                                        step=2):
                        series.append({"name": legend(fmt, r["metric"]),
                                       "t": [float(v[0]) - start for v in r["values"]],
                                       "y": [float(v[1]) for v in r["values"]]})
            out[p.title] = series
    return out


UNITS = {"s": (1000, "ms"), "percentunit": (100, "%"), "currencyUSD": (1, "$"),
         "reqps": (1, "req/s"), "ops": (1, "/s"), "short": (1, "")}
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff",
          "#ffb357", "#96d98d", "#ff7383"]
BG, PANEL, GRID, TEXT = "#111217", "#181b1f", "#2c3235", "#ccccdc"


def draw(series_file: str, out: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    data = json.loads(Path(series_file).read_text())
    items = layout()
    rows = max(pos["y"] + pos["h"] for _, pos in items)
    unit_px = 30  # Grafana's grid row height
    width_px, height_px = 1800, rows * unit_px + 60
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=BG)
    fig.text(0.01, 1 - 18 / height_px, "Warden", color=TEXT, fontsize=15, weight="bold",
             va="center")
    fig.text(0.07, 1 - 18 / height_px,
             f"Rendered without Grafana: the dashboard's PromQL (helm/warden/dashboards/"
             f"warden.json) evaluated by Prometheus 2.42 over {seconds / 60:.0f} min of "
             "scripted traffic through Warden and mock providers; drawn with matplotlib "
             "(tools/render_dashboard.py).", color="#8e8e8e", fontsize=8.5, va="center")
    top = 40

    def box(pos: dict[str, int]) -> tuple[float, float, float, float]:
        x = pos["x"] / 24
        w = pos["w"] / 24
        y = 1 - (top + (pos["y"] + pos["h"]) * unit_px) / height_px
        h = pos["h"] * unit_px / height_px
        return x + 0.003, y + 0.002, w - 0.006, h - 0.004

    for item, pos in items:
        x, y, w, h = box(pos)
        if isinstance(item, str):
            fig.text(x + 0.002, y + h / 2, item, color=TEXT, fontsize=11, weight="bold",
                     va="center")
            continue
        p: Panel = item
        fig.patches.append(Rectangle((x, y), w, h, transform=fig.transFigure,
                                     facecolor=PANEL, edgecolor=GRID, lw=0.8, zorder=-1))
        fig.text(x + 0.006, y + h - 14 / height_px, p.title, color=TEXT, fontsize=9,
                 weight="bold", va="center")
        scale, suffix = UNITS.get(p.unit, (1, ""))
        series = data.get(p.title, [])
        legend_px = 62 if p.kind == "timeseries" else 22
        inner = [x + 0.03, y + legend_px / height_px, w - 0.04,
                 h - (legend_px + 30) / height_px]
        if p.kind == "stat":
            value = series[0]["value"] * scale if series else float("nan")
            text = "No data" if math.isnan(value) else f"{value:.1f}{suffix}"
            fig.text(x + w / 2, y + h / 2 - 0.005, text, color="#73bf69", fontsize=24,
                     weight="bold", ha="center", va="center")
            continue
        ax = fig.add_axes(inner, facecolor=PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.grid(color=GRID, lw=0.5)
        if p.kind == "bargauge":
            series = sorted(series, key=lambda s: s["value"])[-8:]
            names = [s["name"] for s in series]
            values = [s["value"] * scale for s in series]
            ax.barh(range(len(values)), values, color=COLORS[2], height=0.6)
            ax.set_yticks(range(len(values)), names, fontsize=7, color=TEXT)
            ax.grid(axis="y", visible=False)
            ax.set_position([inner[0] + w * 0.35, inner[1], inner[2] - w * 0.37, inner[3]])
            if suffix == "$":
                ax.xaxis.set_major_formatter(lambda v, _: f"${v:.2f}")
            continue
        if p.kind == "state-timeline":
            names = [s["name"] for s in series]
            colors = {float(v): c for v, _, c in p.mappings}
            texts = {float(v): t for v, t, _ in p.mappings}
            for i, s in enumerate(series):
                for t0, t1, val in zip(s["t"], [*s["t"][1:], s["t"][-1] + 2], s["y"],
                                       strict=True):
                    ax.barh(i, t1 - t0, left=t0, color=colors.get(val, "#555"), height=0.7)
            ax.set_yticks(range(len(names)), names, fontsize=7, color=TEXT)
            ax.set_xlim(0, seconds)
            ax.xaxis.set_major_formatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}")
            handles = [Rectangle((0, 0), 1, 1, color=c) for _, _, c in p.mappings]
            ax.legend(handles, [texts[float(v)] for v, _, _ in p.mappings], fontsize=6.5,
                      loc="upper right", facecolor=PANEL, labelcolor=TEXT, framealpha=0.8,
                      ncol=len(handles))
            ax.set_position([inner[0] + w * 0.15, inner[1], inner[2] - w * 0.16, inner[3]])
            continue
        for i, s in enumerate(sorted(series, key=lambda s: s["name"])[:10]):
            ys = [v * scale if not math.isnan(v) else float("nan") for v in s["y"]]
            ax.plot(s["t"], ys, color=COLORS[i % len(COLORS)], lw=1.1, label=s["name"])
        ax.set_xlim(0, seconds)
        finite = [v * scale for s in series for v in s["y"] if math.isfinite(v)]
        ax.set_ylim(0, max(finite, default=1) * 1.12 or 1)
        ax.xaxis.set_major_formatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}")
        if suffix:
            ax.set_ylabel(suffix, color="#8e8e8e", fontsize=7)
        if series:
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.1),
                      facecolor=PANEL, labelcolor=TEXT, edgecolor=PANEL, framealpha=1,
                      ncol=min(4, len(series)))
        else:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                    transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--series", help="redraw from a saved series.json, no traffic")
    args = parser.parse_args()
    if args.series:
        draw(args.series, args.out, args.seconds)
        return 0
    if shutil.which("prometheus") is None:
        print("needs the prometheus binary (apt-get install prometheus)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="warden-render-"))
    series = asyncio.run(run_stack(args.seconds, workdir))
    draw(series, args.out, args.seconds)
    print(f"series kept in {series} (redraw with --series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
