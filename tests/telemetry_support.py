"""Helpers for the telemetry tests: scraping /metrics, a refusing test policy."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.accesslog import LOGGER
from proxy.appkeys import POLICIES
from proxy.context import RequestContext
from proxy.errors import PermissionDenied, RateLimited
from proxy.pipeline import Policy
from tests.support import Stack

Labels = frozenset[tuple[str, str]]


class Samples(dict[tuple[str, Labels], float]):
    """Every sample of a /metrics scrape, keyed by (sample name, label set)."""

    def get_value(self, name: str, **labels: str) -> float:
        return self.get((name, frozenset(labels.items())), 0.0)

    def label_sets(self, name: str) -> set[Labels]:
        return {labels for (n, labels) in self if n == name}

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        want = set(labels.items())
        return [(dict(lab), v) for (n, lab), v in self.items() if n == name and want <= lab]


def parse(text: str) -> Samples:
    """Samples of an exposition; ``*_created`` timestamps are left out (not counts)."""
    out = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(url: str, requests: float | None = None) -> Samples:
    """/metrics, waiting (up to 5 s) until ``requests`` requests have been recorded:
    a handler records after the last byte left, so a client can be a moment ahead."""
    deadline = time.monotonic() + 5
    while True:
        r = httpx.get(f"{url}/metrics", timeout=30)
        assert r.status_code == 200
        samples = parse(r.text)
        done = sum(v for (n, _), v in samples.items() if n == "warden_requests_total")
        if requests is None or done >= requests or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The access-log records so far, waiting (up to 5 s) until there are ``count``."""
    deadline = time.monotonic() + 5
    while True:
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def ls(**labels: str) -> Labels:
    return frozenset(labels.items())


class Refuser(Policy):
    """Refuses when the last message carries a marker, recording a decision first,
    the way the scope and limits policies do."""

    name = "refuser"

    async def on_request(self, ctx: RequestContext) -> None:
        text = str(ctx.body.get("messages", [{}])[-1].get("content", ""))
        if "[[refuse:scope]]" in text:
            ctx.decide("scope", "block", "topic_denied")
            raise PermissionDenied("scope: topic not allowed")
        if "[[refuse:rate]]" in text:
            ctx.decide("limits", "refuse", "rpm")
            raise RateLimited("limits: too many requests", retry_after_s=1)
        if "[[decide:" in text:  # a policy that puts free text in a reason (it should not)
            reason = text.split("[[decide:", 1)[1].split("]]", 1)[0]
            ctx.decide("pii", "redact", reason)


def install(stack: Stack, tenant: str, *policies: Policy) -> None:
    """Append these policies to ``tenant``'s chain (policies/ has no test policies to
    name)."""
    assert stack.app is not None
    holder = stack.app[POLICIES]
    current = holder.current
    old = current.tenants[tenant]
    new = dataclasses.replace(old, policies=(*old.policies, *policies))
    tenants = {**current.tenants, tenant: new}
    by_key = {k: (new if t is old else t) for k, t in current.by_key.items()}
    holder.swap(dataclasses.replace(current, tenants=tenants, by_key=by_key))


def chat(stack: Stack, model: str, text: str, *, stream: bool = False, key: str,
         headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}],
                            **extra}
    if stream:
        body["stream"] = True
    return httpx.post(f"{stack.proxy_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})})
