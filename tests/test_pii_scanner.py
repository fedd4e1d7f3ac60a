"""The fail-closed, batched, cached way the policy runs the engine."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from proxy.errors import ServiceUnavailable
from proxy.pii.cache import ScanCache, Span
from proxy.pii.scanner import Scanner, merge_overlaps


class FakeEngine:
    """Stands in for AnalyzerEngine where the test is about the scanner's own logic."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.seen: list[str] = []

    def analyze(self, text: str, **kw: Any) -> list[Any]:
        self.seen.append(text)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail

        class R:
            start, end, entity_type, score = 0, min(3, len(text)), "X", 0.9
        return [R()]


@pytest.fixture
def pool() -> Any:
    ex = ThreadPoolExecutor(2)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def scanner(engine: Any, timeout_s: float = 5.0) -> Scanner:
    return Scanner(engine=engine, entities=("X",), threshold=0.4, fingerprint="f",
                   timeout_s=timeout_s)


async def test_only_unseen_texts_are_analysed_and_duplicates_once(pool: Any) -> None:
    engine = FakeEngine()
    cache = ScanCache(100)
    s = scanner(engine)
    first = await s.scan(["aaa", "bbb", "aaa"], cache, pool)
    assert engine.seen == ["aaa", "bbb"]
    assert first[0] == first[2] == (Span(0, 3, "X", 0.9),)
    await s.scan(["aaa", "ccc"], cache, pool)
    assert engine.seen == ["aaa", "bbb", "ccc"]


async def test_blank_texts_are_not_sent_to_the_engine(pool: Any) -> None:
    engine = FakeEngine()
    assert await scanner(engine).scan(["   \n"], ScanCache(10), pool) == [()]
    assert engine.seen == []


async def test_analyzer_error_refuses_with_503(pool: Any) -> None:
    with pytest.raises(ServiceUnavailable) as err:
        await scanner(FakeEngine(fail=ValueError("boom ann@example.com"))).scan(
            ["hello"], ScanCache(10), pool)
    assert err.value.status == 503
    assert "fails closed" in err.value.message
    assert "ann@example.com" not in err.value.message


async def test_analyzer_timeout_refuses_with_503(pool: Any) -> None:
    with pytest.raises(ServiceUnavailable, match="did not finish"):
        await scanner(FakeEngine(delay=0.5), timeout_s=0.05).scan(["slow"], ScanCache(10), pool)


async def test_failures_are_not_cached(pool: Any) -> None:
    cache = ScanCache(10)
    with pytest.raises(ServiceUnavailable):
        await scanner(FakeEngine(fail=RuntimeError())).scan(["t"], cache, pool)
    assert len(cache) == 0


async def test_analysis_runs_off_the_event_loop_thread(pool: Any) -> None:
    threads: list[str] = []

    class Spy(FakeEngine):
        def analyze(self, text: str, **kw: Any) -> list[Any]:
            threads.append(threading.current_thread().name)
            return []

    await scanner(Spy()).scan(["x"], ScanCache(10), pool)
    assert threads and threads[0] != threading.current_thread().name


def test_merge_overlaps_prefers_validated_findings_then_the_longer() -> None:
    spans = [Span(0, 30, "PERSON", 0.85), Span(7, 30, "BEARER_TOKEN", 0.9)]
    assert merge_overlaps(spans) == (Span(0, 30, "BEARER_TOKEN", 0.9),)


def test_merge_overlaps_takes_the_union_typed_by_the_longer() -> None:
    spans = [Span(10, 16, "URL", 0.5), Span(5, 20, "EMAIL_ADDRESS", 1.0),
             Span(30, 35, "STREET_ADDRESS", 0.45), Span(31, 33, "LOCATION", 0.85),
             Span(40, 45, "PHONE_NUMBER", 0.4), Span(43, 48, "US_SSN", 0.5)]
    assert merge_overlaps(spans) == (Span(5, 20, "EMAIL_ADDRESS", 1.0),
                                     Span(30, 35, "STREET_ADDRESS", 0.45),
                                     Span(40, 48, "US_SSN", 0.5))


def test_escaped_whitespace_is_read_as_whitespace_keeping_offsets() -> None:
    from proxy.pii.scanner import unescape_whitespace

    raw = 'log: "a\\n555 0100\\tb"'
    seen = unescape_whitespace(raw)
    assert len(seen) == len(raw)
    assert seen == 'log: "a  555 0100  b"'
    assert unescape_whitespace("C:\\\\dir") == "C:\\\\dir"  # only \\n, \\t, \\r
