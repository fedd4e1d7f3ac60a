"""validate.content_text: the text policies screen in a message's content."""

from __future__ import annotations

from proxy.validate import content_text


def test_content_text_reads_strings_and_text_parts_only() -> None:
    assert content_text("hello") == "hello"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "b"}, "stray", {"type": "text", "text": 3}]
    assert content_text(parts) == "a\nb"
    assert content_text(None) == "" and content_text({"text": "x"}) == ""
