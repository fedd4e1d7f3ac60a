"""Refusals and their OpenAI-format rendering.

Every "no" Warden says is one of these, raised from wherever the decision is made and
rendered in exactly one place (``WardenError.body``), so AutoGen's openai client
surfaces it like any provider error::

    WardenError                      base: status, type, code, message, param, headers
     ├── BadRequest                  400 invalid_request_error
     │    └── ContentFiltered        400 code=content_filter (injection, PII block, contract)
     ├── AuthenticationFailed        401 code=invalid_api_key
     ├── PermissionDenied            403 code=permission_denied (scope)
     ├── ModelNotFound               404 code=model_not_found
     ├── PayloadTooLarge             413 code=request_too_large
     ├── UnsupportedMediaType        415 code=unsupported_media_type
     ├── RateLimited                 429 code=rate_limit_exceeded, Retry-After
     ├── QuotaExceeded               429 code=insufficient_quota, x-should-retry: false
     ├── UpstreamFailed              502 code=upstream_error (provider garbage, all attempts failed)
     ├── UpstreamTimeout             504 code=upstream_timeout
     └── ServiceUnavailable          503 code=service_unavailable (scanner error, store down)

Content refusals use ``code: content_filter`` on purpose: AG2 moves on to the next
entry of its config_list on any other code, which would route around the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class WardenError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    @property
    def reason(self) -> str:
        """A bounded label value for metrics and logs (never the message)."""
        return self.code or self.type


class BadRequest(WardenError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class ContentFiltered(BadRequest):
    default_code = "content_filter"


class AuthenticationFailed(WardenError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(WardenError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class ModelNotFound(WardenError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLarge(WardenError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(WardenError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(WardenError):
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after_s + 0.4999))))


class QuotaExceeded(WardenError):
    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        # A spent budget does not come back in seconds: tell the SDK not to retry.
        self.headers.setdefault("x-should-retry", "false")


class UpstreamFailed(WardenError):
    status = 502
    type = "api_error"
    default_code = "upstream_error"


class UpstreamTimeout(WardenError):
    status = 504
    type = "api_error"
    default_code = "upstream_timeout"


class ServiceUnavailable(WardenError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"
