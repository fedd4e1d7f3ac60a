"""Offline token counting with the tiktoken files litellm ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy import tokens
from proxy.tokens import (
    DEFAULT_ENCODING,
    PER_MESSAGE,
    REPLY_PRIMING,
    TokenCounter,
    encoding_name,
    message_texts,
    tokenizer_dir,
)
from tests.support import env_for_subprocess


def test_encodings_follow_the_model() -> None:
    assert encoding_name("gpt-4o-mini") == "o200k_base"
    assert encoding_name("openai/gpt-4o") == "o200k_base"
    assert encoding_name("gpt-4") == "cl100k_base"
    assert encoding_name("llama-3-70b") == DEFAULT_ENCODING
    # tiktoken knows p50k_base for this one, but litellm ships no copy: never download.
    assert encoding_name("text-davinci-003") == DEFAULT_ENCODING


def test_counts_equal_tiktoken() -> None:
    counter = TokenCounter()
    text = "Warden counts tokens offline, even for émoji 🚀 and code: def f(x): return x"
    import tiktoken  # TokenCounter pointed tiktoken at litellm's copies on first use

    assert counter.count(text, "gpt-4o") == len(tiktoken.get_encoding("o200k_base").encode(text))
    assert counter.count(text) == len(tiktoken.get_encoding("cl100k_base").encode(text))
    assert counter.count("") == 0


def test_messages_include_every_part_and_the_chat_overhead() -> None:
    counter = TokenCounter()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup",
                                                          "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "sunny"},
    ]
    assert message_texts(messages[2]) == ["lookup", '{"q": "x"}']
    expected = REPLY_PRIMING + sum(
        PER_MESSAGE + counter.count(" ".join(message_texts(m))) for m in messages)
    assert counter.count_messages(messages) == expected
    assert counter.count_messages("not a list") == 0


def test_embedding_inputs() -> None:
    counter = TokenCounter()
    assert counter.count_input([1, 2, 3]) == 3  # already token ids
    assert counter.count_input(["ab cd", "ef"]) == counter.count("ab cd") + counter.count("ef")
    assert counter.count_input(None) == 0


def test_no_network_and_no_litellm_import(tmp_path: Path) -> None:
    """Counting in a fresh process with networking disabled: the files come from
    litellm's package directory, and litellm itself is not imported."""
    assert tokenizer_dir() is not None
    code = (
        "import socket, sys\n"
        "def no_net(*a, **k): raise OSError('network disabled in this test')\n"
        "socket.socket.connect = no_net\n"
        "socket.create_connection = no_net\n"
        "from proxy.tokens import TokenCounter\n"
        "c = TokenCounter(); n = c.count('hello world', 'gpt-4o')\n"
        "assert not c.fallback and n == 2, n\n"
        "assert 'litellm' not in sys.modules\n"
        "print('ok')\n")
    # Even a cache dir set elsewhere (empty here) does not cause a download attempt.
    env = env_for_subprocess(TIKTOKEN_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_missing_tokenizer_files_degrade_to_a_character_estimate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "tokenizer_dir", lambda: None)
    counter = TokenCounter()
    assert counter.count("x" * 40, "gpt-4o") == 10
    assert counter.fallback
