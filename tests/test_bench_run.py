"""bench/run.py end to end: real mock-upstream, real ``warden serve``, the pass-through.

LiteLLM Proxy is left out here (its own venv takes a minute to install and ~10 s to
start); bench/README.md shows the full run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run

pytestmark = pytest.mark.slow


def test_short_run_measures_every_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    code = run.main(["--no-litellm", "--scenarios", "warden", "--duration", "0.4",
                     "--warmup", "0.1", "--rounds", "1",
                     "--append", str(results), "--json", str(raw), "--note", "test run"])
    assert code == 0
    printed = capsys.readouterr().out
    assert results.read_text().startswith("# Benchmark results")
    assert results.read_text().strip().endswith(printed.strip())
    assert "— test run" in printed and "| Warden: warden |" in printed
    assert "failed:" not in printed

    columns = {c["label"]: c for c in json.loads(raw.read_text())}
    assert set(columns) == {"direct", "passthrough", "llhttp-passthrough", "warden"}
    for label, col in columns.items():
        assert col["error"] is None, label
        shapes = col["runs"]
        assert set(shapes) == {"plain-c1", "plain-c32", "stream-c1"}
        for shape, runs in shapes.items():
            (r,) = runs
            assert r["requests"] > 0 and r["errors"] == 0, (label, shape)
        # 20 content chunks, the role chunk, the finish chunk and [DONE]: the stream arrived
        # whole, and Warden dropped the usage chunk it asked for on the client's behalf.
        assert shapes["stream-c1"][0]["events_per_reply"] == 23, label
    warden = columns["warden"]
    assert 0 < warden["ready_s"] < 30
    assert warden["idle_rss"] > 10 * 2**20 and warden["loaded_rss"] >= warden["idle_rss"] * 0.9
    assert warden["runs"]["plain-c32"][0]["server_cpu_us"] > 0
    assert columns["direct"]["ready_s"] is None  # no server of its own


def test_unknown_scenario_and_missing_litellm_are_usage_errors(tmp_path: Path) -> None:
    assert run.main(["--scenarios", "nope", "--no-litellm"]) == 2
    assert run.main(["--litellm-venv", str(tmp_path / "absent")]) == 2
