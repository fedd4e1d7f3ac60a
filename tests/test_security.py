"""SECURITY.md's promises, each tested where no other test file already proves it.

- no SSRF: a request cannot choose where Warden connects (fast and translated paths);
- header hygiene: what the provider receives is Warden's own header set, never the
  agent's headers (no smuggled Host, Cookie, Authorization, CRLF);
- keys: stored and looked up as SHA-256 digests, compared with hmac.compare_digest;
- logs: neither the virtual key, nor a wrong key, nor prompt text reaches the logs.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import tenants
from tests.support import KEY, Stack, http_json, tenant_policy

AUTH = {"Authorization": f"Bearer {KEY}"}
REPLY = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "canary"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                              "total_tokens": 2}}).encode()


class Canary:
    """A loopback HTTP/1.1 server that records every raw request head it receives and
    answers with a fixed chat completion."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + str(len(REPLY)).encode()
                                 + b"\r\nConnection: close\r\n\r\n" + REPLY)
                except OSError:
                    continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


SSRF_FIELDS: dict[str, Any] = {
    "api_base": "{canary}/v1", "base_url": "{canary}/v1", "api_key": "sk-agent-chosen",
    "custom_llm_provider": "openai", "extra_headers": {"Host": "169.254.169.254"},
    "azure_endpoint": "{canary}", "api_version": "2024-10-21", "url": "{canary}",
    "deployment_id": "x", "litellm_params": {"api_base": "{canary}"},
}


def _ssrf_body(model: str, canary: Canary, stream: bool = False) -> dict[str, Any]:
    fields = json.loads(json.dumps(SSRF_FIELDS).replace("{canary}", canary.url))
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "stream": stream, **fields}


@pytest.mark.parametrize("model,stream", [("gpt-4o-mini", False), ("gpt-4o-mini", True),
                                          ("claude", False)])
def test_a_request_cannot_choose_the_upstream(stack: Stack, canary: Canary, model: str,
                                              stream: bool) -> None:
    """URL-ish fields in the body (fast path: forwarded as opaque JSON; translated path:
    dropped by an allowlist before litellm) never make Warden connect anywhere but the
    deployment's api_base from the policy file."""
    r = httpx.post(f"{stack.proxy_url}/v1/chat/completions", headers=AUTH, timeout=60,
                   json=_ssrf_body(model, canary, stream))
    assert r.status_code == 200, r.text
    assert "canary" not in r.text
    assert canary.connections == 0
    assert len(stack.mock_requests()) == 1  # it went to the policy's deployment


@pytest.mark.parametrize("model", ["http://127.0.0.1:{port}/v1", "../../etc/passwd",
                                   "gpt-4o-mini/../../x", "gpt-4o-mini@127.0.0.1"])
