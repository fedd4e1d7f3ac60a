"""What one upstream attempt's outcome means for failover.

::

    Verdict
     ├── OK               2xx with a readable body: the answer
     ├── FINAL            the agent's own mistake (other 4xx): returned as the provider said it
     ├── CONTEXT_WINDOW   the prompt is too long here: context_window_fallbacks, else FINAL
     ├── CONTENT_POLICY   the provider refused on content: content_policy_fallbacks, else FINAL
     └── RETRY            the provider's trouble: another try, here later or elsewhere now
                          (connect errors, timeouts, 408, 429, 5xx but 501, garbage,
                          and 401/403: Warden's provider credential, not the agent's)

Reasons are bounded strings (metrics labels, the access log), never provider text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from proxy.upstream.base import UpstreamError, UpstreamReply


class Verdict(Enum):
    OK = "ok"
    FINAL = "final"
    CONTEXT_WINDOW = "context_window"
    CONTENT_POLICY = "content_policy"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str
    # Seconds the provider asked to wait (Retry-After / retry-after-ms), if it said.
    retry_after_s: float | None = None
    timeout: bool = False
    # Warden's own words for the all-failed message (never the provider's text).
    detail: str = ""

    @property
    def healthy(self) -> bool:
        """Whether the deployment worked, for its circuit breaker: a provider that
        answers "your prompt is too long" is up."""
        return self.verdict is not Verdict.RETRY


OK = Outcome(Verdict.OK, "ok")  # the common answer, built once

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_TEXT = re.compile(
    r"maximum context length|context[ _]length|context window|prompt is too long|"
    r"input is too long|too many (input )?tokens", re.I)
_CONTENT_CODES = frozenset({"content_filter", "content_policy_violation", "content_filtered"})
_CONTENT_TEXT = re.compile(r"content (management |filtering )?polic|content_filter", re.I)


def retry_after(headers: dict[str, str]) -> float | None:
    """The provider's wait hint: ``retry-after-ms`` (OpenAI, precise) or ``Retry-After``
    in seconds. The HTTP-date form is not honoured (providers send seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name) or headers.get(name.title())
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def _error_fields(reply: UpstreamReply) -> tuple[str, str]:
    """(code, message) of an OpenAI-shaped error body; empty strings otherwise."""
    try:
        body: Any = reply.json()
    except UpstreamError:
        return "", ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return "", error
    if not isinstance(error, dict):
        return "", ""
    code = error.get("code") or error.get("type") or ""
    inner = error.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):  # Azure: ResponsibleAIPolicyViolation
        code = f"{code} {inner['code']}"
    return str(code), str(error.get("message") or "")


def classify_reply(reply: UpstreamReply) -> Outcome:
    status = reply.status
    if 200 <= status < 300:
        try:
            body = reply.json()
        except UpstreamError as e:
            return Outcome(Verdict.RETRY, "bad_reply", detail=str(e))
        if not isinstance(body, dict):
            return Outcome(Verdict.RETRY, "bad_reply", detail="reply is not a JSON object")
        if "error" in body and "choices" not in body and "data" not in body:
            # An error dressed as a 200.
            return Outcome(Verdict.RETRY, "provider_error", detail="error body with status 200")
        return OK
    if status == 429 or status == 408 or (status >= 500 and status != 501):
        reason = "rate_limited" if status == 429 else f"status_{status}"
        return Outcome(Verdict.RETRY, reason, retry_after(reply.headers))
    if status in (401, 403):
        return Outcome(Verdict.RETRY, "auth_error")
    if status in (400, 413, 422):
        code, message = _error_fields(reply)
        if code in _CONTEXT_CODES or (not code.startswith("content") and
                                      _CONTEXT_TEXT.search(message)):
            return Outcome(Verdict.CONTEXT_WINDOW, "context_window")
        if any(c in _CONTENT_CODES for c in code.split()) or _CONTENT_TEXT.search(message):
            return Outcome(Verdict.CONTENT_POLICY, "content_policy")
    return Outcome(Verdict.FINAL, f"status_{status}")


def classify_error(error: UpstreamError) -> Outcome:
    return Outcome(Verdict.RETRY, error.reason, timeout=error.timeout, detail=str(error))
