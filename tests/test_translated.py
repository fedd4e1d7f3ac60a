"""Anthropic through litellm: an OpenAI-shaped request in, an OpenAI-shaped reply out."""

from __future__ import annotations

import openai

from tests.support import KEY, Stack, http_json

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a prime."}]


def test_anthropic_plain_round_trip(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50)
    assert reply.choices[0].message.content == "Echo: Name a prime."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    sent = stack.mock_requests()[-1]
    # litellm translated: the system prompt moved to Anthropic's top-level field.
    assert sent["model"] == "claude-3-5-haiku-latest"
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Name a prime."}]}] or sent["messages"][0]["role"] == "user"
    assert "system" in sent
    creds = http_json("GET", f"{stack.mock_url}/_mock/credentials")
    assert creds[-1] == "sk-ant-upstream-secret"


def test_anthropic_stream_round_trip(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Name a prime."
    assert any(c.usage and c.usage.completion_tokens > 0 for c in chunks)
    assert stack.mock_requests()[-1]["stream"] is True


def test_anthropic_stream_without_usage_hides_it(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key=KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="claude", messages=MESSAGES,
                                                 max_tokens=50, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "Echo: Name a prime."
