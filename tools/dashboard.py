"""The Grafana dashboard, defined once here and written to helm/warden/dashboards/warden.json.

    python tools/dashboard.py            # rewrite the chart's JSON
    python tools/dashboard.py --check    # exit 1 if the JSON is not what this generates

Panels are data (title, queries, unit, width), laid out row by row on Grafana's 24-column
grid. ``tools/render_dashboard.py`` draws the same panels from a real Prometheus, and
``tests/test_dashboard.py`` checks that every query names series Warden exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "helm" / "warden" / "dashboards" / "warden.json"
UID = "warden-overview"
T = '{tenant=~"$tenant"}'
TS = 'tenant=~"$tenant"'
RI = "$__rate_interval"

Kind = Literal["timeseries", "stat", "state-timeline", "bargauge"]


@dataclass(frozen=True)
class Panel:
    title: str
    kind: Kind
    targets: tuple[tuple[str, str], ...]  # (legend, PromQL)
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""
    instant: bool = False
    stack: bool = False
    mappings: tuple[tuple[str, str, str], ...] = ()  # (value, text, color)
    extra: dict[str, Any] = field(default_factory=dict)


def q(*quantiles: float, metric: str, where: str = TS) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"p{round(x * 100)}", f"histogram_quantile({x}, sum by (le) "
                               f"(rate({metric}_bucket{{{where}}}[{RI}])))")
        for x in quantiles)


ROWS: list[tuple[str, list[Panel]]] = [
    ("Traffic", [
        Panel("Requests by outcome", "timeseries", (
            ("{{outcome}}", f"sum by (outcome) (rate(warden_requests_total{T}[{RI}]))"),),
            unit="reqps", stack=True,
            description="Every proxied request: ok, refused by a policy or auth (4xx), "
                        "error (provider or Warden), client_disconnected."),
        Panel("Requests by tenant and model", "timeseries", (
            ("{{tenant}} / {{model}}",
             f"sum by (tenant, model) (rate(warden_requests_total{T}[{RI}]))"),),
            unit="reqps", description="model is the routed name; '-' is an unknown model."),
        Panel("Error ratio", "stat", (
            ("errors", f"(sum(rate(warden_requests_total{{{TS}, "
                       f'outcome=~"error|client_disconnected"}}[{RI}])) or vector(0)) '
                       f"/ sum(rate(warden_requests_total{T}[{RI}]))"),),
            unit="percentunit", width=4),
        Panel("Refusal ratio", "stat", (
            ("refused", f'(sum(rate(warden_requests_total{{{TS}, outcome="refused"}}[{RI}])) '
                        f"or vector(0)) / sum(rate(warden_requests_total{T}[{RI}]))"),),
            unit="percentunit", width=4),
    ]),
    ("Latency", [
        Panel("Operation duration (successful)", "timeseries",
              q(0.5, 0.95, 0.99, metric="gen_ai_client_operation_duration_seconds",
                where=f'{TS}, error_type=""'),
              unit="s", width=6, description="gen_ai.client.operation.duration as the agent "
              "sees it, whole stream included."),
        Panel("Time to first token (streams)", "timeseries",
              q(0.5, 0.95, 0.99, metric="gen_ai_server_time_to_first_token_seconds"),
              unit="s", width=6),
        Panel("Time per output chunk (streams)", "timeseries",
              q(0.5, 0.95, metric="gen_ai_client_operation_time_per_output_chunk_seconds"),
              unit="s", width=6),
        Panel("Warden overhead", "timeseries", tuple(
            (f"p{round(x * 100)}", f"histogram_quantile({x}, sum by (le) "
                                   f"(rate(warden_proxy_overhead_seconds_bucket[{RI}])))")
            for x in (0.5, 0.99)), unit="s", width=6,
            description="Time spent in Warden per request, provider excluded."),
    ]),
    ("Tokens and cost", [
        Panel("Tokens by tenant", "timeseries", (
            ("{{tenant}} {{gen_ai_token_type}}", "sum by (tenant, gen_ai_token_type) "
             f"(rate(gen_ai_client_token_usage_sum{T}[{RI}]))"),),
            unit="short", description="Tokens per second (gen_ai.client.token.usage)."),
        Panel("Spend by tenant (USD per hour)", "timeseries", (
            ("{{tenant}}", f"sum by (tenant) (rate(warden_cost_usd_total{T}[{RI}])) * 3600"),),
            unit="currencyUSD"),
        Panel("Spend in range by tenant and model", "bargauge", (
            ("{{tenant}} / {{model}}",
             f"sum by (tenant, model) (increase(warden_cost_usd_total{T}[$__range]))"),),
            unit="currencyUSD", instant=True, width=5),
        Panel("Estimated tokens", "stat", (
            ("share", f"(sum(rate(warden_estimated_tokens_total{T}[{RI}])) or vector(0)) / "
                      f"sum(rate(gen_ai_client_token_usage_sum{T}[{RI}]))"),),
            unit="percentunit", width=3, description="Share of tokens counted by Warden's "
            "tokenizer because the provider reported no usage."),
    ]),
    ("Budgets", [
        Panel("Budget remaining, USD (burn-down)", "timeseries", (
            ("{{tenant}}",
             f'max by (tenant) (warden_budget_remaining{{{TS}, unit="usd"}})'),),
            unit="currencyUSD", width=12, description="Left in the current period, as "
            "the budget policy last saw it (spent and reserved deducted)."),
        Panel("Budget used", "timeseries", (
            ("{{tenant}} {{unit}}", f"max by (tenant, unit) (warden_budget_used_ratio{T})"),),
            unit="percentunit", width=12, description="Spent plus reserved over the "
            "budget; the soft threshold warns at 80% by default."),
    ]),
    ("Policies", [
        Panel("Policy decisions", "timeseries", (
            ("{{policy}} {{action}}",
             f"sum by (policy, action) (rate(warden_policy_decisions_total{T}[{RI}]))"),),
            unit="ops", stack=True, width=10),
        Panel("Top decision reasons in range", "bargauge", (
            ("{{policy}} {{action}} {{reason}}", "topk(8, sum by (policy, action, reason) "
             f"(increase(warden_policy_decisions_total{T}[$__range])))"),),
            instant=True, width=8),
        Panel("Limit and budget refusals", "timeseries", (
            ("{{tenant}} {{policy}} {{limit}}", "sum by (tenant, policy, limit) "
             f"(rate(warden_limit_refusals_total{T}[{RI}]))"),),
            unit="reqps", width=6),
    ]),
    ("Providers", [
        Panel("Failovers by deployment and reason", "timeseries", (
            ("{{deployment}} {{reason}}",
             f"sum by (deployment, reason) (rate(warden_upstream_failovers_total[{RI}]))"),),
            unit="ops", width=8, description="Failed attempts after which Warden tried "
            "again (next deployment, or the same one after back-off)."),
        Panel("Upstream attempts by outcome", "timeseries", (
            ("{{deployment}} {{reason}}",
             f"sum by (deployment, reason) (rate(warden_upstream_attempts_total[{RI}]))"),),
            unit="ops", width=8, description="ok, a failure reason, or breaker_open for a "
            "deployment skipped by its breaker."),
        Panel("Circuit breakers", "state-timeline", (
            ("{{deployment}}", "max by (deployment) (warden_upstream_breaker_state)"),),
            width=8, mappings=(("0", "closed", "green"), ("1", "half-open", "yellow"),
                               ("2", "open", "red"))),
        Panel("Provider errors by type", "timeseries", (
            ("{{error_type}}", "sum by (error_type) (rate("
             f'gen_ai_client_operation_duration_seconds_count{{{TS}, error_type!=""}}[{RI}]))'),),
            unit="reqps", width=8, description="Requests that failed after every attempt."),
        Panel("Decisions on per-replica counters", "timeseries", (
            ("fallback", f"sum(rate(warden_store_fallback_requests_total[{RI}]))"),),
            unit="reqps", width=8, description="Requests decided by local counters because "
            "Redis was unreachable (store_failure_mode=open)."),
        Panel("Store (Redis) reachable", "state-timeline", (
            ("store", "max(warden_store_degraded)"),), width=8,
            mappings=(("0", "reachable", "green"), ("1", "degraded", "orange"))),
    ]),
    ("Operations", [
        Panel("Policy reloads (policy set version)", "timeseries", (
            ("version", "max(warden_policy_set_version)"),), width=12,
            description="Each step is a policy-file reload that took effect "
            "(warden_policy_reloads_total counts attempts by outcome)."),
        Panel("Policy files rejected", "state-timeline", (
            ("rejected", "max(warden_policy_reload_failing)"),), width=12,
            mappings=(("0", "serving current files", "green"),
                      ("1", "serving an older set", "red")),
            description="1 while the files on disk are rejected and an older set serves."),
    ]),
]


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                **({"instant": True, "range": False} if p.instant else {})}
               for i, (legend, expr) in enumerate(p.targets)]
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.mappings:
        defaults["mappings"] = [{"type": "value", "options": {
            v: {"text": text, "color": color, "index": i}
            for i, (v, text, color) in enumerate(p.mappings)}}]
        defaults["color"] = {"mode": "thresholds"}
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "stacking": {"mode": "normal" if p.stack else "none"}}
    options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom",
                                          "showLegend": True},
                               "tooltip": {"mode": "multi"}}
    if p.kind in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal"}
    return {"id": pid, "type": p.kind, "title": p.title, "description": p.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
            "targets": targets}


def layout() -> list[tuple[Panel | str, dict[str, int]]]:
    """Every row header and panel with its gridPos (rows wrap at 24 columns)."""
    out: list[tuple[Panel | str, dict[str, int]]] = []
    y = 0
    for title, panels in ROWS:
        out.append((title, {"h": 1, "w": 24, "x": 0, "y": y}))
        y += 1
        x, row_h = 0, 0
        for p in panels:
            if x + p.width > 24:
                x, y = 0, y + row_h
                row_h = 0
            out.append((p, {"h": p.height, "w": p.width, "x": x, "y": y}))
            x += p.width
            row_h = max(row_h, p.height)
        y += row_h
    return out


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    for pid, (item, pos) in enumerate(layout(), start=1):
        if isinstance(item, str):
            panels.append({"id": pid, "type": "row", "title": item, "collapsed": False,
                           "gridPos": pos, "panels": []})
        else:
            panels.append(_panel_json(item, pid, pos["x"], pos["y"]))
    return {
        "uid": UID, "title": "Warden", "tags": ["warden", "llm", "gen_ai"],
        "description": "Warden LLM proxy: traffic, GenAI latency and tokens (OpenTelemetry "
                       "semantic-convention names), spend, budgets, policy decisions, "
                       "failovers and breakers. Generated by tools/dashboard.py.",
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "utc",
        "graphTooltip": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source"},
            {"name": "tenant", "type": "query", "label": "Tenant",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(warden_requests_total, tenant)",
                       "refId": "tenant"},
             "definition": "label_values(warden_requests_total, tenant)",
             "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render_json()
    if args.check:
        ok = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if ok else 'differs from tools/dashboard.py'}")
        return 0 if ok else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
