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


@dataclass(slots=True, eq=False)
class Slot:
    text: str
    write: Callable[[str], None]
    bare: bool = False  # restricted alphabet (message name): placeholders without <>


@dataclass(slots=True, eq=False)
class Extracted:
    slots: list[Slot] = field(default_factory=list)
    # Run after every slot was written: re-serialise edited JSON arguments.
    commits: list[Callable[[], None]] = field(default_factory=list)

    def commit(self) -> None:
        for fn in self.commits:
            fn()


def _setter(container: Any, key: Any) -> Callable[[str], None]:
    def write(value: str) -> None:
        container[key] = value
    return write


def _field(out: Extracted, container: dict[str, Any], key: str, bare: bool = False) -> None:
    value = container.get(key)
    if isinstance(value, str) and value:
        out.slots.append(Slot(value, _setter(container, key), bare))


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

        def write(new: str, node: Any = node, key: Any = key, old: str = text) -> None:
            if new != old:
                node[key] = new
                dirty[0] = True
        out.append(Slot(text, write))


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
    if not isinstance(msg, dict):
        raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
    content = msg.get("content")
    if isinstance(content, str):
        _field(out, msg, "content")
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
                        out.slots.append(Slot(item, _setter(value, j)))
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
