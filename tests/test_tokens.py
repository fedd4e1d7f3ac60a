"""Prompt token counting: offline tiktoken, cached per text, a safe estimate without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken

from proxy.context import RequestContext
from proxy.tenants import Deployment
from proxy.tokens import (
    FOREIGN_MARGIN,
    IMAGE_TOKENS,
    TokenCounter,
    encoding_for,
    estimate,
    tokenizer_dir,
)

TEXT = "The quick brown fox jumps over the lazy dog, twice; then naps."


def test_litellm_ships_the_encodings() -> None:
    folder = tokenizer_dir()
    assert folder is not None and folder.is_dir()
    assert any(p.stat().st_size > 1_000_000 for p in folder.iterdir() if p.is_file())


def test_encoding_choice() -> None:
    assert encoding_for("gpt-4o-mini-2024-07-18") == ("o200k_base", 1.0)
    assert encoding_for("azure/gpt-4") == ("cl100k_base", 1.0)
    assert encoding_for("claude-3-5-haiku-latest") == ("cl100k_base", FOREIGN_MARGIN)


async def test_counts_match_tiktoken_and_are_cached() -> None:
    counter = TokenCounter()
    await counter.prepare("o200k_base")
    expected = len(tiktoken.get_encoding("o200k_base").encode_ordinary(TEXT))
    assert counter.count("o200k_base", TEXT) == expected
    assert counter.count("o200k_base", TEXT) == expected  # from the cache
    body = {"messages": [{"role": "system", "content": TEXT},
                         {"role": "user", "name": "bob", "content": [
                             {"type": "text", "text": TEXT},
                             {"type": "image_url", "image_url": {"url": "data:,"}}]},
                         {"role": "assistant", "tool_calls": [
                             {"id": "c1", "type": "function",
                              "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}
    total = counter.chat_prompt("o200k_base", body)
    # Two copies of TEXT, one image, and per-message overheads on top.
    assert total > 2 * expected + IMAGE_TOKENS
    assert total < 2 * expected + IMAGE_TOKENS + 60


async def test_without_the_encoding_file_it_estimates_and_downloads_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty: nothing to load
    monkeypatch.setattr("tiktoken.load.read_file", _no_network)
    counter = TokenCounter()
    await counter.prepare("cl100k_base")
    assert counter.count("cl100k_base", TEXT) == len(TEXT.encode()) // 3 + 1


def _no_network(blobpath: str) -> bytes:
    raise AssertionError(f"tried to download {blobpath}")


async def test_estimate_is_worst_case_and_kept_on_the_context() -> None:
    ctx = RequestContext(request_id="r", operation="chat", model="m", body={
        "model": "m", "messages": [{"role": "user", "content": TEXT}], "max_tokens": 50,
        "n": 3}, deployments=(Deployment(provider="openai", model="gpt-4o"),))
    counter = TokenCounter()
    found = await estimate(ctx, counter, default_max_output=999)
    assert found.max_output == 150
    assert found.prompt == counter.chat_prompt("o200k_base", ctx.body)
    ctx.body["messages"].append({"role": "user", "content": TEXT})
    assert await estimate(ctx, counter, default_max_output=999) is found

    embed = RequestContext(request_id="e", operation="embeddings", model="e",
                           body={"model": "e", "input": [TEXT, [1, 2, 3]]})
    found = await estimate(embed, counter, default_max_output=999)
    assert found.max_output == 0
    assert found.prompt > 3


async def test_a_request_an_output_contract_may_retry_reserves_two_calls() -> None:
    from proxy.tenants import Tenant, TenantConfig

    config = TenantConfig.model_validate({
        "tenant": "acme", "keys": ["vk-tokens-key-1"],
        "models": {"m": [{"provider": "openai", "model": "gpt-4o"}]},
        "output": {"schema": {"type": "object"}, "on_failure": "retry"}})
    tenant = Tenant(config=config, policies=(), source=Path("x"))

    def ctx(stream: bool) -> RequestContext:
        return RequestContext(request_id="r", operation="chat", model="m", stream=stream,
                              tenant=tenant, deployments=tenant.routes("m") or (),
                              body={"model": "m", "messages": [{"role": "user",
                                                                "content": TEXT}],
                                    "max_tokens": 10})

    counter = TokenCounter()
    plain = await estimate(ctx(False), counter, default_max_output=999)
    streamed = await estimate(ctx(True), counter, default_max_output=999)
    assert plain.max_output == 20 and streamed.max_output == 10  # streams are never retried
    assert plain.prompt == 2 * streamed.prompt
