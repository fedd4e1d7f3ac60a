"""Policy hot reload: watch the policies directory, and reload on SIGHUP.

A change builds a whole new ``PolicySet`` beside the running one and swaps it in with
one assignment (``PolicyHolder.swap``): a request in flight keeps the tenant it
authenticated with, the next one sees the new set, none sees a mix, none is dropped.
A change that does not validate is rejected whole: the old set keeps serving, and the
error goes to the log, to ``holder.last_error`` (shown in ``/readyz``) and to a metric.

Why polling and not inotify: Kubernetes updates a mounted ConfigMap by writing a new
hidden ``..<timestamp>`` directory and atomically re-pointing the ``..data`` symlink,
so the visible ``tenant.yaml -> ..data/tenant.yaml`` links never change themselves and
an inotify watch on them sees nothing. Stat-ing the *resolved* files (inode, mtime,
size) once a second catches that swap, an in-place edit and an added or removed file
alike, costs microseconds, and needs no dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy.appkeys import POLICIES, SERVICES, SETTINGS, UPSTREAM
from proxy.services import Services
from proxy.tenants import PolicyError, PolicyHolder, PolicySet, load_policy_set
from proxy.upstream.translated import TranslatedTransport

log = logging.getLogger("warden.reload")

Trigger = Literal["watch", "sighup", "manual"]
# One entry per visible policy file: name, resolved path, inode, mtime (ns), size.
# A file that cannot be stat-ed (dangling link mid-swap) is recorded as such, so its
# reappearance is a change too.
Fingerprint = tuple[tuple[str, str, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one reload attempt did; handed to every listener."""

    trigger: Trigger
    ok: bool
    version: int  # the holder's version after the attempt (unchanged when rejected)
    error: str | None
    duration_s: float


ReloadListener = Callable[[ReloadOutcome], None]
# Awaited with the new set before it is swapped in: warm what its first request needs.
Prepare = Callable[[PolicySet], Awaitable[None]]


