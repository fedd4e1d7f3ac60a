"""bench/machine.py: the loopback round trip between two processes."""

from __future__ import annotations

from bench.machine import loopback_rtt_us


def test_loopback_round_trip_is_measured() -> None:
    rtt = loopback_rtt_us(200)
    # Two wake-ups and four socket calls: more than a microsecond, far less than a second.
    assert 1.0 < rtt < 100_000.0
