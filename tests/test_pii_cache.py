"""Scan cache: bounded LRU of spans; a conversation costs the scans of its new messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.pii.cache import ScanCache, Span
from proxy.pii.scanner import Scanner
from proxy.policies.pii import STATE
from proxy.services import Services
from tests.pii_fixtures import chat, policy, services  # noqa: F401


def test_lru_evicts_the_least_recently_used() -> None:
    cache = ScanCache(2)
    a, b, c = (cache.key("s", t) for t in ("a", "b", "c"))
    cache.put(a, ())
    cache.put(b, (Span(0, 1, "X", 1.0),))
    assert cache.get(a) == ()  # a is now the most recent
    cache.put(c, ())
    assert cache.get(b) is None
    assert cache.get(a) == () and cache.get(c) == ()
    assert len(cache) == 2


def test_keys_are_scoped_salted_and_hold_no_text() -> None:
    one, two = ScanCache(10), ScanCache(10)
    assert one.key("s1", "ann@example.com") != one.key("s2", "ann@example.com")
    assert one.key("s1", "ann@example.com") != two.key("s1", "ann@example.com")  # salt
    one.put(one.key("s1", "ann@example.com"), (Span(0, 15, "EMAIL_ADDRESS", 1.0),))
    assert "ann" not in repr(one._entries)


def test_size_zero_disables_caching() -> None:
    cache = ScanCache(0)
    cache.put(cache.key("s", "x"), ())
    assert len(cache) == 0


def turn_text(t: int) -> str:
    return f"Turn {t}: please email ann{t}@example.com or call 212-555-{t:04d} about it."


async def test_twenty_turn_conversation_scans_exactly_the_new_messages(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    analysed: list[str] = []
    real = Scanner.analyze

    def spy(self: Scanner, text: str) -> Any:
        analysed.append(text)
        return real(self, text)

    monkeypatch.setattr(Scanner, "analyze", spy)
    pol = policy(services)
    pol.cache = ScanCache(1000)  # this test's own cache, unaffected by other tests
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Reply TERMINATE when done."}]
    previous_sent: list[dict[str, Any]] = []
    seen: set[str] = set()
    for t in range(1, 21):
        history.append({"role": "user", "name": "user_proxy", "content": turn_text(t)})
        analysed.clear()
        ctx = chat(*copy.deepcopy(history))
        await pol.on_request(ctx)
        texts = {m["content"] for m in history} | {m["name"] for m in history if "name" in m}
        assert sorted(analysed) == sorted(texts - seen), t  # exactly the unseen ones
        assert len(analysed) <= 3 and (t < 3 or len(analysed) == 2)  # flat in t
        seen |= texts
        sent = ctx.body["messages"]
        # The provider sees a stable prompt: history is redacted identically every turn.
        assert sent[:len(previous_sent)] == previous_sent
        previous_sent = copy.deepcopy(sent)
        assert f"ann{t}@example.com" not in str(sent)
        mapping = ctx.require(STATE).redactions.mapping
        email_placeholder = next(k for k, v in mapping.items() if v == f"ann{t}@example.com")
        reply = {"choices": [{"index": 0, "message": {
            "role": "assistant", "content": f"Done, I wrote to {email_placeholder}."}}]}
        await pol.on_response(ctx, reply)
        history.append({"role": "assistant", "name": "assistant",
                        "content": reply["choices"][0]["message"]["content"]})
        assert history[-1]["content"] == f"Done, I wrote to ann{t}@example.com."
