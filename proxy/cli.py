"""``warden serve | check | demo | mock-upstream``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger("warden")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("warden.access")
    handler = logging.StreamHandler(sys.stdout)  # JSON lines, one per request
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def run(coro: Any) -> Any:
    """asyncio.run on uvloop when it is installed (not on Windows)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _settings(args: argparse.Namespace) -> Any:
    from proxy.settings import Settings

    overrides: dict[str, Any] = {}
    for flag, field in (("host", "host"), ("port", "port"), ("policies", "policies_dir"),
                        ("redis_url", "redis_url"), ("metrics_port", "metrics_port"),
                        ("log_level", "log_level")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


async def serve(settings: Any, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting and drain up to the grace period."""
    from aiohttp import web

    from proxy.app import create_app, create_metrics_app
    from proxy.appkeys import SERVICES
    from proxy.server import Runner

    started = time.perf_counter()
    app = create_app(settings)
    app[SERVICES].metrics.log_to(sys.stdout)  # JSON lines, bypassing logging (accesslog.py)
    runner = Runner(app, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    runners: list[web.AppRunner] = [runner]
    if settings.metrics_port is not None:
        mrunner = Runner(create_metrics_app(app[SERVICES]))
        await mrunner.setup()
        await web.TCPSite(mrunner, settings.host, settings.metrics_port).start()
        runners.append(mrunner)
    port = runner.addresses[0][1] if runner.addresses else settings.port
    log.info("warden listening on http://%s:%s (ready in %.2fs)", settings.host, port,
             time.perf_counter() - started)
    # Machine-readable line for scripts that start Warden on port 0.
    print(f"WARDEN_READY port={port}", flush=True)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight requests (grace %.1fs)", settings.shutdown_grace_s)
    for r in reversed(runners):
        await r.cleanup()  # stops listening, waits for handlers up to shutdown_timeout
    app[SERVICES].metrics.flush()  # access-log lines still queued


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.tenants import PolicyError

    settings = _settings(args)
    _setup_logging(settings.log_level)
    try:
        run(serve(settings))
    except PolicyError as e:
        print(f"warden: invalid policies: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.metrics import Metrics
    from proxy.services import Services
    from proxy.store import MemoryStore
    from proxy.tenants import PolicyError, build_policy_set, load_configs

    settings = _settings(args)
    directory = Path(settings.policies_dir)
    services = Services(settings=settings, store=MemoryStore(), metrics=Metrics())
    try:
        configs = load_configs(directory)
        build_policy_set(configs, services, directory)
    except PolicyError as e:
        print(f"warden check: {e}", file=sys.stderr)
        return 1
    finally:
        services.close()
    for path, cfg in configs:
        missing = sorted({d.api_key for r in cfg.models.values()
                          for d in r.all_deployments()
                          if d.api_key and d.credential() is None})
        note = f"; credentials not resolvable here: {', '.join(missing)}" if missing else ""
        print(f"ok {path}: tenant {cfg.tenant}, {len(cfg.models)} model(s){note}")
    return 0


def cmd_mock(args: argparse.Namespace) -> int:
    from aiohttp import web

    from proxy.mock_upstream import Spec, create_mock_app

    base = Spec(latency_ms=args.latency_ms, chunks=args.chunks,
                chunk_delay_ms=args.chunk_delay_ms)

    async def main() -> None:
        runner = web.AppRunner(create_mock_app(base), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
        port = runner.addresses[0][1]
        print(f"MOCK_READY port={port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    run(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warden", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--policies", type=Path, help="policy directory (WARDEN_POLICIES_DIR)")

    p = sub.add_parser("serve", help="run the proxy")
    common(p)
    p.add_argument("--host", help="listen address (WARDEN_HOST)")
    p.add_argument("--port", type=int, help="listen port, 0 for any (WARDEN_PORT)")
    p.add_argument("--redis-url", help="shared counters (WARDEN_REDIS_URL)")
    p.add_argument("--metrics-port", type=int, help="separate /metrics port")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate policy files, exit 1 on the first error")
    common(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="mock provider + proxy + a short agent conversation")
    p.add_argument("--verbose", action="store_true", help="also print the access log")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("mock-upstream", help="a fake OpenAI/Anthropic provider")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4010)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=None, help="stream chunks per reply")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    p.set_defaults(func=cmd_mock)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
