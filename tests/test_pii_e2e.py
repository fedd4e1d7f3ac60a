"""End to end: ``warden serve`` + ``warden mock-upstream`` as processes, the real openai
SDK and a real AG2 conversation. The mock's request log is what "the provider" saw."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.appkeys import SERVICES
from tests.support import Stack, env_for_subprocess, http_json, spawn, tenant_policy

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


def pii_tenant(mock_url: str) -> dict[str, Any]:
    tenant = tenant_policy(mock_url, tenant="pii-e2e", key=KEY,
                           pii={"tier": "default", "phone_regions": ["US", "GB"]})
    # Streams cut into 23 pieces, so placeholders land across chunk boundaries.
    tenant["models"]["gpt-4o-stream"] = [{"provider": "openai", "model": "gpt-4o-mini",
                                          "api_base": f"{mock_url}/f/chunks=23/v1"}]
    return tenant


@dataclass
class Proc:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, list[Proc]]]:
    """``warden mock-upstream`` and two ``warden serve`` processes (two "replicas")."""
    import yaml

    env = env_for_subprocess(WARDEN_PII_SECRET="e2e-shared-secret", WARDEN_ACCESS_LOG="false")
    policies = tmp_path_factory.mktemp("policies")
    with spawn("mock-upstream", "--host", "127.0.0.1", "--port", "0", ready="MOCK_READY",
               env=env) as (_, mock_port):
        mock = Proc(mock_port)
        (policies / "pii.yaml").write_text(yaml.safe_dump(pii_tenant(f"{mock.url}")))
        args = ("serve", "--host", "127.0.0.1", "--port", "0", "--policies", str(policies))
        with spawn(*args, env=env) as (_, p1), spawn(*args, env=env) as (_, p2):
            yield mock, [Proc(p1), Proc(p2)]


def provider_log(mock: Proc) -> list[dict[str, Any]]:
    data = http_json("GET", f"{mock.url}/_mock/requests")
    return data if isinstance(data, list) else data["requests"]  # type: ignore[no-any-return]


def clear_log(mock: Proc) -> None:
    http_json("DELETE", f"{mock.url}/_mock/requests")


def assert_no_values(log: list[dict[str, Any]]) -> None:
    assert log, "the provider received nothing"
    raw = json.dumps(log, ensure_ascii=False)
    for value in VALUES:
        assert value not in raw, value


def client(proxy: Proc) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{proxy.url}/v1", api_key=KEY, max_retries=0)


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
                                   "base_url": f"{proxy.url}/v1"}],
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


# -- fail closed (the analyzer is broken on purpose, so in-process) -------------------


def test_analyzer_failure_is_a_503_and_the_provider_sees_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Stack(lambda url: [pii_tenant(url)], tmp_path, pii_secret="x") as s:
        assert s.app is not None
        engines = [v for k, v in s.app[SERVICES]._shared.items() if k.startswith("pii.engine")]
        assert engines

        def broken(text: str, **kw: Any) -> Any:
            raise RuntimeError("analyzer crashed")

        for engine in engines:
            monkeypatch.setattr(engine, "analyze", broken)
        c = openai.OpenAI(base_url=f"{s.proxy_url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{"role": "user", "content": FIRST}])
        assert err.value.status_code == 503
        assert "fails closed" in str(err.value)
        assert s.mock_requests() == []
