"""jsonbody: orjson's speed, the stdlib's meaning, hostile input as BadRequest."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import jsonbody
from proxy.errors import BadRequest

# JSON values as clients send them, with integers far beyond 64 bits on both sides.
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_reads_every_body_as_the_stdlib_does(value: Any) -> None:
    raw = json.dumps(value).encode()
    got = jsonbody.loads(raw)
    assert got == json.loads(raw)
    # Equal is not enough: 10**23 == 1e23 in Python. The types must match too.
    assert json.dumps(got) == json.dumps(json.loads(raw))


@pytest.mark.parametrize("literal", [
    "99999999999999999999999", "-9223372036854775809", "18446744073709551616",
    "123456789012345678901234567890",
])
def test_integers_beyond_64_bits_stay_exact_integers(literal: str) -> None:
    body = jsonbody.loads(f'{{"model":"m","seed":{literal},"deep":[{{"x":[{literal}]}}]}}'
                          .encode())
    assert body["seed"] == int(literal) and type(body["seed"]) is int
    assert body["deep"][0]["x"][0] == int(literal)
    assert jsonbody.dumps(body).decode().count(literal) == 2  # forwarded unchanged


def test_large_float_literals_keep_their_stdlib_value() -> None:
    assert jsonbody.loads(b"[1e19, -2.5e30]") == [1e19, -2.5e30]
    assert math.isinf(jsonbody.loads(b"1e400"))  # as json.loads reads it


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"a":', "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'{"a": Infinity}', "Infinity is not valid JSON"),
    (b'"\\ud800"', "unpaired surrogate"),
    (b'{"a":"x\\udfff"}', "unpaired surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_hostile_bodies_are_bad_requests(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        jsonbody.loads(raw)
    assert message in e.value.message


def test_surrogate_pairs_are_characters() -> None:
    assert jsonbody.loads(b'"\\ud83d\\ude00"') == "\U0001F600"


def test_reply_parsing_keeps_big_integers_and_refuses_garbage() -> None:
    assert jsonbody.loads_reply(b'{"id":1,"n":99999999999999999999}') == {
        "id": 1, "n": 99999999999999999999}
    with pytest.raises(ValueError):
        jsonbody.loads_reply(b"<html>bad gateway</html>")
    with pytest.raises(ValueError):
        jsonbody.loads_reply(b"\xff")
