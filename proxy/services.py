"""Services: the app-level resources policies may use, shared across reloads.

Policies are rebuilt on every policy reload; what is expensive to build (the Presidio
engine, the injection model, the store connection) lives here so a reload does not
rebuild it. Built by the app factory, closed by its cleanup context.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from proxy.metrics import Metrics
    from proxy.store import Store

T = TypeVar("T")


@dataclass(eq=False)
class Services:
    settings: Settings
    store: Store
    metrics: Metrics
    executor: ThreadPoolExecutor = field(init=False)
    _shared: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        workers = self.settings.cpu_workers or (os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warden-cpu")

    def shared(self, name: str, factory: Callable[[], T]) -> T:
        """One instance per process of something expensive (an NLP engine, a model)."""
        if name not in self._shared:
            self._shared[name] = factory()
        return self._shared[name]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
