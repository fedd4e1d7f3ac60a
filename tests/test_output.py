"""Output contracts, driven through the Policy hooks with a RequestContext."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.context import RequestContext
from proxy.errors import BadRequest, ContentFiltered
from proxy.pipeline import Chain, Chunk, RetryUpstream
from proxy.policies.output import OutputConfig, OutputPolicy
from proxy.policies.scope import ScopeConfig
from proxy.schemas import ValidatorCache
from proxy.tenants import PolicyError, parse_policy_file

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def policy(cache: ValidatorCache | None = None, **config: Any) -> OutputPolicy:
    cache = cache if cache is not None else ValidatorCache()
    return OutputPolicy(OutputConfig.model_validate(config), cache)


def chat(**body: Any) -> RequestContext:
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return RequestContext(request_id="r", operation="chat", body=body, model=body["model"])


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


def weather_tool() -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": "weather", "parameters": WEATHER_PARAMS}}


def reply(content: str | None, **message: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": content, **message}}]}


def call(name: str, arguments: str, i: int = 0) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def content_chunks(text: str, size: int = 7) -> list[Chunk]:
    chunks: list[Chunk] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for i in range(0, len(text), size):
        chunks.append({"choices": [{"index": 0, "delta": {"content": text[i:i + size]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    return chunks


def tool_call_chunks(name: str, arguments: str) -> list[Chunk]:
    first = {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": name, "arguments": ""}}
    chunks: list[Chunk] = [{"choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "tool_calls": [first]}}]}]
    for i in range(0, len(arguments), 5):
        piece = {"index": 0, "function": {"arguments": arguments[i:i + 5]}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return chunks


async def stream(p: OutputPolicy, ctx: RequestContext, chunks: list[Chunk]) -> list[Chunk]:
    """What the client receives: chunks passed on plus the end-of-stream release."""
    chain = Chain([p])
    await chain.request(ctx)
    sent: list[Chunk] = []
    for chunk in chunks:
        sent.extend(chain.chunk(ctx, chunk))
    sent.extend(await chain.stream_end(ctx))
    return sent


async def filtered(coro: Any) -> ContentFiltered:
    with pytest.raises(ContentFiltered) as info:
        await coro
    err = info.value
    assert err.status == 400 and err.code == "content_filter"
    assert err.body()["error"]["code"] == "content_filter"
    return err


# -- plain replies -----------------------------------------------------------------


async def test_no_contract_means_no_state_and_no_checks() -> None:
    p = policy()
    ctx = chat()
    await p.on_request(ctx)
    assert ctx.state == {}
    await p.on_response(ctx, reply("not json at all"))
    assert p.on_chunk(ctx, {"choices": []}) == [{"choices": []}]


async def test_request_json_schema_valid_reply_passes_unchanged() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    body = reply(json.dumps({"name": "Ada", "age": 36}))
    before = json.dumps(body)
    await p.on_response(ctx, body)
    assert json.dumps(body) == before
    assert ctx.decisions[-1].action == "pass"


async def test_request_json_schema_invalid_reply_is_refused_with_path_and_reason() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    err = await filtered(p.on_response(ctx, reply('{"name": "Ada", "age": "old"}')))
    assert err.message == ("output: the reply breaks its contract: choices[0].message.content "
                           "does not match response_format.json_schema: at $.age: 'old' is "
                           "not of type 'integer'")
    assert ctx.decisions[-1].action == "block"


async def test_reply_that_is_not_json() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    err = await filtered(p.on_response(ctx, reply("Echo: hello")))
    assert "choices[0].message.content: not valid JSON (Expecting value" in err.message


async def test_json_object_mode_requires_an_object() -> None:
    p = policy()
    ctx = chat(response_format={"type": "json_object"})
    await p.on_request(ctx)
    await p.on_response(ctx, reply('{"anything": [1, 2]}'))
    err = await filtered(p.on_response(ctx, reply("[1, 2]")))
    assert "json_object: at $: [1, 2] is not of type 'object'" in err.message


async def test_request_schemas_off_ignores_response_format() -> None:
    p = policy(request_schemas=False)
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    await p.on_response(ctx, reply("free text"))


async def test_tenant_schema_applies_without_response_format() -> None:
    p = policy(schema={"type": "object", "required": ["answer"]})
    ctx = chat()
    await p.on_request(ctx)
    await p.on_response(ctx, reply('{"answer": 42}'))
    err = await filtered(p.on_response(ctx, reply('{"other": 1}')))
    assert "does not match the tenant's schema: at $: 'answer' is a required property" in (
        err.message)


async def test_per_model_schema_overrides_the_tenant_default() -> None:
    p = policy(models={"strict-model": {"schema": {"type": "array"}}})
    free = chat(model="m")
    await p.on_request(free)
    assert free.state == {}
    ctx = chat(model="strict-model")
    await p.on_request(ctx)
    await p.on_response(ctx, reply("[1]"))
    await filtered(p.on_response(ctx, reply("{}")))


async def test_structured_output_refusal_passes() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    await p.on_response(ctx, reply(None, refusal="I can't help with that."))


async def test_error_text_is_truncated() -> None:
    p = policy(max_error_chars=80)
    ctx = chat(response_format=json_schema_format({"type": "string", "maxLength": 1}))
    await p.on_request(ctx)
    err = await filtered(p.on_response(ctx, reply(json.dumps("x" * 10000))))
    assert len(err.message) == 80 and err.message.endswith("...")


async def test_unresolvable_ref_fails_closed() -> None:
    p = policy()
    schema = {"$ref": "https://schemas.invalid/person.json"}
    ctx = chat(response_format=json_schema_format(schema))
    await p.on_request(ctx)
    err = await filtered(p.on_response(ctx, reply("{}")))
    assert "cannot be resolved" in err.message


async def test_hostile_request_pattern_costs_one_request_not_the_event_loop() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format({"type": "string", "pattern": "^(a|aa)+$"}))
    await p.on_request(ctx)
    started = time.perf_counter()
    err = await filtered(p.on_response(ctx, reply(json.dumps("a" * 40 + "!"))))
    # Python's re: ~40 s (measured 0.3 s at 30 characters, x1.6 per character).
    assert time.perf_counter() - started < 1.0
    assert "took too long to evaluate" in err.message


async def test_invalid_request_schema_is_a_bad_request() -> None:
    p = policy()
    ctx = chat(response_format=json_schema_format({"type": "no-such-type"}))
    with pytest.raises(BadRequest) as info:
        await p.on_request(ctx)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    assert info.value.param == "response_format.json_schema.schema"
    assert "is not a valid JSON Schema" in info.value.message


# -- retry once ----------------------------------------------------------------------


async def test_retry_once_then_refuse() -> None:
    p = policy(on_failure="retry")
    ctx = chat(response_format=json_schema_format(PERSON))
    await p.on_request(ctx)
    with pytest.raises(RetryUpstream):
        await p.on_response(ctx, reply("not json"))
    assert ctx.decisions[-1].action == "retry"
    # The second reply is judged on its own: valid passes ...
    await p.on_response(ctx, reply('{"name": "Ada", "age": 1}'))
    # ... and an invalid one is refused, never retried a second time.
    await filtered(p.on_response(ctx, reply("still not json")))
    assert [d.action for d in ctx.decisions] == ["retry", "pass", "block"]


async def test_per_model_on_failure_override() -> None:
    p = policy(on_failure="retry", models={"m": {"on_failure": "refuse"}})
    ctx = chat(response_format={"type": "json_object"})
    await p.on_request(ctx)
    await filtered(p.on_response(ctx, reply("x")))


# -- tool-call arguments -----------------------------------------------------------


async def test_tool_call_arguments_valid_and_invalid() -> None:
    p = policy()
    ctx = chat(tools=[weather_tool()])
    await p.on_request(ctx)
    await p.on_response(ctx, reply(None, tool_calls=[call("weather", '{"city": "Oslo"}')]))
    err = await filtered(p.on_response(ctx, reply(None, tool_calls=[
        call("weather", '{"city": "Oslo"}', 0), call("weather", '{"days": 3}', 1)])))
    assert err.message == ("output: the reply breaks its contract: choices[0].message."
                           "tool_calls[1].function.arguments for 'weather' do not match its "
                           "parameters: at $: 'city' is a required property")
    err = await filtered(p.on_response(ctx, reply(None, tool_calls=[call("weather", "{oops")])))
    assert "for 'weather': not valid JSON" in err.message


async def test_tool_call_to_an_undeclared_tool_is_refused() -> None:
    p = policy()
    ctx = chat(tools=[weather_tool()])
    await p.on_request(ctx)
    err = await filtered(p.on_response(ctx, reply(None, tool_calls=[call("rm_rf", "{}")])))
    assert "call an undeclared tool 'rm_rf'" in err.message


async def test_legacy_function_call_and_empty_arguments() -> None:
    p = policy()
    ctx = chat(functions=[{"name": "ping"}, {"name": "weather", "parameters": WEATHER_PARAMS}])
    await p.on_request(ctx)
    await p.on_response(ctx, reply(None, function_call={"name": "ping", "arguments": ""}))
    err = await filtered(p.on_response(
        ctx, reply(None, function_call={"name": "weather", "arguments": '{"city": 5}'})))
    assert "function_call.function.arguments for 'weather'" in err.message


async def test_tool_calling_reply_skips_the_content_contract() -> None:
    p = policy(schema={"type": "object"})
    ctx = chat(tools=[weather_tool()])
    await p.on_request(ctx)
    await p.on_response(ctx, reply("Let me look.", tool_calls=[call("weather", '{"city":"x"}')]))


async def test_tool_arguments_off() -> None:
    p = policy(tool_arguments=False)
    ctx = chat(tools=[weather_tool()])
    await p.on_request(ctx)
    assert ctx.state == {}


async def test_invalid_tool_parameters_schema_is_a_bad_request() -> None:
    p = policy()
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
    with pytest.raises(BadRequest) as info:
        await p.on_request(chat(tools=[bad]))
    assert info.value.param == "tools[0].function.parameters"


# -- streams -----------------------------------------------------------------------


async def test_stream_non_strict_valid_passes_every_chunk_through() -> None:
    p = policy()
    ctx = chat(stream=True, response_format=json_schema_format(PERSON))
    chunks = content_chunks('{"name": "Ada", "age": 36}')
    assert await stream(p, ctx, chunks) == chunks


async def test_stream_non_strict_invalid_has_sent_the_text_then_raises() -> None:
    p = policy(on_failure="retry")  # a stream that already sent text is never retried
    ctx = chat(stream=True, response_format=json_schema_format(PERSON))
    chain = Chain([p])
    await chain.request(ctx)
    chunks = content_chunks('{"name": "Ada", "age": -1}')
    sent = [c for chunk in chunks for c in chain.chunk(ctx, chunk)]
    assert sent == chunks  # the client has everything but [DONE] ...
    err = await filtered(chain.stream_end(ctx))  # ... then the error event
    assert "at $.age: -1 is less than the minimum of 0" in err.message


async def test_stream_strict_holds_everything_until_valid() -> None:
    p = policy(strict=True)
    ctx = chat(stream=True, response_format=json_schema_format(PERSON))
    chain = Chain([p])
    await chain.request(ctx)
    chunks = content_chunks('{"name": "Ada", "age": 36}')
    assert [c for chunk in chunks for c in chain.chunk(ctx, chunk)] == []
    assert await chain.stream_end(ctx) == chunks


async def test_stream_strict_invalid_releases_nothing() -> None:
    p = policy(strict=True)
    ctx = chat(stream=True, response_format=json_schema_format(PERSON))
    chain = Chain([p])
    await chain.request(ctx)
    for chunk in content_chunks('{"name": "Ada"}'):
        assert chain.chunk(ctx, chunk) == []
    err = await filtered(chain.stream_end(ctx))
    assert "'age' is a required property" in err.message


async def test_stream_strict_with_retry_configured_refuses() -> None:
    # The stream's head is already sent when the reply ends: no second attempt.
    p = policy(strict=True, on_failure="retry")
    ctx = chat(stream=True, response_format=json_schema_format(PERSON))
    await filtered(stream(p, ctx, content_chunks("nope")))
    assert [d.action for d in ctx.decisions] == ["block"]


async def test_stream_tool_call_arguments() -> None:
    p = policy()
    ctx = chat(stream=True, tools=[weather_tool()])
    ok = tool_call_chunks("weather", '{"city": "Oslo", "days": 2}')
    assert await stream(p, ctx, ok) == ok
    ctx = chat(stream=True, tools=[weather_tool()])
    err = await filtered(stream(p, ctx, tool_call_chunks("weather", '{"days": "two"}')))
    assert "tool_calls[0].function.arguments for 'weather'" in err.message


async def test_stream_tool_call_skips_content_contract() -> None:
    p = policy(schema={"type": "object"}, tool_arguments=False)
    ctx = chat(stream=True, tools=[weather_tool()])
    chunks = tool_call_chunks("anything", "{}")
    assert await stream(p, ctx, chunks) == chunks


async def test_stream_several_choices_are_checked_apart() -> None:
    p = policy()
    ctx = chat(stream=True, n=2, response_format={"type": "json_object"})
    chunks: list[Chunk] = [
        {"choices": [{"index": 0, "delta": {"content": "{}"}}]},
        {"choices": [{"index": 1, "delta": {"content": "[]"}}]},
    ]
    err = await filtered(stream(p, ctx, chunks))
    assert "choices[1].content does not match" in err.message


async def test_stream_with_no_reply_fails() -> None:
    p = policy()
    ctx = chat(stream=True, response_format={"type": "json_object"})
    err = await filtered(stream(p, ctx, [{"choices": [], "usage": {}}]))
    assert "carried no reply" in err.message


async def test_stream_too_large_to_validate_is_refused_mid_stream() -> None:
    p = policy(strict=True, max_reply_bytes=1024)
    ctx = chat(stream=True, response_format={"type": "json_object"})
    with pytest.raises(ContentFiltered, match="exceeds 1024 bytes"):
        await stream(p, ctx, content_chunks("x" * 2000, size=100))


# -- validators and config -----------------------------------------------------------


async def test_policies_share_the_cache_across_requests() -> None:
    cache = ValidatorCache()
    p = policy(cache)
    for _ in range(3):
        await p.on_request(chat(tools=[weather_tool()],
                                response_format=json_schema_format(PERSON)))
    assert len(cache) == 2


def test_bad_tenant_schema_is_a_policy_error(tmp_path: Path) -> None:
    body = ("tenant: acme\nkeys: [sk-acme-12345]\nmodels:\n  m: [{provider: openai, model: m}]\n"
            "output:\n  schema: {type: object, properties: {age: {type: integr}}}\n")
    path = tmp_path / "acme.yaml"
    path.write_text(body)
    with pytest.raises(PolicyError) as info:
        parse_policy_file(path)
    assert info.value.key == "output.schema"
    assert "invalid JSON Schema at properties/age/type" in info.value.reason
    path.write_text(body.replace("integr", "integer").replace(
        "output:\n", "output:\n  models:\n    m: {schema: {minimum: x}}\n"))
    with pytest.raises(PolicyError) as info:
        parse_policy_file(path)
    assert info.value.key == "output.models.m.schema"
    # YAML turns an unquoted date into a date object: not JSON, so not a schema.
    path.write_text(body.replace("{type: integr}", "{const: 2024-01-01}"))
    with pytest.raises(PolicyError, match="not plain JSON"):
        parse_policy_file(path)
    path.write_text(body.replace("integr", "integer"))
    cfg = parse_policy_file(path)
    assert cfg.output is not None and cfg.output.reply_schema is not None


def test_documented_examples_are_valid() -> None:
    """The YAML examples in docs/policies.md load (docs that do not parse mislead)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    sections = {key: value for block in blocks for key, value in block.items()}
    assert set(sections) >= {"scope", "output"}
    ScopeConfig.model_validate(sections["scope"])
    cfg = OutputConfig.model_validate(sections["output"])
    assert cfg.models["gpt-4o-mini"].reply_schema is not None
