"""Shared pieces of the tests/test_pii_*.py files: one Services (and so one Presidio
engine per tier) for the whole session, policies built from plain config dicts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from proxy.context import RequestContext
from proxy.metrics import Metrics
from proxy.policies.pii import PiiConfig, PiiPolicy, build
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import MemoryStore

SECRET = "pii-test-secret"


def new_services(secret: str | None = SECRET, **settings: Any) -> Services:
    return Services(settings=Settings(pii_secret=secret, **settings), store=MemoryStore(),
                    metrics=Metrics())


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    svc = new_services()
    yield svc
    svc.close()


def policy(services: Services, **config: Any) -> PiiPolicy:
    return build(PiiConfig.model_validate(config), services)


def chat(*messages: dict[str, Any], **body: Any) -> RequestContext:
    body.setdefault("model", "m")
    body["messages"] = list(messages)
    return RequestContext(request_id="r", operation="chat", body=body, model="m")


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}
