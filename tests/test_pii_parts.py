"""Every text that reaches the provider is a slot; JSON arguments stay valid."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BadRequest
from proxy.pii.parts import extract


def body() -> dict[str, Any]:
    return {"model": "m", "user": "ann@example.com", "messages": [
        {"role": "system", "content": "sys ann"},
        {"role": "user", "name": "ann_smith", "content": [
            {"type": "text", "text": "part ann"},
            {"type": "image_url", "image_url": {"url": "https://x/ann.png"}},
        ]},
        {"role": "assistant", "content": None, "refusal": "no ann", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "mail_ann", "arguments": '{"to": "ann", "n": 42, '
                                                            '"deep": [{"x": "ann"}], "ok": true}'}},
        ]},
        {"role": "assistant", "content": "",
         "function_call": {"name": "f", "arguments": "{\"a\": \"ann\"}"}},
        {"role": "tool", "tool_call_id": "c1", "content": "result ann"},
        {"role": "function", "name": "f", "content": "fn ann"},
    ]}


def test_every_text_part_is_a_slot_and_nothing_else() -> None:
    texts = [s.text for s in extract(body(), "chat").slots]
    assert texts == ["sys ann", "part ann", "ann_smith", "no ann", "ann", "42", "ann", "ann",
                     "result ann", "fn ann", "f", "ann@example.com"]


def test_writes_land_in_place_and_json_is_reserialised_only_when_changed() -> None:
    b = body()
    found = extract(b, "chat")
    for slot in found.slots:
        slot.write(slot.text.replace("ann", "X"))
    found.commit()
    msgs = b["messages"]
    assert msgs[0]["content"] == "sys X"
    assert msgs[1]["content"][0]["text"] == "part X"
    assert msgs[1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/ann.png"}}
    assert msgs[1]["name"] == "X_smith"
    args = json.loads(msgs[2]["tool_calls"][0]["function"]["arguments"])
    assert args == {"to": "X", "n": 42, "deep": [{"x": "X"}], "ok": True}
    assert msgs[2]["tool_calls"][0]["function"]["name"] == "mail_ann"  # names untouched
    assert b["user"] == "X@example.com"
    clean = body()
    clean_args = clean["messages"][2]["tool_calls"][0]["function"]["arguments"]
    untouched = extract(clean, "chat")
    for slot in untouched.slots:
        slot.write(slot.text)
    untouched.commit()
    assert clean["messages"][2]["tool_calls"][0]["function"]["arguments"] == clean_args


def test_a_number_value_that_is_redacted_becomes_a_string() -> None:
    b = {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "pay", "arguments": '{"card": 4111111111111111}'}}]}]}
    found = extract(b, "chat")
    found.slots[0].write("<CREDIT_CARD_abcdef>")
    found.commit()
    raw = b["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(raw) == {"card": "<CREDIT_CARD_abcdef>"}


def test_arguments_that_are_not_json_are_scanned_as_text() -> None:
    b = {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{broken ann"}}]}]}
    assert [s.text for s in extract(b, "chat").slots] == ["{broken ann"]


def test_embeddings_input_string_and_list() -> None:
    one = {"input": "ann"}
    many = {"input": ["a", "", "b"]}
    assert [s.text for s in extract(one, "embeddings").slots] == ["ann"]
    found = extract(many, "embeddings")
    assert [s.text for s in found.slots] == ["a", "b"]
    found.slots[1].write("B")
    assert many["input"] == ["a", "", "B"]


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]]])
def test_token_id_embeddings_are_refused_not_forwarded(value: Any) -> None:
    with pytest.raises(BadRequest) as err:
        extract({"input": value}, "embeddings")
    assert err.value.status == 400


def test_unknown_content_shape_is_a_400() -> None:
    with pytest.raises(BadRequest):
        extract({"messages": [{"role": "user", "content": {"text": "ann"}}]}, "chat")
    with pytest.raises(BadRequest):
        extract({"messages": ["hi"]}, "chat")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values, st.text())
def test_any_json_arguments_stay_valid_after_any_rewrite(tree: Any, replacement: str) -> None:
    b = {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": json.dumps(tree)}}]}]}
    found = extract(b, "chat")
    for slot in found.slots:
        slot.write(replacement + slot.text[:3] + '"\\\n')
    found.commit()
    json.loads(b["messages"][0]["tool_calls"][0]["function"]["arguments"])
