"""The JSON access log: one parseable line per request, the fields it promises, and no
prompt or completion text unless the tenant opted in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.accesslog import BATCH, FLUSH_S, LOGGER, SLICE, AccessLog
from proxy.context import RequestContext
from proxy.mock_upstream import prompt_text, tokens
from proxy.tenants import Tenant, TenantConfig
from tests.support import KEY, Stack, env_for_subprocess, write_policies
from tests.telemetry_support import Refuser, chat, install, logged

SECRET_TEXT = "my passport number is X1234567"
OTHER_KEY = "vk-other-tenant-key"


def tenants(mock: str) -> list[dict[str, Any]]:
    dep = {"provider": "openai", "model": "gpt-4o-mini", "api_base": f"{mock}/v1",
           "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    quiet = {**dep, "api_base": f"{mock}/f/no_usage=1/v1"}
    return [
        {"tenant": "acme", "keys": [KEY], "models": {"chat": [dep], "quiet": [quiet]}},
        {"tenant": "opted", "keys": [OTHER_KEY], "log_prompts": True,
         "models": {"chat": [dep], "quiet": [quiet]}},
    ]


@pytest.fixture
def lstack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tenants, tmp_path, access_log=True) as s:
        install(s, "acme", Refuser())
        yield s


def test_one_line_per_request_with_the_promised_fields(
        lstack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    headers = {"X-Warden-Agent": "planner", "X-Warden-Conversation": "conv-77",
               "x-request-id": "req-plain-1"}
    assert chat(lstack, "chat", SECRET_TEXT, key=KEY, headers=headers).status_code == 200
    streamed = chat(lstack, "chat", SECRET_TEXT, key=KEY, stream=True)
    assert chat(lstack, "chat", "[[refuse:scope]]", key=KEY).status_code == 403
    records = logged(caplog, 3)
    assert len(records) == 3
    plain, stream, refused = records

    prompt, completion = tokens(prompt_text([{"content": SECRET_TEXT}])), \
        tokens(f"Echo: {SECRET_TEXT}")
    assert plain["request_id"] == "req-plain-1"
    assert (plain["tenant"], plain["model"], plain["operation"]) == ("acme", "chat", "chat")
    assert (plain["status"], plain["outcome"], plain["error_type"]) == (200, "ok", None)
    assert (plain["provider"], plain["deployment"]) == ("openai", "openai/gpt-4o-mini")
    assert [a[:3] for a in plain["attempts"]] == [["openai/gpt-4o-mini", 200, "ok"]]
    assert 0 < plain["attempts"][0][3] <= plain["latency_ms"]
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (prompt, completion)
    assert plain["tokens_estimated"] is False
    assert plain["cost_usd"] == pytest.approx(prompt * 1e-6 + completion * 2e-6)
    assert (plain["agent"], plain["conversation"]) == ("planner", "conv-77")
    assert plain["latency_ms"] >= plain["overhead_ms"] >= 0
    assert plain["ttft_ms"] is None and plain["stream"] is False

    assert stream["request_id"] == streamed.headers["x-request-id"]
    assert stream["stream"] is True and stream["ttft_ms"] > 0
    assert stream["chunks"] > 2 and stream["completion_tokens"] == completion
    assert stream["agent"] is None

    assert (refused["status"], refused["outcome"], refused["error_type"]) == \
        (403, "refused", "permission_denied")
    assert refused["decisions"] == [["scope", "block", "topic_denied"]]
    assert refused["attempts"] == [] and refused["cost_usd"] is None

    # No prompt or completion text for a tenant that did not opt in.
    for r in caplog.records:
        assert "passport" not in r.getMessage()
    assert "prompt" not in plain and "completion" not in plain


def test_log_prompts_opt_in_logs_what_the_provider_saw(
        lstack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert chat(lstack, "chat", SECRET_TEXT, key=OTHER_KEY).status_code == 200
    assert chat(lstack, "chat", SECRET_TEXT, key=OTHER_KEY, stream=True).status_code == 200
    plain, stream = logged(caplog, 2)
    for record in (plain, stream):
        assert record["tenant"] == "opted"
        assert record["prompt"] == [{"role": "user", "content": SECRET_TEXT}]
        assert record["completion"] == f"Echo: {SECRET_TEXT}"


def test_estimated_usage_is_flagged(lstack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert chat(lstack, "quiet", "how many tokens", key=KEY).status_code == 200
    assert chat(lstack, "quiet", "how many tokens", key=KEY, stream=True).status_code == 200
    for record in logged(caplog, 2):
        assert record["tokens_estimated"] is True
        assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
        assert record["cost_usd"] > 0


def test_unauthenticated_and_unrouted_lines(
        lstack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert chat(lstack, "chat", "x", key="vk-not-a-key-00").status_code == 401
    assert chat(lstack, "x" * 500, "x", key=KEY).status_code == 404
    unauth, unrouted = logged(caplog, 2)
    assert unauth["tenant"] is None and unauth["error_type"] == "invalid_api_key"
    assert unrouted["tenant"] == "acme" and unrouted["error_type"] == "model_not_found"
    assert len(unrouted["model"]) == 128  # free text in logs is truncated


def test_disabled_logger_costs_nothing_and_writes_nothing(
        lstack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert chat(lstack, "chat", "x", key=KEY).status_code == 200
    assert chat(lstack, "chat", "x", key=KEY).status_code == 200  # the first one is recorded
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_stream_sink_writes_in_batches_after_the_request() -> None:
    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    stream = Stream()
    log = AccessLog(stream=stream)
    cfg = TenantConfig.model_validate({"tenant": "t", "keys": ["vk-12345678"],
                                       "models": {"m": [{"provider": "openai", "model": "x"}]}})
    ctx = RequestContext(request_id="rid", operation="chat", status=200, model="m",
                         tenant=Tenant(config=cfg, policies=(), source=Path("t.yaml")))
    for _ in range(3):
        log.write(ctx, "ok", 0.01, 0.001)
    assert stream.getvalue() == ""  # nothing on the request path
    await asyncio.sleep(FLUSH_S * 2)
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["rid"] * 3
    assert stream.flushes == 1  # one write and one flush for the burst
    for _ in range(BATCH):  # a full batch is written from the next loop turn on,
        log.write(ctx, "ok", 0.01, 0.001)
    assert len(stream.getvalue().splitlines()) == 3
    written = [3]
    while written[-1] < 3 + BATCH:  # SLICE lines per turn: no turn holds the loop long
        await asyncio.sleep(0)
        written.append(len(stream.getvalue().splitlines()))
        assert written[-1] - written[-2] in (0, SLICE)  # never more in one turn
        assert len(written) <= 4 * BATCH // SLICE
    log.write(ctx, "ok", 0.01, 0.001)
    log.flush()  # what shutdown calls: everything at once
    assert len(stream.getvalue().splitlines()) == 4 + BATCH


def test_closed_stream_never_fails_a_request() -> None:
    stream = io.StringIO()
    stream.close()
    log = AccessLog(stream=stream)
    log.write(RequestContext(request_id="r", operation="chat"), "ok", 0.0, 0.0)
    log.flush()


@pytest.mark.slow
def test_warden_serve_prints_json_lines_on_stdout(lstack: Stack, tmp_path: Path) -> None:
    pdir = write_policies(tmp_path / "served", *tenants(lstack.mock_url))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--port", "0",
                             "--policies", str(pdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env_for_subprocess())
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split("port=")[1])
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {KEY}", "X-Warden-Agent": "critic"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        record = json.loads(proc.stdout.readline())  # flushed within FLUSH_S
        assert record["request_id"] == r.headers["x-request-id"]
        assert (record["agent"], record["tenant"], record["status"]) == ("critic", "acme", 200)
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_lines_that_orjson_refuses_are_still_written() -> None:
    from proxy.accesslog import _encode

    assert json.loads(_encode({"a": 1, "b": "é"})) == {"a": 1, "b": "é"}
    # A logged prompt may hold what orjson refuses; the line must still be written.
    assert json.loads(_encode({"prompt": "x\udfff", "seed": 2**70})) == {
        "prompt": "x\udfff", "seed": 2**70}
