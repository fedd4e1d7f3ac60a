"""The Grafana dashboard in the chart is what tools/dashboard.py generates, and every
query in it names series and labels Warden really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from proxy.context import Attempt, Decision, RequestContext, Usage
from proxy.metrics import Metrics
from proxy.tenants import Tenant, TenantConfig
from tests.telemetry_support import parse
from tools import dashboard

METRIC = re.compile(r"\b((?:gen_ai|warden)_[a-z_]+)\b")
BY = re.compile(r"by \(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, after requests that touch every series."""
    metrics = Metrics(access_log_enabled=False)
    cfg = TenantConfig.model_validate({"tenant": "t", "keys": ["vk-12345678"], "models": {
        "m": [{"provider": "openai", "model": "gpt-4o-mini", "name": "a"},
              {"provider": "openai", "model": "gpt-4o-mini", "name": "b"}]}})
    tenant = Tenant(config=cfg, policies=(), source=Path("t.yaml"))
    a, b = cfg.models["m"]
    ok = RequestContext(request_id="1", operation="chat", tenant=tenant, model="m",
                        deployments=(a, b), deployment=b, status=200, stream=True,
                        usage=Usage(10, 20, estimated=True), first_token_s=0.1,
                        response_model="gpt-4o-mini")
    ok.attempts = [Attempt("a", 503, "upstream_503", 0.1), Attempt("b", 200, "ok", 0.2)]
    ok.chunk_gaps = [0.01, 0.02]
    ok.decisions = [Decision("pii", "redact", "PERSON")]
    failed = RequestContext(request_id="2", operation="chat", tenant=tenant, model="m",
                            deployments=(a,), status=502, error_type="upstream_error")
    failed.attempts = [Attempt("a", None, "connect_error", 0.1)]
    limited = RequestContext(request_id="3", operation="chat", tenant=tenant, model="m",
                             deployments=(a,), status=429, error_type="rate_limit_exceeded")
    limited.decisions = [Decision("limits", "refuse", "rpm")]
    for ctx in (ok, failed, limited):
        metrics.record(ctx)
    metrics.budget("t", 1.0, 2.0)
    metrics.breaker("a", "open")
    metrics.store_error("eval")
    metrics.fail_open(True)
    out: dict[str, set[str]] = {}
    for name, labels in parse(metrics.render().decode()):
        out.setdefault(name, set()).update(k for k, _ in labels)
    return out


def queries() -> list[tuple[str, str]]:
    return [(p.title, expr) for _, panels in dashboard.ROWS for p in panels
            for _, expr in p.targets]


def test_chart_json_is_the_generated_one() -> None:
    assert dashboard.OUT.read_text() == dashboard.render_json(), \
        "run `python tools/dashboard.py` after editing it"
    assert dashboard.OUT.as_posix().endswith("helm/warden/dashboards/warden.json")


def test_every_query_names_exported_series_and_labels() -> None:
    series = exported()
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
                  "decisions", "failovers", "breakers"):
        assert topic in titles
