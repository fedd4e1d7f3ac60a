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
from typing import Any

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


def _argument_holders(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``{"arguments": "<json>"}`` objects of a message (tool calls, legacy call)."""
    holders = []
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            holders.append(fn)
    legacy = msg.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        holders.append(legacy)
    return holders


def restore_message(msg: dict[str, Any], mapping: Mapping[str, str]) -> None:
    """A plain reply's message, in place: content, refusal, tool-call arguments."""
    for key in ("content", "refusal"):
        if isinstance(msg.get(key), str):
            msg[key] = restore(msg[key], mapping)
    for holder in _argument_holders(msg):
        holder["arguments"] = restore(holder["arguments"], mapping, in_json=True)


class ReplyRestorer:
    """Restoration of one streamed reply: a ``StreamRestorer`` per field of each choice
    (its content, each tool call's arguments, the legacy function call's arguments)."""

    __slots__ = ("_could_start", "_fields", "_mapping")

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = mapping
        self._could_start = prefix_checker(mapping)
        self._fields: dict[tuple[Any, ...], StreamRestorer] = {}

    def _field(self, key: tuple[Any, ...], in_json: bool = False) -> StreamRestorer:
        found = self._fields.get(key)
        if found is None:
            found = self._fields[key] = StreamRestorer(self._mapping, self._could_start,
                                                       in_json)
        return found

    def delta(self, index: Any, delta: dict[str, Any]) -> None:
        """Restore one chunk's delta of choice ``index`` in place."""
        if isinstance(delta.get("content"), str):
            delta["content"] = self._field((index, "content")).feed(delta["content"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    r = self._field((index, "tool", call.get("index", 0)), in_json=True)
                    fn["arguments"] = r.feed(fn["arguments"])
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            r = self._field((index, "function"), in_json=True)
            legacy["arguments"] = r.feed(legacy["arguments"])

    def finish(self, index: Any, delta: dict[str, Any]) -> None:
        """Release what choice ``index`` still holds into ``delta`` (its last chunk)."""
        for key, r in self._fields.items():
            if key[0] != index or not r.holding:
                continue
            rest = r.flush()
            if key[1] == "content":
                delta["content"] = (delta.get("content") or "") + rest
            elif key[1] == "tool":
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": rest}})
            else:
                fn = delta.setdefault("function_call", {})
                fn["arguments"] = (fn.get("arguments") or "") + rest

    def holding(self) -> list[Any]:
        """Choice indexes with text still held back (a stream that ended without a
        ``finish_reason`` for them)."""
        return sorted({key[0] for key, r in self._fields.items() if r.holding}, key=str)
