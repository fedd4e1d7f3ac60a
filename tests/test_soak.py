"""The one-minute soak (bench/soak.py) that CI runs: nothing grows, nothing fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak

CONCURRENCY = 8


@pytest.mark.slow
def test_one_minute_soak_is_flat(tmp_path: Path) -> None:
    report = soak.run_soak(tmp_path, minutes=1, windows=4, rps=60, concurrency=CONCURRENCY)
    print(report.render())
    assert report.requests >= 60 * 60 * 0.5  # the pacing held up: real traffic
    assert report.unexpected == 0, report.problems
    assert set(report.kinds) == set(soak.KINDS)  # every kind of traffic was sent
    start, end = report.start, report.end
    # Steady state after warm-up: descriptors and tasks do not climb window to window.
    assert end.fds <= start.fds + 4, report.render()
    assert end.tasks <= start.tasks + 2, report.render()
    assert end.rss_mb - start.rss_mb < 15, report.render()
    # Clients gone: back to the idle counts, except pooled provider connections.
    before, after = report.idle_before, report.idle_after
    assert after["fds"] <= before["fds"] + CONCURRENCY, report.render()
    assert after["tasks"] <= before["tasks"] + 1, report.render()


def test_report_renders_start_end_and_drift() -> None:
    w0 = soak.Window(0, 10.0, requests=100, refusals=10, unexpected=0, rss_mb=60, fds=16,
                     tasks=4)
    w1 = soak.Window(1, 10.0, requests=100, refusals=12, unexpected=2, rss_mb=64, fds=18,
                     tasks=4)
    report = soak.SoakReport([w0, w1], problems=["chat: 500"])
    text = report.render()
    assert "RSS start/end 60.0/64.0 MB (+4.0)" in text
    assert "open fds start/end 16/18" in text
    assert "first/last window 0.0000/0.0200" in text
    assert report.unexpected == 2 and report.requests == 200
