"""Every text of a request body that reaches the provider, as writable slots.

Chat: for system, user, assistant, tool and function messages — string ``content``;
``text`` and ``refusal`` parts of content arrays; the assistant's ``refusal``; the
message ``name``; ``tool_calls[].function.arguments`` and the legacy
``function_call.arguments`` (JSON strings: every string and number *value* inside is a
slot, and the JSON is re-serialised only if a value changed, so it stays valid and a
clean body stays byte-identical). The top-level ``user`` field (often an e-mail).
Embeddings: ``input`` as a string or a list of strings.

Passed untouched (documented): non-text content parts (``image_url``, ``input_audio``,
``file``), tool and function *names*, tool definitions, JSON object keys. Token-id
embeddings input cannot be inspected and is refused (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import BadRequest

TEXT_PART_FIELDS = {"text": "text", "refusal": "refusal"}


class Slot:
    """One text and where it goes back: ``container[key]``. Plain attributes, no
    closure: a resent 40-message history makes ~40 of these per request."""

    __slots__ = ("bare", "container", "key", "text")

    def __init__(self, text: str, container: Any, key: Any, bare: bool = False) -> None:
        self.text = text
        self.container = container
        self.key = key
        self.bare = bare  # restricted alphabet (message name): placeholders without <>

    def write(self, value: str) -> None:
        self.container[self.key] = value


class _JsonValueSlot(Slot):
    """A value inside tool-call arguments: marks the arguments for re-serialising only
    when the value really changed, so clean arguments stay byte-identical."""

    __slots__ = ("dirty",)

    def __init__(self, text: str, container: Any, key: Any, dirty: list[bool]) -> None:
        super().__init__(text, container, key)
        self.dirty = dirty

    def write(self, value: str) -> None:
        if value != self.text:
            self.container[self.key] = value
            self.dirty[0] = True


@dataclass(slots=True, eq=False)
class Extracted:
    slots: list[Slot] = field(default_factory=list)
    # Run after every slot was written: re-serialise edited JSON arguments.
    commits: list[Callable[[], None]] = field(default_factory=list)

    def commit(self) -> None:
        for fn in self.commits:
            fn()


def _field(out: Extracted, container: dict[str, Any], key: str, bare: bool = False) -> None:
    value = container.get(key)
    if type(value) is str and value:
        out.slots.append(Slot(value, container, key, bare))


def _json_values(node: Any, out: list[Slot], dirty: list[bool]) -> None:
    items: Any
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in list(items):
        if isinstance(value, str):
            text = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = json.dumps(value)  # a card number sent as a JSON number is still one
        else:
            _json_values(value, out, dirty)
            continue
        out.append(_JsonValueSlot(text, node, key, dirty))


def _arguments(out: Extracted, holder: dict[str, Any]) -> None:
    raw = holder.get("arguments")
    if not isinstance(raw, str) or not raw:
        return
    try:
        tree = json.loads(raw)
    except ValueError:
        # Not JSON (a model's broken output echoed back): scan it as plain text.
        _field(out, holder, "arguments")
        return
    dirty = [False]
    _json_values(tree, out.slots, dirty)

    def commit() -> None:
        if dirty[0]:
            holder["arguments"] = json.dumps(tree, ensure_ascii=False)
    out.commits.append(commit)


def _message(out: Extracted, i: int, msg: Any) -> None:
    if type(msg) is not dict:
        raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
    slots = out.slots
    content = msg.get("content")
    if type(content) is str:
        if content:
            slots.append(Slot(content, msg, "content"))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                key = TEXT_PART_FIELDS.get(str(part.get("type")))
                if key is not None:
                    _field(out, part, key)
            elif isinstance(part, str):  # lenient clients send bare strings
                raise BadRequest(f"messages[{i}].content parts must be objects",
                                 param=f"messages[{i}].content")
    elif content is not None:
        raise BadRequest(f"messages[{i}].content must be a string or an array of parts",
                         param=f"messages[{i}].content")
    if len(msg) <= 2 and "role" in msg and "content" in msg:
        return  # the common {"role", "content"} message has nothing else to scan
    _field(out, msg, "refusal")
    _field(out, msg, "name", bare=True)
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                _arguments(out, fn)
    legacy = msg.get("function_call")
    if isinstance(legacy, dict):
        _arguments(out, legacy)


def extract(body: dict[str, Any], operation: str) -> Extracted:
    out = Extracted()
    if operation == "embeddings":
        value = body.get("input")
        if isinstance(value, str):
            _field(out, body, "input")
        elif isinstance(value, list):
            for j, item in enumerate(value):
                if isinstance(item, str):
                    if item:
                        out.slots.append(Slot(item, value, j))
                else:
                    raise BadRequest(
                        "The pii policy cannot inspect token-id embeddings input; send text.",
                        param="input",
                    )
        return out
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            _message(out, i, msg)
    _field(out, body, "user")
    return out
