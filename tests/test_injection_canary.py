"""Canary tokens: planting, and the streaming scanner that never leaks a partial token."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.injection.canary import LeakScanner, new_token, plant, redact

TOKEN = "wdn-canary-0123456789abcdef"


def test_tokens_are_random_and_recognisable() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("wdn-canary-") and len(a) == len(TOKEN)


def test_plant_appends_to_the_first_system_message() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "second"}]
    assert plant(messages, TOKEN)
    assert messages[1]["content"].startswith("Be brief.") and TOKEN in messages[1]["content"]
    assert TOKEN not in messages[2]["content"] and TOKEN not in messages[0]["content"]


def test_plant_handles_content_parts_and_developer_role() -> None:
    messages = [{"role": "developer", "content": [{"type": "text", "text": "rules"}]}]
    assert plant(messages, TOKEN)
    assert TOKEN in messages[0]["content"][-1]["text"]


def test_plant_without_a_system_prompt_does_nothing() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert not plant(messages, TOKEN)
    assert messages == [{"role": "user", "content": "hi"}]


def test_scanner_finds_a_token_split_across_chunks() -> None:
    scanner = LeakScanner(TOKEN)
    sent = []
    for piece in ("Sure: wdn-can", "ary-0123", "456789abcdef and more"):
        safe, hit = scanner.feed(piece)
        sent.append(safe)
        if hit:
            break
    assert hit
    # No part of the token was released before it was complete, and then only redacted.
    assert sent == ["Sure: ", "", "[redacted] and more"]


def test_scanner_releases_a_false_start_once_it_cannot_be_the_token() -> None:
    scanner = LeakScanner(TOKEN)
    assert scanner.feed("see wdn-") == ("see ", False)
    assert scanner.feed("docs for more") == ("wdn-docs for more", False)
    assert scanner.feed("wdn-ca") == ("", False)
    assert scanner.flush() == "wdn-ca"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abwdn-cary0123456789 ", max_size=80), st.data())
def test_scanner_output_equals_input_when_no_token(text: str, data: st.DataObject) -> None:
    """Whatever the chunking, released text + flushed text == the input (if no token)."""
    if TOKEN in text:
        return
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    scanner = LeakScanner(TOKEN)
    out = ""
    for p in pieces:
        safe, hit = scanner.feed(p)
        assert not hit
        out += safe
    assert out + scanner.flush() == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30), st.data())
def test_scanner_always_finds_the_token(before: str, after: str, data: st.DataObject) -> None:
    text = before + TOKEN + after
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    scanner = LeakScanner(TOKEN)
    released = ""
    for p in pieces:
        safe, hit = scanner.feed(p)
        released += safe
        if hit:
            break
    assert hit
    # Exactly the text before the token was released: not one character of the token.
    first = (before + TOKEN).index(TOKEN)
    assert released.startswith(before[:first])
    assert released[first:].startswith("[redacted]")


def test_redact() -> None:
    assert redact(f"a {TOKEN} b {TOKEN}", TOKEN) == "a [redacted] b [redacted]"
