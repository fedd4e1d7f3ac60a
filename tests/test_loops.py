"""The runaway-loop breaker: what counts as going in circles, and what the agent sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.policies.loops import find_loop
from tests.support import KEY, Stack, tenant_policy


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def said(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def called(name: str, args: dict[str, Any], n: int = 0) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": f"call_{n}", "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)}}]}


def result(text: str, n: int = 0) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{n}", "content": text}


def test_the_same_tool_call_k_times_is_a_loop() -> None:
    history = [user("weather?")]
    for i in range(3):
        # Key order differs each time; the arguments are the same.
        args = {"city": "Paris", "unit": "C"} if i % 2 else {"unit": "C", "city": "Paris"}
        history += [called("get_weather", args, i), result("22 degrees", i)]
    loop = find_loop(history, repeats=3, window=20)
    assert loop is not None and loop.kind == "tool_call" and loop.count == 3
    assert loop.what == 'get_weather({"city":"Paris","unit":"C"})'
    assert find_loop(history, repeats=4, window=20) is None


def test_different_arguments_are_progress() -> None:
    history = [user("weather?")]
    for i, city in enumerate(["Paris", "Rome", "Oslo", "Bonn"]):
        history += [called("get_weather", {"city": city}, i), result("ok", i)]
    assert find_loop(history, repeats=2, window=20) is None


def test_the_same_tool_error_k_times_is_a_loop() -> None:
    history = [user("fix it")]
    for i in range(3):
        history += [called("run", {"code": f"attempt {i}"}, i),
                    result("Error: ModuleNotFoundError: no module named 'pandas'", i)]
    loop = find_loop(history, repeats=3, window=20)
    assert loop is not None and loop.kind == "tool_error"
    # A success after the errors: the loop was left.
    history += [called("run", {"code": "pip install"}, 9), result("installed", 9)]
    assert find_loop(history, repeats=3, window=20) is None


def test_the_same_reply_k_times_is_a_loop_whitespace_aside() -> None:
    history = [user("go"), said("I will  check."), user("?"), said("I will check.\n"),
               user("??"), said(" I will check.")]
    loop = find_loop(history, repeats=3, window=20)
    assert loop is not None and loop.kind == "assistant_reply" and loop.count == 3


def test_only_the_latest_move_counts_and_only_in_the_window() -> None:
    history = [user("go")] + [said("same") for _ in range(3)] + [said("something new")]
    assert find_loop(history, repeats=3, window=20) is None
    history = [said("same"), user("a"), user("b"), said("same"), said("same")]
    assert find_loop(history, repeats=3, window=20) is not None
    assert find_loop(history, repeats=3, window=4) is None


def test_odd_messages_do_not_break_detection() -> None:
    history: list[Any] = ["not a message", {"role": "assistant", "tool_calls": "x"},
                          {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "tool", "content": None}]
    assert find_loop(history, repeats=2, window=20) is None


@pytest.fixture
def looping(tmp_path: Path) -> Iterator[Stack]:
    with Stack(lambda url: [tenant_policy(url, loops={"repeats": 3}),
                            tenant_policy(url, tenant="watch", key="vk-watch-key-0001",
                                          loops={"repeats": 3, "action": "flag"})],
               tmp_path) as s:
        yield s


LOOP = [user("book it")] + [m for i in range(3) for m in (
    called("book", {"id": 7}, i), result("Error: seat taken", i))]


def test_block_refuses_with_content_filter_naming_the_repetition(looping: Stack) -> None:
    client = openai.OpenAI(base_url=f"{looping.proxy_url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=LOOP)  # type: ignore[arg-type]
    assert caught.value.code == "content_filter"
    assert "the same tool call occurred 3 times" in caught.value.message
    assert 'book({"id":7})' in caught.value.message
    assert looping.mock_requests() == []
    metrics = httpx.get(f"{looping.proxy_url}/metrics").text
    assert 'warden_loop_detections_total{action="block",kind="tool_call",tenant="acme"} 1.0' \
        in metrics


def test_flag_lets_it_through_and_says_so(looping: Stack) -> None:
    r = httpx.post(f"{looping.proxy_url}/v1/chat/completions",
                   headers={"Authorization": "Bearer vk-watch-key-0001"},
                   json={"model": "gpt-4o-mini", "messages": LOOP})
    assert r.status_code == 200
    assert "loop" in r.headers["x-warden-flags"].split(",")
