"""Safe JSON Schema validation: cache, pattern deadline, no fetching."""

from __future__ import annotations

import datetime
import time

import pytest
from jsonschema.exceptions import SchemaError

from proxy.schemas import PATTERN_BUDGET_S, ValidatorCache, check_schema, first_error


def test_cache_compiles_once_and_is_bounded() -> None:
    cache = ValidatorCache(size=2)
    a = cache.get({"type": "object"})
    assert cache.get({"type": "object"}) is a
    # Same schema, other key order: same hash, same validator.
    assert cache.get({"type": "object", "required": ["x"]}) is cache.get(
        {"required": ["x"], "type": "object"})
    cache.get({"type": "array"})
    assert len(cache) == 2
    assert cache.get({"type": "object"}) is not a  # evicted, compiled anew


def test_cache_refuses_invalid_and_non_json_schemas() -> None:
    cache = ValidatorCache()
    with pytest.raises(SchemaError):
        cache.get({"type": "integr"})
    with pytest.raises(SchemaError, match="not plain JSON"):
        cache.get({"const": datetime.date(2024, 1, 1)})
    with pytest.raises(SchemaError, match="not plain JSON"):
        check_schema({"enum": {1, 2}})
    assert len(cache) == 0


def test_first_error_names_path_and_reason() -> None:
    v = ValidatorCache().get({"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "integer"}}}})
    assert first_error(v, {"items": [1, 2]}) is None
    assert first_error(v, {"items": [1, "two"]}) == "at $.items[1]: 'two' is not of type 'integer'"


def test_patterns_still_work() -> None:
    v = ValidatorCache().get({"type": "object",
                              "properties": {"id": {"pattern": "^[a-z]{3}-\\d+$"}},
                              "patternProperties": {"^x-": {"type": "string"}}})
    assert first_error(v, {"id": "abc-12", "x-note": "ok"}) is None
    assert first_error(v, {"id": "ABC"}) == "at $.id: 'ABC' does not match '^[a-z]{3}-\\\\d+$'"
    assert first_error(v, {"x-note": 5}) == "at $['x-note']: 5 is not of type 'string'"


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^(a|aa)+$"},
    {"type": "array", "items": {"type": "string", "pattern": "^(a|aa)+$"}},
    {"type": "object", "patternProperties": {"^(a|aa)+$": {}}},
])
def test_catastrophic_patterns_are_bounded_per_validation(schema: dict[str, object]) -> None:
    v = ValidatorCache().get(schema)
    evil = "a" * 40 + "!"
    document: object = evil
    if schema["type"] == "array":
        document = [evil] * 50  # 50 searches share one budget
    elif schema["type"] == "object":
        document = {evil: 1}
    started = time.perf_counter()
    error = first_error(v, document)
    elapsed = time.perf_counter() - started
    assert error is not None and "took too long to evaluate" in error
    # The regex module checks its timeout coarsely; Python's re would take minutes here.
    assert elapsed < PATTERN_BUDGET_S * 20


def test_refs_are_never_fetched() -> None:
    v = ValidatorCache().get({"$ref": "http://127.0.0.1:9/schema.json"})
    error = first_error(v, {})
    assert error is not None and "cannot be resolved" in error
    local = ValidatorCache().get({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"})
    assert first_error(local, 3) is None
    assert first_error(local, "x") == "at $: 'x' is not of type 'integer'"
