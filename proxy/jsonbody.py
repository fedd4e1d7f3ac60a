"""JSON in and out, with the failure modes of hostile input turned into BadRequest."""

from __future__ import annotations

import json
from typing import Any

from proxy.errors import BadRequest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (legal in JSON text, illegal in UTF-8)
    becomes a 400, not a crash."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("request contains invalid Unicode (an unpaired surrogate)") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
