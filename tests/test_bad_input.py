"""Bad input gets a precise OpenAI-format 4xx; provider garbage a clean 502. Never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import KEY, Stack, tenant_policy

AUTH = {"Authorization": f"Bearer {KEY}"}
OK_MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def policies(url: str) -> list[dict[str, Any]]:
        garbage = tenant_policy(url, tenant="garbage", key="vk-garbage-key", spec="garbage=1")
        truncated = tenant_policy(url, tenant="trunc", key="vk-trunc-key", spec="truncate=1")
        down = tenant_policy("http://127.0.0.1:9", tenant="down", key="vk-down-key")
        return [tenant_policy(url), garbage, truncated, down]

    with Stack(policies, tmp_path_factory.mktemp("bad"), max_body_bytes=4096) as s:
        yield s


def post(stack: Stack, content: bytes | None = None, json: Any = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    h = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{stack.proxy_url}/v1/chat/completions", content=content, json=json,
                      headers=h)


def assert_error(r: httpx.Response, status: int, code: str, words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert words in err["message"], err["message"]
    assert "Traceback" not in r.text


CASES: list[tuple[str, bytes, int, str, str]] = [
    ("malformed", b'{"model": "gpt-4o-mini", "messages": [', 400, "invalid_request",
     "not valid JSON"),
    ("empty", b"", 400, "invalid_request", "body is empty"),
    ("array", b"[1, 2]", 400, "invalid_request", "must be a JSON object, got array"),
    ("no model", b'{"messages": [{"role": "user", "content": "x"}]}', 400,
     "invalid_request", "'model' is required"),
    ("no messages", b'{"model": "gpt-4o-mini"}', 400, "invalid_request",
     "'messages' must be a non-empty array"),
    ("empty messages", b'{"model": "gpt-4o-mini", "messages": []}', 400, "invalid_request",
     "'messages' must be a non-empty array"),
    ("message not object", b'{"model": "gpt-4o-mini", "messages": ["hi"]}', 400,
     "invalid_request", "'messages[0]' must be an object, got string"),
    ("bad role", b'{"model": "gpt-4o-mini", "messages": [{"role": "god", "content": "x"}]}',
     400, "invalid_request", "'messages[0].role' must be one of"),
    ("bad content", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}',
     400, "invalid_request", "'messages[0].content' must be a string"),
    ("bad part", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [1]}]}',
     400, "invalid_request", "'messages[0].content[0]' must be an object"),
    ("stream type", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],'
     b' "stream": "yes"}', 400, "invalid_request", "'stream' must be a boolean"),
    ("negative max_tokens", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     b'"content": "x"}], "max_tokens": -5}', 400, "invalid_request",
     "'max_tokens' must be between 1"),
    ("string max_tokens", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     b'"content": "x"}], "max_tokens": "5"}', 400, "invalid_request",
     "'max_tokens' must be an integer, got str"),
    ("giant n", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     b'"content": "x"}], "n": 100000}', 400, "invalid_request", "'n' must be between"),
    ("invalid utf-8", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     b'"content": "\xff\xfe"}]}', 400, "invalid_request", "not valid UTF-8"),
    ("lone surrogate", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     b'"content": "\\ud800"}]}', 400, "invalid_request", "unpaired surrogate"),
    ("NaN", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], '
     b'"temperature": NaN}', 400, "invalid_request", "NaN is not valid JSON"),
    ("unknown model", b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
     404, "model_not_found", "The model 'gpt-9' does not exist"),
]


@pytest.mark.parametrize(("name", "raw", "status", "code", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_body(small_stack: Stack, name: str, raw: bytes, status: int, code: str,
                  words: str) -> None:
    assert_error(post(small_stack, content=raw), status, code, words)


def test_deep_nesting_within_size_limit(small_stack: Stack) -> None:
    raw = b'{"model": "gpt-4o-mini", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}"
    assert_error(post(small_stack, content=raw), 400, "invalid_request", "nested too deeply")


def test_body_over_limit_is_413(small_stack: Stack) -> None:
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_error(post(small_stack, json=big), 413, "request_too_large", "exceeds the limit of 4096")


def test_wrong_content_type_is_415(small_stack: Stack) -> None:
    r = post(small_stack, content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type", "must be application/json")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope-nope-nope"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_missing_or_wrong_key_is_401(small_stack: Stack, headers: dict[str, str]) -> None:
    r = httpx.post(f"{small_stack.proxy_url}/v1/chat/completions", headers=headers,
                   json={"model": "gpt-4o-mini", "messages": OK_MSG})
    assert_error(r, 401, "invalid_api_key", "API key")
    assert "nope" not in r.text


def test_azure_style_api_key_header(small_stack: Stack) -> None:
    r = httpx.post(f"{small_stack.proxy_url}/v1/chat/completions", headers={"api-key": KEY},
                   json={"model": "gpt-4o-mini", "messages": OK_MSG})
    assert r.status_code == 200


def test_unknown_route_and_method_are_openai_errors(small_stack: Stack) -> None:
    assert_error(httpx.get(f"{small_stack.proxy_url}/v1/nothing"), 404, "not_found", "Not Found")
    r = httpx.get(f"{small_stack.proxy_url}/v1/chat/completions", headers=AUTH)
    assert_error(r, 405, "method_not_allowed", "Method Not Allowed")


def test_bad_embeddings_input(small_stack: Stack) -> None:
    r = httpx.post(f"{small_stack.proxy_url}/v1/embeddings", headers=AUTH,
                   json={"model": "text-embedding-3-small", "input": [1, "a"]})
    assert_error(r, 400, "invalid_request", "'input' must be a string")


def test_provider_garbage_is_502(small_stack: Stack) -> None:
    r = post(small_stack, json={"model": "gpt-4o-mini", "messages": OK_MSG},
             headers={"Authorization": "Bearer vk-garbage-key"})
    assert_error(r, 502, "upstream_error", "not JSON")


def test_provider_truncated_body_is_502(small_stack: Stack) -> None:
    r = post(small_stack, json={"model": "gpt-4o-mini", "messages": OK_MSG},
             headers={"Authorization": "Bearer vk-trunc-key"})
    # Failover classifies a cut body as a bad reply (retried, then summarised).
    assert_error(r, 502, "upstream_error", "bad_reply: provider sent a body that is not JSON")


def test_provider_truncated_stream_ends_with_error_event(small_stack: Stack) -> None:
    r = post(small_stack, json={"model": "gpt-4o-mini", "messages": OK_MSG, "stream": True},
             headers={"Authorization": "Bearer vk-trunc-key"})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"error"' in events[-1] and "without [DONE]" in events[-1]
    assert "data: [DONE]" not in r.text


def test_provider_down_is_502(small_stack: Stack) -> None:
    r = post(small_stack, json={"model": "gpt-4o-mini", "messages": OK_MSG},
             headers={"Authorization": "Bearer vk-down-key"})
    assert_error(r, 502, "upstream_error", "cannot connect to provider")


def test_no_500_for_policy_dir_listing(tmp_path: Path) -> None:
    """An empty policy directory is a clear startup error, not a crash later."""
    from proxy.tenants import PolicyError, load_configs

    with pytest.raises(PolicyError, match=r"no \*\.yaml policy files"):
        load_configs(tmp_path)


def test_provider_garbage_to_a_stream_request_is_502(small_stack: Stack) -> None:
    r = post(small_stack, json={"model": "gpt-4o-mini", "messages": OK_MSG, "stream": True},
             headers={"Authorization": "Bearer vk-garbage-key"})
    assert_error(r, 502, "upstream_error", "bad_reply: provider sent a body that is not JSON")
