"""Requests that are not valid HTTP/1.1 still get an OpenAI-format error body."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from bench.fuzzing import raw_exchange
from tests.support import KEY, Stack

AUTH = b"Authorization: Bearer " + KEY.encode()
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def _request(*head: bytes, body: bytes = BODY, method: bytes = b"POST") -> bytes:
    lines = [method + b" /v1/chat/completions HTTP/1.1", b"Host: x", AUTH, *head]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize(("label", "raw", "code"), [
    ("header line too long", _request(b"X-Big: " + b"a" * 9000), "request_header_too_large"),
    ("bare LF inside a header", _request(b"X-Bad: a\nb", b"Content-Length: 68"), "bad_http"),
    ("two Content-Lengths", _request(b"Content-Length: 68", b"Content-Length: 5"), "bad_http"),
    ("an invalid method", _request(b"Content-Length: 68", method=b"P@ST"), "bad_http_method"),
    ("a broken chunked body", _request(b"Transfer-Encoding: chunked", body=b"zz\r\nhi\r\n"),
     "bad_http"),
])
def test_malformed_http_gets_an_openai_error(stack: Stack, label: str, raw: bytes,
                                             code: str) -> None:
    u = urlsplit(stack.proxy_url)
    status, head, body = raw_exchange(u.hostname or "127.0.0.1", u.port or 80, raw)
    assert status == 400, (label, head, body[:200])
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("malformed HTTP request")
    assert error["code"] == code, (label, error)
    assert b"application/json" in head.lower()
    # The offending bytes are never quoted back.
    assert b"aaaa" not in body and b"P@ST" not in body and b"zz" not in body


def test_the_server_still_answers_well_formed_requests_afterwards(stack: Stack) -> None:
    u = urlsplit(stack.proxy_url)
    raw_exchange(u.hostname or "127.0.0.1", u.port or 80, _request(b"X-Bad: a\nb"))
    ok = _request(b"Content-Length: %d" % len(BODY), b"Content-Type: application/json",
                  b"Connection: close")
    status, _, body = raw_exchange(u.hostname or "127.0.0.1", u.port or 80, ok)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_responses_name_warden_not_the_framework_and_its_version(stack: Stack) -> None:
    u = urlsplit(stack.proxy_url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    ok = _request(b"Content-Length: %d" % len(BODY), b"Content-Type: application/json",
                  b"Connection: close")
    for raw in (ok, _request(b"X-Bad: a\nb")):  # a reply, and a parser refusal
        _, head, _ = raw_exchange(host, port, raw)
        assert b"\r\nserver: warden\r\n" in head.lower() + b"\r\n", head
        assert b"aiohttp" not in head.lower() and b"python" not in head.lower()
