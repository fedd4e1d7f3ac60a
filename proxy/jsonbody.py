"""JSON in and out, with the failure modes of hostile input turned into BadRequest.

The decoder and encoder are built once: ``json.loads(..., parse_constant=...)`` builds
a new decoder on every call, which costs more than parsing a typical request body.
Parsing stays on the stdlib (not orjson) because it round-trips integers of any size
exactly; a proxy must not turn ``"seed": 99999999999999999999999`` into ``1e+23``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from proxy.errors import BadRequest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def loads(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if b"\\ud" in raw or b"\\uD" in raw:
        # A \uD800-\uDFFF escape may be a lone surrogate: legal JSON, but no policy
        # (PII, injection scanners) can process it and no UTF-8 can carry it. Refuse it
        # here, as bad input, rather than as a scanner failure (503) later.
        dumps(value)
    return value


def loads_reply(raw: bytes) -> Any:
    """Parse a provider's reply; ValueError (incl. bad UTF-8) when it is not JSON."""
    return _DECODER.decode(raw.decode("utf-8"))


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (legal in JSON text, illegal in UTF-8)
    becomes a 400, not a crash.

    orjson writes the same compact UTF-8 form ~8x faster (an AutoGen history of 40
    messages is re-serialised on every call); whatever it refuses (integers beyond 64
    bits, lone surrogates, very deep nesting) goes through the stdlib encoder, which
    writes big integers exactly and turns the rest into a 400."""
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return _ENCODER.encode(obj).encode()
    except UnicodeEncodeError:
        raise BadRequest("request contains invalid Unicode (an unpaired surrogate)") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
