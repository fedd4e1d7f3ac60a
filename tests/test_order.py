"""Deployment order: priority levels, list order, weighted draws within a level."""

from __future__ import annotations

import random
from collections import Counter

from proxy.tenants import Deployment
from proxy.upstream.order import ordered


def d(name: str, **kw: float) -> Deployment:
    return Deployment(provider="openai", model=name, name=name, **kw)  # type: ignore[arg-type]


def names(ds: list[Deployment]) -> list[str]:
    return [x.label for x in ds]


def test_list_order_by_default() -> None:
    ds = [d("a"), d("b"), d("c")]
    assert names(ordered(ds, random.Random(0))) == ["a", "b", "c"]


def test_priority_levels_then_list_order() -> None:
    ds = [d("late", priority=2), d("a", priority=1), d("first"), d("b", priority=1)]
    assert names(ordered(ds, random.Random(0))) == ["first", "a", "b", "late"]


def test_weights_draw_within_a_level_only() -> None:
    ds = [d("heavy", weight=3), d("light"), d("backup", priority=1, weight=50)]
    rng = random.Random(42)
    firsts = Counter(names(ordered(ds, rng))[0] for _ in range(4000))
    assert set(firsts) == {"heavy", "light"}  # the backup level never goes first
    assert 0.72 < firsts["heavy"] / 4000 < 0.78  # 3 : 1
    for _ in range(50):
        order = names(ordered(ds, rng))
        assert order[-1] == "backup" and sorted(order[:2]) == ["heavy", "light"]
