"""Restoration: plain text, JSON arguments, and streams cut at every offset."""

from __future__ import annotations

import json
import time

from proxy.pii.restore import StreamRestorer, prefix_checker, restore

MAPPING = {
    "<EMAIL_ADDRESS_7f3a9c>": "ann@example.com",
    "<PHONE_NUMBER_0b12ef>": "+44 20 7946 0958",
    "<PRIVATE_KEY_aa00bb>": '-----BEGIN PRIVATE KEY-----\nMIIE"x\\y\n-----END PRIVATE KEY-----',
}
TEXT = "Write to <EMAIL_ADDRESS_7f3a9c> or call <PHONE_NUMBER_0b12ef> < soon>"
RESTORED = "Write to ann@example.com or call +44 20 7946 0958 < soon>"


def stream(pieces: list[str], in_json: bool = False) -> str:
    r = StreamRestorer(MAPPING, prefix_checker(MAPPING), in_json=in_json)
    return "".join(r.feed(p) for p in pieces) + r.flush()


def test_plain_restore_replaces_known_placeholders_only() -> None:
    assert restore(TEXT, MAPPING) == RESTORED
    assert restore("<EMAIL_ADDRESS_000000> stays", MAPPING) == "<EMAIL_ADDRESS_000000> stays"


def test_restore_into_json_keeps_it_valid() -> None:
    args = json.dumps({"key": "<PRIVATE_KEY_aa00bb>", "to": "<EMAIL_ADDRESS_7f3a9c>"})
    out = json.loads(restore(args, MAPPING, in_json=True))
    assert out == {"key": MAPPING["<PRIVATE_KEY_aa00bb>"], "to": "ann@example.com"}


def test_stream_split_into_two_at_every_offset() -> None:
    for i in range(len(TEXT) + 1):
        assert stream([TEXT[:i], TEXT[i:]]) == RESTORED, i


def test_stream_split_into_three_at_every_pair_of_offsets() -> None:
    for i in range(len(TEXT) + 1):
        for j in range(i, len(TEXT) + 1):
            assert stream([TEXT[:i], TEXT[i:j], TEXT[j:]]) == RESTORED, (i, j)


def test_stream_one_character_per_chunk() -> None:
    assert stream(list(TEXT)) == RESTORED


def test_stream_tool_arguments_split_everywhere_stay_valid_json() -> None:
    args = json.dumps({"key": "<PRIVATE_KEY_aa00bb>", "n": 1})
    for i in range(len(args) + 1):
        out = stream([args[:i], args[i:]], in_json=True)
        assert json.loads(out) == {"key": MAPPING["<PRIVATE_KEY_aa00bb>"], "n": 1}, i


def test_holds_back_only_what_could_still_start_a_placeholder() -> None:
    r = StreamRestorer(MAPPING, prefix_checker(MAPPING))
    assert r.feed("a < b") == "a < b"  # "< b" cannot become a placeholder
    assert not r.holding
    assert r.feed("see <EMA") == "see "
    assert r.holding
    assert r.feed("IL_ADDRESS_7f3a9c>!") == "ann@example.com!"
    assert r.feed("x <<EMAIL_") == "x <"  # the first "<" is released at once
    assert r.flush() == "<EMAIL_"  # a dangling prefix is sent as it was


def test_text_without_placeholders_passes_through_unchanged() -> None:
    r = StreamRestorer(MAPPING, prefix_checker(MAPPING))
    pieces = ["Hello", " <b>bold</b>", " and a < b", ""]
    assert [r.feed(p) for p in pieces] == pieces


def test_per_chunk_cost_is_tens_of_microseconds_at_most() -> None:
    chunks = [TEXT[i:i + 4] for i in range(0, len(TEXT), 4)] * 200
    r = StreamRestorer(MAPPING, prefix_checker(MAPPING))
    start = time.perf_counter()
    for c in chunks:
        r.feed(c)
    per_chunk = (time.perf_counter() - start) / len(chunks)
    assert per_chunk < 50e-6, f"{per_chunk * 1e6:.1f} us per chunk"


def test_reply_restorer_keeps_choices_and_tool_calls_apart() -> None:
    from proxy.pii.restore import ReplyRestorer

    r = ReplyRestorer(MAPPING)
    a = {"content": "to <EMAIL_ADD"}
    b = {"content": "call <PHONE_"}
    t = {"tool_calls": [{"index": 1, "function": {"arguments": '{"k": "<PRIVATE_KEY_aa'}}]}
    r.delta(0, a)
    r.delta(1, b)
    r.delta(0, t)
    assert (a["content"], b["content"]) == ("to ", "call ")
    assert t["tool_calls"][0]["function"]["arguments"] == '{"k": "'
    assert r.holding() == [0, 1]
    last: dict[str, object] = {"content": "RESS_7f3a9c>."}
    r.delta(0, last)
    assert last["content"] == "ann@example.com."
    end: dict[str, object] = {}
    r.finish(0, end)  # choice 0 ends: its tool call's held text is released
    assert end == {"tool_calls": [{"index": 1, "function": {"arguments": "<PRIVATE_KEY_aa"}}]}
    assert r.holding() == [1]


def test_restore_message_covers_content_refusal_and_arguments() -> None:
    from proxy.pii.restore import restore_message

    msg = {"content": "<EMAIL_ADDRESS_7f3a9c>", "refusal": "no <PHONE_NUMBER_0b12ef>",
           "tool_calls": [{"function": {"arguments": '{"a": "<PRIVATE_KEY_aa00bb>"}'}}],
           "function_call": {"arguments": '{"b": "<EMAIL_ADDRESS_7f3a9c>"}'}}
    restore_message(msg, MAPPING)
    assert msg["content"] == "ann@example.com"
    assert msg["refusal"] == "no +44 20 7946 0958"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {  # type: ignore[index]
        "a": MAPPING["<PRIVATE_KEY_aa00bb>"]}
    assert json.loads(msg["function_call"]["arguments"]) == {"b": "ann@example.com"}  # type: ignore[index]
