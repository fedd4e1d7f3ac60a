"""The GenAI conventions' constants and the bounded-label helpers."""

from __future__ import annotations

from proxy.metrics import Metrics
from proxy.semconv import PROVIDER_NAMES, Bounded, clean, observe_many, provider_name
from tests.telemetry_support import parse


def test_bounded_admits_a_fixed_number_of_values() -> None:
    b = Bounded(3)
    assert [b(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == \
        ["a", "b", "a", "c", "other", "other", "b"]
    assert b(None) == "-" and b("") == "-"
    assert Bounded(5)('we"ird {label}\n') == "we_ird__label__"


def test_observe_many_equals_observe_one_by_one() -> None:
    values = [0.0, 0.01, 0.011, 0.3, 0.3, 2.5, 3.0, 1e-9, 0.075]
    a, b = Metrics(access_log_enabled=False), Metrics(access_log_enabled=False)
    observe_many(a.time_per_chunk.labels("chat", "openai", "m", "m", "t"), values)
    child = b.time_per_chunk.labels("chat", "openai", "m", "m", "t")
    for v in values:
        child.observe(v)
    assert parse(a.render().decode()) == parse(b.render().decode())


def test_provider_names_are_the_conventions_well_known_values() -> None:
    assert provider_name("azure") == "azure.ai.openai"
    assert provider_name("bedrock") == provider_name("bedrock_converse") == "aws.bedrock"
    assert provider_name("vllm") == "vllm"  # not a well-known value: as configured
    assert all("." in v or v.isidentifier() for v in PROVIDER_NAMES.values())


def test_clean_keeps_label_values_short_and_plain() -> None:
    assert clean("x" * 100) == "x" * 64
    assert clean("") == "-"
    assert clean("EMAIL_ADDRESS") == "EMAIL_ADDRESS"