def fingerprint(directory: Path) -> Fingerprint:
    """What the policy files are right now, following symlinks to what they point at."""
    entries: list[tuple[str, str, int, int, int]] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return ()
    for name in names:
        if name.startswith(".") or not name.endswith((".yaml", ".yml")):
            continue
        path = directory / name
        try:
            st = path.stat()
            entries.append((name, os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            entries.append((name, "", -1, -1, -1))
    return tuple(entries)


class PolicyReloader:
    """Rebuilds and swaps the policy set when asked or when the files change."""

    def __init__(
        self,
        directory: Path,
        services: Services,
        holder: PolicyHolder,
        *,
        interval_s: float = 1.0,
        settle_s: float = 0.2,
        listeners: tuple[ReloadListener, ...] = (),
        prepare: Prepare | None = None,
    ) -> None:
        self.directory = directory
        self.services = services
        self.holder = holder
        self.interval_s = interval_s
        # An editor or `kubectl cp` may write a file in several steps: a change is acted
        # on once the files look the same twice, `settle_s` apart.
        self.settle_s = settle_s
        self.listeners = listeners
        self.prepare = prepare
        self._lock = asyncio.Lock()
        self._seen = fingerprint(directory)

    async def reload(self, trigger: Trigger = "manual") -> ReloadOutcome:
        """Build a new set from the directory and swap it in, or reject it whole."""
        async with self._lock:  # one build at a time; a SIGHUP during a watch reload waits
            started = time.perf_counter()
            self._seen = await self._fingerprint()  # before reading: a later edit reloads again
            loop = asyncio.get_running_loop()
            try:
                # Off the event loop: building policies may load models or compile
                # patterns, and requests must keep flowing meanwhile.
                new = await loop.run_in_executor(
                    None, load_policy_set, self.directory, self.services
                )
                if self.prepare is not None:
                    await self.prepare(new)
            except PolicyError as e:
                outcome = self._reject(trigger, str(e), started)
            except Exception as e:  # a policy's build() failing unexpectedly
                # Any failure must leave the old set serving: that is the contract.
                log.exception("policy reload failed while building policies")
                outcome = self._reject(trigger, f"{type(e).__name__}: {e}", started)
            else:
                self.holder.swap(new)
                outcome = ReloadOutcome(
                    trigger, True, self.holder.version, None, time.perf_counter() - started
                )
                log.info(
                    "policies reloaded (%s): version %d, %d tenants",
                    trigger,
                    outcome.version,
                    len(new.tenants),
                )
        for listener in self.listeners:
            listener(outcome)
        return outcome

    def _reject(self, trigger: Trigger, error: str, started: float) -> ReloadOutcome:
        self.holder.last_error = error
        log.error(
            "policy reload rejected (%s), keeping version %d: %s",
            trigger,
            self.holder.version,
            error,
        )
        return ReloadOutcome(
            trigger, False, self.holder.version, error, time.perf_counter() - started
        )

    async def changed(self) -> bool:
        """True once the files differ from the last load and have stopped changing."""
        current = await self._fingerprint()
        if current == self._seen:
            return False
        while True:
            await asyncio.sleep(self.settle_s)
            again = await self._fingerprint()
            if again == current:
                return True
            current = again

    async def _fingerprint(self) -> Fingerprint:
        # ~30 us a file (realpath walks every link): off the loop, which serves requests.
        return await asyncio.get_running_loop().run_in_executor(None, fingerprint, self.directory)

    async def watch(self) -> None:
        """Poll forever; cancelled by the cleanup context on shutdown."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if await self.changed():
                    await self.reload("watch")
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad iteration
                log.exception("policy watcher iteration failed")


def reload_metrics(registry: CollectorRegistry) -> ReloadListener:
    """Prometheus series for reloads, registered on the app's registry.

    Returned as a listener so the metrics module can own these names later without
    this module changing: it only has to hand its own listener to ``PolicyReloader``.
    """
    attempts = Counter(
        "warden_policy_reloads",
        "Policy reload attempts.",
        ["outcome", "trigger"],
        registry=registry,
    )
    failing = Gauge(
        "warden_policy_reload_failing",
        "1 while the policy files on disk are rejected and an older set is serving.",
        registry=registry,
    )
    last_ok = Gauge(
        "warden_policy_reload_last_success_timestamp_seconds",
        "Unix time of the last successful reload.",
        registry=registry,
    )
    version = Gauge(
        "warden_policy_set_version",
        "Version of the policy set serving (1 at start).",
        registry=registry,
    )
    version.set(1)

    def record(outcome: ReloadOutcome) -> None:
        attempts.labels("ok" if outcome.ok else "rejected", outcome.trigger).inc()
        failing.set(0 if outcome.ok else 1)
        version.set(outcome.version)
        if outcome.ok:
            last_ok.set(time.time())

    return record


@contextlib.asynccontextmanager
async def running(reloader: PolicyReloader, *, sighup: bool = True) -> AsyncIterator[None]:
    """Run the watcher (unless ``interval_s`` is 0) and the SIGHUP handler for a while."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()
    watcher = (
        asyncio.create_task(reloader.watch(), name="warden-policy-watch")
        if reloader.interval_s > 0
        else None
    )

    def on_sighup() -> None:
        task = loop.create_task(reloader.reload("sighup"))
        tasks.add(task)  # keep a reference until done, or the task may be collected
        task.add_done_callback(tasks.discard)

    hooked = False
    # Signal handlers belong to the main thread; an app embedded in another thread
    # (warden demo, tests) simply has file watching.
    in_main = threading.current_thread() is threading.main_thread()
    if sighup and in_main and hasattr(signal, "SIGHUP"):
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
            hooked = True
        except (RuntimeError, ValueError, NotImplementedError):
            # Not the main thread (embedded, some test runners): file watching still works.
            log.warning("SIGHUP reload unavailable in this thread; file watching only")
    try:
        yield
    finally:
        if hooked:
            loop.remove_signal_handler(signal.SIGHUP)
        for task in [*tasks, *([watcher] if watcher else [])]:
            task.cancel()
        for task in [*tasks, *([watcher] if watcher else [])]:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: hot reload for the app's policies while it runs.

    Registered after the upstream context (it needs ``UPSTREAM``) and so torn down
    before it and before the services close."""
    services = app[SERVICES]
    settings = app[SETTINGS]
    # Once per registry: tests build several apps around one Services.
    record = services.shared("reload_metrics", lambda: reload_metrics(services.metrics.registry))
    translated = app[UPSTREAM].translated

    async def warm_translation(new: PolicySet) -> None:
        # A reload that adds e.g. an Anthropic deployment pays litellm's ~4 s import
        # here, before the swap, not in the first request routed to it.
        needs = any(
            not d.fast
            for tenant in new.tenants.values()
            for route in tenant.config.models.values()
            for d in route.all_deployments()
        )
        if needs and isinstance(translated, TranslatedTransport):
            await translated.warm()

    reloader = PolicyReloader(
        settings.policies_dir,
        services,
        app[POLICIES],
        interval_s=settings.policy_reload_interval_s,
        listeners=(record,),
        prepare=warm_translation,
    )
    async with running(reloader):
        yield
