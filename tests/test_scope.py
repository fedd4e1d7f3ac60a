"""Scope policy: each refusal (status, code, param, message) and what passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.context import RequestContext
from proxy.errors import PermissionDenied
from proxy.metrics import Metrics
from proxy.policies import build_chain
from proxy.policies.scope import ScopeConfig, ScopePolicy, build, estimate_tokens
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import MemoryStore
from proxy.tenants import PolicyError, parse_policy_file


def policy(**config: Any) -> ScopePolicy:
    return ScopePolicy(ScopeConfig.model_validate(config))


def chat(**body: Any) -> RequestContext:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    return RequestContext(request_id="r1", operation="chat", body=body, model=body["model"])


async def refused(p: ScopePolicy, ctx: RequestContext) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as info:
        await p.on_request(ctx)
    err = info.value
    assert err.status == 403
    assert err.code == "permission_denied"
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.message.startswith("scope: ")
    assert ctx.decisions[-1].policy == "scope" and ctx.decisions[-1].action == "block"
    return err


async def test_empty_scope_allows_everything() -> None:
    ctx = chat(max_tokens=10**6, tools=[{"type": "function", "function": {"name": "x"}}])
    await policy().on_request(ctx)
    assert ctx.decisions == []


async def test_model_outside_allowed_list() -> None:
    p = policy(models=["gpt-4o-mini", "small"])
    await p.on_request(chat(model="small"))
    err = await refused(p, chat(model="gpt-4o"))
    assert err.param == "model"
    assert err.message == ("scope: model 'gpt-4o' is not allowed for this tenant "
                           "(allowed: gpt-4o-mini, small)")
    ctx = chat(model="gpt-4o")
    await refused(p, ctx)
    assert ctx.decisions[-1].reason == "model"


async def test_model_check_applies_to_embeddings_too() -> None:
    p = policy(models=["embed-small"], max_messages=1)
    ok = RequestContext(request_id="r", operation="embeddings", body={"input": "x"},
                        model="embed-small")
    await p.on_request(ok)
    bad = RequestContext(request_id="r", operation="embeddings", body={"input": "x"},
                         model="embed-large")
    assert (await refused(p, bad)).param == "model"


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cap(key: str) -> None:
    p = policy(max_tokens=512)
    await p.on_request(chat(**{key: 512}))
    await p.on_request(chat())  # not asking is not exceeding
    err = await refused(p, chat(**{key: 513}))
    assert err.param == key
    assert err.message == f"scope: {key}=513 exceeds the limit of 512"


async def test_max_tokens_not_a_number_is_refused() -> None:
    err = await refused(policy(max_tokens=512), chat(max_tokens="9999999"))
    assert err.param == "max_tokens"


async def test_max_messages() -> None:
    p = policy(max_messages=2)
    two = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    await p.on_request(chat(messages=two))
    err = await refused(p, chat(messages=[*two, {"role": "user", "content": "again"}]))
    assert err.param == "messages"
    assert err.message == "scope: 3 messages exceed the limit of 2"


async def test_max_input_tokens() -> None:
    p = policy(max_input_tokens=100)
    await p.on_request(chat(messages=[{"role": "user", "content": "word " * 40}]))
    err = await refused(p, chat(messages=[{"role": "user", "content": "word " * 200}]))
    assert err.param == "messages"
    assert "more than the limit of 100" in err.message
    # The message text itself is never echoed back.
    assert "word" not in err.message


def test_token_estimate_counts_parts_tools_and_framing() -> None:
    text = "x" * 400
    assert estimate_tokens([{"role": "user", "content": text}], None) == 100 + 4 + 3
    parts = [{"role": "user", "content": [{"type": "text", "text": text},
                                           {"type": "image_url", "image_url": {"url": "u"}}]}]
    assert estimate_tokens(parts, None) == 100 + 4 + 3
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": "b" * 400}}}]
    assert estimate_tokens([], tools) > 100
    # Non-ASCII text counts by UTF-8 bytes: errs towards more tokens, not fewer.
    assert estimate_tokens([{"role": "user", "content": "日本語" * 100}], None) > 200


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


async def test_tool_outside_allowed_list() -> None:
    p = policy(tools=["search", "fetch"])
    await p.on_request(chat(tools=[tool("search"), tool("fetch")]))
    err = await refused(p, chat(tools=[tool("search"), tool("delete_everything")]))
    assert err.param == "tools[1].function.name"
    assert err.message == ("scope: tool 'delete_everything' (tools[1].function.name) is not "
                           "allowed for this tenant (allowed: fetch, search)")


async def test_legacy_functions_and_forced_choice_are_checked() -> None:
    p = policy(tools=["search"])
    await p.on_request(chat(functions=[{"name": "search", "parameters": {}}]))
    err = await refused(p, chat(functions=[{"name": "search"}, {"name": "shell"}]))
    assert err.param == "functions[1].name"
    err = await refused(p, chat(tools=[tool("search")],
                                tool_choice={"type": "function", "function": {"name": "shell"}}))
    assert err.param == "tool_choice"
    err = await refused(p, chat(functions=[{"name": "search"}], function_call={"name": "shell"}))
    assert err.param == "function_call.name"
    # "auto" / "none" / "required" name no tool.
    await p.on_request(chat(tools=[tool("search")], tool_choice="required"))


async def test_empty_tool_list_allows_no_tools_and_unreadable_tools_are_refused() -> None:
    p = policy(tools=[])
    await p.on_request(chat())
    err = await refused(p, chat(tools=[tool("search")]))
    assert "(allowed: none)" in err.message
    err = await refused(policy(tools=["search"]), chat(tools=[{"type": "function"}]))
    assert "tool None" in err.message
    # A non-function tool kind is read by its own key, and must be allowed by name too.
    err = await refused(policy(tools=["search"]),
                        chat(tools=[{"type": "custom", "custom": {"name": "grep"}}]))
    assert err.param == "tools[0].custom.name"


async def test_long_tool_name_is_cut_in_the_refusal() -> None:
    name = "a" * 5000
    err = await refused(policy(tools=["search"]), chat(tools=[tool(name)]))
    assert len(err.message) < 250
    assert "a" * 40 + "..." in err.message


async def test_response_format_types() -> None:
    p = policy(response_formats=["json_schema", "json_object"])
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    await p.on_request(chat(response_format=schema))
    await p.on_request(chat(response_format={"type": "json_object"}))
    err = await refused(p, chat(response_format={"type": "text"}))
    assert err.param == "response_format.type"
    assert err.message == ("scope: response_format type 'text' is not allowed "
                           "(allowed: json_schema, json_object)")
    # No response_format is plain text, so a JSON-only tenant refuses it too.
    err = await refused(p, chat())
    assert "'text'" in err.message


async def test_topic_deny_is_whole_word_and_case_insensitive() -> None:
    p = policy(topics={"deny": ["weapons", "c++", "medical advice"]})
    await p.on_request(chat(messages=[{"role": "user", "content": "swordsmanship weaponsmith"}]))
    await p.on_request(chat(messages=[{"role": "user", "content": "I like c and c+"}]))
    err = await refused(p, chat(messages=[
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "ok"},
        {"role": "user", "content": "Tell me about WEAPONS please, secret text here"},
    ]))
    assert err.param == "messages[2].content"
    assert err.message == "scope: messages[2] mentions the denied topic 'weapons'"
    err = await refused(p, chat(messages=[{"role": "user", "content": "write C++ code"}]))
    assert "'c++'" in err.message
    err = await refused(p, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "I need Medical\n advice"}]}]))
    assert "'medical advice'" in err.message


async def test_topic_matching_is_caseless_in_the_unicode_sense() -> None:
    p = policy(topics={"deny": ["weapons", "Straße"]})
    err = await refused(p, chat(messages=[{"role": "user", "content": "WEAPON\u017f now"}]))
    assert "'weapons'" in err.message
    err = await refused(p, chat(messages=[{"role": "user", "content": "the STRASSE"}]))
    assert "'Straße'" in err.message
    await p.on_request(chat(messages=[{"role": "user", "content": "strassed weaponsmith"}]))


async def test_topic_roles_limit_what_is_read() -> None:
    p = policy(topics={"deny": ["weapons"]})
    # The system prompt may mention it; only user messages are read by default.
    await p.on_request(chat(messages=[{"role": "system", "content": "never discuss weapons"},
                                      {"role": "user", "content": "hi"}]))
    p = policy(topics={"deny": ["weapons"], "roles": ["user", "tool"]})
    tool_result = {"role": "tool", "content": "weapons", "tool_call_id": "1"}
    err = await refused(p, chat(messages=[tool_result]))
    assert err.param == "messages[0].content"


async def test_topic_allow_requires_one_mention() -> None:
    p = policy(topics={"allow": ["invoice", "billing"]})
    await p.on_request(chat(messages=[{"role": "user", "content": "about my Invoice"},
                                      {"role": "user", "content": "yes please"}]))
    err = await refused(p, chat(messages=[{"role": "user", "content": "write a poem"}]))
    assert err.param == "messages"
    assert err.message == ("scope: no message mentions an allowed topic "
                           "(allowed: invoice, billing)")


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="extra"):
        ScopeConfig.model_validate({"max_tokenz": 5})
    with pytest.raises(ValueError):
        ScopeConfig.model_validate({"response_formats": ["xml"]})
    with pytest.raises(ValueError, match="must not be empty"):
        ScopeConfig.model_validate({"topics": {"deny": [" "]}})


def test_policy_file_section_is_validated_and_built(tmp_path: Path) -> None:
    body = ("tenant: acme\nkeys: [sk-acme-12345]\nmodels:\n  m: [{provider: openai, model: m}]\n"
            "scope:\n  models: [m]\n  max_tokens: 0\n")
    path = tmp_path / "acme.yaml"
    path.write_text(body)
    with pytest.raises(PolicyError) as info:
        parse_policy_file(path)
    assert info.value.key == "scope.max_tokens"
    path.write_text(body.replace("max_tokens: 0", "max_tokens: 10"))
    cfg = parse_policy_file(path)
    services = Services(Settings.model_validate({}), MemoryStore(), Metrics())
    try:
        chain = build_chain(cfg, services)
    finally:
        services.close()
    assert [type(p) for p in chain] == [ScopePolicy]
    assert cfg.scope is not None and cfg.scope.models == ["m"]
    assert build(cfg.scope, services).config.max_tokens == 10
