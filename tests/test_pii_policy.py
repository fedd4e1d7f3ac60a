"""The pii policy through its hooks: config, redaction, restoration, streams, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from proxy.context import RequestContext
from proxy.errors import ContentFiltered, ServiceUnavailable
from proxy.pii.pseudonyms import PLACEHOLDER_RE
from proxy.pipeline import Chain, Chunk
from proxy.policies.pii import STATE, PiiConfig, PiiPolicy
from proxy.services import Services
from proxy.tenants import PolicyError, build_policy_set, parse_policy_file
from tests.pii_fixtures import chat, new_services, policy, services, user  # noqa: F401

EMAIL, PHONE, CARD = "ann.lee@example.org", "+44 20 7946 0958", "4111 1111 1111 1111"
FIRST = f"I am {EMAIL}, phone {PHONE}, card {CARD}."


def write_policy(tmp_path: Path, pii: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(
        "tenant: t\nkeys: [key-123456]\nmodels:\n  m:\n    - provider: openai\n"
        f"      model: gpt\n      api_base: http://127.0.0.1:1/v1\npii:\n{pii}")
    return path


def placeholders(ctx: RequestContext) -> dict[str, str]:
    return {v: k for k, v in ctx.require(STATE).redactions.mapping.items()}


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(("section", "where", "reason"), [
    ("  tier: huge\n", "pii.tier", "Input should be"),
    ("  colour: red\n", "pii.colour", "unknown key"),
    ("  actions: {CREDIT_CARD: shred}\n", "pii.actions.CREDIT_CARD", "Input should be"),
    ("  entities: [EMAIL_ADDRESS]\n  actions: {CREDIT_CARD: mask}\n", "pii",
     "not among the redacted entities"),
    ("  patterns: [{entity: EMP, regex: '(unclosed'}]\n", "pii.patterns[0].regex",
     "invalid regular expression"),
    ("  phone_regions: [XX]\n", "pii.phone_regions", "unknown phone region"),
    ("  secret: hunter2\n", "pii.secret", "must be a reference"),
    ("  deny_lists: {lower: [x]}\n", "pii.deny_lists", "UPPER_SNAKE_CASE"),
])
def test_bad_config_is_rejected_at_load(tmp_path: Path, section: str, where: str,
                                        reason: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy_file(write_policy(tmp_path, section))
    assert err.value.key == where
    assert reason in err.value.reason


def test_ner_entities_on_the_default_tier_fail_the_build(tmp_path: Path,
                                                         services: Services) -> None:  # noqa: F811
    path = write_policy(tmp_path, "  entities: [EMAIL_ADDRESS, PERSON]\n")
    with pytest.raises(PolicyError, match="tier: ner"):
        build_policy_set([(path, parse_policy_file(path))], services, tmp_path)


def test_a_configured_secret_that_is_not_set_fails_the_build(tmp_path: Path,
                                                             services: Services) -> None:  # noqa: F811
    path = write_policy(tmp_path, "  secret: env:WARDEN_TEST_PII_SECRET_UNSET\n")
    with pytest.raises(PolicyError, match="WARDEN_TEST_PII_SECRET_UNSET"):
        build_policy_set([(path, parse_policy_file(path))], services, tmp_path)


# -- requests -------------------------------------------------------------------------


async def test_request_is_redacted_and_decisions_carry_no_values(services: Services) -> None:  # noqa: F811
    pol = policy(services, actions={"CREDIT_CARD": "mask"})
    ctx = chat({"role": "system", "content": "Be brief."}, user(FIRST))
    await pol.on_request(ctx)
    sent = json.dumps(ctx.body)
    for value in (EMAIL, PHONE, CARD):
        assert value not in sent
    assert "**************** 1111"[-4:] in ctx.body["messages"][1]["content"]
    assert {(d.action, d.reason, d.detail["count"]) for d in ctx.decisions} == {
        ("pseudonymize", "EMAIL_ADDRESS", 1), ("pseudonymize", "PHONE_NUMBER", 1),
        ("mask", "CREDIT_CARD", 1)}
    logged = repr(ctx.decisions)
    assert EMAIL not in logged and PHONE not in logged
    metrics = services.metrics.render().decode()
    assert 'warden_pii_redactions_total{action="mask",entity="CREDIT_CARD"' in metrics


async def test_block_refuses_with_content_filter(services: Services) -> None:  # noqa: F811
    pol = policy(services, actions={"CREDIT_CARD": "block"})
    with pytest.raises(ContentFiltered, match="CREDIT_CARD") as err:
        await pol.on_request(chat(user(FIRST)))
    assert CARD not in err.value.message


async def test_analyzer_failure_refuses_and_leaves_nothing_to_forward(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    pol = policy(services)

    def broken(text: str, **kw: Any) -> Any:
        raise MemoryError("spaCy ran out")

    monkeypatch.setattr(pol.scanner.engine, "analyze", broken)
    ctx = chat(user(f"new text {EMAIL}"))
    with pytest.raises(ServiceUnavailable) as err:
        await pol.on_request(ctx)
    assert err.value.status == 503
    assert ctx.get(STATE) is None


async def test_embeddings_input_is_redacted(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx = RequestContext(request_id="r", operation="embeddings",
                         body={"model": "e", "input": ["clean", f"mail {EMAIL}"]})
    await pol.on_request(ctx)
    assert ctx.body["input"][0] == "clean"
    assert PLACEHOLDER_RE.search(ctx.body["input"][1])


async def test_same_placeholders_across_separately_built_services() -> None:
    placeholders_seen = []
    for _ in range(2):
        svc = new_services()  # a new process-level engine each time
        try:
            ctx = chat(user(FIRST))
            await policy(svc).on_request(ctx)
            placeholders_seen.append(ctx.body["messages"][0]["content"])
        finally:
            svc.close()
    assert placeholders_seen[0] == placeholders_seen[1]
    assert PLACEHOLDER_RE.search(placeholders_seen[0])


async def test_without_any_secret_a_random_process_key_is_used_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    svc = new_services(secret=None)
    try:
        with caplog.at_level(logging.WARNING, logger="warden.pii"):
            a, b = policy(svc), policy(svc)  # e.g. a reload: the key survives it
        assert "random per-process key" in caplog.text
        c1, c2 = chat(user(FIRST)), chat(user(FIRST))
        await a.on_request(c1)
        await b.on_request(c2)
        assert c1.body == c2.body
    finally:
        svc.close()


# -- replies --------------------------------------------------------------------------


async def redacted(pol: PiiPolicy, *texts: str) -> tuple[RequestContext, dict[str, str]]:
    ctx = chat(*(user(t) for t in texts))
    await pol.on_request(ctx)
    return ctx, placeholders(ctx)


async def test_plain_reply_and_tool_arguments_are_restored(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx, ph = await redacted(pol, FIRST)
    reply = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": f"Sure, {ph[EMAIL]}.",
        "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "send", "arguments": json.dumps({"to": ph[EMAIL], "sms": ph[PHONE]})}}]}}]}
    await pol.on_response(ctx, reply)
    msg = reply["choices"][0]["message"]
    assert msg["content"] == f"Sure, {EMAIL}."
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"to": EMAIL,
                                                                         "sms": PHONE}


async def test_restore_off_leaves_placeholders(services: Services) -> None:  # noqa: F811
    pol = policy(services, restore=False)
    ctx, ph = await redacted(pol, FIRST)
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ph[EMAIL]}}]}
    await pol.on_response(ctx, reply)
    assert reply["choices"][0]["message"]["content"] == ph[EMAIL]


async def test_a_placeholder_from_another_request_is_not_restored(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    _, other = await redacted(pol, "mail bob@example.net")
    ctx, _ = await redacted(pol, FIRST)
    foreign = other["bob@example.net"]
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": foreign}}]}
    await pol.on_response(ctx, reply)
    assert reply["choices"][0]["message"]["content"] == foreign


def sse_chunks(pieces: list[str], tool_pieces: list[str] = ()) -> list[Chunk]:  # type: ignore[assignment]
    head = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out: list[Chunk] = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    out += [{**head, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    for p in tool_pieces:
        out.append({**head, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": p}}]}}]})
    out.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return out


async def run_stream(pol: PiiPolicy, ctx: RequestContext, chunks: list[Chunk]
                     ) -> tuple[str, str]:
    chain = Chain([pol])
    chain._entered.append(pol)
    sent: list[Chunk] = []
    for c in chunks:
        sent.extend(chain.chunk(ctx, json.loads(json.dumps(c))))
    sent.extend(await chain.stream_end(ctx))
    text, args = "", ""
    for c in sent:
        for choice in c["choices"]:
            d = choice["delta"]
            text += d.get("content") or ""
            for call in d.get("tool_calls") or ():
                args += call["function"].get("arguments", "")
    return text, args


async def test_stream_with_placeholders_split_at_every_offset(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx, ph = await redacted(pol, FIRST)
    reply = f"Mailing {ph[EMAIL]} and texting {ph[PHONE]} now."
    expected = f"Mailing {EMAIL} and texting {PHONE} now."
    for i in range(len(reply) + 1):
        text, _ = await run_stream(pol, ctx, sse_chunks([reply[:i], reply[i:]]))
        assert text == expected, i


async def test_stream_tool_arguments_are_restored_as_valid_json(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx, ph = await redacted(pol, FIRST)
    args = json.dumps({"to": ph[EMAIL]})
    for i in range(len(args) + 1):
        _, out = await run_stream(pol, ctx, sse_chunks([], [args[:i], args[i:]]))
        assert json.loads(out) == {"to": EMAIL}, i


async def test_text_held_at_a_stream_end_without_finish_reason_is_flushed(
        services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx, ph = await redacted(pol, FIRST)
    cut = len(ph[EMAIL]) // 2
    chunks = sse_chunks(["to " + ph[EMAIL][:cut]])[:-1]  # no finish_reason chunk
    text, _ = await run_stream(pol, ctx, chunks)
    assert text == "to " + ph[EMAIL][:cut]  # a dangling half is sent as it was
    chunks = sse_chunks(["to " + ph[EMAIL][:cut], ph[EMAIL][cut:]])[:-1]
    text, _ = await run_stream(pol, ctx, chunks)
    assert text == f"to {EMAIL}"


async def test_output_scan_flags_and_redacts_model_produced_pii(services: Services) -> None:  # noqa: F811
    pol = policy(services, output="redact")
    ctx, ph = await redacted(pol, FIRST)
    reply = {"choices": [{"index": 0, "message": {
        "role": "assistant", "content": f"I also found bob@example.net for {ph[EMAIL]}."}}]}
    await pol.on_response(ctx, reply)
    assert reply["choices"][0]["message"]["content"] == \
        f"I also found <EMAIL_ADDRESS> for {EMAIL}."
    assert "pii-output" in ctx.flags
    assert any(d.action == "redact" and d.detail.get("side") == "output" for d in ctx.decisions)


async def test_output_scan_on_a_stream_flags_at_the_end(services: Services) -> None:  # noqa: F811
    pol = policy(services, output="flag")
    ctx = chat(user("hello"))
    await pol.on_request(ctx)
    text, _ = await run_stream(pol, ctx, sse_chunks(["write to bob@exa", "mple.net today"]))
    assert text == "write to bob@example.net today"
    assert "pii-output" in ctx.flags


async def test_on_done_drops_the_mapping(services: Services) -> None:  # noqa: F811
    pol = policy(services)
    ctx, _ = await redacted(pol, FIRST)
    await pol.on_done(ctx)
    assert ctx.get(STATE) is None


def test_config_defaults() -> None:
    cfg = PiiConfig()
    assert cfg.default_action == "pseudonymize" and cfg.restore and cfg.output == "off"
    assert "PERSON" not in cfg.entity_list()
    assert "PERSON" in PiiConfig(tier="ner").entity_list()
