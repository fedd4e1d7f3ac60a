"""End to end: ``warden serve`` + ``warden mock-upstream`` as processes, the real openai
SDK and a real AG2 conversation. The mock's request log is what "the provider" saw."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.appkeys import SERVICES
from proxy.mock_upstream import create_mock_app
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KEY = "vk-pii-e2e-0001"
EMAIL = "maria.gonzalez@example.com"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
API_KEY = "sk-proj-Q7w8E9r0T1y2U3i4O5p6A7s8D9f0G1h2"
VALUES = (EMAIL, PHONE, CARD, IBAN, API_KEY)
FIRST = (f"Please update my profile. E-mail {EMAIL}, phone {PHONE}, card {CARD}, "
         f"IBAN {IBAN}. Use the API key {API_KEY} for the billing system.")

pytestmark = pytest.mark.slow


def policy_yaml(mock_port: int) -> str:
    base = f"http://127.0.0.1:{mock_port}"
    return (
        f"tenant: pii-e2e\nkeys: [{KEY}]\nmodels:\n"
        f"  gpt-4o-mini:\n    - provider: openai\n      model: gpt-4o-mini\n"
        f"      api_base: {base}/v1\n"
        # Streams cut into 23 pieces: placeholders land across chunk boundaries.
        f"  gpt-4o-stream:\n    - provider: openai\n      model: gpt-4o-mini\n"
        f"      api_base: {base}/f/chunks=23/v1\n"
        f"pii:\n  tier: default\n  phone_regions: [US, GB]\n"
    )


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    port: int


def start(args: list[str], marker: str, env: dict[str, str]) -> Proc:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # both servers print a READY line with the bound port
        lines.append(line)
        m = re.search(rf"{marker} port=(\d+)", line)
        if m:
            return Proc(proc, int(m.group(1)))
    proc.wait(timeout=5)
    raise AssertionError(f"{args[0]} did not start:\n{''.join(lines)}")


def stop(p: Proc) -> None:
    p.proc.terminate()
    try:
        p.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait(timeout=5)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "WARDEN_PII_SECRET": "e2e-shared-secret", "WARDEN_ACCESS_LOG": "false"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, list[Proc]]]:
    """One mock provider and two proxy processes (two "replicas")."""
    mock = start(["mock-upstream", "--host", "127.0.0.1", "--port", "0"], "MOCK_READY", env())
    policies = tmp_path_factory.mktemp("policies")
    (policies / "pii.yaml").write_text(policy_yaml(mock.port))
    proxies: list[Proc] = []
    try:
        for _ in range(2):
            proxies.append(start(["serve", "--host", "127.0.0.1", "--port", "0",
                                  "--policies", str(policies)], "WARDEN_READY", env()))
        yield mock, proxies
    finally:
        for p in [*proxies, mock]:
            stop(p)


def provider_log(mock: Proc) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{mock.port}/_mock/requests") as r:
        data = json.loads(r.read())
    return data if isinstance(data, list) else data["requests"]


def clear_log(mock: Proc) -> None:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{mock.port}/_mock/requests",
                                 method="DELETE")
    urllib.request.urlopen(req).close()


def assert_no_values(log: list[dict[str, Any]]) -> None:
    assert log, "the provider received nothing"
    raw = json.dumps(log, ensure_ascii=False)
    for value in VALUES:
        assert value not in raw, value


def client(proxy: Proc) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=KEY, max_retries=0)


def test_openai_sdk_plain_and_streamed(stack: tuple[Proc, list[Proc]]) -> None:
    mock, (proxy, _) = stack
    clear_log(mock)
    c = client(proxy)
    plain = c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{"role": "user", "content": FIRST}])
    text = plain.choices[0].message.content or ""
    streamed = "".join(
        (ev.choices[0].delta.content or "") if ev.choices else ""
        for ev in c.chat.completions.create(model="gpt-4o-stream", stream=True,
                                            messages=[{"role": "user", "content": FIRST}]))
    for value in VALUES:
        assert value in text
        assert value in streamed
    assert_no_values(provider_log(mock))


def test_tool_call_arguments_reach_the_agent_with_real_values(
        stack: tuple[Proc, list[Proc]]) -> None:
    mock, (proxy, _) = stack
    clear_log(mock)
    args = json.dumps({"to": EMAIL, "iban": IBAN})
    for model in ("gpt-4o-mini", "gpt-4o-stream"):
        message = f"send it [[call:send_mail {args}]]"
        c = client(proxy)
        if model == "gpt-4o-mini":
            reply = c.chat.completions.create(model=model,
                                              messages=[{"role": "user", "content": message}])
            got = reply.choices[0].message.tool_calls[0].function.arguments  # type: ignore[union-attr,index]
        else:
            got = ""
            for ev in c.chat.completions.create(model=model, stream=True,
                                                messages=[{"role": "user", "content": message}]):
                for call in (ev.choices[0].delta.tool_calls or []) if ev.choices else []:
                    got += call.function.arguments or "" if call.function else ""
        assert json.loads(got) == {"to": EMAIL, "iban": IBAN}, model
    assert_no_values(provider_log(mock))


def test_two_proxy_processes_send_the_same_pseudonyms(stack: tuple[Proc, list[Proc]]) -> None:
    mock, proxies = stack
    sent = []
    for proxy in proxies:
        clear_log(mock)
        client(proxy).chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": FIRST}])
        sent.append(provider_log(mock)[-1]["messages"][0]["content"])
    assert sent[0] == sent[1]
    assert "<EMAIL_ADDRESS_" in sent[0]


def test_ag2_conversation_never_leaks_and_agent_sees_real_values(
        stack: tuple[Proc, list[Proc]]) -> None:
    from autogen import AssistantAgent, UserProxyAgent

    mock, (proxy, _) = stack
    clear_log(mock)
    llm_config = {"config_list": [{"model": "gpt-4o-mini", "api_key": KEY,
                                   "base_url": f"http://127.0.0.1:{proxy.port}/v1"}],
                  "cache_seed": None}
    assistant = AssistantAgent("assistant", llm_config=llm_config)
    user = UserProxyAgent("user_proxy", human_input_mode="NEVER", code_execution_config=False,
                          max_consecutive_auto_reply=3, llm_config=llm_config)
    result = user.initiate_chat(assistant, message=FIRST, max_turns=3, silent=True)
    calls = provider_log(mock)
    assert len(calls) >= 3  # both agents called the model, the history resent each time
    assert_no_values(calls)
    replies = [m["content"] for m in result.chat_history if m.get("name") == "assistant"]
    assert replies and all(v in replies[0] for v in VALUES)
    # The history AG2 resends holds real values; what reached the provider never did.
    assert any(EMAIL in (m.get("content") or "") for m in result.chat_history[1:])


# -- fail closed, in-process (the analyzer is broken on purpose) ----------------------


async def test_analyzer_failure_is_a_503_and_the_provider_sees_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with TestClient(TestServer(create_mock_app())) as mock:
        (tmp_path / "pii.yaml").write_text(policy_yaml(mock.port or 0))
        app = create_app(Settings(policies_dir=tmp_path, pii_secret="x", access_log=False))
        engines = [v for k, v in app[SERVICES]._shared.items() if k.startswith("pii.engine")]
        assert engines

        def broken(text: str, **kw: Any) -> Any:
            raise RuntimeError("analyzer crashed")

        for engine in engines:
            monkeypatch.setattr(engine, "analyze", broken)
        async with TestClient(TestServer(app)) as proxy:
            resp = await proxy.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": FIRST}]})
            body = await resp.json()
        seen = await (await mock.get("/_mock/requests")).json()
    assert resp.status == 503
    assert body["error"]["code"] == "service_unavailable"
    assert "fails closed" in body["error"]["message"]
    assert (seen if isinstance(seen, list) else seen["requests"]) == []