def test_a_model_name_is_a_route_key_never_a_url(stack: Stack, canary: Canary,
                                                 model: str) -> None:
    r = httpx.post(f"{stack.proxy_url}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": model.replace("{port}", str(canary.port)),
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert canary.connections == 0 and stack.mock_requests() == []


def test_only_wardens_own_headers_reach_the_provider(tmp_path: Path, canary: Canary) -> None:
    def policies(url: str) -> list[dict[str, Any]]:
        t = tenant_policy(url)
        t["models"]["gpt-4o-mini"][0]["api_base"] = f"{canary.url}/v1"
        return [t]

    hostile = {"Host": "169.254.169.254", "Cookie": "session=agent", "X-Forwarded-For": "1.2.3.4",
               "OpenAI-Organization": "org-agent", "x-request-id": "agent-id-1",
               "x-warden-agent": "planner", "Proxy-Authorization": "Basic YWdlbnQ=",
               "X-Upstream-Override": "http://169.254.169.254/"}
    with Stack(policies, tmp_path) as s:
        r = httpx.post(f"{s.proxy_url}/v1/chat/completions", timeout=30,
                       headers={**AUTH, **hostile},
                       json={"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
    assert len(canary.heads) == 1
    lines = canary.heads[0].split(b"\r\n")
    names = sorted(line.split(b":", 1)[0].lower().decode() for line in lines[1:])
    assert set(names) <= {"host", "content-type", "accept", "authorization", "content-length",
                          "user-agent", "accept-encoding", "connection"}, names
    head = canary.heads[0].decode("latin-1")
    assert f"host: 127.0.0.1:{canary.port}" in head.lower()
    assert "Authorization: Bearer sk-upstream-secret-openai" in head
    for value in [KEY, *hostile.values()]:
        assert value not in head, value


def test_keys_are_held_as_digests_and_compared_in_constant_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.metrics import Metrics
    from proxy.services import Services
    from proxy.settings import Settings
    from proxy.store import MemoryStore
    from tests.support import write_policies

    pdir = write_policies(tmp_path / "p", tenant_policy("http://127.0.0.1:9"))
    services = Services(settings=Settings(policies_dir=pdir), store=MemoryStore(),
                        metrics=Metrics())
    try:
        policy_set = tenants.load_policy_set(pdir, services)
    finally:
        services.close()
    # The lookup table holds 32-byte digests, never the key text.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in policy_set.by_key)
    assert KEY.encode() not in policy_set.by_key
    calls: list[tuple[bytes, bytes]] = []
    real = tenants.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", recording)
    assert policy_set.authenticate(KEY) is not None
    assert calls and all(len(a) == len(b) == 32 for a, b in calls)
    assert all(KEY.encode() not in (a, b) for a, b in calls)
    # A wrong key is refused (and never cached: guessing does not grow memory).
    assert policy_set.authenticate(KEY + "x") is None
    assert KEY + "x" not in policy_set._recent


def test_keys_and_prompts_never_reach_the_logs(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    secret_prompt = "my card is 4111 1111 1111 1111, mail alice@example.com"
    from proxy.accesslog import AccessLog
    from proxy.appkeys import SERVICES

    with Stack(lambda url: [tenant_policy(url)], tmp_path) as s, caplog.at_level(logging.DEBUG):
        assert s.app is not None
        s.app[SERVICES].metrics.access = AccessLog()  # Stack turns it off; on, to the logger
        ok = httpx.post(f"{s.proxy_url}/v1/chat/completions", headers=AUTH, timeout=30,
                        json={"model": "gpt-4o-mini",
                              "messages": [{"role": "user", "content": secret_prompt}]})
        assert ok.status_code == 200
        bad = httpx.post(f"{s.proxy_url}/v1/chat/completions", timeout=30,
                         headers={"Authorization": "Bearer vk-typo-of-a-real-key"},
                         json={"model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": secret_prompt}]})
        assert bad.status_code == 401
        assert "vk-typo" not in bad.text  # not echoed to the client either
        broken = httpx.post(f"{s.proxy_url}/v1/chat/completions", headers=AUTH, timeout=30,
                            content=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
                            + json.dumps(secret_prompt).encode())
        assert broken.status_code == 400
    access = [r for r in caplog.records if r.name == "warden.access"]
    assert len(access) >= 2  # the access log really was on
    text = caplog.text
    for secret in (KEY, "vk-typo-of-a-real-key", "4111", "alice@example.com",
                   "sk-upstream-secret-openai"):
        assert secret not in text, secret


def test_provider_credentials_are_not_in_any_reply(stack: Stack) -> None:
    """Every reply an agent can get (models, errors, a provider's own error) is free of
    the deployment's key."""
    stack.mock_faults(status=401)
    replies = [
        httpx.post(f"{stack.proxy_url}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        httpx.get(f"{stack.proxy_url}/v1/models", headers=AUTH),
        httpx.get(f"{stack.proxy_url}/readyz"),
        httpx.get(f"{stack.proxy_url}/metrics"),
        httpx.get(f"{stack.proxy_url}/openapi.json"),
    ]
    stack.mock_faults()
    assert http_json("GET", f"{stack.mock_url}/_mock/credentials")  # the key was sent up
    for r in replies:
        assert "sk-upstream-secret" not in r.text
        assert "WARDEN_TEST_OPENAI_KEY" not in r.text


def test_security_md_names_only_tests_that_exist() -> None:
    """Every proof SECURITY.md cites is a test function in the named file."""
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "SECURITY.md").read_text()
    cited = 0
    for m in re.finditer(r"(tests/[\w_]+\.py)((?:::[\w_]+|, ::[\w_]+)*)", text):
        names = re.findall(r"::([\w_]+)", m.group(2))
        source = (root / m.group(1)).read_text()
        for name in names:
            cited += 1
            assert re.search(rf"def {name}\(", source), f"{m.group(1)}::{name}"
    assert cited >= 30
