"""Classification of attempt outcomes, on the bodies real providers send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.upstream.base import UpstreamError, UpstreamReply
from proxy.upstream.classify import Verdict, classify_error, classify_reply, retry_after


def reply(status: int, body: Any, **headers: str) -> UpstreamReply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return UpstreamReply(status, raw, headers)


OPENAI_CONTEXT = {"error": {"message": "This model's maximum context length is 8192 tokens. "
                            "However, your messages resulted in 9000 tokens.",
                            "type": "invalid_request_error", "param": "messages",
                            "code": "context_length_exceeded"}}
ANTHROPIC_CONTEXT = {"type": "error", "error": {"type": "invalid_request_error",
                                                "message": "prompt is too long: 210000 tokens "
                                                           "> 200000 maximum"}}
AZURE_CONTENT = {"error": {"message": "The response was filtered due to the prompt triggering "
                           "Azure OpenAI's content management policy.", "type": None,
                           "param": "prompt", "code": "content_filter", "status": 400,
                           "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
OPENAI_CONTENT = {"error": {"message": "Your request was rejected as a result of our safety "
                            "system.", "type": "invalid_request_error", "param": None,
                            "code": "content_policy_violation"}}
BAD_PARAM = {"error": {"message": "Unrecognized request argument supplied: foo",
                       "type": "invalid_request_error", "param": None, "code": None}}


@pytest.mark.parametrize(("r", "verdict", "reason"), [
    (reply(200, {"choices": []}), Verdict.OK, "ok"),
    (reply(200, {"data": [], "object": "list"}), Verdict.OK, "ok"),
    (reply(200, b"<html>502 Bad Gateway</html>"), Verdict.RETRY, "bad_reply"),
    (reply(200, b'{"id": "x", "cho'), Verdict.RETRY, "bad_reply"),
    (reply(200, [1, 2]), Verdict.RETRY, "bad_reply"),
    (reply(200, {"error": {"message": "overloaded"}}), Verdict.RETRY, "provider_error"),
    (reply(429, {"error": {}}), Verdict.RETRY, "rate_limited"),
    (reply(408, b""), Verdict.RETRY, "status_408"),
    (reply(500, b"oops"), Verdict.RETRY, "status_500"),
    (reply(502, b""), Verdict.RETRY, "status_502"),
    (reply(503, {"error": {}}), Verdict.RETRY, "status_503"),
    (reply(504, b""), Verdict.RETRY, "status_504"),
    (reply(529, {"type": "error"}), Verdict.RETRY, "status_529"),
    (reply(401, {"error": {"message": "Incorrect API key provided: sk-ab***cd"}}),
     Verdict.RETRY, "auth_error"),
    (reply(403, b""), Verdict.RETRY, "auth_error"),
    (reply(501, b""), Verdict.FINAL, "status_501"),
    (reply(404, {"error": {"code": "model_not_found"}}), Verdict.FINAL, "status_404"),
    (reply(400, BAD_PARAM), Verdict.FINAL, "status_400"),
    (reply(400, b"not json"), Verdict.FINAL, "status_400"),
    (reply(422, {"detail": "bad"}), Verdict.FINAL, "status_422"),
    (reply(400, OPENAI_CONTEXT), Verdict.CONTEXT_WINDOW, "context_window"),
    (reply(400, ANTHROPIC_CONTEXT), Verdict.CONTEXT_WINDOW, "context_window"),
    (reply(400, {"error": {"message": "x", "code": "context_length_exceeded"}}),
     Verdict.CONTEXT_WINDOW, "context_window"),
    (reply(400, AZURE_CONTENT), Verdict.CONTENT_POLICY, "content_policy"),
    (reply(400, OPENAI_CONTENT), Verdict.CONTENT_POLICY, "content_policy"),
])
def test_classify_reply(r: UpstreamReply, verdict: Verdict, reason: str) -> None:
    outcome = classify_reply(r)
    assert (outcome.verdict, outcome.reason) == (verdict, reason)
    assert outcome.healthy is (verdict is not Verdict.RETRY)


def test_retry_after_headers() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"Retry-After": "0.5"}) == 0.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert retry_after({"retry-after": "-1"}) is None
    assert retry_after({"retry-after": "nan"}) is None
    assert retry_after({}) is None
    outcome = classify_reply(reply(429, {}, **{"retry-after-ms": "250"}))
    assert outcome.retry_after_s == 0.25


def test_classify_error_keeps_reason_and_words() -> None:
    outcome = classify_error(UpstreamError("first_byte_timeout", "no answer", timeout=True))
    assert (outcome.verdict, outcome.reason, outcome.timeout, outcome.detail) == (
        Verdict.RETRY, "first_byte_timeout", True, "no answer")
    assert not outcome.healthy
