"""The Grafana dashboard in the chart is what tools/dashboard.py generates, and every
query in it names series and labels Warden really exports."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from proxy.appkeys import SERVICES
from proxy.reload import ReloadOutcome
from tests.support import KEY, Stack
from tests.telemetry_support import Refuser, chat, install, parse
from tools import dashboard

METRIC = re.compile(r"\b((?:gen_ai|warden)_[a-z_]+)\b")
BY = re.compile(r"by \(([^)]*)\)")


def tenant(mock: str) -> dict[str, Any]:
    return {"tenant": "t", "keys": [KEY], "models": {
        "m": [{"provider": "openai", "model": "gpt-4o-mini", "name": "down",
               "api_base": f"{mock}/f/status=500/v1"},
              {"provider": "openai", "model": "gpt-4o-mini", "name": "up",
               "api_base": f"{mock}/v1"}],
        "quiet": [{"provider": "openai", "model": "gpt-4o-mini",
                   "api_base": f"{mock}/f/no_usage=1/v1"}]},
        "limits": {"rpm": 6}, "budget": {"usd": 10.0}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names of a real app's /metrics, after traffic that touches
    every series: a failover, a stream, an estimate, a refusal, a reload, setters."""
    with Stack(lambda url: [tenant(url)], tmp_path_factory.mktemp("dash")) as s:
        install(s, "t", Refuser())
        assert chat(s, "m", "[[decide:PERSON]]", key=KEY, stream=True).status_code == 200
        assert chat(s, "quiet", "hello", key=KEY).status_code == 200
        assert chat(s, "m", "[[refuse:rate]]", key=KEY).status_code == 429
        with httpx.Client() as client:  # a plain reply that fails on every deployment
            client.post(f"{s.mock_url}/_mock/faults", json={"status": 500})
            assert chat(s, "m", "x", key=KEY).status_code >= 500
            client.post(f"{s.mock_url}/_mock/faults", json={})
        codes = [chat(s, "m", "y", key=KEY).status_code for _ in range(6)]
        assert 429 in codes  # the real rate limit (rpm 6) refused at least once
        services = s.app[SERVICES]  # type: ignore[index]
        record = services.shared("reload_metrics", lambda: None)
        record(ReloadOutcome(trigger="watch", ok=True, version=2, error=None, duration_s=0.1))
        text = httpx.get(f"{s.proxy_url}/metrics").text
    out: dict[str, set[str]] = {}
    for name, labels in parse(text):
        out.setdefault(name, set()).update(k for k, _ in labels)
    return out


def queries() -> list[tuple[str, str]]:
    return [(p.title, expr) for _, panels in dashboard.ROWS for p in panels
            for _, expr in p.targets]


def test_chart_json_is_the_generated_one() -> None:
    assert dashboard.OUT.read_text() == dashboard.render_json(), \
        "run `python tools/dashboard.py` after editing it"
    assert dashboard.OUT.as_posix().endswith("helm/warden/dashboards/warden.json")


def test_every_query_names_exported_series_and_labels(exported: dict[str, set[str]]) -> None:
    series = exported
    for title, expr in queries():
        names = METRIC.findall(BY.sub("", expr))  # series names, not grouping labels
        assert names, title
        for name in names:
            assert name in series, f"{title}: {name} is not exported"
            for group in BY.findall(expr):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    assert label in series[name], f"{title}: {name} has no label {label}"
        for label, _ in re.findall(r'(\w+)(=~|!=|=)"', expr):
            assert any(label in series[n] for n in names), f"{title}: no label {label}"


def test_layout_is_a_valid_grafana_grid() -> None:
    board = json.loads(dashboard.render_json())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("requests", "duration", "first token", "tokens", "spend", "budget",
                  "decisions", "failovers", "breakers", "reloads"):
        assert topic in titles
