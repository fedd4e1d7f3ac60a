"""The CI-sized upstream chaos run (bench/chaos.py): faults, hang-ups, then no leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos


@pytest.mark.slow
def test_chaos_every_client_gets_a_clean_answer_and_nothing_leaks(tmp_path: Path) -> None:
    report = chaos.run_chaos(tmp_path, requests=240, concurrency=16, disconnect_rate=0.2,
                             seed=7, max_seconds=120)
    print(report.render())
    t = report.tally
    assert report.alive
    assert t.bad == [], t.bad
    assert report.leaks == [], report.leaks
    # The run really was chaotic: clients hung up, upstream attempts failed in several
    # ways and failover moved requests on; still most clients got a 200.
    assert t.outcomes["client_hung_up"] > 0
    failed_kinds = {k for k in report.attempts if k != "ok"}
    assert len(failed_kinds) >= 3, report.attempts
    assert report.failovers > 0
    assert t.outcomes["stream_done"] > 0 and t.outcomes["ok"] > 0
    assert report.tcp_after.get("CLOSE_WAIT", 0) == 0


def test_judge_stream_tells_clean_endings_from_cut_ones() -> None:
    done = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
    error = b'data: {"choices":[]}\n\ndata: {"error": {"message": "x", "type": "api_error"}}\n\n'
    cut = b'data: {"choices":[]}\n\ndata: {"choi'
    assert chaos.judge_stream(done) == ("done", None)
    assert chaos.judge_stream(error) == ("error_event", None)
    assert chaos.judge_stream(cut)[0] == "bad"
    assert chaos.judge_stream(b"")[0] == "bad"


@pytest.mark.slow
def test_chaos_accounting_leaves_no_reservation(tmp_path: Path) -> None:
    """With limits and a budget on Redis: after the chaos, no slot or budget lease is
    held, and the budget recorded at least every token clients saw and at most the
    worst case for the rest. (Needs the Redis store from the limits/budget work; until
    the tree has it, the test only checks the guard that says so.)"""
    from bench import harness, redis_chaos

    if not redis_chaos.has_redis_store(harness.ROOT):
        with pytest.raises(RuntimeError, match="needs the Redis store"):
            chaos.run_chaos(tmp_path, requests=10, concurrency=2, disconnect_rate=0,
                            seed=1, max_seconds=30, accounting=True)
        return
    report = chaos.run_chaos(tmp_path, requests=240, concurrency=16, disconnect_rate=0.2,
                             seed=11, max_seconds=120, accounting=True)
    print(report.render())
    assert report.tally.bad == [], report.tally.bad
    assert report.held is not None and not any(report.held.values()), report.held
    assert report.spent >= report.tally.tokens > 0
    assert report.leaks == [], report.leaks
