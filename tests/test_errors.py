"""Every refusal renders as an OpenAI error body with the right status and headers."""

from __future__ import annotations

import pytest

from proxy import errors


@pytest.mark.parametrize(("error", "status", "type_", "code"), [
    (errors.BadRequest("m"), 400, "invalid_request_error", "invalid_request"),
    (errors.ContentFiltered("m"), 400, "invalid_request_error", "content_filter"),
    (errors.AuthenticationFailed("m"), 401, "invalid_request_error", "invalid_api_key"),
    (errors.PermissionDenied("m"), 403, "invalid_request_error", "permission_denied"),
    (errors.ModelNotFound("m"), 404, "invalid_request_error", "model_not_found"),
    (errors.PayloadTooLarge("m"), 413, "invalid_request_error", "request_too_large"),
    (errors.RateLimited("m", retry_after_s=1.2), 429, "requests", "rate_limit_exceeded"),
    (errors.QuotaExceeded("m"), 429, "insufficient_quota", "insufficient_quota"),
    (errors.UpstreamFailed("m"), 502, "api_error", "upstream_error"),
    (errors.UpstreamTimeout("m"), 504, "api_error", "upstream_timeout"),
    (errors.ServiceUnavailable("m"), 503, "api_error", "service_unavailable"),
])
def test_rendering(error: errors.WardenError, status: int, type_: str, code: str) -> None:
    assert error.status == status
    assert error.body() == {"error": {"message": "m", "type": type_, "param": None,
                                      "code": code}}
    assert error.reason == code


def test_retry_headers() -> None:
    assert errors.RateLimited("m", retry_after_s=1.2).headers["Retry-After"] == "2"
    assert errors.RateLimited("m", retry_after_s=0.01).headers["Retry-After"] == "1"
    assert errors.QuotaExceeded("m").headers["x-should-retry"] == "false"


def test_param_and_code_override() -> None:
    e = errors.BadRequest("bad", param="messages[0]", code="custom")
    assert e.body()["error"]["param"] == "messages[0]" and e.reason == "custom"
