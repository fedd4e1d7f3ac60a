"""Shape checks on request bodies, before any policy sees them.

Only what Warden itself relies on is checked (policies walk messages and must not trip
over a wrong type); everything else is the provider's to judge, so a field Warden does
not know is forwarded, not refused. Messages name the offending parameter, as OpenAI's do.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import BadRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def content_text(content: Any) -> str:
    """The text of a message's ``content``: the string itself, or the ``text`` of its
    parts joined by newlines; "" for anything else (images only, None)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _fail(message: str, param: str) -> BadRequest:
    return BadRequest(message, param=param)


def _int_field(body: dict[str, Any], name: str, minimum: int, maximum: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"'{name}' must be an integer, got {type(value).__name__}", name)
    if not minimum <= value <= maximum:
        raise _fail(f"'{name}' must be between {minimum} and {maximum}, got {value}", name)


def _common(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest(f"request body must be a JSON object, got {_json_type(raw)}")
    body: dict[str, Any] = raw
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("'model' is required and must be a non-empty string", "model")
    return body


def chat(raw: Any) -> dict[str, Any]:
    body = _common(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        # Shapes are checked cheaply first; the error text is only built for a failure
        # (this loop runs over every message of a resent history on every call).
        if type(m) is not dict:
            raise _fail(f"'messages[{i}]' must be an object, got {_json_type(m)}",
                        f"messages[{i}]")
        role = m.get("role")
        if type(role) is not str or role not in ROLES:  # a dict/list role is unhashable
            raise _fail(f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}",
                        f"messages[{i}].role")
        content = m.get("content")
        if type(content) is not str and content is not None:
            _check_parts(i, content)
        if "tool_calls" in m:
            _check_calls(i, m["tool_calls"])
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _fail("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _fail("'stream_options' must be an object", "stream_options")
    _int_field(body, "max_tokens", 1, 10_000_000)
    _int_field(body, "max_completion_tokens", 1, 10_000_000)
    _int_field(body, "n", 1, 128)
    for name in ("tools", "functions"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise _fail(f"'{name}' must be an array", name)
    return body


def _check_parts(i: int, content: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(content, list):  # str subclasses cannot come out of a JSON parser
        raise _fail(f"'{where}.content' must be a string or an array of parts",
                    f"{where}.content")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _fail(f"'{where}.content[{j}]' must be an object with a 'type'",
                        f"{where}.content[{j}]")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _fail(f"'{where}.content[{j}].text' must be a string",
                        f"{where}.content[{j}].text")


def _check_calls(i: int, calls: Any) -> None:
    where = f"messages[{i}]"
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _fail(f"'{where}.tool_calls' must be an array", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("arguments", ""), str):
            raise _fail(f"'{where}.tool_calls[{j}].function.arguments' must be a "
                        "string", f"{where}.tool_calls[{j}]")


def embeddings(raw: Any) -> dict[str, Any]:
    body = _common(raw)
    value = body.get("input")
    ok = isinstance(value, str) or (
        isinstance(value, list) and value and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value)
        )
    )
    if not ok:
        raise _fail("'input' must be a string, an array of strings, or token arrays", "input")
    return body


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            int: "number", float: "number"}.get(type(value), type(value).__name__)
