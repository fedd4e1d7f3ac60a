"""Put original values back where the model wrote placeholders.

Only the current request's mapping is used (values present in its own messages), so a
reply can never receive another request's or another tenant's data, and nothing is
retained once the request ends.

Streams: a placeholder can be cut anywhere between two chunks. ``StreamRestorer`` holds
back only the shortest suffix that could still start a known placeholder (from the last
``<``, when what follows it is a proper prefix of a placeholder in the mapping) and
releases it as soon as it is decided, or at the end of the stream. It never holds more
than one placeholder's length. Text without ``<`` takes a fast path (one ``in`` test).

Tool-call arguments are JSON: a value restored into them is JSON-string-escaped (a
private key's newlines, an address's quotes), so the arguments stay valid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from proxy.pii.pseudonyms import PLACEHOLDER_RE


def _json_escaped(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def restore(text: str, mapping: Mapping[str, str], in_json: bool = False) -> str:
    if "<" not in text or not mapping:
        return text
    if in_json:
        return PLACEHOLDER_RE.sub(
            lambda m: _json_escaped(mapping[m[0]]) if m[0] in mapping else m[0], text)
    return PLACEHOLDER_RE.sub(lambda m: mapping.get(m[0], m[0]), text)


class StreamRestorer:
    """Restoration for one streamed field (a choice's content, or one tool call's
    arguments). ``feed`` returns what may be sent now; ``flush`` what is left."""

    __slots__ = ("_could_start", "_in_json", "_mapping", "_pending")

    def __init__(self, mapping: Mapping[str, str], could_start: Callable[[str], bool],
                 in_json: bool = False) -> None:
        self._mapping = mapping
        self._could_start = could_start
        self._in_json = in_json
        self._pending = ""

    def feed(self, text: str) -> str:
        if self._pending:
            text = self._pending + text
            self._pending = ""
        elif "<" not in text:
            return text
        cut = text.rfind("<")
        if cut != -1 and self._could_start(text[cut:]):
            self._pending = text[cut:]
            text = text[:cut]
        return restore(text, self._mapping, self._in_json)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return restore(rest, self._mapping, self._in_json)

    @property
    def holding(self) -> bool:
        return bool(self._pending)


def prefix_checker(mapping: Mapping[str, str]) -> Callable[[str], bool]:
    """``tail -> bool``: is ``tail`` a proper prefix of a placeholder in ``mapping``?

    A set of every proper prefix makes the per-chunk test one hash look-up; the mapping
    of one request has tens of placeholders of < 40 characters, so the set is small.
    """
    prefixes = {p[:i] for p in mapping for i in range(1, len(p))}
    return prefixes.__contains__
