"""Redis killed and restarted under load (bench/redis_chaos.py), CI-sized.

The Redis store arrives with the limits/budget work. Until this tree has it, the script
must say so and exit 2 (tested below); once it has it, the short chaos run is the test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import harness, redis_chaos

HAS_STORE = redis_chaos.has_redis_store(harness.ROOT)


@pytest.mark.slow
def test_redis_killed_under_load_in_both_modes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    if not HAS_STORE:
        assert redis_chaos.main(["--seconds", "1"]) == 2
        assert "no Redis store yet" in capsys.readouterr().err
        return
    assert shutil.which("redis-server"), ".ci/run installs redis-server"
    redis_proc = redis_chaos.RedisProcess(tmp_path)
    redis_proc.start()
    try:
        results = [redis_chaos.run_mode(tmp_path, redis_proc, mode, seconds=8, concurrency=8,
                                        every_s=2.5, down_s=0.8, seed=3, repo=None)
                   for mode in ("open", "closed")]
    finally:
        redis_proc.stop()
    for r in results:
        print(r.row())
        assert r.kills >= 1, r.row()  # Redis really died under load
        assert r.bad == [], r.bad  # no 500, no non-OpenAI error, no cut stream
        assert r.alive
        assert r.leftover == {}, r.leftover  # nothing held once leases ran out
        assert r.spent > 0  # the run really reserved and settled in Redis
        assert r.statuses[200] > 0
        assert 500 not in r.statuses
    closed = results[1]
    assert closed.codes.get("503:service_unavailable", 0) > 0  # closed refused while down


def test_has_redis_store_reads_the_tree(tmp_path: Path) -> None:
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "store.py").write_text("class MemoryStore: ...\n")
    assert not redis_chaos.has_redis_store(tmp_path)
    (tmp_path / "proxy" / "store.py").unlink()
    (tmp_path / "proxy" / "store").mkdir()
    (tmp_path / "proxy" / "store" / "redis_store.py").write_text("class RedisStore: ...\n")
    assert redis_chaos.has_redis_store(tmp_path)
