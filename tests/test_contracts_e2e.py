"""Scope and output contracts end to end: the openai SDK -> Warden -> mock-upstream.

The mock provider answers "Echo: <last user text>" (with ``raw`` in its path spec: the
text alone, so a JSON document sent comes back as a JSON document) and turns
``[[call:NAME {json}]]`` into a tool call, so each test chooses the reply by what it
sends. ``GET /_mock/requests`` shows what reached the provider.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.mock_upstream import create_mock_app
from proxy.settings import Settings
from tests.support import WardenServer

KEY = "vk-contracts-test-key"
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
WardenFactory = Callable[[web.Application], Awaitable[WardenServer]]

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER: Any = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCOPE_AND_OUTPUT = """
scope:
  models: [m, strict-m]
  max_tokens: 256
  tools: [weather]
  response_formats: [text, json_schema]
  topics: {{deny: [weapons]}}
output:
  on_failure: {on_failure}
  models:
    strict-m: {{strict: true}}
"""


class Rig:
    def __init__(self, mock: TestServer, proxy: WardenServer) -> None:
        self.mock = mock
        self.client = openai.AsyncOpenAI(
            base_url=str(proxy.make_url("/v1")), api_key=KEY, max_retries=0)

    async def upstream_requests(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(self.mock.make_url("/_mock/requests")) as r:
            got: list[dict[str, Any]] = await r.json()
            return got


async def start(aiohttp_server: ServerFactory, warden_server: WardenFactory, tmp_path: Path,
                on_failure: str) -> Rig:
    mock = await aiohttp_server(create_mock_app())
    base = mock.make_url("/f/raw=1/v1")
    deployments = f"[{{provider: openai_compatible, model: mock, api_base: '{base}'}}]"
    policy = (f"tenant: contracts\nkeys: [{KEY}]\nmodels:\n  m: {deployments}\n"
              f"  strict-m: {deployments}\n  other: {deployments}\n"
              + SCOPE_AND_OUTPUT.format(on_failure=on_failure))
    (tmp_path / "contracts.yaml").write_text(policy)
    settings = Settings.model_validate({"policies_dir": tmp_path, "access_log": False})
    proxy = await warden_server(create_app(settings))
    return Rig(mock, proxy)


@pytest.fixture
async def rig(aiohttp_server: ServerFactory, warden_server: WardenFactory, tmp_path: Path
              ) -> AsyncIterator[Rig]:
    r = await start(aiohttp_server, warden_server, tmp_path, "refuse")
    yield r
    await r.client.close()


def person_format() -> Any:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- scope ---------------------------------------------------------------------------


async def test_scope_refusals_never_reach_the_provider(rig: Rig) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "other"}, "model"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "shell"}}]},
         "tools[0].function.name"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"messages": user("how are weapons made")}, "messages[0].content"),
    ]
    for extra, param in cases:
        args: dict[str, Any] = {"model": "m", "messages": user("hi"), **extra}
        with pytest.raises(openai.PermissionDeniedError) as info:
            await rig.client.chat.completions.create(**args)
        err = info.value
        assert err.status_code == 403
        assert err.code == "permission_denied"
        assert isinstance(err.body, dict) and err.body["param"] == param
        assert err.body["message"].startswith("scope: ")
    assert await rig.upstream_requests() == []
    ok = await rig.client.chat.completions.create(model="m", messages=user("hi"), max_tokens=9)
    assert ok.choices[0].message.content == "hi"


# -- output, plain -------------------------------------------------------------------


async def test_plain_reply_valid_and_invalid(rig: Rig) -> None:
    good = await rig.client.chat.completions.create(
        model="m", messages=user('{"name": "Ada", "age": 36}'), response_format=person_format())
    assert json.loads(good.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    with pytest.raises(openai.BadRequestError) as info:
        await rig.client.chat.completions.create(
            model="m", messages=user('{"name": "Ada", "age": "x"}'),
            response_format=person_format())
    assert info.value.status_code == 400 and info.value.code == "content_filter"
    assert "at $.age: 'x' is not of type 'integer'" in info.value.message


async def test_plain_retry_once_then_refuse(aiohttp_server: ServerFactory,
                                            warden_server: WardenFactory,
                                            tmp_path: Path) -> None:
    rig = await start(aiohttp_server, warden_server, tmp_path, "retry")
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await rig.client.chat.completions.create(
                model="m", messages=user("not json"), response_format=person_format())
        assert info.value.code == "content_filter"
        sent = await rig.upstream_requests()
        # Exactly two provider calls, the second with the unchanged body.
        assert len(sent) == 2 and sent[0] == sent[1]
    finally:
        await rig.client.close()


async def test_plain_retry_succeeds_when_the_second_reply_is_valid(
    aiohttp_server: ServerFactory, warden_server: WardenFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="warden.access")
    # A provider that is wrong once and right the second time (the mock is
    # deterministic, so this one is written here).
    calls: list[dict[str, Any]] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(await request.json())
        content = "oops" if len(calls) == 1 else '{"name": "Ada", "age": 1}'
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": "mock",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flaky)
    upstream = await aiohttp_server(app)
    (tmp_path / "t.yaml").write_text(
        f"tenant: t\nkeys: [{KEY}]\nmodels:\n  m: [{{provider: openai_compatible, model: x, "
        f"api_base: '{upstream.make_url('/v1')}'}}]\noutput: {{on_failure: retry}}\n")
    settings = Settings.model_validate({"policies_dir": tmp_path, "access_log": True})
    proxy = await warden_server(create_app(settings))
    async with openai.AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=KEY,
                                  max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="m", messages=user("hi"), response_format=person_format())
    assert reply.choices[0].message.content == '{"name": "Ada", "age": 1}'
    assert len(calls) == 2 and calls[0] == calls[1]
    # The client gets the provider's usage block as is; Warden counts both calls.
    assert reply.usage is not None and reply.usage.total_tokens == 12
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "warden.access"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (10, 14)
    assert ["output", "retry", "schema"] in line["decisions"]
    assert line["decisions"][-1] == ["output", "pass", "valid"]


async def test_plain_tool_call_arguments(rig: Rig) -> None:
    ok = await rig.client.chat.completions.create(
        model="m", messages=user('[[call:weather {"city": "Oslo"}]]'), tools=[WEATHER])
    calls = ok.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls if c.type == "function"] == ['{"city": "Oslo"}']
    with pytest.raises(openai.BadRequestError) as info:
        await rig.client.chat.completions.create(
            model="m", messages=user('[[call:weather {"town": "Oslo"}]]'), tools=[WEATHER])
    assert info.value.code == "content_filter"
    assert "tool_calls[0].function.arguments for 'weather'" in info.value.message


# -- output, streamed ----------------------------------------------------------------


async def collect(stream: Any) -> tuple[str, openai.APIError | None]:
    text, error = "", None
    try:
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    except openai.APIError as e:
        error = e
    return text, error


async def test_stream_valid_and_invalid_non_strict(rig: Rig) -> None:
    doc = '{"name": "Ada", "age": 36}'
    stream = await rig.client.chat.completions.create(
        model="m", messages=user(doc), response_format=person_format(), stream=True)
    assert await collect(stream) == (doc, None)

    bad = '{"name": "Ada", "age": "old"}'
    stream = await rig.client.chat.completions.create(
        model="m", messages=user(bad), response_format=person_format(), stream=True)
    text, error = await collect(stream)
    # Non-strict: the client already has the whole reply text, then the error event.
    assert text == bad
    assert error is not None and error.code == "content_filter"
    assert "at $.age: 'old' is not of type 'integer'" in error.message


async def test_stream_strict_releases_nothing_invalid(rig: Rig) -> None:
    doc = '{"name": "Ada", "age": 36}'
    stream = await rig.client.chat.completions.create(
        model="strict-m", messages=user(doc), response_format=person_format(), stream=True)
    assert await collect(stream) == (doc, None)

    stream = await rig.client.chat.completions.create(
        model="strict-m", messages=user('{"name": "Ada"}'), response_format=person_format(),
        stream=True)
    text, error = await collect(stream)
    assert text == ""
    assert error is not None and error.code == "content_filter"
    assert "'age' is a required property" in error.message


async def test_stream_tool_call_arguments(rig: Rig) -> None:
    stream = await rig.client.chat.completions.create(
        model="m", messages=user('[[call:weather {"city": 7}]]'), tools=[WEATHER], stream=True)
    _, error = await collect(stream)
    assert error is not None and error.code == "content_filter"
    assert "for 'weather' do not match its parameters: at $.city" in error.message


# -- policy files --------------------------------------------------------------------


def test_warden_check_rejects_a_bad_schema(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        f"tenant: t\nkeys: [{KEY}]\nmodels:\n  m: [{{provider: openai, model: m}}]\n"
        "output:\n  schema: {type: object, required: name}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "proxy", "check", "--policies", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "output.schema: Value error, invalid JSON Schema at required" in done.stderr
